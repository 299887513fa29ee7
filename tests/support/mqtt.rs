//! MQTT clients of the tests (rumqttc, MQTT 3.1.1): a device publisher on the
//! local broker and a platform subscriber over mutual TLS. Each runs its
//! connection on its own thread and reconnects by itself across outages.

use super::certs::{CertPair, Certs};
use super::wait_until;
use rumqttc::{
    Client, ConnectionError, Event, MqttOptions, Packet, QoS, RecvTimeoutError, TlsConfiguration,
    Transport,
};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

static CLIENT_SEQ: AtomicU64 = AtomicU64::new(0);

fn client_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        CLIENT_SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// The gateway's own rustls client configuration (ring provider) trusting
/// `ca`, presenting `client` when given.
pub fn client_tls(ca: &Path, client: Option<&CertPair>) -> rustls::ClientConfig {
    let tls = community_gateway::config::TlsConfig {
        ca_file: ca.to_path_buf(),
        cert_file: client.map(|c| c.cert.clone()),
        key_file: client.map(|c| c.key.clone()),
        server_name: None,
    };
    community_gateway::tls::client_config(&tls)
        .unwrap_or_else(|e| panic!("{e}"))
        .as_ref()
        .clone()
}

fn tls_options(id: String, port: u16, ca: &Path, client: Option<&CertPair>) -> MqttOptions {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(client_tls(ca, client)),
    )));
    opts
}

/// Connection progress shared with the connection thread.
#[derive(Default)]
struct Progress {
    connacks: AtomicU64,
    subacks: AtomicU64,
    pubacks: AtomicU64,
    stop: AtomicBool,
    /// The connection thread has ended (after an outgoing DISCONNECT, or `stop`).
    done: AtomicBool,
    last_error: Mutex<Option<String>>,
    messages: Mutex<Vec<Message>>,
}

impl Progress {
    fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| "no error reported".into())
    }
}

/// A message received by a [`Subscriber`].
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// Drives a connection on a thread until `stop`; `on_connack` runs after each
/// (re)connection, e.g. to subscribe.
fn drive(
    mut connection: rumqttc::Connection,
    progress: Arc<Progress>,
    on_connack: impl Fn() + Send + 'static,
) {
    std::thread::spawn(move || {
        drive_loop(&mut connection, &progress, on_connack);
        progress.done.store(true, Ordering::SeqCst);
    });
}

