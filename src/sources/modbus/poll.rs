//! The poll tasks: one per TCP device, one per serial bus.
//!
//! A task owns one connection (a TCP stream, or the serial port shared by
//! the slaves of a bus) and a schedule: each slave has the time its next
//! attempt is due, and the task always runs the earliest (ties: the slave
//! declared first). A poll reads the blocks of the slave's map in order;
//! when a request fails and a retry is allowed, the retry is made due *now*,
//! which queues it behind every slave already overdue.

use super::map::RegisterMap;
use super::{DeviceStats, PollReport};
use crate::config::modbus::{BusConfig, Parity, PollSettings, RegisterTable};
use crate::metrics::Metrics;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response};

/// What a task talks over.
pub(super) enum Link {
    /// `host:port`, resolved at every connect.
    Tcp { addr: String },
    /// A serial line and its settings.
    Rtu { name: String, bus: BusConfig },
}

impl Link {
    fn name(&self) -> &str {
        match self {
            Link::Tcp { addr } => addr,
            Link::Rtu { name, .. } => name,
        }
    }

    /// Silence required between two frames on a serial line: 3.5 character
    /// times (fixed at 1.75 ms above 19200 baud, Modbus over serial line §2.5.1.1).
    fn frame_gap(&self) -> Option<Duration> {
        let Link::Rtu { bus, .. } = self else {
            return None;
        };
        if bus.baud > 19_200 || bus.baud == 0 {
            return Some(Duration::from_micros(1750));
        }
        let bits = 1
            + u64::from(bus.data_bits)
            + u64::from(bus.parity != Parity::None)
            + u64::from(bus.stop_bits);
        Some(Duration::from_micros(
            bits * 3_500_000 / u64::from(bus.baud),
        ))
    }
}

/// Why a request (or a connect) failed.
#[derive(Debug)]
enum Failure {
    Timeout,
    Exception(ExceptionCode),
    Io(io::Error),
    /// A reply that does not answer the request (header, function, length).
    Decode(String),
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Exception(_) => "exception",
            Failure::Io(_) => "io",
            Failure::Decode(_) => "decode",
        }
    }

    /// Exceptions are well-formed answers: the connection is in step.
    /// Everything else may leave a reply in flight or a stream out of step.
    fn drops_connection(&self) -> bool {
        !matches!(self, Failure::Exception(_))
    }

    /// An exception is the device's considered answer; asking again at
    /// once would get the same one.
    fn retryable(&self) -> bool {
        !matches!(self, Failure::Exception(_))
    }

    fn count(&self, stats: &DeviceStats) {
        let c = match self {
            Failure::Timeout => &stats.timeouts,
            Failure::Exception(_) => &stats.exceptions,
            Failure::Io(_) => &stats.io_errors,
            Failure::Decode(_) => &stats.decode_errors,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("no reply within the timeout"),
            Failure::Exception(e) => write!(f, "exception {:02X} ({e})", u8::from(*e)),
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Decode(d) => f.write_str(d),
        }
    }
}

/// One polled device and its schedule.
pub(super) struct Slave {
    id: String,
    unit: u8,
    map: RegisterMap,
    settings: PollSettings,
    stats: Arc<DeviceStats>,
    regs: Vec<u16>,
    bits: Vec<bool>,
    /// When the next attempt may start.
    due: Instant,
    /// When the current (or next) poll was due: the next one is due an
    /// interval later, however late this one ran.
    scheduled: Instant,
    in_poll: bool,
    next_block: usize,
    attempts_left: u32,
    /// Failed polls since the last good one.
    failures: u32,
}

impl Slave {
    pub(super) fn new(
        id: String,
        unit: u8,
        map: RegisterMap,
        settings: PollSettings,
        stats: Arc<DeviceStats>,
    ) -> Self {
        let now = Instant::now();
        Slave {
            id,
            unit,
            regs: vec![0; map.regs_len()],
            bits: vec![false; map.bits_len()],
            map,
            settings,
            stats,
            due: now,
            scheduled: now,
            in_poll: false,
            next_block: 0,
            attempts_left: 0,
            failures: 0,
        }
    }

    fn begin_poll(&mut self) {
        self.in_poll = true;
        self.scheduled = self.due;
        self.next_block = 0;
        // Retries only while the device was answering: a device that failed
        // its last poll gets one attempt, and costs its bus one timeout.
        self.attempts_left = if self.failures == 0 {
            self.settings.retries
        } else {
            0
        };
    }

