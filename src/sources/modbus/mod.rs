//! Modbus polling of elevator monitoring boxes (SPEC §3), over TCP and RTU.
//!
//! Every elevator with a `[devices.modbus]` table is polled at its
//! `interval` with its register map (a `[modbus.profiles.<name>]`, the
//! built-in `monitor-box`, or points of its own); each poll becomes one
//! [`PollReport`]: a decoded [`ElevatorSample`], or a failure with its
//! reason, which the daemon timestamps and feeds to the engine (a sample as
//! an `elevator` event, a failure toward `device_offline`).
//!
//! - [`map`]: register maps compiled into coalesced reads and a decoder.
//! - `poll`: the tasks. One per TCP device; one per serial bus, polling
//!   its slaves in turn (never two requests at once on one line).
//!
//! tokio-modbus has no timeouts of its own: every connect and every request
//! is wrapped in `tokio::time::timeout`. After a timeout, an I/O error or a
//! reply that does not match the request, the connection is dropped and
//! opened again for the next request (a late reply must not be taken for
//! the answer to the next request). An exception reply (e.g. 02, illegal
//! address) fails the poll but keeps the connection.
//!
//! A device that fails `quarantine_after` polls in a row is quarantined:
//! polled only every `quarantine_every` intervals, with no retries, so that
//! a dead slave costs its bus one timeout now and then and the others keep
//! their rate. A retry is queued behind slaves that are due, so a failing
//! slave delays another by at most one request timeout.

pub mod map;
mod poll;

pub use map::{coalesce, Block, RegisterMap};

use crate::config::Config;
use crate::event::ElevatorSample;
use crate::metrics::Metrics;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The outcome of one poll of one device.
#[derive(Debug, Clone, PartialEq)]
pub enum PollReport {
    /// The device answered every read of its map.
    Sample {
        device: String,
        sample: ElevatorSample,
    },
    /// The poll failed (after its retries): `timeout`, `exception`, `io`
    /// (connection refused or lost, serial port missing) or `decode` (a
    /// reply that does not match the request).
    Failed {
        device: String,
        reason: &'static str,
    },
}

impl PollReport {
    pub fn device(&self) -> &str {
        match self {
            PollReport::Sample { device, .. } | PollReport::Failed { device, .. } => device,
        }
    }
}

/// Counters of one polled device (monotonic, except `consecutive_failures`).
#[derive(Debug, Default)]
pub struct DeviceStats {
    /// Read requests sent.
    pub requests: AtomicU64,
    /// Polls that gave a sample.
    pub samples: AtomicU64,
    /// Polls that failed (reported as [`PollReport::Failed`]).
    pub failures: AtomicU64,
    /// Failed requests by kind (retried ones included).
    pub timeouts: AtomicU64,
    pub exceptions: AtomicU64,
    pub io_errors: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Attempts repeated after a failed request.
    pub retries: AtomicU64,
    /// Connections opened (TCP connects, serial port opens); the first
    /// one included, so reconnects are `connects - 1`.
    pub connects: AtomicU64,
    /// Raw values no `values` table entry or `default` covered.
    pub unmapped_values: AtomicU64,
    /// Polls skipped while quarantined.
    pub quarantined_skips: AtomicU64,
    /// Failed polls since the last sample.
    pub consecutive_failures: AtomicU64,
}

/// A copy of [`DeviceStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounts {
    pub requests: u64,
    pub samples: u64,
    pub failures: u64,
    pub timeouts: u64,
    pub exceptions: u64,
    pub io_errors: u64,
    pub decode_errors: u64,
    pub retries: u64,
    pub connects: u64,
    pub unmapped_values: u64,
    pub quarantined_skips: u64,
    pub consecutive_failures: u64,
}

impl DeviceStats {
    pub fn snapshot(&self) -> DeviceCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DeviceCounts {
            requests: g(&self.requests),
            samples: g(&self.samples),
            failures: g(&self.failures),
            timeouts: g(&self.timeouts),
            exceptions: g(&self.exceptions),
            io_errors: g(&self.io_errors),
            decode_errors: g(&self.decode_errors),
            retries: g(&self.retries),
            connects: g(&self.connects),
            unmapped_values: g(&self.unmapped_values),
            quarantined_skips: g(&self.quarantined_skips),
            consecutive_failures: g(&self.consecutive_failures),
        }
    }
}

