//! Prometheus metrics of the daemon, rendered in the text exposition format
//! 0.0.4 by the admin endpoint (`GET /metrics`).
//!
//! One [`Metrics`] is created at start-up and shared as `Arc<Metrics>`. Every
//! method the pipeline calls per event is a relaxed atomic add: no lock, no
//! allocation. Label sets are bounded by construction:
//!
//! - label values that are `&'static str` (sources, rejection reasons,
//!   commands and their results) can only be string literals of this
//!   program, so there are finitely many; the usual ones have a lock-free
//!   slot, anything else goes to a small map behind a mutex;
//! - rules and transition states are enums (an unknown rule name is counted
//!   as `rule="unknown"`), severities too.
//!
//! The output is stable: families sorted by name, samples by label values.
//! Series with a fixed label set (`source`, `reason`, `severity`, `result`
//! of reloads) are always present, zero included; `cg_alert_transitions_total`
//! and `cg_commands_total` show the combinations seen so far.

use crate::alert::{Severity, TransitionState};
use crate::engine::Rule;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Event sources with a lock-free slot in `cg_events_received_total`.
const SOURCES: &[&str] = &["modbus", "mqtt"];

/// Rejection reasons with a lock-free slot in `cg_events_rejected_total`
/// (`event::DecodeError::reason` and the sources' own checks).
const REASONS: &[&str] = &[
    "bad_value",
    "invalid_json",
    "missing_field",
    "not_utf8",
    "payload_too_large",
    "unknown_type",
];

const STATES: [TransitionState; 3] = [
    TransitionState::Raised,
    TransitionState::Escalated,
    TransitionState::Cleared,
];

const SEVERITIES: [Severity; 4] = [
    Severity::Low,
    Severity::Medium,
    Severity::High,
    Severity::Critical,
];

/// Upper bounds of the commit latency histogram, in nanoseconds, with their
/// `le` labels. A group commit is a sled batch plus one flush: well under a
/// millisecond on tmpfs, a few to tens of milliseconds on SD cards and eMMC.
const COMMIT_BUCKETS: [(u64, &str); 12] = [
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
];

fn state_label(state: TransitionState) -> &'static str {
    match state {
        TransitionState::Raised => "raised",
        TransitionState::Escalated => "escalated",
        TransitionState::Cleared => "cleared",
    }
}

fn state_index(state: TransitionState) -> usize {
    match state {
        TransitionState::Raised => 0,
        TransitionState::Escalated => 1,
        TransitionState::Cleared => 2,
    }
}

fn severity_index(severity: Severity) -> usize {
    match severity {
        Severity::Low => 0,
        Severity::Medium => 1,
        Severity::High => 2,
        Severity::Critical => 3,
    }
}

#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    fn inc(&self) {
        self.add(1);
    }
    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A counter with one label: lock-free for the `known` values, a mutex-held
/// map for any other (static, hence finitely many) value.
struct LabeledCounter {
    known: &'static [&'static str],
    counts: Box<[AtomicU64]>,
    other: Mutex<BTreeMap<&'static str, u64>>,
}

impl LabeledCounter {
    fn new(known: &'static [&'static str]) -> Self {
        LabeledCounter {
            known,
            counts: known.iter().map(|_| AtomicU64::new(0)).collect(),
            other: Mutex::new(BTreeMap::new()),
        }
    }

    fn inc(&self, label: &'static str) {
        match self.known.iter().position(|k| *k == label) {
            Some(i) => {
                self.counts[i].fetch_add(1, Relaxed);
            }
            None => {
                let mut other = self.other.lock().unwrap_or_else(|e| e.into_inner());
                *other.entry(label).or_insert(0) += 1;
            }
        }
    }

    /// Every known value (zero included) and every other value seen, sorted.
    fn values(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = self
            .known
            .iter()
            .zip(self.counts.iter())
            .map(|(k, c)| (*k, c.load(Relaxed)))
            .collect();
        let other = self.other.lock().unwrap_or_else(|e| e.into_inner());
        out.extend(other.iter().map(|(k, v)| (*k, *v)));
        out.sort_unstable();
        out
    }
}

/// Commit latency: fixed buckets, sum and max in nanoseconds.
struct Histogram {
    buckets: [AtomicU64; COMMIT_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }

    fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let slot = COMMIT_BUCKETS
            .iter()
            .position(|(bound, _)| ns <= *bound)
            .unwrap_or(COMMIT_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
        self.max_ns.fetch_max(ns, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }
}

/// Every metric of the daemon. Create once, share as `Arc<Metrics>`.
pub struct Metrics {
    received: LabeledCounter,
    rejected: LabeledCounter,
    processed: Counter,
    skipped: Counter,
    undeclared_device: Counter,
    ts_replaced: Counter,
    late: Counter,
    duplicate: Counter,
    /// `[rule][state]`, rules in `Rule::ALL` order, then one row for unknown names.
    transitions: Box<[[AtomicU64; 3]]>,
    outbox_dropped: [AtomicU64; 4],
    uplink_published: Counter,
    uplink_acked: Counter,
    uplink_connects: Counter,
    uplink_errors: Counter,
    local_mqtt_connects: Counter,
    local_mqtt_errors: Counter,
    commits: Counter,
    committed_events: Counter,
    clock_jumps: Counter,
    commands: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// `[ok, error]`.
    config_reloads: [AtomicU64; 2],
    store_errors: Counter,
    outbox_entries: AtomicU64,
    outbox_bytes: AtomicU64,
    open_alerts: AtomicU64,
    uplink_connected: AtomicBool,
    local_mqtt_connected: AtomicBool,
    ready: AtomicBool,
    commit_seconds: Histogram,
    start_time: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("processed", &self.processed.get())
            .field("commits", &self.commits.get())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// All counters at zero; `process_start_time_seconds` is now.
    pub fn new() -> Self {
        let start_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Metrics {
            received: LabeledCounter::new(SOURCES),
            rejected: LabeledCounter::new(REASONS),
            processed: Counter::default(),
            skipped: Counter::default(),
            undeclared_device: Counter::default(),
            ts_replaced: Counter::default(),
            late: Counter::default(),
            duplicate: Counter::default(),
            transitions: (0..=Rule::ALL.len())
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            outbox_dropped: std::array::from_fn(|_| AtomicU64::new(0)),
            uplink_published: Counter::default(),
            uplink_acked: Counter::default(),
            uplink_connects: Counter::default(),
            uplink_errors: Counter::default(),
            local_mqtt_connects: Counter::default(),
            local_mqtt_errors: Counter::default(),
            commits: Counter::default(),
            committed_events: Counter::default(),
            clock_jumps: Counter::default(),
            commands: Mutex::new(BTreeMap::new()),
            config_reloads: std::array::from_fn(|_| AtomicU64::new(0)),
            store_errors: Counter::default(),
            outbox_entries: AtomicU64::new(0),
            outbox_bytes: AtomicU64::new(0),
            open_alerts: AtomicU64::new(0),
            uplink_connected: AtomicBool::new(false),
            local_mqtt_connected: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            commit_seconds: Histogram::new(),
            start_time,
        }
    }

    // ----- ingest -----

    /// An input arrived from `source` (`"mqtt"`, `"modbus"`).
    pub fn received(&self, source: &'static str) {
        self.received.inc(source);
    }

    /// An input was rejected; `reason` is a short label such as
    /// `event::DecodeError::reason()`, `"payload_too_large"`, `"not_utf8"`.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.inc(reason);
    }

    /// An event went through the engine.
    pub fn processed(&self) {
        self.processed.inc();
    }

    /// The mapping said to skip an input.
    pub fn skipped(&self) {
        self.skipped.inc();
    }

    /// An event named a device the configuration does not declare.
    pub fn undeclared_device(&self) {
        self.undeclared_device.inc();
    }

    /// An event's timestamp was absent or beyond `clock.max_skew` and was
    /// replaced by the receive time.
    pub fn ts_replaced(&self) {
        self.ts_replaced.inc();
    }

    /// An event was older than the engine's clock.
    pub fn late(&self) {
        self.late.inc();
    }

    /// An input was a duplicate (redelivery) and was dropped.
    pub fn duplicate(&self) {
        self.duplicate.inc();
    }

    // ----- alerts and outbox -----

    /// An alert transition was produced. `rule` is `AlertTransition::rule`;
    /// a name that is not a known rule counts as `rule="unknown"`.
    pub fn transition(&self, rule: &str, state: TransitionState) {
        let row = Rule::parse(rule)
            .and_then(|r| Rule::ALL.iter().position(|x| *x == r))
            .unwrap_or(Rule::ALL.len());
        self.transitions[row][state_index(state)].fetch_add(1, Relaxed);
    }

    /// The full outbox dropped `n` transitions of this severity.
    pub fn outbox_dropped(&self, severity: Severity, n: u64) {
        self.outbox_dropped[severity_index(severity)].fetch_add(n, Relaxed);
    }

    /// Current outbox backlog.
    pub fn set_outbox(&self, entries: u64, bytes: u64) {
        self.outbox_entries.store(entries, Relaxed);
        self.outbox_bytes.store(bytes, Relaxed);
    }

    /// Number of alerts currently open.
    pub fn set_open_alerts(&self, open: u64) {
        self.open_alerts.store(open, Relaxed);
    }

    // ----- platform uplink -----

    /// A transition was published to the platform.
    pub fn uplink_published(&self) {
        self.uplink_published.inc();
    }

    /// The platform broker acknowledged (PUBACK) a transition.
    pub fn uplink_acked(&self) {
        self.uplink_acked.inc();
    }

    /// A connection to the platform broker was established.
    pub fn uplink_connect(&self) {
        self.uplink_connects.inc();
    }

