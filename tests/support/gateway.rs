//! The gateway as an operator runs it: `community-gateway run --config FILE`
//! as a child process, with its configuration, roster and store in a
//! temporary folder, stderr (tracing, `RUST_LOG=info`) captured to a log
//! file, and the admin endpoint on a free port of 127.0.0.1.

use super::broker::{LocalBroker, PlatformBroker};
use super::certs::Certs;
use super::{free_port, wait_until};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// Devices every test configuration declares unless it replaces them:
/// two compound gates, three building doors, one door per vendor preset.
pub const DEVICES: &str = r#"
[[devices]]
id = "gate-north"
kind = "access"
name = "North gate"
perimeter = true

[[devices]]
id = "gate-south"
kind = "access"
name = "South gate"
perimeter = true

[[devices]]
id = "door-1"
kind = "access"
building = "1"
unit = "1"

[[devices]]
id = "door-2"
kind = "access"
building = "1"
unit = "2"

[[devices]]
id = "door-3"
kind = "access"
building = "1"
unit = "3"

[[devices]]
id = "hik-door"
kind = "access"
building = "2"
unit = "1"

[[devices]]
id = "dahua-door"
kind = "access"
building = "2"
unit = "2"

[[devices]]
id = "uhppoted-door"
kind = "access"
building = "2"
unit = "3"
"#;

/// Roster every test configuration uses unless it replaces it: nobody watched.
pub const ROSTER: &str = "resident_id,building,unit,room,grid,credentials,watch\n\
R-1,1,1,101,G-1,C-1001,no\n\
R-2,1,1,102,G-1,C-1002,no\n\
R-3,2,1,201,G-2,3285011022;A3F09C21;8165538,no\n";

/// Topic of canonical events in the default configuration: publish to
/// `e2e/canonical/<anything>`.
pub const CANONICAL_TOPIC: &str = "e2e/canonical/#";

/// One `[[local_mqtt.subscriptions]]` entry.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub topic: String,
    pub format: String,
    pub device: Option<String>,
    pub device_topic_level: Option<usize>,
    pub qos: u8,
}

impl Subscription {
    /// Canonical events (SPEC §2); the device comes from the payload.
    pub fn canonical(topic: &str) -> Subscription {
        Subscription {
            topic: topic.into(),
            format: "canonical".into(),
            device: None,
            device_topic_level: None,
            qos: 1,
        }
    }

    /// A vendor preset (`hikvision`, `dahua`, `uhppoted`) or mapping name,
    /// every message attributed to `device`.
    pub fn preset(topic: &str, format: &str, device: &str) -> Subscription {
        Subscription {
            topic: topic.into(),
            format: format.into(),
            device: Some(device.into()),
            device_topic_level: None,
            qos: 1,
        }
    }

    fn toml(&self) -> String {
        let mut s = format!(
            "\n[[local_mqtt.subscriptions]]\ntopic = {}\nformat = {}\nqos = {}\n",
            q(&self.topic),
            q(&self.format),
            self.qos
        );
        if let Some(d) = &self.device {
            s.push_str(&format!("device = {}\n", q(d)));
        }
        if let Some(l) = self.device_topic_level {
            s.push_str(&format!("device_topic_level = {l}\n"));
        }
        s
    }
}

/// Where the gateway's uplink goes.
#[derive(Debug, Clone)]
pub struct PlatformTarget {
    pub port: u16,
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

impl PlatformTarget {
    /// `broker` on 127.0.0.1, trusting `certs.ca` (whatever the broker
    /// presents), with the gateway's client certificate, verifying `localhost`.
    pub fn new(broker: &PlatformBroker, certs: &Certs) -> PlatformTarget {
        PlatformTarget {
            port: broker.port(),
            ca: certs.ca.clone(),
            cert: Some(certs.gateway.cert.clone()),
            key: Some(certs.gateway.key.clone()),
            server_name: Some("localhost".into()),
        }
    }
}

/// Everything the harness writes into the gateway's configuration. Fields
/// holding TOML are pasted in as written.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub compound: String,
    pub language: String,
    /// Roster CSV text (`None`: no roster).
    pub roster: Option<String>,
    /// `[[devices]]` tables.
    pub devices: String,
    pub local_port: u16,
    /// The gateway's client id on the local broker (its persistent session).
    pub local_client_id: String,
    /// Before the first start, create the gateway's persistent session on the
    /// local broker (connect with its client id, clean session off, subscribe
    /// to its filters, disconnect), so that the broker keeps every message
    /// published from then on even before the gateway has connected. Tests
    /// can then publish right after [`Gateway::start`] without racing the
    /// gateway's first SUBSCRIBE. `false`: leave the broker untouched.
    pub provision_session: bool,
    /// Extra `key = value` lines in `[local_mqtt]` (e.g. `max_payload = 4096`).
    pub local_extra: String,
    pub subscriptions: Vec<Subscription>,
    pub platform: Option<PlatformTarget>,
    /// Extra `key = value` lines in `[platform]`.
    pub platform_extra: String,
    /// Extra `key = value` lines in `[storage]`.
    pub storage_extra: String,
    /// `[rules.<name>]` tables (small thresholds for tests).
    pub rules: String,
    /// Anything else, appended at the end (whole tables).
    pub extra: String,
}