impl DeviceCounts {
    /// Polls completed, good or failed.
    pub fn polls(&self) -> u64 {
        self.samples + self.failures
    }
}

/// Counters of every polled device, by device id.
#[derive(Debug, Default)]
pub struct ModbusStats {
    devices: BTreeMap<String, Arc<DeviceStats>>,
}

impl ModbusStats {
    pub fn device(&self, id: &str) -> Option<&DeviceStats> {
        self.devices.get(id).map(|s| &**s)
    }
    /// `(device id, counters)`, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &DeviceStats)> {
        self.devices.iter().map(|(k, v)| (k.as_str(), &**v))
    }
    /// Counters summed over every device.
    pub fn total(&self) -> DeviceCounts {
        let mut t = DeviceCounts::default();
        for s in self.devices.values() {
            let c = s.snapshot();
            t.requests += c.requests;
            t.samples += c.samples;
            t.failures += c.failures;
            t.timeouts += c.timeouts;
            t.exceptions += c.exceptions;
            t.io_errors += c.io_errors;
            t.decode_errors += c.decode_errors;
            t.retries += c.retries;
            t.connects += c.connects;
            t.unmapped_values += c.unmapped_values;
            t.quarantined_skips += c.quarantined_skips;
            t.consecutive_failures += c.consecutive_failures;
        }
        t
    }
}

/// The running poll tasks and their counters.
pub struct Poller {
    pub tasks: Vec<JoinHandle<()>>,
    pub stats: Arc<ModbusStats>,
}

/// Starts polling every elevator of `config` that has `[devices.modbus]`:
/// one task per TCP device and one per serial bus. Reports go to `tx`
/// (waiting when it is full); the tasks end when `stop` turns true (or its
/// sender is dropped) or `tx` is closed. Must be called inside a tokio
/// runtime. A device whose map does not compile (which `check` prevents)
/// is logged and left out.
pub fn start(
    config: &Config,
    tx: mpsc::Sender<PollReport>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> Poller {
    let modbus = &config.modbus;
    let mut stats = ModbusStats::default();
    let mut tcp: Vec<(String, poll::Slave)> = Vec::new();
    let mut buses: BTreeMap<String, Vec<poll::Slave>> = BTreeMap::new();
    for dev in &config.devices {
        let Some(m) = &dev.modbus else { continue };
        let settings = modbus.settings(m);
        let Some((readable, points)) = modbus.map_of(m) else {
            tracing::error!(device = %dev.id, "no register map; not polled");
            continue;
        };
        let map = match RegisterMap::compile(readable, points, settings.max_gap) {
            Ok(map) => map,
            Err(e) => {
                tracing::error!(device = %dev.id, error = %e, "bad register map; not polled");
                continue;
            }
        };
        let device_stats = Arc::new(DeviceStats::default());
        stats.devices.insert(dev.id.clone(), device_stats.clone());
        match (&m.tcp, &m.bus) {
            (Some(addr), _) => {
                let unit = m.slave.unwrap_or(255);
                let slave = poll::Slave::new(dev.id.clone(), unit, map, settings, device_stats);
                tcp.push((addr.trim().to_string(), slave));
            }
            (None, Some(bus)) if modbus.buses.contains_key(bus) => {
                let unit = m.slave.unwrap_or(1);
                let slave = poll::Slave::new(dev.id.clone(), unit, map, settings, device_stats);
                buses.entry(bus.clone()).or_default().push(slave);
            }
            _ => tracing::error!(device = %dev.id, "no usable `tcp` or `bus`; not polled"),
        }
    }
    let mut tasks = Vec::new();
    for (addr, slave) in tcp {
        tasks.push(tokio::spawn(poll::run(
            poll::Link::Tcp { addr },
            vec![slave],
            tx.clone(),
            metrics.clone(),
            stop.clone(),
        )));
    }
    for (name, slaves) in buses {
        let bus = modbus.buses[&name].clone();
        tasks.push(tokio::spawn(poll::run(
            poll::Link::Rtu { name, bus },
            slaves,
            tx.clone(),
            metrics.clone(),
            stop.clone(),
        )));
    }
    Poller {
        tasks,
        stats: Arc::new(stats),
    }
}

/// [`start`], keeping only the task handles.
pub fn spawn(
    config: &Config,
    tx: mpsc::Sender<PollReport>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    start(config, tx, metrics, stop).tasks
}
