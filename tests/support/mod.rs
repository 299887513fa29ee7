//! End-to-end test infrastructure: certificates, brokers, MQTT clients and a
//! harness around the `community-gateway run` process.
//!
//! Used as `mod support;` from each `tests/e2e_*.rs` file. Everything here is
//! synchronous from the test's point of view; the pieces that need an async
//! runtime (the TLS proxy, the MQTT clients) run it on their own threads.
//!
//! The broker backend is chosen with `CG_TEST_BROKER`:
//! - `rumqttd` (default): brokers run in-process (rumqttd), each behind a
//!   proxy of ours that can be stopped and started on the same port; the
//!   platform proxy terminates TLS and requires client certificates signed by
//!   the test CA. Works on a fresh machine with nothing installed.
//! - `mosquitto`: `/usr/sbin/mosquitto` processes (CI installs the package);
//!   the platform broker has a TLS listener with `require_certificate true`.
//!
//! Other knobs: `CG_TEST_GATEWAY_LOG` (the gateway's `RUST_LOG`, default
//! `info`); `CG_TEST_KEEP_LOGS=<folder>` keeps each test's gateway log there.
//! A failing test prints the tail of its gateway's log and its configuration.
//!
//! A test typically reads:
//!
//! ```ignore
//! let env = Env::new();                 // certificates, local and platform brokers
//! let sub = env.subscriber();           // platform side, mutual TLS, before the gateway
//! let mut cfg = env.config();           // GatewayConfig pointing at both brokers
//! cfg.rules = "[rules.denied_burst]\ncount = 2\n".into();
//! let mut gw = Gateway::start(cfg);     // `community-gateway run --config ...`
//! let mut dev = env.publisher();        // a door controller on the local broker
//! dev.publish_json(&events::topic("door-1"), &events::door("door-1", "forced"));
//! sub.wait_for(|a| has(a, "door_forced", "door-1", "raised"), secs(10)).unwrap();
//! ```
#![allow(dead_code)]

pub mod broker;
pub mod certs;
pub mod events;
pub mod gateway;
pub mod mqtt;
pub mod proxy;

#[allow(unused_imports)]
pub use broker::{backend, Backend, LocalBroker, PlatformBroker};
#[allow(unused_imports)]
pub use certs::{CertPair, Certs};
#[allow(unused_imports)]
pub use gateway::{Gateway, GatewayConfig, Subscription};
#[allow(unused_imports)]
pub use mqtt::{Publisher, Subscriber};

use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that nobody listened on a moment ago.
///
/// Ports come from below the kernel's ephemeral range (32768–60999 on
/// Linux): a port the kernel handed out with `bind(0)` can be given, the
/// moment it is released, to another test's outgoing connection as its
/// source port, and then the server meant to listen on it cannot bind
/// (seen in CI). Each test process walks its own stretch of the range,
/// chosen from its pid, so concurrent test binaries rarely meet either.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 12_000;
    const SPAN: u32 = 20_000; // 12000..32000
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 397) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {LOW}..{}", LOW + SPAN);
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Shorthand for seconds.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The current time as RFC 3339 in +08:00 (the compound's zone in these
/// tests), millisecond precision: a `ts` inside `clock.max_skew`.
pub fn now_ts() -> String {
    let tz = chrono::FixedOffset::east_opt(8 * 3600).unwrap();
    chrono::Utc::now()
        .with_timezone(&tz)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

/// Certificates, a local broker and a platform broker for one test.
pub struct Env {
    pub certs: Certs,
    pub local: LocalBroker,
    pub platform: PlatformBroker,
    pub compound: String,
}

impl Env {
    /// Fresh certificates and brokers of the selected backend.
    pub fn new() -> Env {
        let certs = Certs::generate();
        let local = LocalBroker::new();
        let platform = PlatformBroker::new(&certs);
        Env {
            certs,
            local,
            platform,
            compound: "e2e-1".into(),
        }
    }

    /// A device publisher on the local broker (QoS 1, waits for PUBACKs).
    pub fn publisher(&self) -> Publisher {
        Publisher::connect(self.local.port()).unwrap_or_else(|e| panic!("publisher: {e}"))
    }

    /// A platform subscriber over mutual TLS on `community/{compound}/#`.
    pub fn subscriber(&self) -> Subscriber {
        Subscriber::connect(self.platform.port(), &self.certs, &self.compound)
            .unwrap_or_else(|e| panic!("subscriber: {e}"))
    }

    /// A gateway configuration pointing at this environment's brokers.
    pub fn config(&self) -> GatewayConfig {
        GatewayConfig::new(&self.compound, &self.local, &self.platform, &self.certs)
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

/// `alert_id` -> revisions in order of first arrival (duplicates dropped).
pub fn revisions_by_alert(alerts: &[Value]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for a in alerts {
        let id = a["alert_id"].as_str().unwrap_or_default().to_string();
        let rev = a["revision"].as_u64().unwrap_or_default();
        let revs = out.entry(id).or_default();
        if !revs.contains(&rev) {
            revs.push(rev);
        }
    }
    out
}

/// Transitions whose `rule` and `subject.id` match.
pub fn of<'a>(alerts: &'a [Value], rule: &str, subject: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["rule"] == rule && a["subject"]["id"] == subject)
        .collect()
}

/// Whether a transition with this rule, subject and state is among `alerts`.
pub fn has(alerts: &[Value], rule: &str, subject: &str, state: &str) -> bool {
    of(alerts, rule, subject)
        .iter()
        .any(|a| a["state"] == state)
}

/// `rule state subject rev` per transition: compact text for failure messages.
pub fn brief(alerts: &[Value]) -> String {
    alerts
        .iter()
        .map(|a| {
            format!(
                "{} {} {} r{} {}",
                a["rule"].as_str().unwrap_or("?"),
                a["state"].as_str().unwrap_or("?"),
                a["subject"]["id"].as_str().unwrap_or("?"),
                a["revision"],
                a["alert_id"].as_str().unwrap_or("?"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