    fn end_poll(&mut self, now: Instant) {
        self.in_poll = false;
        let quarantined = self.failures >= self.settings.quarantine_after;
        let every = if quarantined {
            self.settings.quarantine_every.max(1)
        } else {
            1
        };
        if every > 1 {
            self.stats
                .quarantined_skips
                .fetch_add(u64::from(every - 1), Ordering::Relaxed);
        }
        let next = self.scheduled + self.settings.interval * every;
        self.due = next.max(now);
    }
}

/// Polls `slaves` over `link` until `stop` or until `tx` closes.
///
/// The slaves of a bus share the line, so their first polls are spread over
/// their interval. Tasks are not spread against each other: TCP devices
/// with the same interval are polled together, so that their samples reach
/// the engine together and are committed in one group (fewer flash writes,
/// fewer wake-ups).
pub(super) async fn run(
    link: Link,
    mut slaves: Vec<Slave>,
    tx: mpsc::Sender<PollReport>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    if slaves.is_empty() {
        return;
    }
    let n = slaves.len() as f64;
    let start = Instant::now();
    for (i, s) in slaves.iter_mut().enumerate() {
        s.due = start + s.settings.interval.mul_f64(i as f64 / n);
    }
    let gap = link.frame_gap();
    let mut conn: Option<Context> = None;
    // RTU: the line must stay silent until then before the next request.
    let mut quiet_until: Option<Instant> = None;
    tracing::info!(
        link = link.name(),
        devices = slaves.len(),
        "Modbus polling started"
    );
    loop {
        if *stop.borrow() {
            break;
        }
        let i = (0..slaves.len())
            .min_by_key(|&i| (slaves[i].due, i))
            .unwrap_or(0);
        let due = slaves[i].due;
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = stop.changed() => break,
            }
        }
        let s = &mut slaves[i];
        if !s.in_poll {
            s.begin_poll();
        }
        let result = tokio::select! {
            r = attempt(&link, &mut conn, s, gap, &mut quiet_until) => r,
            _ = stop.changed() => break,
        };
        let now = Instant::now();
        let report = match result {
            Ok(()) => {
                let mut unmapped = 0;
                let sample = s.map.decode(&s.regs, &s.bits, &mut unmapped);
                if unmapped > 0 {
                    s.stats
                        .unmapped_values
                        .fetch_add(unmapped, Ordering::Relaxed);
                }
                if s.failures > 0 {
                    tracing::info!(device = %s.id, after_failures = s.failures, "Modbus device answers again");
                }
                s.failures = 0;
                s.stats.samples.fetch_add(1, Ordering::Relaxed);
                s.stats.consecutive_failures.store(0, Ordering::Relaxed);
                metrics.received("modbus");
                s.end_poll(now);
                PollReport::Sample {
                    device: s.id.clone(),
                    sample,
                }
            }
            Err(f) => {
                f.count(&s.stats);
                if f.drops_connection() {
                    conn = None;
                }
                if f.retryable() && s.attempts_left > 0 {
                    s.attempts_left -= 1;
                    s.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(device = %s.id, error = %f, "Modbus request failed; retrying");
                    s.due = now;
                    continue;
                }
                s.failures += 1;
                s.stats.failures.fetch_add(1, Ordering::Relaxed);
                s.stats
                    .consecutive_failures
                    .store(u64::from(s.failures), Ordering::Relaxed);
                // The first failure, then every tenth: a box that is off for
                // a day should not fill the journal.
                if s.failures == 1 || s.failures % 10 == 0 {
                    tracing::warn!(device = %s.id, link = link.name(), reason = f.reason(),
                        error = %f, failures = s.failures, "Modbus poll failed");
                }
                if s.failures == s.settings.quarantine_after && s.settings.quarantine_every > 1 {
                    tracing::warn!(device = %s.id, every = s.settings.quarantine_every,
                        "Modbus device quarantined: polled every {} intervals until it answers",
                        s.settings.quarantine_every);
                }
                s.end_poll(now);
                PollReport::Failed {
                    device: s.id.clone(),
                    reason: f.reason(),
                }
            }
        };
        tokio::select! {
            r = tx.send(report) => if r.is_err() { break },
            _ = stop.changed() => break,
        }
    }
    if let Some(mut c) = conn {
        // Closing a TCP stream politely; a serial port just closes.
        let _ = tokio::time::timeout(Duration::from_millis(100), c.disconnect()).await;
    }
}