    /// A connection or protocol error on the uplink.
    pub fn uplink_error(&self) {
        self.uplink_errors.inc();
    }

    pub fn set_uplink_connected(&self, connected: bool) {
        self.uplink_connected.store(connected, Relaxed);
    }

    // ----- local broker -----

    /// A connection to the local broker was established.
    pub fn local_mqtt_connect(&self) {
        self.local_mqtt_connects.inc();
    }

    /// A connection or protocol error with the local broker.
    pub fn local_mqtt_error(&self) {
        self.local_mqtt_errors.inc();
    }

    pub fn set_local_mqtt_connected(&self, connected: bool) {
        self.local_mqtt_connected.store(connected, Relaxed);
    }

    // ----- store -----

    /// One group commit of `events` events took `elapsed`: counts the commit,
    /// its events, and observes the latency.
    pub fn commit(&self, events: u64, elapsed: Duration) {
        self.commits.inc();
        self.committed_events.add(events);
        self.observe_commit(elapsed);
    }

    /// Observes a commit latency only (without counting a commit).
    pub fn observe_commit(&self, elapsed: Duration) {
        self.commit_seconds.observe(elapsed);
    }

    /// A store operation failed.
    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    // ----- daemon -----

    /// A wall-clock step was detected and deadlines re-based.
    pub fn clock_jump(&self) {
        self.clock_jumps.inc();
    }

    /// A platform command was handled: `command` such as `"ack"`, `"away"`,
    /// `"unknown"`; `result` such as `"ok"`, `"rejected"`, `"error"`.
    pub fn command(&self, command: &'static str, result: &'static str) {
        let mut commands = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        *commands.entry((command, result)).or_insert(0) += 1;
    }

    /// A configuration reload (SIGHUP) succeeded (`result="ok"`) or was
    /// rejected, the old configuration staying in force (`result="error"`).
    pub fn config_reload(&self, ok: bool) {
        self.config_reloads[usize::from(!ok)].fetch_add(1, Relaxed);
    }

