//! A simulated elevator monitoring box (shared/samples/elevator-monitor-box.md)
//! for the Modbus tests and the benchmark: holding registers 0-12 and 16-18,
//! exception 02 for any other address, and knobs for the failures a real
//! line shows (slow replies, dropped requests, dead slaves, closed
//! connections). Served over TCP (tokio-modbus server) or a serial line
//! (tokio-modbus RTU server), several slaves on one service.
#![allow(dead_code)]

use community_gateway::config::{self, Config};
use community_gateway::metrics::Metrics;
use community_gateway::sources::modbus::{self, PollReport, Poller};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// The car as the box sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Car {
    pub floor: i8,
    pub up: bool,
    pub down: bool,
    pub in_zone: bool,
    pub door_open: bool,
    pub occupied: bool,
    /// 0.1 m/s.
    pub speed_dm: u8,
    /// The fault bitmap of register 0.
    pub faults: u16,
}

impl Car {
    /// Registers 0, 1 and 2, laid out as the box does.
    pub fn registers(&self) -> [u16; 3] {
        let bit = |on: bool, n: u16| if on { 1u16 << n } else { 0 };
        let status = bit(self.up, 8)
            | bit(self.down, 9)
            | bit(self.in_zone, 10)
            | bit(self.door_open, 11)
            | bit(self.occupied, 12)
            // Sensor fault bits in the low byte: not mapped, must not leak.
            | 0x00A5;
        [
            self.faults,
            status,
            (u16::from(self.floor as u8) << 8) | u16::from(self.speed_dm),
        ]
    }
}

/// One slave's registers and behaviour.
#[derive(Debug, Clone)]
pub struct BoxState {
    pub holding: BTreeMap<u16, u16>,
    /// Reply this late.
    pub delay: Duration,
    /// Never reply (a request dropped, or the slave unplugged).
    pub silent: bool,
}

impl BoxState {
    /// The box of the sample: registers 0-12 and 16-18.
    pub fn monitor_box() -> Self {
        let mut holding = BTreeMap::new();
        for a in (0..=12).chain(16..=18) {
            holding.insert(a, 0);
        }
        // Door-open count 70000 (u32, high word first), thresholds.
        holding.insert(3, 1);
        holding.insert(4, (70000u32 - 65536) as u16);
        holding.insert(16, 90);
        holding.insert(17, 15);
        holding.insert(18, 2);
        BoxState {
            holding,
            delay: Duration::ZERO,
            silent: false,
        }
    }
}

/// A request as the simulator saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub slave: u8,
    pub function: u8,
    pub start: u16,
    pub count: u16,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    slaves: BTreeMap<u8, BoxState>,
    log: Vec<Seen>,
    /// Requests being answered right now (the box drops a request that
    /// arrives while it is still answering).
    busy: bool,
    overlapping: u32,
    /// Keep no request log (the benchmark measures memory).
    no_log: bool,
}

/// Boxes behind one TCP listener or on one serial line, by slave id.
#[derive(Clone, Default)]
pub struct Sim(Arc<Mutex<Inner>>);

impl Sim {
    pub fn new() -> Self {
        Sim::default()
    }

    /// Adds a monitor box as `slave`.
    pub fn with_box(self, slave: u8) -> Self {
        self.0
            .lock()
            .unwrap()
            .slaves
            .insert(slave, BoxState::monitor_box());
        self
    }

    pub fn set_car(&self, slave: u8, car: Car) {
        let mut g = self.0.lock().unwrap();
        let s = g.slaves.get_mut(&slave).expect("slave");
        for (i, v) in car.registers().into_iter().enumerate() {
            s.holding.insert(i as u16, v);
        }
    }

    pub fn set_delay(&self, slave: u8, d: Duration) {
        self.0.lock().unwrap().slaves.get_mut(&slave).unwrap().delay = d;
    }

    pub fn set_silent(&self, slave: u8, silent: bool) {
        self.0
            .lock()
            .unwrap()
            .slaves
            .get_mut(&slave)
            .unwrap()
            .silent = silent;
    }

    /// Keeps no request log.
    pub fn without_log(self) -> Self {
        self.0.lock().unwrap().no_log = true;
        self
    }

    /// Every request seen so far.
    pub fn log(&self) -> Vec<Seen> {
        self.0.lock().unwrap().log.clone()
    }

    /// Requests that arrived while another was being answered.
    pub fn overlapping(&self) -> u32 {
        self.0.lock().unwrap().overlapping
    }
}

fn function(r: &Request<'_>) -> (u8, u16, u16) {
    match r {
        Request::ReadCoils(a, n) => (1, *a, *n),
        Request::ReadDiscreteInputs(a, n) => (2, *a, *n),
        Request::ReadHoldingRegisters(a, n) => (3, *a, *n),
        Request::ReadInputRegisters(a, n) => (4, *a, *n),
        _ => (0, 0, 0),
    }
}