/// One attempt of a poll: opens the connection if needed, then reads the
/// slave's blocks from where the last attempt stopped.
async fn attempt(
    link: &Link,
    conn: &mut Option<Context>,
    s: &mut Slave,
    gap: Option<Duration>,
    quiet_until: &mut Option<Instant>,
) -> Result<(), Failure> {
    let timeout = s.settings.timeout;
    if conn.is_none() {
        let c = open(link, s.unit, timeout).await?;
        s.stats.connects.fetch_add(1, Ordering::Relaxed);
        *conn = Some(c);
        *quiet_until = gap.map(|g| Instant::now() + g);
    }
    let Some(ctx) = conn.as_mut() else {
        return Err(Failure::Io(io::ErrorKind::NotConnected.into()));
    };
    ctx.set_slave(tokio_modbus::Slave(s.unit));
    while let Some(&b) = s.map.blocks().get(s.next_block) {
        if let Some(q) = *quiet_until {
            tokio::time::sleep_until(q).await;
        }
        let req = match b.table {
            RegisterTable::Coil => Request::ReadCoils(b.start, b.count),
            RegisterTable::Discrete => Request::ReadDiscreteInputs(b.start, b.count),
            RegisterTable::Holding => Request::ReadHoldingRegisters(b.start, b.count),
            RegisterTable::Input => Request::ReadInputRegisters(b.start, b.count),
        };
        s.stats.requests.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(timeout, ctx.call(req)).await;
        *quiet_until = gap.map(|g| Instant::now() + g);
        let response = match result {
            Err(_) => return Err(Failure::Timeout),
            Ok(Err(tokio_modbus::Error::Transport(e))) => return Err(Failure::Io(e)),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                return Err(Failure::Decode(e.to_string()))
            }
            Ok(Ok(Err(exception))) => return Err(Failure::Exception(exception)),
            Ok(Ok(Ok(r))) => r,
        };
        let n = usize::from(b.count);
        match (b.table, response) {
            (RegisterTable::Holding, Response::ReadHoldingRegisters(words))
            | (RegisterTable::Input, Response::ReadInputRegisters(words))
                if words.len() == n =>
            {
                s.regs[b.offset..b.offset + n].copy_from_slice(&words);
            }
            (RegisterTable::Coil, Response::ReadCoils(bits))
            | (RegisterTable::Discrete, Response::ReadDiscreteInputs(bits))
                if bits.len() >= n =>
            {
                s.bits[b.offset..b.offset + n].copy_from_slice(&bits[..n]);
            }
            (_, other) => {
                return Err(Failure::Decode(format!(
                    "reply to a read of {} {} at {} does not match: {other:?}",
                    b.count,
                    b.table.as_str(),
                    b.start
                )))
            }
        }
        s.next_block += 1;
    }
    Ok(())
}

/// Opens the link: a TCP connection (within `timeout`) or the serial port.
async fn open(link: &Link, unit: u8, timeout: Duration) -> Result<Context, Failure> {
    match link {
        Link::Tcp { addr } => {
            let connect = async {
                let target = tokio::net::lookup_host(addr.as_str())
                    .await?
                    .next()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
                let stream = tokio::net::TcpStream::connect(target).await?;
                stream.set_nodelay(true)?;
                Ok::<_, io::Error>(stream)
            };
            let stream = tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| Failure::Timeout)?
                .map_err(Failure::Io)?;
            Ok(tokio_modbus::client::tcp::attach_slave(
                stream,
                tokio_modbus::Slave(unit),
            ))
        }
        Link::Rtu { bus, .. } => {
            use tokio_serial::SerialPort;
            let builder = tokio_serial::new(bus.path.to_string_lossy(), bus.baud)
                .data_bits(if bus.data_bits == 7 {
                    tokio_serial::DataBits::Seven
                } else {
                    tokio_serial::DataBits::Eight
                })
                .parity(match bus.parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .stop_bits(if bus.stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                })
                .flow_control(tokio_serial::FlowControl::None);
            let port = tokio_serial::SerialStream::open(&builder)
                .map_err(|e| Failure::Io(io::Error::from(e)))?;
            // Whatever a slave sent after we stopped listening is stale.
            let _ = port.clear(tokio_serial::ClearBuffer::All);
            Ok(tokio_modbus::client::rtu::attach_slave(
                port,
                tokio_modbus::Slave(unit),
            ))
        }
    }
}