    /// Whether the daemon is ready (also what `/readyz` answers).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Relaxed);
    }

    // ----- exposition -----

    /// The text exposition format 0.0.4: `# HELP`, `# TYPE` and samples of
    /// every family, families sorted by name.
    pub fn render(&self) -> String {
        let mut families: Vec<Family> = Vec::with_capacity(40);
        let mut counter = |name: &'static str, help: &'static str, value: u64| {
            let mut f = Family::new(name, "counter", help);
            f.sample(name, &[], value);
            families.push(f);
        };
        counter(
            "cg_events_processed_total",
            "Events that went through the rule engine.",
            self.processed.get(),
        );
        counter(
            "cg_events_skipped_total",
            "Inputs the mapping said to skip.",
            self.skipped.get(),
        );
        counter(
            "cg_events_undeclared_device_total",
            "Events from devices not declared in the configuration.",
            self.undeclared_device.get(),
        );
        counter(
            "cg_events_ts_replaced_total",
            "Events whose timestamp was absent or beyond clock.max_skew and was replaced by the receive time.",
            self.ts_replaced.get(),
        );
        counter(
            "cg_events_late_total",
            "Events older than the engine's clock, applied at the clock's time.",
            self.late.get(),
        );
        counter(
            "cg_events_duplicate_total",
            "Duplicate inputs dropped.",
            self.duplicate.get(),
        );
        counter(
            "cg_uplink_published_total",
            "Alert transitions published to the platform broker.",
            self.uplink_published.get(),
        );
        counter(
            "cg_uplink_acked_total",
            "Alert transitions acknowledged (PUBACK) by the platform broker.",
            self.uplink_acked.get(),
        );
        counter(
            "cg_uplink_connects_total",
            "Connections established to the platform broker.",
            self.uplink_connects.get(),
        );
        counter(
            "cg_uplink_errors_total",
            "Connection and protocol errors on the platform uplink.",
            self.uplink_errors.get(),
        );
        counter(
            "cg_local_mqtt_connects_total",
            "Connections established to the local broker.",
            self.local_mqtt_connects.get(),
        );
        counter(
            "cg_local_mqtt_errors_total",
            "Connection and protocol errors with the local broker.",
            self.local_mqtt_errors.get(),
        );
        counter(
            "cg_commits_total",
            "Group commits to the store.",
            self.commits.get(),
        );
        counter(
            "cg_committed_events_total",
            "Events made durable by group commits.",
            self.committed_events.get(),
        );
        counter(
            "cg_clock_jumps_total",
            "Wall-clock steps detected (deadlines re-based).",
            self.clock_jumps.get(),
        );
        counter(
            "cg_store_errors_total",
            "Failed store operations.",
            self.store_errors.get(),
        );

        let mut gauge = |name: &'static str, help: &'static str, value: u64| {
            let mut f = Family::new(name, "gauge", help);
            f.sample(name, &[], value);
            families.push(f);
        };
        gauge(
            "cg_outbox_entries",
            "Alert transitions waiting in the outbox.",
            self.outbox_entries.load(Relaxed),
        );
        gauge(
            "cg_outbox_bytes",
            "Bytes of alert transitions waiting in the outbox.",
            self.outbox_bytes.load(Relaxed),
        );
        gauge(
            "cg_open_alerts",
            "Alerts currently open.",
            self.open_alerts.load(Relaxed),
        );
        gauge(
            "cg_uplink_connected",
            "1 while connected to the platform broker.",
            u64::from(self.uplink_connected.load(Relaxed)),
        );
        gauge(
            "cg_local_mqtt_connected",
            "1 while connected to the local broker.",
            u64::from(self.local_mqtt_connected.load(Relaxed)),
        );
        gauge(
            "cg_ready",
            "1 when the daemon is ready (as /readyz).",
            u64::from(self.ready.load(Relaxed)),
        );

        let mut f = Family::new(
            "cg_events_received_total",
            "counter",
            "Inputs received, by source.",
        );
        for (source, v) in self.received.values() {
            f.sample(f.name, &[("source", source)], v);
        }
        families.push(f);

        let mut f = Family::new(
            "cg_events_rejected_total",
            "counter",
            "Inputs rejected, by reason.",
        );
        for (reason, v) in self.rejected.values() {
            f.sample(f.name, &[("reason", reason)], v);
        }
        families.push(f);

        let mut f = Family::new(
            "cg_alert_transitions_total",
            "counter",
            "Alert transitions produced, by rule and state.",
        );
        let mut rows: Vec<(&str, &str, u64)> = Vec::new();
        for (i, row) in self.transitions.iter().enumerate() {
            let rule = Rule::ALL.get(i).map_or("unknown", |r| r.as_str());
            for state in STATES {
                let v = row[state_index(state)].load(Relaxed);
                if v > 0 {
                    rows.push((rule, state_label(state), v));
                }
            }
        }
        rows.sort_unstable();
        for (rule, state, v) in rows {
            f.sample(f.name, &[("rule", rule), ("state", state)], v);
        }
        families.push(f);

        let mut f = Family::new(
            "cg_outbox_dropped_total",
            "counter",
            "Alert transitions dropped from the full outbox, by severity.",
        );
        let mut rows: Vec<(&str, u64)> = SEVERITIES
            .iter()
            .map(|s| {
                (
                    s.as_str(),
                    self.outbox_dropped[severity_index(*s)].load(Relaxed),
                )
            })
            .collect();
        rows.sort_unstable();
        for (severity, v) in rows {
            f.sample(f.name, &[("severity", severity)], v);
        }
        families.push(f);

        let mut f = Family::new(
            "cg_commands_total",
            "counter",
            "Platform commands handled, by command and result.",
        );
        {
            let commands = self.commands.lock().unwrap_or_else(|e| e.into_inner());
            for ((command, result), v) in commands.iter() {
                f.sample(f.name, &[("command", command), ("result", result)], *v);
            }
        }
        families.push(f);

        let mut f = Family::new(
            "cg_config_reloads_total",
            "counter",
            "Configuration reloads, by result (error: rejected, old configuration kept).",
        );
        f.sample(
            f.name,
            &[("result", "error")],
            self.config_reloads[1].load(Relaxed),
        );
        f.sample(
            f.name,
            &[("result", "ok")],
            self.config_reloads[0].load(Relaxed),
        );
        families.push(f);

        // Commit latency histogram; buckets are cumulative in the exposition.
        let h = &self.commit_seconds;
        let mut f = Family::new(
            "cg_commit_seconds",
            "histogram",
            "Duration of group commits (batch and flush).",
        );
        let mut cumulative = 0u64;
        for (i, (_, le)) in COMMIT_BUCKETS.iter().enumerate() {
            cumulative += h.buckets[i].load(Relaxed);
            f.sample("cg_commit_seconds_bucket", &[("le", le)], cumulative);
        }
        cumulative += h.buckets[COMMIT_BUCKETS.len()].load(Relaxed);
        // Read `count` as the +Inf bucket so the two always agree even while
        // an observation is in flight.
        f.sample("cg_commit_seconds_bucket", &[("le", "+Inf")], cumulative);
        f.sample(
            "cg_commit_seconds_sum",
            &[],
            Seconds(h.sum_ns.load(Relaxed)),
        );
        f.sample("cg_commit_seconds_count", &[], cumulative);
        families.push(f);

        let mut f = Family::new(
            "cg_commit_seconds_max",
            "gauge",
            "Longest group commit since start.",
        );
        f.sample(f.name, &[], Seconds(h.max_ns.load(Relaxed)));
        families.push(f);

        let mut f = Family::new(
            "cg_build_info",
            "gauge",
            "Build information; the value is always 1.",
        );
        f.sample(f.name, &[("version", env!("CARGO_PKG_VERSION"))], 1);
        families.push(f);

        if let Some(rss) = resident_memory_bytes() {
            let mut f = Family::new(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
            );
            f.sample(f.name, &[], rss);
            families.push(f);
        }

        let mut f = Family::new(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
        );
        f.sample(f.name, &[], self.start_time);
        families.push(f);

        families.sort_unstable_by_key(|f| f.name);
        let mut out = String::with_capacity(families.iter().map(|f| f.text.len()).sum());
        for f in families {
            out.push_str(&f.text);
        }
        out
    }

    /// The value of one series in [`render`](Self::render)'s output, written
    /// exactly as there (`cg_ready`, `cg_events_received_total{source="mqtt"}`).
    /// Meant for tests and diagnostics; it renders everything.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.render()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (s, v) = l.rsplit_once(' ')?;
                if s == series {
                    v.parse().ok()
                } else {
                    None
                }
            })
    }
}