impl GatewayConfig {
    /// The default test configuration: [`DEVICES`], [`ROSTER`], canonical
    /// events on [`CANONICAL_TOPIC`] and one subscription per vendor preset
    /// (`e2e/hikvision`, `e2e/dahua`, `e2e/uhppoted`, attributed to
    /// `hik-door`, `dahua-door`, `uhppoted-door`), platform over mutual TLS.
    pub fn new(
        compound: &str,
        local: &LocalBroker,
        platform: &PlatformBroker,
        certs: &Certs,
    ) -> GatewayConfig {
        GatewayConfig {
            compound: compound.into(),
            language: "en".into(),
            roster: Some(ROSTER.into()),
            devices: DEVICES.into(),
            local_port: local.port(),
            local_client_id: format!("community-gateway-{compound}"),
            provision_session: true,
            local_extra: String::new(),
            subscriptions: vec![
                Subscription::canonical(CANONICAL_TOPIC),
                Subscription::preset("e2e/hikvision", "hikvision", "hik-door"),
                Subscription::preset("e2e/dahua", "dahua", "dahua-door"),
                Subscription::preset("e2e/uhppoted", "uhppoted", "uhppoted-door"),
            ],
            platform: Some(PlatformTarget::new(platform, certs)),
            platform_extra: String::new(),
            storage_extra: String::new(),
            rules: String::new(),
            extra: String::new(),
        }
    }

    /// Renders the configuration file. `store` and `admin_port` belong to the harness.
    pub fn render(&self, store: &Path, admin_port: u16) -> String {
        let mut s = format!(
            "# written by tests/support/gateway.rs\ncompound = {}\ntimezone = \"Asia/Shanghai\"\nlanguage = {}\n",
            q(&self.compound),
            q(&self.language)
        );
        if self.roster.is_some() {
            s.push_str("roster = \"residents.csv\"\n");
        }
        s.push_str(&format!(
            "\n[storage]\npath = {}\n{}\n",
            q(&store.display().to_string()),
            self.storage_extra
        ));
        s.push_str("\n[privacy]\nkey = \"e2e-secret-key-for-pseudonyms\"\n");
        s.push_str(&format!(
            "\n[admin]\nenabled = true\nlisten = \"127.0.0.1:{admin_port}\"\n"
        ));
        s.push_str(&format!(
            "\n[local_mqtt]\nhost = \"127.0.0.1\"\nport = {}\nclient_id = {}\nkeep_alive = \"5s\"\n{}\n",
            self.local_port,
            q(&self.local_client_id),
            self.local_extra
        ));
        for sub in &self.subscriptions {
            s.push_str(&sub.toml());
        }
        if let Some(p) = &self.platform {
            let mut tls = format!("ca_file = {}", q(&p.ca.display().to_string()));
            if let Some(c) = &p.cert {
                tls.push_str(&format!(", cert_file = {}", q(&c.display().to_string())));
            }
            if let Some(k) = &p.key {
                tls.push_str(&format!(", key_file = {}", q(&k.display().to_string())));
            }
            if let Some(n) = &p.server_name {
                tls.push_str(&format!(", server_name = {}", q(n)));
            }
            s.push_str(&format!(
                "\n[platform]\nhost = \"127.0.0.1\"\nport = {}\nkeep_alive = \"5s\"\ntls = {{ {tls} }}\n{}\n",
                p.port, self.platform_extra
            ));
        }
        s.push('\n');
        s.push_str(&self.devices);
        s.push('\n');
        s.push_str(&self.rules);
        s.push('\n');
        // The host's own disk is not under test: with the default 5 %, a
        // nearly full build machine raises gateway_health(disk_full) and
        // every count of alerts at the platform is off by one.
        if !self.rules.contains("[rules.gateway_health]") {
            s.push_str("[rules.gateway_health]\ndisk_free_min = 0.0001\n\n");
        }
        s.push_str(&self.extra);
        s.push('\n');
        s
    }
}