type Reply = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl tokio_modbus::server::Service for Sim {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Reply;

    fn call(&self, req: Self::Request) -> Self::Future {
        let (function, start, count) = function(&req.request);
        let inner = self.0.clone();
        let mut g = self.0.lock().unwrap();
        if !g.no_log {
            g.log.push(Seen {
                slave: req.slave,
                function,
                start,
                count,
                at: Instant::now(),
            });
        }
        let Some(state) = g.slaves.get(&req.slave).cloned() else {
            // No such slave on the line: nobody answers.
            return Box::pin(async { Ok(None) });
        };
        if state.silent {
            return Box::pin(async { Ok(None) });
        }
        if g.busy {
            g.overlapping += 1;
            return Box::pin(async { Ok(None) });
        }
        let result = if function == 3 {
            (start..start.saturating_add(count))
                .map(|a| state.holding.get(&a).copied())
                .collect::<Option<Vec<u16>>>()
                .map(|words| Some(Response::ReadHoldingRegisters(words)))
                .ok_or(ExceptionCode::IllegalDataAddress)
        } else {
            Err(ExceptionCode::IllegalFunction)
        };
        if state.delay.is_zero() {
            return Box::pin(async move { result });
        }
        g.busy = true;
        Box::pin(async move {
            tokio::time::sleep(state.delay).await;
            inner.lock().unwrap().busy = false;
            result
        })
    }
}

/// A TCP listener serving a [`Sim`], whose connections can be cut.
pub struct TcpBox {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpBox {
    pub async fn serve(sim: Sim) -> TcpBox {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let kept = conns.clone();
        let task = tokio::spawn(async move {
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let on_connected = move |stream: tokio::net::TcpStream, _peer: SocketAddr| {
                let sim = sim.clone();
                let kept = kept.clone();
                async move {
                    let std = stream.into_std()?;
                    kept.lock().unwrap().push(std.try_clone()?);
                    Ok(Some((sim, tokio::net::TcpStream::from_std(std)?)))
                }
            };
            let _ = server.serve(&on_connected, |_| {}).await;
        });
        TcpBox { addr, conns, task }
    }

    /// Closes every connection accepted so far (the box rebooting, a NAT
    /// forgetting the flow).
    pub fn cut_connections(&self) -> usize {
        let mut g = self.conns.lock().unwrap();
        let n = g.len();
        for c in g.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        n
    }
}

/// `n` monitoring boxes (slave 247, quiet) served over TCP on the current
/// runtime, whose cars move every 700 ms so that samples change: the
/// benchmarks' fleet of elevators.
pub async fn serve_moving_boxes(n: usize) -> Vec<TcpBox> {
    let mut sims = Vec::new();
    let mut boxes = Vec::new();
    for _ in 0..n {
        let sim = Sim::new().with_box(247).without_log();
        boxes.push(TcpBox::serve(sim.clone()).await);
        sims.push(sim);
    }
    tokio::spawn(async move {
        let mut tick = 0u32;
        loop {
            tokio::time::sleep(Duration::from_millis(700)).await;
            tick += 1;
            for (i, sim) in sims.iter().enumerate() {
                sim.set_car(
                    247,
                    Car {
                        floor: ((tick as usize + i) % 20) as i8 - 2,
                        up: tick % 3 == 0,
                        in_zone: tick % 3 != 0,
                        occupied: i % 2 == 0,
                        speed_dm: if tick % 3 == 0 { 17 } else { 0 },
                        ..Car::default()
                    },
                );
            }
        }
    });
    boxes
}

impl Drop for TcpBox {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_connections();
    }
}

/// A received report and when it arrived.
#[derive(Debug, Clone)]
pub struct Got {
    pub at: Instant,
    pub report: PollReport,
}

/// The poller under test and what it reports.
pub struct Harness {
    pub config: Config,
    pub poller: Poller,
    pub rx: mpsc::Receiver<PollReport>,
    pub stop: watch::Sender<bool>,
    pub seen: Vec<Got>,
}

pub fn load(toml: &str) -> Config {
    config::load_str(toml, Path::new("/etc/community-gateway/test.toml"))
        .unwrap_or_else(|p| panic!("config:\n{p}\n{toml}"))
}

impl Harness {
    pub fn start(toml: &str) -> Harness {
        let config = load(toml);
        let (tx, rx) = mpsc::channel(256);
        let (stop, stop_rx) = watch::channel(false);
        let poller = modbus::start(&config, tx, Arc::new(Metrics::new()), stop_rx);
        Harness {
            config,
            poller,
            rx,
            stop,
            seen: Vec::new(),
        }
    }

    pub fn counts(&self, device: &str) -> modbus::DeviceCounts {
        self.poller
            .stats
            .device(device)
            .unwrap_or_else(|| panic!("no stats for {device}"))
            .snapshot()
    }