fn drive_loop(connection: &mut rumqttc::Connection, progress: &Progress, on_connack: impl Fn()) {
    loop {
        if progress.stop.load(Ordering::SeqCst) {
            return;
        }
        match connection.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(Event::Incoming(packet))) => match packet {
                Packet::ConnAck(_) => {
                    progress.connacks.fetch_add(1, Ordering::SeqCst);
                    on_connack();
                }
                Packet::SubAck(_) => {
                    progress.subacks.fetch_add(1, Ordering::SeqCst);
                }
                Packet::PubAck(_) => {
                    progress.pubacks.fetch_add(1, Ordering::SeqCst);
                }
                Packet::Publish(p) => progress.messages.lock().unwrap().push(Message {
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                    retain: p.retain,
                }),
                _ => {}
            },
            // After our own DISCONNECT: stop, rather than reconnect.
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) => return,
            Ok(Ok(Event::Outgoing(_))) => {}
            Ok(Err(e)) => {
                *progress.last_error.lock().unwrap() = Some(describe(&e));
                // rumqttc reconnects on the next poll.
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::Tls(t) => format!("TLS: {t:?}"),
        ConnectionError::Io(io) => format!("I/O: {io} ({:?})", io.kind()),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------

/// A door controller: publishes QoS 1 to the local broker and waits for the
/// broker's PUBACKs, so the test knows the broker holds each message.
pub struct Publisher {
    client: Client,
    progress: Arc<Progress>,
    sent: u64,
}

impl Publisher {
    /// Connects to 127.0.0.1:`port` (plain MQTT) and waits for the CONNACK.
    pub fn connect(port: u16) -> Result<Publisher, String> {
        let mut opts = MqttOptions::new(client_id("e2e-device"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        // A persistent session: after a broker outage rumqttc resends what
        // was not acknowledged only when the broker reports the session as
        // present (it drops it on a clean session).
        opts.set_clean_session(false);
        opts.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
        opts.set_inflight(100);
        let (client, connection) = Client::new(opts, 1000);
        let progress = Arc::new(Progress::default());
        drive(connection, progress.clone(), || {});
        let p = Publisher {
            client,
            progress,
            sent: 0,
        };
        wait_until(Duration::from_secs(10), "publisher CONNACK", || {
            (p.progress.connacks.load(Ordering::SeqCst) > 0).then_some(())
        })
        .map_err(|e| format!("{e}: {}", p.progress.last_error()))?;
        Ok(p)
    }

    /// Publishes QoS 1 without waiting for the PUBACK (see [`Publisher::flush`]).
    pub fn send(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .expect("publisher request channel");
        self.sent += 1;
    }

    /// Waits until the broker acknowledged everything sent so far.
    pub fn flush(&mut self, timeout: Duration) {
        let sent = self.sent;
        wait_until(timeout, "PUBACKs from the local broker", || {
            (self.progress.pubacks.load(Ordering::SeqCst) >= sent).then_some(())
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {} of {sent} acknowledged; {} connection(s); last error: {}",
                self.progress.pubacks.load(Ordering::SeqCst),
                self.progress.connacks.load(Ordering::SeqCst),
                self.progress.last_error()
            )
        });
    }

    /// Publishes QoS 1 and waits for the broker's PUBACK.
    pub fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.send(topic, payload);
        self.flush(Duration::from_secs(10));
    }

    /// Publishes a JSON value QoS 1 and waits for the PUBACK.
    pub fn publish_json(&mut self, topic: &str, value: &Value) {
        self.publish(topic, value.to_string());
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        self.progress.stop.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------

/// The platform side: subscribed over mutual TLS to `community/{compound}/#`
/// with a persistent session (so it misses nothing across broker outages),
/// collecting every message; it can publish commands.
pub struct Subscriber {
    client: Client,
    progress: Arc<Progress>,
    compound: String,
}

impl Subscriber {
    /// Connects to the platform broker on `port` trusting `certs.ca`, with the
    /// subscriber's client certificate, and waits for the SUBACK.
    pub fn connect(port: u16, certs: &Certs, compound: &str) -> Result<Subscriber, String> {
        Self::connect_with(port, &certs.ca, &certs.subscriber, compound)
    }

    /// As [`Subscriber::connect`], trusting `ca` and presenting `client`.
    pub fn connect_with(
        port: u16,
        ca: &Path,
        client_cert: &CertPair,
        compound: &str,
    ) -> Result<Subscriber, String> {
        let mut opts = tls_options(client_id("e2e-platform"), port, ca, Some(client_cert));
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(false);
        opts.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
        let (client, connection) = Client::new(opts, 1000);
        let progress = Arc::new(Progress::default());
        let filter = format!("community/{compound}/#");
        let sub = client.clone();
        drive(connection, progress.clone(), move || {
            // Re-subscribing is harmless when the broker kept the session.
            let _ = sub.try_subscribe(filter.clone(), QoS::AtLeastOnce);
        });
        let s = Subscriber {
            client,
            progress,
            compound: compound.to_string(),
        };
        wait_until(Duration::from_secs(10), "subscriber SUBACK", || {
            (s.progress.subacks.load(Ordering::SeqCst) > 0).then_some(())
        })
        .map_err(|e| format!("{e}: {}", s.progress.last_error()))?;
        Ok(s)
    }

    pub fn alerts_topic(&self) -> String {
        format!("community/{}/alerts", self.compound)
    }

    pub fn status_topic(&self) -> String {
        format!("community/{}/gateway/status", self.compound)
    }

    pub fn commands_topic(&self) -> String {
        format!("community/{}/commands", self.compound)
    }

    /// Every message received so far, in arrival order.
    pub fn messages(&self) -> Vec<Message> {
        self.progress.messages.lock().unwrap().clone()
    }

    /// Alert transitions received so far (payloads on the alerts topic), in
    /// arrival order; a payload that is not JSON appears as a JSON string.
    pub fn alerts(&self) -> Vec<Value> {
        self.payloads_on(&self.alerts_topic())
    }

    /// Payloads received on the status topic, parsed as JSON where possible.
    pub fn statuses(&self) -> Vec<Value> {
        self.payloads_on(&self.status_topic())
    }

    /// Payloads received on `topic` in arrival order, as JSON (a payload
    /// that is not JSON appears as a JSON string).
    fn payloads_on(&self, topic: &str) -> Vec<Value> {
        self.messages()
            .into_iter()
            .filter(|m| m.topic == topic)
            .map(|m| {
                serde_json::from_slice(&m.payload).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&m.payload).into_owned())
                })
            })
            .collect()
    }

    /// Polls every 20 ms until `pred` holds for the alerts received so far.
    /// The error lists what did arrive.
    pub fn wait_for(
        &self,
        pred: impl Fn(&[Value]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Value>, String> {
        wait_until(timeout, "alerts on the platform", || {
            let all = self.alerts();
            pred(&all).then_some(all)
        })
        .map_err(|e| {
            format!(
                "{e}; received:\n{}\n(subscriber last connection error: {})",
                super::brief(&self.alerts()),
                self.progress.last_error()
            )
        })
    }

    /// Polls until a status message satisfies `pred`.
    pub fn wait_for_status(
        &self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value, String> {
        wait_until(timeout, "gateway status on the platform", || {
            self.statuses().into_iter().rev().find(|v| pred(v))
        })
        .map_err(|e| format!("{e}; statuses received: {:?}", self.statuses()))
    }

    /// Publishes a command (QoS 1) on `community/{compound}/commands` and
    /// waits for the broker's PUBACK.
    pub fn command(&self, command: &Value) {
        let before = self.progress.pubacks.load(Ordering::SeqCst);
        self.client
            .publish(
                self.commands_topic(),
                QoS::AtLeastOnce,
                false,
                command.to_string(),
            )
            .expect("subscriber request channel");
        wait_until(Duration::from_secs(10), "PUBACK for a command", || {
            (self.progress.pubacks.load(Ordering::SeqCst) > before).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: {}", self.progress.last_error()));
    }

    /// Connections made so far (1 + reconnections).
    pub fn connections(&self) -> u64 {
        self.progress.connacks.load(Ordering::SeqCst)
    }

    pub fn last_error(&self) -> String {
        self.progress.last_error()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        self.progress.stop.store(true, Ordering::SeqCst);
    }
}

/// One connection attempt over TLS: `Ok` once the broker sent CONNACK, `Err`
/// with the reason when the connection failed first (or nothing happened
/// within `timeout`).
pub fn try_connect_tls(
    port: u16,
    ca: &Path,
    client_cert: Option<&CertPair>,
    timeout: Duration,
) -> Result<(), String> {
    let mut opts = tls_options(client_id("e2e-probe"), port, ca, client_cert);
    opts.set_keep_alive(Duration::from_secs(5));
    let (_client, mut connection) = Client::new(opts, 10);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err("no CONNACK and no error before the timeout".into());
        }
        match connection.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(describe(&e)),
            Err(e) => return Err(format!("{e:?}")),
        }
    }
}

// ---------------------------------------------------------------------------

/// A plain MQTT subscriber on the local broker with a chosen client id and
/// session kind: stands in for the gateway in self-tests of persistent
/// sessions, or watches what devices publish.
pub struct Listener {
    client: Client,
    progress: Arc<Progress>,
}

impl Listener {
    /// Connects as `client_id` (`clean_session` as given), subscribes QoS 1 to
    /// `filter` and waits for the SUBACK.
    pub fn connect(
        port: u16,
        client_id: &str,
        clean_session: bool,
        filter: &str,
    ) -> Result<Listener, String> {
        Self::connect_many(port, client_id, clean_session, &[filter.to_string()])
    }

    /// As [`Listener::connect`], with several filters in one SUBSCRIBE.
    pub fn connect_many(
        port: u16,
        client_id: &str,
        clean_session: bool,
        filters: &[String],
    ) -> Result<Listener, String> {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(clean_session);
        opts.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
        let (client, connection) = Client::new(opts, 1000);
        let progress = Arc::new(Progress::default());
        let sub = client.clone();
        let filters: Vec<rumqttc::SubscribeFilter> = filters
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
            .collect();
        drive(connection, progress.clone(), move || {
            let _ = sub.try_subscribe_many(filters.clone());
        });
        let l = Listener { client, progress };
        wait_until(Duration::from_secs(10), "listener SUBACK", || {
            (l.progress.subacks.load(Ordering::SeqCst) > 0).then_some(())
        })
        .map_err(|e| format!("{e}: {}", l.progress.last_error()))?;
        Ok(l)
    }

    pub fn messages(&self) -> Vec<Message> {
        self.progress.messages.lock().unwrap().clone()
    }

    /// Polls until at least `n` messages arrived.
    pub fn wait_count(&self, n: usize, timeout: Duration) -> Result<Vec<Message>, String> {
        wait_until(timeout, &format!("{n} messages"), || {
            let m = self.messages();
            (m.len() >= n).then_some(m)
        })
        .map_err(|e| format!("{e}: got {}", self.messages().len()))
    }

    /// Sends DISCONNECT and waits until it is written, so the broker keeps a
    /// persistent session and nothing reconnects under this client id.
    pub fn disconnect(self) {
        let _ = self.client.disconnect();
        let _ = wait_until(Duration::from_secs(5), "DISCONNECT to be sent", || {
            self.progress.done.load(Ordering::SeqCst).then_some(())
        });
        // Let the broker process it before someone else takes the client id.
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        self.progress.stop.store(true, Ordering::SeqCst);
    }
}