/// A TOML basic string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The `community-gateway run` process and its files.
pub struct Gateway {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    admin_port: u16,
    cfg: GatewayConfig,
    child: Option<Child>,
    starts: u32,
}

impl Gateway {
    /// Writes the files and starts the process (does not wait for readiness).
    pub fn start(cfg: GatewayConfig) -> Gateway {
        let tmp = tempfile::Builder::new()
            .prefix("cg-e2e-gateway-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let mut g = Gateway {
            config_path: dir.join("gateway.toml"),
            log_path: dir.join("gateway.log"),
            dir,
            _dir: tmp,
            admin_port: free_port(),
            cfg,
            child: None,
            starts: 0,
        };
        g.write_files();
        if g.cfg.provision_session {
            g.provision_session();
        }
        g.spawn();
        g
    }

    /// See [`GatewayConfig::provision_session`].
    pub fn provision_session(&self) {
        let filters: Vec<String> = self
            .cfg
            .subscriptions
            .iter()
            .map(|s| s.topic.clone())
            .collect();
        if filters.is_empty() {
            return;
        }
        let l = super::mqtt::Listener::connect_many(
            self.cfg.local_port,
            &self.cfg.local_client_id,
            false,
            &filters,
        )
        .unwrap_or_else(|e| panic!("provisioning the gateway's session: {e}"));
        l.disconnect();
    }

