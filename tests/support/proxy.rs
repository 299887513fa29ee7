//! A TCP proxy, optionally terminating TLS, in front of an in-process broker.
//!
//! rumqttd cannot be stopped once started, so outages are made here:
//! [`Proxy::stop`] closes the listening socket and drops every proxied
//! connection (both directions), which the broker sees as the clients going
//! away and the clients see as the broker going away; [`Proxy::start`] listens
//! on the same port again. With TLS, the proxy requires a client certificate
//! signed by the configured CA (rustls `WebPkiClientVerifier`), like a
//! mosquitto listener with `require_certificate true`.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// Server side TLS of a proxy: the certificate it presents and the CA its
/// clients' certificates must be signed by.
pub fn server_tls(cert: &Path, key: &Path, client_ca: &Path) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(client_ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(cfg)
}

struct Running {
    shutdown: tokio::sync::watch::Sender<bool>,
    thread: JoinHandle<()>,
}

pub struct Proxy {
    port: u16,
    target: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    running: Option<Running>,
    stats: Arc<Stats>,
}

/// What the proxy saw, for assertions and failure messages.
#[derive(Default)]
pub struct Stats {
    /// Connections accepted (TLS handshake done, when TLS).
    pub accepted: AtomicUsize,
    /// TLS handshakes that failed, with the reason.
    pub tls_failures: Mutex<Vec<String>>,
}

impl Proxy {
    /// Listens on 127.0.0.1:`port` and forwards to `target`.
    pub fn start(port: u16, target: SocketAddr, tls: Option<Arc<ServerConfig>>) -> Proxy {
        let mut p = Proxy {
            port,
            target,
            tls,
            running: None,
            stats: Arc::default(),
        };
        p.resume();
        p
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Listens again on the same port (no-op when running).
    pub fn resume(&mut self) {
        if self.running.is_some() {
            return;
        }
        // The port was ours a moment ago; retry briefly in case the kernel
        // has not let go of it yet.
        let deadline = Instant::now() + Duration::from_secs(10);
        let std_listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("proxy: cannot listen on port {}: {e}", self.port),
            }
        };
        std_listener.set_nonblocking(true).unwrap();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let target = self.target;
        let tls = self.tls.clone();
        let stats = self.stats.clone();
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{}", self.port))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(serve(std_listener, target, tls, stats, rx));
                // Dropping the runtime cancels every connection task, which
                // closes both sockets of each proxied connection.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .unwrap();
        self.running = Some(Running {
            shutdown: tx,
            thread,
        });
    }

    /// Closes the listener and every proxied connection; returns once the
    /// port is closed.
    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.shutdown.send(true);
            let _ = r.thread.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(
    listener: std::net::TcpListener,
    target: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    stats: Arc<Stats>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let listener = TcpListener::from_std(listener).unwrap();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let stats = stats.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = forward(stream, target, acceptor, stats) => {}
            }
        });
    }
}

async fn forward(
    client: TcpStream,
    target: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    stats: Arc<Stats>,
) {
    match acceptor {
        None => {
            let Ok(mut upstream) = TcpStream::connect(target).await else {
                return;
            };
            let _ = upstream.set_nodelay(true);
            stats.accepted.fetch_add(1, Ordering::SeqCst);
            let mut client = client;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(client)).await;
            let mut tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    stats.tls_failures.lock().unwrap().push(e.to_string());
                    return;
                }
                Err(_) => {
                    stats
                        .tls_failures
                        .lock()
                        .unwrap()
                        .push("handshake timed out".into());
                    return;
                }
            };
            let Ok(mut upstream) = TcpStream::connect(target).await else {
                return;
            };
            let _ = upstream.set_nodelay(true);
            stats.accepted.fetch_add(1, Ordering::SeqCst);
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
        }
    }
}
