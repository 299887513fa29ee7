//! The brokers of a test: the compound's local broker (plain MQTT, persistent
//! sessions) and the platform broker (TLS, client certificates required),
//! each on its own port of 127.0.0.1, each able to [`stop`] and [`start`]
//! again on that port.
//!
//! Backends (`CG_TEST_BROKER`):
//! - `rumqttd` (default): an in-process rumqttd on an internal port behind a
//!   [`Proxy`] on the public port. Stopping closes the proxy and drops its
//!   connections; the broker itself keeps its sessions (like a broker restart
//!   with persistence).
//! - `mosquitto`: a `/usr/sbin/mosquitto` process. Stopping sends SIGTERM
//!   (mosquitto saves its persistence file), starting respawns it with the same
//!   configuration, so persistent sessions and their queued messages survive.
//!
//! [`stop`]: LocalBroker::stop
//! [`start`]: LocalBroker::start

use super::certs::{CertPair, Certs};
use super::proxy::{server_tls, Proxy};
use super::{free_port, port_open, wait_until};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Rumqttd,
    Mosquitto,
}

/// The backend chosen by `CG_TEST_BROKER` (`rumqttd`, the default, or `mosquitto`).
pub fn backend() -> Backend {
    match std::env::var("CG_TEST_BROKER").as_deref() {
        Ok("mosquitto") => Backend::Mosquitto,
        Ok("") | Ok("rumqttd") | Err(_) => Backend::Rumqttd,
        Ok(other) => panic!("CG_TEST_BROKER={other}: expected `rumqttd` or `mosquitto`"),
    }
}

/// Largest payload the test brokers accept (well above any gateway `max_payload`
/// a test configures, so oversized payloads reach the gateway).
pub const BROKER_MAX_PAYLOAD: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// rumqttd

/// Starts an in-process rumqttd (MQTT 3.1.1) on 127.0.0.1:`port` — the
/// demo's broker — for the rest of the test process. Its commit log has room
/// for thousands of queued messages per filter (persistent sessions catch
/// up from it).
fn spawn_rumqttd(port: u16) {
    community_gateway::demo::spawn_broker(port, BROKER_MAX_PAYLOAD, 16 * 1024 * 1024, 16)
        .unwrap_or_else(|e| panic!("rumqttd on port {port}: {e}"));
}

// ---------------------------------------------------------------------------
// mosquitto

/// One mosquitto process with a fixed configuration file.
pub struct Mosquitto {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// The TLS part of a mosquitto listener.
struct MosquittoTls<'a> {
    ca: &'a Path,
    server: &'a CertPair,
}

impl Mosquitto {
    fn new(port: u16, tls: Option<MosquittoTls<'_>>) -> Mosquitto {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "CG_TEST_BROKER=mosquitto but {MOSQUITTO} is missing (apt-get install -y mosquitto)"
        );
        let tmp = tempfile::Builder::new()
            .prefix("cg-e2e-mosquitto-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        #[cfg(unix)]
        {
            // mosquitto started as root drops to its own user unless told
            // otherwise; keep the folder usable either way.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
        }
        let mut conf = format!(
            "# community-gateway e2e broker\n\
             user root\n\
             per_listener_settings false\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {dir}/\n\
             persistence_file mosquitto.db\n\
             max_queued_messages 5000\n\
             max_inflight_messages 100\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n\
             connection_messages true\n\
             listener {port} 127.0.0.1\n",
            dir = dir.display()
        );
        if let Some(tls) = tls {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                tls.ca.display(),
                tls.server.cert.display(),
                tls.server.key.display()
            ));
        }
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut m = Mosquitto {
            log: dir.join("mosquitto.log"),
            conf: conf_path,
            dir,
            _dir: tmp,
            port,
            child: None,
        };
        m.start();
        m
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn start(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {MOSQUITTO}: {e}"));
        let ready = wait_until(Duration::from_secs(10), "mosquitto to listen", || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(format!("mosquitto exited: {status}")));
            }
            port_open(self.port).then_some(Ok(()))
        });
        match ready.and_then(|r| r) {
            Ok(()) => self.child = Some(child),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{e}\n--- mosquitto log:\n{}", self.log());
            }
        }
    }

    /// SIGTERM (mosquitto writes its persistence file), then wait for exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = super::gateway::send_signal(child.id(), "TERM");
        let exited = wait_until(Duration::from_secs(5), "mosquitto to exit", || {
            child.try_wait().ok().flatten()
        });
        if exited.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = wait_until(Duration::from_secs(5), "mosquitto port to close", || {
            (!port_open(self.port)).then_some(())
        });
    }

    /// SIGKILL: no persistence written.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill9();
        let _ = &self.dir;
    }
}

// ---------------------------------------------------------------------------
// The brokers tests use

enum Inner {
    Rumqttd { proxy: Proxy, internal: u16 },
    Mosquitto(Mosquitto),
}