    fn write_files(&self) {
        if let Some(roster) = &self.cfg.roster {
            std::fs::write(self.dir.join("residents.csv"), roster).unwrap();
        }
        let text = self.cfg.render(&self.store_path(), self.admin_port);
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    /// Rewrites the configuration (same store, same admin port). Takes effect
    /// at the next start, or at [`Gateway::reload`].
    pub fn set_config(&mut self, cfg: GatewayConfig) {
        self.cfg = cfg;
        self.write_files();
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config_path).unwrap_or_default()
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.join("store")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Starts the process if it is not running. Each start is marked in the log.
    pub fn spawn(&mut self) {
        if self.is_running() {
            return;
        }
        self.starts += 1;
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let _ = writeln!(log, "===== e2e harness: start #{} =====", self.starts);
        let level = std::env::var("CG_TEST_GATEWAY_LOG").unwrap_or_else(|_| "info".into());
        let child = Command::new(env!("CARGO_BIN_EXE_community-gateway"))
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", level)
            .env("NO_COLOR", "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn community-gateway");
        self.child = Some(child);
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Polls `GET /readyz` until it answers 200. Fails early if the process exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        self.wait_http("/readyz", timeout)
    }

    fn wait_http(&mut self, path: &str, timeout: Duration) -> Result<(), String> {
        let port = self.admin_port;
        let mut last = String::new();
        let r = wait_until(timeout, &format!("GET {path} = 200"), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Some(Err(format!("the gateway exited: {status}")));
            }
            match http_get(port, path) {
                Ok((200, _)) => Some(Ok(())),
                Ok((code, body)) => {
                    last = format!("{code} {body}");
                    None
                }
                Err(e) => {
                    last = e;
                    None
                }
            }
        });
        match r.and_then(|r| r) {
            Ok(()) => Ok(()),
            Err(e) => Err(format!(
                "{e} (last answer: {last})\n--- gateway log (tail):\n{}",
                self.log_tail(60)
            )),
        }
    }

    /// `GET path` on the admin endpoint: status code and body.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(self.admin_port, path)
    }

    /// `GET /metrics`, parsed: series (`name{labels}` as written) -> value.
    pub fn metrics(&self) -> Result<BTreeMap<String, f64>, String> {
        let (code, body) = self.get("/metrics")?;
        if code != 200 {
            return Err(format!("/metrics answered {code}: {body}"));
        }
        Ok(parse_metrics(&body))
    }

    /// Polls `/metrics` until `pred` holds for the sum of metric `name`.
    pub fn wait_metric(
        &self,
        name: &str,
        pred: impl Fn(f64) -> bool,
        timeout: Duration,
    ) -> Result<f64, String> {
        let mut last = None;
        wait_until(timeout, &format!("metric {name}"), || {
            let v = self.metrics().ok().map(|m| sum_of(&m, name));
            last = v;
            v.filter(|v| pred(*v))
        })
        .map_err(|e| format!("{e}: last value {last:?}"))
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (via `kill -TERM <pid>`) and wait up to 30 s for the exit.
    pub fn terminate(&mut self) -> Result<ExitStatus, String> {
        self.signal("TERM")?;
        let mut child = self.child.take().expect("running");
        match wait_until(Duration::from_secs(30), "the gateway to exit", || {
            child.try_wait().ok().flatten()
        }) {
            Ok(status) => Ok(status),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "{e}\n--- gateway log (tail):\n{}",
                    self.log_tail(60)
                ))
            }
        }
    }

    /// SIGHUP: reload the configuration and roster.
    pub fn reload(&mut self) -> Result<(), String> {
        self.signal("HUP")
    }

    /// Writes `cfg`, sends SIGHUP and waits until the gateway counts one
    /// more successful reload.
    pub fn reload_with(&mut self, cfg: GatewayConfig, timeout: Duration) -> Result<(), String> {
        const OK: &str = "cg_config_reloads_total{result=\"ok\"}";
        let before = self.metrics().map(|m| sum_of(&m, OK))?;
        self.set_config(cfg);
        self.reload()?;
        self.wait_metric(OK, |n| n > before, timeout)
            .map(|_| ())
            .map_err(|e| format!("{e}\n{}", self.log_tail(20)))
    }

    /// Sends `SIG<name>` with the `kill` command.
    pub fn signal(&mut self, name: &str) -> Result<(), String> {
        let pid = self.pid().ok_or("the gateway is not running")?;
        send_signal(pid, name)
    }

    /// Everything the process wrote to stdout and stderr, over all starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `n` lines of [`Gateway::log`].
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Polls the log until a line satisfies `pred`; returns that line.
    pub fn wait_log(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String, String> {
        wait_until(timeout, "a log line", || {
            self.log().lines().find(|l| pred(l)).map(str::to_string)
        })
        .map_err(|e| format!("{e}\n--- gateway log (tail):\n{}", self.log_tail(60)))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
        // CG_TEST_KEEP_LOGS=<folder>: keep each test's gateway log there.
        if let Some(keep) = std::env::var_os("CG_TEST_KEEP_LOGS") {
            let name = std::thread::current()
                .name()
                .unwrap_or("gateway")
                .replace("::", "-");
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(&self.log_path, Path::new(&keep).join(format!("{name}.log")));
        }
        if std::thread::panicking() {
            eprintln!(
                "--- gateway log ({}), last 80 lines:\n{}\n--- config:\n{}",
                self.log_path.display(),
                self.log_tail(80),
                self.config_text()
            );
        }
    }
}

/// `kill -<name> <pid>`: the `kill` program, or the shell's builtin where
/// the program is not installed (minimal containers).
pub fn send_signal(pid: u32, name: &str) -> Result<(), String> {
    let status = match Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
    {
        Ok(s) => s,
        Err(_) => Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{name} {pid}"))
            .status()
            .map_err(|e| format!("kill: {e}"))?,
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{name} {pid}: {status}"))
    }
}

/// Sum of every series named `name` (with or without labels).
pub fn sum_of(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            k.as_str() == name || (k.starts_with(name) && k[name.len()..].starts_with('{'))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Prometheus text format: `series value [timestamp]` lines; comments skipped.
pub fn parse_metrics(body: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The series may contain spaces inside label values; the value
        // follows the closing brace, or the first space without labels.
        let (series, rest) = match line.rfind('}') {
            Some(i) => (&line[..=i], line[i + 1..].trim()),
            None => match line.split_once(char::is_whitespace) {
                Some((s, r)) => (s, r.trim()),
                None => continue,
            },
        };
        let value = rest.split_whitespace().next().unwrap_or("");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        out.insert(series.to_string(), value);
    }
    out
}

/// A minimal HTTP/1.0 GET on 127.0.0.1:`port` (the admin endpoint).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let addr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP response: {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("malformed status line: {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}