/// Nanoseconds displayed as seconds.
struct Seconds(u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:09}",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000
        )
    }
}

/// One metric family being rendered.
struct Family {
    name: &'static str,
    text: String,
}

impl Family {
    fn new(name: &'static str, kind: &str, help: &str) -> Self {
        let mut text = String::with_capacity(128);
        text.push_str("# HELP ");
        text.push_str(name);
        text.push(' ');
        escape_into(&mut text, help, false);
        text.push_str("\n# TYPE ");
        text.push_str(name);
        text.push(' ');
        text.push_str(kind);
        text.push('\n');
        Family { name, text }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(k);
                self.text.push_str("=\"");
                escape_into(&mut self.text, v, true);
                self.text.push('"');
            }
            self.text.push('}');
        }
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, " {value}");
    }
}

/// Escapes `\` and newline (and `"` in label values) as the format requires.
fn escape_into(out: &mut String, s: &str, label_value: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if label_value => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Resident set size from `/proc/self/status` (`VmRSS`, exact whatever the
/// page size), else `/proc/self/statm` with 4 KiB pages; `None` off Linux.
fn resident_memory_bytes() -> Option<u64> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            });
        if let Some(kb) = kb {
            return Some(kb * 1024);
        }
    }
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};

    /// One parsed sample line.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    fn valid_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn valid_label_name(s: &str) -> bool {
        valid_name(s) && !s.contains(':')
    }

    /// Parses a sample line strictly; panics with the line on any error.
    fn parse_sample(line: &str) -> Sample {
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("no value: {line}"),
        };
        assert!(valid_name(name), "bad metric name in {line:?}");
        let mut labels = Vec::new();
        let rest = if let Some(mut r) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    r = after;
                    break;
                }
                let eq = r.find('=').unwrap_or_else(|| panic!("no = in {line:?}"));
                let key = &r[..eq];
                assert!(valid_label_name(key), "bad label name in {line:?}");
                r = r[eq + 1..]
                    .strip_prefix('"')
                    .unwrap_or_else(|| panic!("unquoted label value in {line:?}"));
                let mut value = String::new();
                let mut chars = r.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            other => panic!("bad escape {other:?} in {line:?}"),
                        },
                        Some((i, '"')) => break i,
                        Some((_, '\n')) => panic!("raw newline in {line:?}"),
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated label value in {line:?}"),
                    }
                };
                labels.push((key.to_string(), value));
                r = &r[end + 1..];
                if let Some(after) = r.strip_prefix(',') {
                    r = after;
                }
            }
            r
        } else {
            rest
        };
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before value in {line:?}"));
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        Sample {
            name: name.to_string(),
            labels,
            value,
        }
    }

    /// Parses and checks the whole exposition: HELP then TYPE before each
    /// family's samples, families contiguous and sorted, sample names
    /// belonging to their family, no duplicate series, trailing newline.
    /// Returns family name -> (type, samples).
    fn parse(text: &str) -> BTreeMap<String, (String, Vec<Sample>)> {
        assert!(text.ends_with('\n'), "must end with a newline");
        let mut families: BTreeMap<String, (String, Vec<Sample>)> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        let mut pending_help: Option<String> = None;
        let mut seen = HashSet::new();
        for line in text.lines() {
            assert!(!line.is_empty(), "empty line");
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP text");
                assert!(valid_name(name));
                assert!(!help.is_empty());
                assert!(pending_help.is_none(), "HELP without TYPE");
                pending_help = Some(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE kind");
                assert_eq!(
                    pending_help.take().as_deref(),
                    Some(name),
                    "TYPE after HELP"
                );
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "bad type {kind}"
                );
                assert!(!families.contains_key(name), "family {name} twice");
                families.insert(name.to_string(), (kind.to_string(), Vec::new()));
                order.push(name.to_string());
                current = Some(name.to_string());
            } else {
                assert!(!line.starts_with('#'), "unexpected comment {line}");
                let s = parse_sample(line);
                let family = current.clone().expect("sample before TYPE");
                let (kind, samples) = families.get_mut(&family).unwrap();
                let ok = match kind.as_str() {
                    "histogram" => [
                        format!("{family}_bucket"),
                        format!("{family}_sum"),
                        format!("{family}_count"),
                    ]
                    .contains(&s.name),
                    _ => s.name == family,
                };
                assert!(ok, "sample {} outside its family {family}", s.name);
                if kind == "counter" {
                    assert!(
                        family.ends_with("_total"),
                        "counter {family} without _total"
                    );
                    assert!(s.value >= 0.0);
                }
                let key = format!("{}{:?}", s.name, s.labels);
                assert!(seen.insert(key), "duplicate series {line}");
                samples.push(s);
            }
        }
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "families not sorted");
        families
    }

    fn value(
        f: &BTreeMap<String, (String, Vec<Sample>)>,
        name: &str,
        labels: &[(&str, &str)],
    ) -> f64 {
        let family = f
            .iter()
            .find(|(fam, (_, samples))| {
                name.starts_with(fam.as_str()) && samples.iter().any(|s| s.name == name)
            })
            .map(|(_, (_, s))| s)
            .unwrap_or_else(|| panic!("no family for {name}"));
        family
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && s.labels
                        .iter()
                        .zip(labels)
                        .all(|((k, v), (k2, v2))| k == k2 && v == v2)
            })
            .unwrap_or_else(|| panic!("no series {name}{labels:?}"))
            .value
    }

    const ALL_FAMILIES: &[(&str, &str)] = &[
        ("cg_events_received_total", "counter"),
        ("cg_events_rejected_total", "counter"),
        ("cg_events_processed_total", "counter"),
        ("cg_events_skipped_total", "counter"),
        ("cg_events_undeclared_device_total", "counter"),
        ("cg_events_ts_replaced_total", "counter"),
        ("cg_events_late_total", "counter"),
        ("cg_events_duplicate_total", "counter"),
        ("cg_alert_transitions_total", "counter"),
        ("cg_outbox_dropped_total", "counter"),
        ("cg_uplink_published_total", "counter"),
        ("cg_uplink_acked_total", "counter"),
        ("cg_uplink_connects_total", "counter"),
        ("cg_uplink_errors_total", "counter"),
        ("cg_local_mqtt_connects_total", "counter"),
        ("cg_local_mqtt_errors_total", "counter"),
        ("cg_commits_total", "counter"),
        ("cg_committed_events_total", "counter"),
        ("cg_clock_jumps_total", "counter"),
        ("cg_commands_total", "counter"),
        ("cg_config_reloads_total", "counter"),
        ("cg_store_errors_total", "counter"),
        ("cg_outbox_entries", "gauge"),
        ("cg_outbox_bytes", "gauge"),
        ("cg_open_alerts", "gauge"),
        ("cg_uplink_connected", "gauge"),
        ("cg_local_mqtt_connected", "gauge"),
        ("cg_ready", "gauge"),
        ("cg_commit_seconds", "histogram"),
        ("cg_commit_seconds_max", "gauge"),
        ("cg_build_info", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ];

    #[test]
    fn fresh_registry_has_every_family_with_zeroes() {
        let m = Metrics::new();
        let f = parse(&m.render());
        for (name, kind) in ALL_FAMILIES {
            let (k, _) = f.get(*name).unwrap_or_else(|| panic!("missing {name}"));
            assert_eq!(k, kind, "{name}");
        }
        assert_eq!(f.len(), ALL_FAMILIES.len(), "unexpected families");
        assert_eq!(
            value(&f, "cg_events_received_total", &[("source", "mqtt")]),
            0.0
        );
        assert_eq!(
            value(&f, "cg_events_received_total", &[("source", "modbus")]),
            0.0
        );
        for reason in REASONS {
            assert_eq!(
                value(&f, "cg_events_rejected_total", &[("reason", reason)]),
                0.0
            );
        }
        for s in ["low", "medium", "high", "critical"] {
            assert_eq!(
                value(&f, "cg_outbox_dropped_total", &[("severity", s)]),
                0.0
            );
        }
        assert!(f["cg_alert_transitions_total"].1.is_empty());
        assert!(f["cg_commands_total"].1.is_empty());
        assert_eq!(value(&f, "cg_ready", &[]), 0.0);
        assert_eq!(
            value(
                &f,
                "cg_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            1.0
        );
        assert_eq!(value(&f, "cg_commit_seconds_count", &[]), 0.0);
        assert_eq!(
            value(&f, "cg_commit_seconds_bucket", &[("le", "+Inf")]),
            0.0
        );
        let start = value(&f, "process_start_time_seconds", &[]);
        assert!(start > 1_600_000_000.0, "start time {start}");
        if cfg!(target_os = "linux") {
            assert!(value(&f, "process_resident_memory_bytes", &[]) > 100_000.0);
        }
    }

    #[test]
    fn counts_and_gauges_round_trip() {
        let m = Metrics::new();
        m.received("mqtt");
        m.received("mqtt");
        m.received("modbus");
        m.received("replay"); // not a known source: the slow path
        m.rejected("invalid_json");
        m.rejected("payload_too_large");
        m.rejected("payload_too_large");
        m.rejected("something_new");
        for _ in 0..5 {
            m.processed();
        }
        m.skipped();
        m.undeclared_device();
        m.ts_replaced();
        m.late();
        m.duplicate();
        m.transition("elderly_inactivity", TransitionState::Raised);
        m.transition("elderly_inactivity", TransitionState::Raised);
        m.transition("elderly_inactivity", TransitionState::Escalated);
        m.transition("door_forced", TransitionState::Cleared);
        m.transition("no_such_rule", TransitionState::Raised);
        m.outbox_dropped(Severity::Low, 1);
        m.set_outbox(12, 3456);
        m.set_open_alerts(3);
        m.uplink_published();
        m.uplink_acked();
        m.uplink_connect();
        m.uplink_error();
        m.set_uplink_connected(true);
        m.local_mqtt_connect();
        m.local_mqtt_error();
        m.set_local_mqtt_connected(true);
        m.commit(7, Duration::from_micros(300));
        m.commit(2, Duration::from_millis(3));
        m.commit(1, Duration::from_secs(10));
        m.clock_jump();
        m.command("ack", "ok");
        m.command("away", "rejected");
        m.command("ack", "ok");
        m.config_reload(true);
        m.config_reload(false);
        m.config_reload(false);
        m.store_error();
        m.set_ready(true);

        let f = parse(&m.render());
        let v = |name: &str, labels: &[(&str, &str)]| value(&f, name, labels);
        assert_eq!(v("cg_events_received_total", &[("source", "mqtt")]), 2.0);
        assert_eq!(v("cg_events_received_total", &[("source", "modbus")]), 1.0);
        assert_eq!(v("cg_events_received_total", &[("source", "replay")]), 1.0);
        assert_eq!(
            v("cg_events_rejected_total", &[("reason", "invalid_json")]),
            1.0
        );
        assert_eq!(
            v(
                "cg_events_rejected_total",
                &[("reason", "payload_too_large")]
            ),
            2.0
        );
        assert_eq!(
            v("cg_events_rejected_total", &[("reason", "something_new")]),
            1.0
        );
        assert_eq!(
            v("cg_events_rejected_total", &[("reason", "not_utf8")]),
            0.0
        );
        assert_eq!(v("cg_events_processed_total", &[]), 5.0);
        for name in [
            "cg_events_skipped_total",
            "cg_events_undeclared_device_total",
            "cg_events_ts_replaced_total",
            "cg_events_late_total",
            "cg_events_duplicate_total",
            "cg_uplink_published_total",
            "cg_uplink_acked_total",
            "cg_uplink_connects_total",
            "cg_uplink_errors_total",
            "cg_local_mqtt_connects_total",
            "cg_local_mqtt_errors_total",
            "cg_clock_jumps_total",
            "cg_store_errors_total",
            "cg_uplink_connected",
            "cg_local_mqtt_connected",
            "cg_ready",
        ] {
            assert_eq!(v(name, &[]), 1.0, "{name}");
        }
        let t = |rule, state| {
            v(
                "cg_alert_transitions_total",
                &[("rule", rule), ("state", state)],
            )
        };
        assert_eq!(t("elderly_inactivity", "raised"), 2.0);
        assert_eq!(t("elderly_inactivity", "escalated"), 1.0);
        assert_eq!(t("door_forced", "cleared"), 1.0);
        assert_eq!(t("unknown", "raised"), 1.0);
        assert_eq!(
            f["cg_alert_transitions_total"].1.len(),
            4,
            "only seen combinations"
        );
        assert_eq!(v("cg_outbox_dropped_total", &[("severity", "low")]), 1.0);
        assert_eq!(
            v("cg_outbox_dropped_total", &[("severity", "critical")]),
            0.0
        );
        assert_eq!(v("cg_outbox_entries", &[]), 12.0);
        assert_eq!(v("cg_outbox_bytes", &[]), 3456.0);
        assert_eq!(v("cg_open_alerts", &[]), 3.0);
        assert_eq!(v("cg_commits_total", &[]), 3.0);
        assert_eq!(v("cg_committed_events_total", &[]), 10.0);
        assert_eq!(
            v("cg_commands_total", &[("command", "ack"), ("result", "ok")]),
            2.0
        );
        assert_eq!(
            v(
                "cg_commands_total",
                &[("command", "away"), ("result", "rejected")]
            ),
            1.0
        );
        assert_eq!(v("cg_config_reloads_total", &[("result", "ok")]), 1.0);
        assert_eq!(v("cg_config_reloads_total", &[("result", "error")]), 2.0);

        // Histogram: cumulative buckets, +Inf == count, sum and max in seconds.
        let b = |le| v("cg_commit_seconds_bucket", &[("le", le)]);
        assert_eq!(b("0.0005"), 1.0);
        assert_eq!(b("0.001"), 1.0);
        assert_eq!(b("0.005"), 2.0);
        assert_eq!(b("2.5"), 2.0);
        assert_eq!(b("+Inf"), 3.0);
        assert_eq!(v("cg_commit_seconds_count", &[]), 3.0);
        let sum = v("cg_commit_seconds_sum", &[]);
        assert!((sum - 10.0033).abs() < 1e-9, "sum {sum}");
        assert_eq!(v("cg_commit_seconds_max", &[]), 10.0);
        let buckets: Vec<&Sample> = f["cg_commit_seconds"]
            .1
            .iter()
            .filter(|s| s.name == "cg_commit_seconds_bucket")
            .collect();
        assert_eq!(buckets.len(), COMMIT_BUCKETS.len() + 1);
        let mut prev = (f64::NEG_INFINITY, 0.0);
        for s in buckets {
            let le: f64 = match s.labels[0].1.as_str() {
                "+Inf" => f64::INFINITY,
                x => x.parse().unwrap(),
            };
            assert!(le > prev.0 && s.value >= prev.1, "buckets not increasing");
            prev = (le, s.value);
        }

        // The test helper agrees.
        assert_eq!(
            m.value("cg_events_received_total{source=\"mqtt\"}"),
            Some(2.0)
        );
        assert_eq!(m.value("cg_ready"), Some(1.0));
        assert_eq!(m.value("cg_nope"), None);
    }

    #[test]
    fn samples_within_a_family_are_sorted_and_output_is_stable() {
        let m = Metrics::new();
        m.command("zeta", "ok");
        m.command("ack", "error");
        m.command("ack", "ok");
        m.transition("group_rental", TransitionState::Raised);
        m.transition("card_sharing", TransitionState::Raised);
        m.transition("card_sharing", TransitionState::Cleared);
        m.received("aaa");
        let text = m.render();
        let f = parse(&text);
        for (name, (_, samples)) in &f {
            if name == "cg_commit_seconds" {
                continue; // buckets go by `le`, checked numerically above
            }
            let keys: Vec<&Vec<(String, String)>> = samples.iter().map(|s| &s.labels).collect();
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted, "{name} samples not sorted");
        }
        // Same counts, same text (apart from the RSS gauge, which may move).
        let strip = |t: &str| -> String {
            t.lines()
                .filter(|l| !l.starts_with("process_resident_memory_bytes "))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&text), strip(&m.render()));
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let m = Metrics::new();
        m.command("we\"ird\\cmd\nx", "ok");
        let text = m.render();
        assert!(
            text.contains(r#"cg_commands_total{command="we\"ird\\cmd\nx",result="ok"} 1"#),
            "{text}"
        );
        let f = parse(&text);
        assert_eq!(
            value(
                &f,
                "cg_commands_total",
                &[("command", "we\"ird\\cmd\nx"), ("result", "ok")]
            ),
            1.0
        );
        let mut s = String::new();
        escape_into(&mut s, "a\\b\nc\"d", false);
        assert_eq!(s, "a\\\\b\\nc\"d");
    }

    #[test]
    fn seconds_format_is_exact() {
        assert_eq!(Seconds(0).to_string(), "0.000000000");
        assert_eq!(Seconds(1_500_000).to_string(), "0.001500000");
        assert_eq!(Seconds(12_000_000_001).to_string(), "12.000000001");
        assert_eq!("0.001500000".parse::<f64>().unwrap(), 0.0015);
    }

    #[test]
    fn huge_durations_saturate() {
        let m = Metrics::new();
        m.observe_commit(Duration::MAX);
        assert_eq!(m.value("cg_commit_seconds_bucket{le=\"+Inf\"}"), Some(1.0));
        assert_eq!(m.value("cg_commit_seconds_bucket{le=\"2.5\"}"), Some(0.0));
        assert_eq!(m.value("cg_commit_seconds_count"), Some(1.0));
    }

    #[test]
    fn concurrent_increments_are_not_lost() {
        let m = std::sync::Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        m.received("mqtt");
                        m.processed();
                        m.command("ack", "ok");
                        m.observe_commit(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            m.value("cg_events_received_total{source=\"mqtt\"}"),
            Some(40_000.0)
        );
        assert_eq!(m.value("cg_events_processed_total"), Some(40_000.0));
        assert_eq!(
            m.value("cg_commands_total{command=\"ack\",result=\"ok\"}"),
            Some(40_000.0)
        );
        assert_eq!(
            m.value("cg_commit_seconds_bucket{le=\"0.001\"}"),
            Some(40_000.0)
        );
    }
}