    /// Receives until a report satisfies `pred`, or panics after `within`.
    pub async fn until(
        &mut self,
        within: Duration,
        what: &str,
        mut pred: impl FnMut(&PollReport) -> bool,
    ) -> Got {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(report)) => {
                    let got = Got {
                        at: Instant::now(),
                        report,
                    };
                    self.seen.push(got.clone());
                    if pred(&got.report) {
                        return got;
                    }
                }
                Ok(None) => panic!("the poller stopped while waiting for {what}"),
                Err(_) => panic!(
                    "no {what} within {within:?}; last reports: {:#?}",
                    &self.seen[self.seen.len().saturating_sub(6)..]
                ),
            }
        }
    }

    /// Receives everything for `d`.
    pub async fn collect_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(report)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.seen.push(Got {
                at: Instant::now(),
                report,
            });
        }
    }

    /// Receives reports and feeds them to `rules` (ticking its clock every
    /// 20 ms) until a new transition satisfies `pred`, or panics after
    /// `within`. Returns it with when it came out.
    pub async fn drive(
        &mut self,
        rules: &mut Rules,
        within: Duration,
        what: &str,
        mut pred: impl FnMut(&community_gateway::alert::AlertTransition) -> bool,
    ) -> (Instant, community_gateway::alert::AlertTransition) {
        let deadline = tokio::time::Instant::now() + within;
        let mut from = rules.transitions.len();
        loop {
            if let Some((at, t)) = rules.transitions[from..].iter().find(|(_, t)| pred(t)) {
                return (*at, t.clone());
            }
            from = rules.transitions.len();
            tokio::select! {
                r = self.rx.recv() => {
                    let report = r.unwrap_or_else(|| panic!("the poller stopped while waiting for {what}"));
                    rules.feed(&report);
                    self.seen.push(Got { at: Instant::now(), report });
                }
                _ = tokio::time::sleep(Duration::from_millis(20)) => rules.tick(),
                _ = tokio::time::sleep_until(deadline) => panic!(
                    "no {what} within {within:?}; transitions: {:#?}; last reports: {:#?}",
                    rules.brief(),
                    &self.seen[self.seen.len().saturating_sub(6)..]
                ),
            }
        }
    }

    /// Receives and feeds reports to `rules` for `d`.
    pub async fn drive_for(&mut self, rules: &mut Rules, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            tokio::select! {
                r = self.rx.recv() => {
                    let Some(report) = r else { return };
                    rules.feed(&report);
                    self.seen.push(Got { at: Instant::now(), report });
                }
                _ = tokio::time::sleep(Duration::from_millis(20)) => rules.tick(),
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.poller.tasks {
            tokio::time::timeout(Duration::from_secs(2), t)
                .await
                .expect("poll task ends on stop")
                .expect("poll task does not panic");
        }
    }
}

pub fn is_sample_of(device: &str) -> impl Fn(&PollReport) -> bool + '_ {
    move |r| matches!(r, PollReport::Sample { device: d, .. } if d == device)
}

pub fn is_failure_of<'a>(device: &'a str, reason: &'a str) -> impl Fn(&PollReport) -> bool + 'a {
    move |r| matches!(r, PollReport::Failed { device: d, reason: why } if d == device && *why == reason)
}

/// The rule engine fed as the daemon feeds it: samples as `elevator`
/// events and failures as failed polls, stamped with the wall clock.
pub struct Rules {
    pub engine: community_gateway::engine::Engine,
    /// Transitions and when they came out.
    pub transitions: Vec<(Instant, community_gateway::alert::AlertTransition)>,
}

pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

impl Rules {
    pub fn new(config: &Config) -> Rules {
        let mut engine = community_gateway::engine::Engine::new(
            Arc::new(config.clone()),
            &community_gateway::roster::Roster::default(),
        );
        let mut out = Vec::new();
        engine.start(wall_ms(), &mut out);
        Rules {
            engine,
            transitions: Vec::new(),
        }
    }

    pub fn feed(&mut self, report: &PollReport) {
        use community_gateway::event::{Event, EventBody};
        let mut out = Vec::new();
        match report {
            PollReport::Sample { device, sample } => self.engine.handle(
                &Event {
                    ts: wall_ms(),
                    device: device.as_str().into(),
                    body: EventBody::Elevator(*sample),
                },
                &mut out,
            ),
            PollReport::Failed { device, reason } => {
                self.engine
                    .poll_failed_with_reason(device, wall_ms(), Some(reason), &mut out)
            }
        }
        self.record(out);
    }

    /// Fires the timers due by now.
    pub fn tick(&mut self) {
        let mut out = Vec::new();
        self.engine.advance_to(wall_ms(), &mut out);
        self.record(out);
    }

    fn record(&mut self, out: Vec<community_gateway::alert::AlertTransition>) {
        let now = Instant::now();
        self.transitions.extend(out.into_iter().map(|t| (now, t)));
    }

    /// `rule state subject` of every transition so far.
    pub fn brief(&self) -> Vec<String> {
        self.transitions
            .iter()
            .map(|(_, t)| {
                format!(
                    "{} {} {}",
                    t.rule,
                    serde_json::to_value(t.state).unwrap().as_str().unwrap(),
                    t.subject.id
                )
            })
            .collect()
    }
}