impl Inner {
    fn port(&self) -> u16 {
        match self {
            Inner::Rumqttd { proxy, .. } => proxy.port(),
            Inner::Mosquitto(m) => m.port,
        }
    }
    fn stop(&mut self) {
        match self {
            Inner::Rumqttd { proxy, .. } => proxy.stop(),
            Inner::Mosquitto(m) => m.stop(),
        }
    }
    fn start(&mut self) {
        match self {
            Inner::Rumqttd { proxy, .. } => proxy.resume(),
            Inner::Mosquitto(m) => m.start(),
        }
    }
    fn log(&self) -> String {
        match self {
            Inner::Rumqttd { proxy, internal } => {
                let failures = proxy.stats().tls_failures.lock().unwrap().clone();
                format!(
                    "rumqttd on {internal} behind proxy on {}; accepted {} connection(s); TLS failures: {failures:?}",
                    proxy.port(),
                    proxy
                        .stats()
                        .accepted
                        .load(std::sync::atomic::Ordering::SeqCst)
                )
            }
            Inner::Mosquitto(m) => m.log(),
        }
    }
    fn tls_failures(&self) -> Vec<String> {
        match self {
            Inner::Rumqttd { proxy, .. } => proxy.stats().tls_failures.lock().unwrap().clone(),
            Inner::Mosquitto(m) => m
                .log()
                .lines()
                .filter(|l| {
                    let l = l.to_ascii_lowercase();
                    l.contains("openssl") || l.contains("tls") || l.contains("certificate")
                })
                .map(str::to_string)
                .collect(),
        }
    }
}

/// The compound's local broker: plain MQTT, persistent sessions.
pub struct LocalBroker(Inner);

#[allow(clippy::new_without_default)]
impl LocalBroker {
    /// Starts one of the selected backend on a free port and waits until it accepts connections.
    pub fn new() -> LocalBroker {
        let port = free_port();
        LocalBroker(match backend() {
            Backend::Rumqttd => {
                let internal = free_port();
                spawn_rumqttd(internal);
                let proxy = Proxy::start(port, SocketAddr::from(([127, 0, 0, 1], internal)), None);
                Inner::Rumqttd { proxy, internal }
            }
            Backend::Mosquitto => Inner::Mosquitto(Mosquitto::new(port, None)),
        })
    }

    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// An outage: connections are dropped and the port refuses new ones.
    /// Sessions survive (see the module notes).
    pub fn stop(&mut self) {
        self.0.stop()
    }

    /// Back on the same port (no-op when running).
    pub fn start(&mut self) {
        self.0.start()
    }

    /// Broker-side diagnostics (mosquitto's log; proxy statistics for rumqttd).
    pub fn log(&self) -> String {
        self.0.log()
    }
}

/// A platform broker over TLS that requires client certificates signed by
/// the test CA.
pub struct PlatformBroker {
    inner: Inner,
    /// The CA a client must trust to connect (`certs.ca`, or `certs.rogue_ca`
    /// for the rogue broker).
    pub ca: PathBuf,
}

impl PlatformBroker {
    /// The real platform: presents `certs.server` (signed by `certs.ca`).
    pub fn new(certs: &Certs) -> PlatformBroker {
        Self::with_identity(certs, &certs.server, &certs.ca)
    }

    /// A platform impostor: presents `certs.rogue_server`, signed by the rogue
    /// CA the gateway does not trust. It still requires client certificates
    /// signed by the real CA, so the test subscriber (trusting the rogue CA)
    /// can watch what reaches it.
    pub fn rogue(certs: &Certs) -> PlatformBroker {
        Self::with_identity(certs, &certs.rogue_server, &certs.rogue_ca)
    }

    fn with_identity(certs: &Certs, server: &CertPair, server_ca: &Path) -> PlatformBroker {
        let port = free_port();
        let inner = match backend() {
            Backend::Rumqttd => {
                let internal = free_port();
                spawn_rumqttd(internal);
                let tls = server_tls(&server.cert, &server.key, &certs.ca);
                let proxy = Proxy::start(
                    port,
                    SocketAddr::from(([127, 0, 0, 1], internal)),
                    Some(tls),
                );
                Inner::Rumqttd { proxy, internal }
            }
            Backend::Mosquitto => Inner::Mosquitto(Mosquitto::new(
                port,
                Some(MosquittoTls {
                    ca: &certs.ca,
                    server,
                }),
            )),
        };
        PlatformBroker {
            inner,
            ca: server_ca.to_path_buf(),
        }
    }

    pub fn port(&self) -> u16 {
        self.inner.port()
    }

    /// An outage: connections are dropped and the port refuses new ones.
    pub fn stop(&mut self) {
        self.inner.stop()
    }

    /// Back on the same port (no-op when running).
    pub fn start(&mut self) {
        self.inner.start()
    }

    pub fn log(&self) -> String {
        self.inner.log()
    }

    /// TLS handshakes the broker refused, as far as it tells.
    pub fn tls_failures(&self) -> Vec<String> {
        self.inner.tls_failures()
    }
}
