//! Live load benchmark (SPEC §7): the `community-gateway run` process between
//! two real mosquitto brokers.
//!
//! 1. Starts a local broker (plain MQTT on loopback, persistence off) and a
//!    platform broker (TLS, client certificates required; a private CA and
//!    certificates generated with rcgen at start).
//! 2. Measures what the local broker relays at QoS 1 on loopback: one
//!    publisher to one QoS 1 subscriber, as fast as possible.
//! 3. Starts the gateway (10,000-resident roster, 10% watched, 204 access
//!    devices, 50 elevators polled every second over Modbus TCP from
//!    simulated monitoring boxes served in-process by tokio-modbus, one
//!    canonical subscription, platform over mutual TLS, store in a
//!    temporary folder) and waits for `/readyz`.
//! 4. Latency at a fixed rate (default 1,000 events/s for 300 s): every 10th
//!    event is a door `forced` (an immediate `door_forced` raise); a platform
//!    subscriber times each raise from the moment its event was published.
//! 5. Sustained ingest with durable acknowledgement: M access events
//!    published as fast as the broker takes them; the gateway's consumption
//!    rate is read from its `/metrics`, and compared with the relay rate.
//! 6. Gateway resources: peak and final RSS, bytes written per event, CPU.
//! 7. Stops the gateway (SIGTERM) and starts it once more on the same store
//!    and broker session: what the broker delivers then was left
//!    unacknowledged, and whatever of it the gateway applies again is counted.
//!
//! Exits 0 whatever the numbers; a budget not met is marked `MISSED`. The
//! last line of the report starts with `load:`.
//!
//! The fixed-rate phase runs before the saturation phase so that the memory
//! peak at 1,000 events/s (the budget's condition) is read on its own.
//!
//! Run: `cargo bench --bench load` (add `-- --help` for the options). Needs
//! `/usr/sbin/mosquitto` (`apt-get install -y mosquitto`).
//!
//! The gateway measured is a real release build (`[profile.release]`:
//! stripped, opt-level "s", fat LTO, panic = abort, linked position-dependent
//! by build.rs). `cargo bench` itself builds the binary
//! with the bench profile (not stripped, line tables) into the same
//! `target/release/community-gateway`, so the harness runs
//! `cargo build --release --bin community-gateway --target-dir target/load-release`
//! (a no-op when up to date; the first time it is a full release build).
//! `--gateway bench` uses cargo's bench-profile binary instead (no extra
//! build), `--gateway PATH` any other.

#[path = "../tests/modbus_sim/mod.rs"]
mod modbus_sim;
// The bench uses the CA, the server and the gateway's and subscriber's
// certificates; the rogue ones go unused.
#[allow(dead_code)]
#[path = "../tests/support/certs.rs"]
mod certs;

use certs::Certs;
use modbus_sim::TcpBox;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// Elevator samples the gateway took in (one per successful poll).
const MODBUS_SAMPLES: &str = "cg_events_received_total{source=\"modbus\"}";
const COMPOUND: &str = "bench";
const UNIT_DOORS: usize = 200;
const GATES: usize = 4;
/// Linux `USER_HZ`: the unit of utime/stime in /proc/<pid>/stat.
const TICKS_PER_SEC: f64 = 100.0;
const RSS_BUDGET_KB: u64 = 20 * 1024;
const LATENCY_BUDGET_MS: f64 = 50.0;
const INGEST_RATIO_BUDGET: f64 = 0.8;
/// The saturation phase gives up after this long without progress.
const STALL_SECS: u64 = 10;

// ---------------------------------------------------------------------------
// Options

struct Args {
    rate: u64,
    seconds: u64,
    trigger_every: u64,
    pool: u64,
    relay_messages: u64,
    ingest_events: u64,
    ingest_timeout: u64,
    residents: usize,
    elevators: usize,
    broker_inflight: u16,
    publisher_inflight: u16,
    broker_nodelay: bool,
    gateway: PathBuf,
    log: String,
    work_dir: PathBuf,
    keep: bool,
}

const USAGE: &str = "\
cargo bench --bench load [-- OPTIONS]

  --rate N              fixed-rate phase: events per second (1000)
  --seconds N           fixed-rate phase: duration (300: memory plateaus after about 4 minutes)
  --trigger-every N     every Nth event of that phase is a door `forced` (10)
  --pool N              door-forced devices, reused after a `closed` (1000, even)
  --relay-messages N    broker relay measurement: messages (200000)
  --ingest-events N     saturation phase: events (200000)
  --ingest-timeout S    give up waiting for the gateway after S seconds (60)
  --residents N         roster size, 10% watched (10000)
  --elevators N         simulated Modbus TCP monitoring boxes the gateway polls every second (50)
  --broker-inflight N   mosquitto max_inflight_messages (100)
  --publisher-inflight N  publisher QoS 1 window (100)
  --broker-nodelay      set_tcp_nodelay true on both brokers (mosquitto default: false)
  --gateway PATH|bench  gateway binary (default: a release build in target/load-release;
                        `bench`: the bench-profile binary cargo built for this bench)
  --log FILTER          gateway RUST_LOG (info,community_gateway::daemon=debug: the one
                        debug line there reports acknowledgements the gateway dropped)
  --work-dir DIR        where temporary folders go (store included); default target/tmp
  --keep                keep the temporary folders (configuration, logs, store)
";

fn parse_args() -> Args {
    let mut a = Args {
        rate: 1000,
        seconds: 300,
        trigger_every: 10,
        pool: 1000,
        relay_messages: 200_000,
        ingest_events: 200_000,
        ingest_timeout: 60,
        residents: 10_000,
        elevators: 50,
        broker_inflight: 100,
        publisher_inflight: 100,
        broker_nodelay: false,
        gateway: PathBuf::new(),
        log: "info,community_gateway::daemon=debug".into(),
        work_dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        keep: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let bad = |msg: String| -> ! {
        eprintln!("load: {msg}\n\n{USAGE}");
        std::process::exit(2);
    };
    while i < args.len() {
        let flag = args[i].as_str();
        let mut value = || -> String {
            i += 1;
            args.get(i)
                .cloned()
                .unwrap_or_else(|| bad(format!("{flag} needs a value")))
        };
        macro_rules! num {
            ($field:expr) => {{
                let v = value();
                $field = v
                    .parse()
                    .unwrap_or_else(|_| bad(format!("{flag}: not a number: {v}")));
            }};
        }
        match flag {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--rate" => num!(a.rate),
            "--seconds" => num!(a.seconds),
            "--trigger-every" => num!(a.trigger_every),
            "--pool" => num!(a.pool),
            "--relay-messages" => num!(a.relay_messages),
            "--ingest-events" => num!(a.ingest_events),
            "--ingest-timeout" => num!(a.ingest_timeout),
            "--residents" => num!(a.residents),
            "--elevators" => num!(a.elevators),
            "--broker-inflight" => num!(a.broker_inflight),
            "--publisher-inflight" => num!(a.publisher_inflight),
            "--broker-nodelay" => a.broker_nodelay = true,
            "--gateway" => {
                let v = value();
                a.gateway = if v == "bench" {
                    PathBuf::from(env!("CARGO_BIN_EXE_community-gateway"))
                } else {
                    PathBuf::from(v)
                };
            }
            "--log" => a.log = value(),
            "--work-dir" => a.work_dir = PathBuf::from(value()),
            "--keep" => a.keep = true,
            other => bad(format!("unknown argument {other}")),
        }
        i += 1;
    }
    if a.rate == 0 || a.seconds == 0 || a.trigger_every < 2 {
        bad("--rate and --seconds must be positive, --trigger-every at least 2".into());
    }
    if a.pool < 2 || a.pool % 2 != 0 || a.pool > 4000 {
        bad("--pool must be even, between 2 and 4000 (undeclared-device cap 4096)".into());
    }
    if a.relay_messages == 0 || a.ingest_events == 0 || a.residents < UNIT_DOORS {
        bad("--relay-messages and --ingest-events must be positive, --residents >= 200".into());
    }
    if a.broker_inflight == 0 || a.publisher_inflight == 0 {
        bad("inflight windows must be positive".into());
    }
    a
}

// ---------------------------------------------------------------------------
// Child processes: killed on exit, on panic and on Ctrl-C.

/// Pids of live children, for the panic hook and the signal task (which
/// cannot reach the guard). A pid leaves the list only after it is reaped,
/// so it cannot have been reused when they kill it.
static CHILD_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn kill_registered() {
    let pids = CHILD_PIDS.lock().map(|p| p.clone()).unwrap_or_default();
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

struct Proc {
    name: String,
    child: Child,
}

/// Owns every child process; Drop kills and reaps whatever is still running.
#[derive(Default)]
struct Children(Vec<Proc>);

impl Children {
    fn add(&mut self, name: &str, child: Child) -> u32 {
        let pid = child.id();
        CHILD_PIDS.lock().unwrap().push(pid);
        self.0.push(Proc {
            name: name.into(),
            child,
        });
        pid
    }

    fn get(&mut self, name: &str) -> &mut Child {
        &mut self
            .0
            .iter_mut()
            .find(|p| p.name == name)
            .expect("known child")
            .child
    }

    fn forget(pid: u32) {
        if let Ok(mut p) = CHILD_PIDS.lock() {
            p.retain(|x| *x != pid);
        }
    }

    /// SIGTERM, then wait up to `timeout` (SIGKILL after it).
    fn terminate(&mut self, name: &str, timeout: Duration) -> (Option<ExitStatus>, Duration) {
        let child = self.get(name);
        let pid = child.id();
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break Some(s);
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Children::forget(pid);
        (status, started.elapsed())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for p in self.0.iter_mut().rev() {
            if let Ok(None) = p.child.try_wait() {
                let _ = p.child.kill();
            }
            let _ = p.child.wait();
            Children::forget(p.child.id());
        }
    }
}

// ---------------------------------------------------------------------------
// Small helpers

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().unwrap().port()
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

// ---------------------------------------------------------------------------
// Certificates: tests/support/certs.rs (included above), written into the
// run's folder so that `--keep` keeps them with the broker configurations.

/// The gateway's own TLS client configuration, for the platform subscriber.
fn client_tls(ca: &Path, cert: &Path, key: &Path) -> Arc<rustls::ClientConfig> {
    community_gateway::tls::client_config(&community_gateway::config::TlsConfig {
        ca_file: ca.to_path_buf(),
        cert_file: Some(cert.to_path_buf()),
        key_file: Some(key.to_path_buf()),
        server_name: None,
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------
// mosquitto

struct TlsFiles<'a> {
    ca: &'a Path,
    cert: &'a Path,
    key: &'a Path,
}

fn start_mosquitto(
    children: &mut Children,
    name: &str,
    dir: &Path,
    port: u16,
    args: &Args,
    tls: Option<TlsFiles<'_>>,
) -> PathBuf {
    let mut conf = format!(
        "# community-gateway load bench: {name}\n\
         user root\n\
         per_listener_settings false\n\
         allow_anonymous true\n\
         persistence false\n\
         max_queued_messages 10000000\n\
         max_inflight_messages {inflight}\n\
         set_tcp_nodelay {nodelay}\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         connection_messages true\n\
         listener {port} 127.0.0.1\n",
        inflight = args.broker_inflight,
        nodelay = args.broker_nodelay,
    );
    if let Some(t) = tls {
        let _ = write!(
            conf,
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            t.ca.display(),
            t.cert.display(),
            t.key.display()
        );
    }
    let conf_path = dir.join(format!("{name}.conf"));
    let log_path = dir.join(format!("{name}.log"));
    std::fs::write(&conf_path, conf).unwrap();
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(MOSQUITTO)
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {MOSQUITTO}: {e}"));
    children.add(name, child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = children.get(name).try_wait() {
            panic!(
                "{name} (mosquitto) exited at start: {status}\n--- {}:\n{}",
                log_path.display(),
                tail(&log_path, 40)
            );
        }
        if port_open(port) {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "{name} (mosquitto) does not listen on {port}\n{}",
                tail(&log_path, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    log_path
}

// ---------------------------------------------------------------------------
// MQTT clients (rumqttc)

static CLIENT_SEQ: AtomicU64 = AtomicU64::new(0);

fn client_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        CLIENT_SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

fn options(id: String, port: u16, inflight: u16, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(inflight);
    o.set_clean_session(clean);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// Creates the client and polls its event loop until CONNACK. The harness's
/// own sockets have Nagle off, so they add no delay of their own.
async fn connect(opts: MqttOptions, cap: usize) -> Result<(AsyncClient, EventLoop), String> {
    let (client, mut el) = AsyncClient::new(opts, cap);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    let wait = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("connect: {e}")),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .map_err(|_| "no CONNACK within 10 s".to_string())??;
    Ok((client, el))
}

async fn subscribe(client: &AsyncClient, el: &mut EventLoop, filter: &str) -> Result<(), String> {
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    let wait = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("subscribe: {e}")),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .map_err(|_| "no SUBACK within 10 s".to_string())?
}

#[derive(Default)]
struct PubStats {
    acks: AtomicU64,
    error: Mutex<Option<String>>,
}

/// A QoS 1 publisher on the local broker; its event loop runs on a task
/// that counts PUBACKs.
struct Publisher {
    client: AsyncClient,
    stats: Arc<PubStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    async fn connect(port: u16, inflight: u16) -> Result<Publisher, String> {
        let (client, mut el) = connect(
            options(client_id("load-device"), port, inflight, true),
            4096,
        )
        .await?;
        let stats = Arc::new(PubStats::default());
        let s = stats.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        s.acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        *s.error.lock().unwrap() = Some(e.to_string());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Publisher {
            client,
            stats,
            task,
        })
    }

    async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publisher request channel");
    }

    fn acks(&self) -> u64 {
        self.stats.acks.load(Ordering::Relaxed)
    }

    fn error(&self) -> Option<String> {
        self.stats.error.lock().unwrap().clone()
    }

    async fn wait_acks(&self, n: u64, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        while self.acks() < n {
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Some(Instant::now())
    }

    async fn close(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// Gives the gateway's persistent session its subscription before the
/// gateway first connects, so nothing published from now on is missed.
async fn provision_session(port: u16, id: &str, filter: &str) -> Result<(), String> {
    let (client, mut el) = connect(options(id.into(), port, 10, false), 16).await?;
    subscribe(&client, &mut el, filter).await?;
    client.disconnect().await.map_err(|e| e.to_string())?;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

// ---------------------------------------------------------------------------
// The compound: roster, devices, configuration, events

fn write_roster(path: &Path, residents: usize) {
    let mut csv = String::from("resident_id,building,unit,room,grid,credentials,watch\n");
    for r in 0..residents {
        let door = r % UNIT_DOORS;
        let room = 100 + (r / UNIT_DOORS) / 2; // two residents per household
        let watch = if r % 10 == 0 { "yes" } else { "no" };
        let _ = writeln!(
            csv,
            "R-{r:05},{},{},{room},G-{},C{r:05};F{r:05},{watch}",
            door / 4 + 1,
            door % 4 + 1,
            door / 20
        );
    }
    std::fs::write(path, csv).unwrap();
}

struct GatewayFiles {
    config: PathBuf,
    store: PathBuf,
    log: PathBuf,
    admin_port: u16,
    client_id: String,
    filter: String,
}

fn write_gateway_config(
    dir: &Path,
    args: &Args,
    local_port: u16,
    platform_port: u16,
    certs: &Certs,
    elevators: &[TcpBox],
) -> GatewayFiles {
    write_roster(&dir.join("residents.csv"), args.residents);
    let store = dir.join("store");
    let admin_port = free_port();
    let client_id = format!("community-gateway-{COMPOUND}");
    let filter = format!("community/{COMPOUND}/events/#");
    let q = |p: &Path| toml_string(&p.display().to_string());
    let mut cfg = format!(
        "# written by benches/load.rs\n\
         compound = \"{COMPOUND}\"\n\
         timezone = \"Asia/Shanghai\"\n\
         language = \"zh-CN\"\n\
         roster = \"residents.csv\"\n\n\
         [storage]\npath = {store}\n\n\
         [privacy]\nkey = \"load-bench-secret\"\n\n\
         [admin]\nenabled = true\nlisten = \"127.0.0.1:{admin_port}\"\n\n\
         [local_mqtt]\nhost = \"127.0.0.1\"\nport = {local_port}\nclient_id = \"{client_id}\"\nkeep_alive = \"30s\"\n\n\
         [[local_mqtt.subscriptions]]\ntopic = \"{filter}\"\nformat = \"canonical\"\nqos = 1\n\n\
         [platform]\nhost = \"127.0.0.1\"\nport = {platform_port}\nkeep_alive = \"30s\"\n\
         tls = {{ ca_file = {ca}, cert_file = {cert}, key_file = {key}, server_name = \"localhost\" }}\n\n",
        store = q(&store),
        ca = q(&certs.ca),
        cert = q(&certs.gateway.cert),
        key = q(&certs.gateway.key),
    );
    if !elevators.is_empty() {
        cfg.push_str("[modbus]\ninterval = \"1s\"\ntimeout = \"500ms\"\n\n");
    }
    for (i, b) in elevators.iter().enumerate() {
        let _ = write!(
            cfg,
            "[[devices]]\nid = \"el-{i}\"\nkind = \"elevator\"\nbuilding = \"{}\"\n\
             modbus = {{ tcp = \"{}\", slave = 247, profile = \"monitor-box\" }}\n\n",
            i / 2 + 1,
            b.addr
        );
    }
    for g in 0..GATES {
        let _ = write!(
            cfg,
            "[[devices]]\nid = \"gate-{g}\"\nkind = \"access\"\nperimeter = true\n\n"
        );
    }
    for d in 0..UNIT_DOORS {
        let _ = write!(
            cfg,
            "[[devices]]\nid = \"door-{d}\"\nkind = \"access\"\nbuilding = \"{}\"\nunit = \"{}\"\n\n",
            d / 4 + 1,
            d % 4 + 1
        );
    }
    let config = dir.join("gateway.toml");
    std::fs::write(&config, cfg).unwrap();
    GatewayFiles {
        config,
        store,
        log: dir.join("gateway.log"),
        admin_port,
        client_id,
        filter,
    }
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Now in the compound's zone, millisecond precision (inside `clock.max_skew`).
fn now_ts() -> String {
    let tz = chrono::FixedOffset::east_opt(8 * 3600).unwrap();
    chrono::Utc::now()
        .with_timezone(&tz)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

fn event_topic(device: &str) -> String {
    format!("community/{COMPOUND}/events/{device}")
}

/// A door-access event as a controller would send it: 99% a resident badging
/// at the door of their unit (in or out), 1% an unknown visitor code refused.
fn access_event(rng: &mut Rng, residents: usize, ts: &str) -> (String, Vec<u8>) {
    if rng.below(100) == 0 {
        let device = format!("door-{}", rng.below(UNIT_DOORS));
        let payload = format!(
            r#"{{"type":"access","ts":"{ts}","device":"{device}","credential":"V{:04}","granted":false,"direction":"in"}}"#,
            rng.below(2000)
        );
        return (event_topic(&device), payload.into_bytes());
    }
    let r = rng.below(residents);
    let device = format!("door-{}", r % UNIT_DOORS);
    let credential = if rng.below(4) == 0 { 'F' } else { 'C' };
    let direction = if rng.below(2) == 0 { "in" } else { "out" };
    let payload = format!(
        r#"{{"type":"access","ts":"{ts}","device":"{device}","credential":"{credential}{r:05}","granted":true,"direction":"{direction}"}}"#
    );
    (event_topic(&device), payload.into_bytes())
}

fn door_event(device: &str, state: &str) -> (String, Vec<u8>) {
    let payload = format!(
        r#"{{"type":"door","ts":"{}","device":"{device}","state":"{state}"}}"#,
        now_ts()
    );
    (event_topic(device), payload.into_bytes())
}

// ---------------------------------------------------------------------------
// The gateway's admin endpoint and /proc

async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
        s.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(|e| format!("send: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| format!("GET {path}: no answer within 5 s"))??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP response: {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("malformed status line: {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
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

/// `/metrics`, summed per metric name over all label sets.
#[derive(Debug, Clone, Default)]
struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    fn parse(body: &str) -> Metrics {
        let mut out: BTreeMap<String, f64> = BTreeMap::new();
        for line in body.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, rest) = match line.rfind('}') {
                Some(i) => (&line[..=i], line[i + 1..].trim()),
                None => match line.split_once(char::is_whitespace) {
                    Some((s, r)) => (s, r.trim()),
                    None => continue,
                },
            };
            let Ok(value) = rest.split_whitespace().next().unwrap_or("").parse::<f64>() else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            *out.entry(name.to_string()).or_default() += value;
            if series.contains('{') {
                out.insert(series.to_string(), value);
            }
        }
        Metrics(out)
    }

    fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }

    /// Access events received over MQTT (elevator samples left out).
    fn mqtt_received(&self) -> f64 {
        self.get("cg_events_received_total{source=\"mqtt\"}")
    }

    /// Events processed by the engine, less the elevator samples (every
    /// Modbus sample received is processed).
    fn mqtt_processed(&self) -> f64 {
        self.get("cg_events_processed_total") - self.get(MODBUS_SAMPLES)
    }

    /// The labelled series of `name` with a non-zero value, `labels=value`.
    fn nonzero_series(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k.starts_with(name) && k[name.len()..].starts_with('{') && **v > 0.0)
            .map(|(k, v)| format!("{}={v}", &k[name.len()..]))
            .collect()
    }
}

async fn metrics(port: u16) -> Result<Metrics, String> {
    match http_get(port, "/metrics").await? {
        (200, body) => Ok(Metrics::parse(&body)),
        (code, body) => Err(format!("/metrics answered {code}: {body}")),
    }
}

/// A snapshot of the gateway process from /proc.
#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    rss_kb: u64,
    hwm_kb: u64,
    anon_kb: u64,
    file_kb: u64,
    write_bytes: u64,
    cpu_secs: f64,
    threads: u64,
}

fn proc_sample(pid: u32) -> ProcSample {
    let mut s = ProcSample::default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    for line in status.lines() {
        let num = |l: &str| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if line.starts_with("VmRSS:") {
            s.rss_kb = num(line);
        } else if line.starts_with("VmHWM:") {
            s.hwm_kb = num(line);
        } else if line.starts_with("RssAnon:") {
            s.anon_kb = num(line);
        } else if line.starts_with("RssFile:") {
            s.file_kb = num(line);
        } else if line.starts_with("Threads:") {
            s.threads = num(line);
        }
    }
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    for line in io.lines() {
        if let Some(v) = line.strip_prefix("write_bytes:") {
            s.write_bytes = v.trim().parse().unwrap_or(0);
        }
    }
    s.cpu_secs = cpu_secs(&pid.to_string());
    s
}

/// utime + stime of `/proc/<pid>` (`self` for this process), seconds.
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    // Fields after the command name start at field 3 (state); utime and
    // stime are fields 14 and 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / TICKS_PER_SEC
}

/// CPU seconds used so far by the processes of the run.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    gateway: f64,
    local: f64,
    platform: f64,
    harness: f64,
}

static PIDS: Mutex<[u32; 3]> = Mutex::new([0; 3]);

fn cpu_now() -> Cpu {
    let [gateway, local, platform] = *PIDS.lock().unwrap();
    let of = |pid: u32| {
        if pid == 0 {
            0.0
        } else {
            cpu_secs(&pid.to_string())
        }
    };
    Cpu {
        gateway: of(gateway),
        local: of(local),
        platform: of(platform),
        harness: cpu_secs("self"),
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            gateway: self.gateway - o.gateway,
            local: self.local - o.local,
            platform: self.platform - o.platform,
            harness: self.harness - o.harness,
        }
    }
}

impl Cpu {
    /// Cores busy on average over `secs`, per process.
    fn show(&self, secs: f64) -> String {
        let pct = |v: f64| v / secs * 100.0;
        format!(
            "CPU over {secs:.1} s: gateway {:.0}%, local broker {:.0}%, platform broker {:.0}%, harness {:.0}% of a core",
            pct(self.gateway),
            pct(self.local),
            pct(self.platform),
            pct(self.harness)
        )
    }
}

/// Commits per duration bucket between two scrapes: `<= le` counts.
fn commit_histogram(m0: &Metrics, m1: &Metrics) -> String {
    let mut buckets: Vec<(f64, f64)> =
        m1.0.iter()
            .filter_map(|(k, v)| {
                let le = k
                    .strip_prefix("cg_commit_seconds_bucket{le=\"")?
                    .strip_suffix("\"}")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, v - m0.0.get(k).copied().unwrap_or(0.0)))
            })
            .collect();
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let total = buckets.last().map_or(0.0, |b| b.1);
    let mut out = Vec::new();
    let mut prev = 0.0;
    let mut lower = String::from("0");
    for (bound, cum) in &buckets {
        let n = cum - prev;
        prev = *cum;
        let upper = if bound.is_finite() {
            format!("{}", bound * 1e3)
        } else {
            "inf".into()
        };
        if n > 0.0 {
            out.push(format!("({lower},{upper}]ms:{n}"));
        }
        lower = upper;
    }
    if total == 0.0 {
        return "none".into();
    }
    out.join(" ")
}

/// Apparent and allocated size of a folder tree.
fn dir_size(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                apparent += m.len();
                allocated += m.blocks() * 512;
            }
        }
    }
    (apparent, allocated)
}

/// The file system type of `path` per /proc/self/mounts (longest mount prefix).
fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut best = (0, String::from("?"));
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let mnt = Path::new(f[1]);
        if path.starts_with(mnt) && f[1].len() >= best.0 {
            best = (f[1].len(), format!("{} ({})", f[2], f[0]));
        }
    }
    best.1
}

// ---------------------------------------------------------------------------
// Phases

struct Relay {
    messages: u64,
    secs: f64,
    rate: f64,
    accept_rate: f64,
    cpu: Cpu,
}

/// What the local broker relays at QoS 1: one publisher (window
/// `publisher_inflight`) to one QoS 1 subscriber on loopback.
async fn measure_relay(port: u16, args: &Args, payloads: &[(String, Vec<u8>)]) -> Relay {
    let (sub, mut el) = connect(options(client_id("load-relay-sub"), port, 100, true), 1024)
        .await
        .unwrap_or_else(|e| panic!("relay subscriber: {e}"));
    subscribe(&sub, &mut el, "relay/#")
        .await
        .unwrap_or_else(|e| panic!("relay subscriber: {e}"));
    let received = Arc::new(AtomicU64::new(0));
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let done_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let (r, t, d) = (received.clone(), target.clone(), done_at.clone());
    let sub_task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    let n = r.fetch_add(1, Ordering::Relaxed) + 1;
                    if n == t.load(Ordering::Relaxed) {
                        *d.lock().unwrap() = Some(Instant::now());
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("relay subscriber: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let publisher = Publisher::connect(port, args.publisher_inflight)
        .await
        .unwrap_or_else(|e| panic!("relay publisher: {e}"));
    let warmup = (args.relay_messages / 10).clamp(1, 10_000);
    let mut result = None;
    let mut acked = 0;
    for (round, n) in [warmup, args.relay_messages].into_iter().enumerate() {
        received.store(0, Ordering::SeqCst);
        *done_at.lock().unwrap() = None;
        target.store(n, Ordering::SeqCst);
        let cpu0 = cpu_now();
        let start = Instant::now();
        for i in 0..n {
            let (topic, payload) = &payloads[i as usize % payloads.len()];
            publisher
                .publish(&format!("relay/{topic}"), payload.clone())
                .await;
        }
        acked += n;
        let accepted = publisher
            .wait_acks(acked, Duration::from_secs(120))
            .await
            .unwrap_or_else(|| panic!("relay: broker PUBACKs missing: {:?}", publisher.error()));
        let deadline = Instant::now() + Duration::from_secs(120);
        let done = loop {
            if let Some(t) = *done_at.lock().unwrap() {
                break t;
            }
            if Instant::now() > deadline {
                panic!(
                    "relay: {} of {n} messages received within 120 s",
                    received.load(Ordering::SeqCst)
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let secs = (done - start).as_secs_f64();
        if round == 1 {
            result = Some(Relay {
                messages: n,
                secs,
                rate: n as f64 / secs,
                accept_rate: n as f64 / (accepted - start).as_secs_f64(),
                cpu: cpu_now() - cpu0,
            });
        }
    }
    publisher.close().await;
    let _ = sub.disconnect().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    sub_task.abort();
    result.unwrap()
}

/// Alert transitions received by the platform subscriber, with arrival instants.
type Received = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

async fn platform_subscriber(
    port: u16,
    certs: &Certs,
) -> (AsyncClient, Received, tokio::task::JoinHandle<()>) {
    let mut opts = options(client_id("load-platform"), port, 100, true);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        client_tls(&certs.ca, &certs.subscriber.cert, &certs.subscriber.key),
    )));
    let (client, mut el) = connect(opts, 1024)
        .await
        .unwrap_or_else(|e| panic!("platform subscriber: {e}"));
    subscribe(&client, &mut el, &format!("community/{COMPOUND}/alerts"))
        .await
        .unwrap_or_else(|e| panic!("platform subscriber: {e}"));
    let received: Received = Arc::new(Mutex::new(Vec::new()));
    let r = received.clone();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let at = Instant::now();
                    r.lock().unwrap().push((at, p.payload.to_vec()));
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("platform subscriber: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    (client, received, task)
}

struct Gw {
    pid: u32,
    admin: u16,
}

impl Gw {
    async fn metrics(&self) -> Metrics {
        metrics(self.admin)
            .await
            .unwrap_or_else(|e| panic!("gateway /metrics: {e}"))
    }

    /// Polls until `pred` holds; `None` after `timeout`.
    async fn wait_metrics(
        &self,
        timeout: Duration,
        every: Duration,
        pred: impl Fn(&Metrics) -> bool,
    ) -> Option<(Instant, Metrics)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(m) = metrics(self.admin).await {
                if pred(&m) {
                    return Some((Instant::now(), m));
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(every).await;
        }
    }
}

struct Latency {
    sent: u64,
    secs: f64,
    expected: u64,
    received: u64,
    duplicates: u64,
    lat_ms: Vec<f64>,
    processed: u64,
    caught_up_after: Option<f64>,
    transitions_received: u64,
    rss_max_kb: u64,
    /// RSS at every 10 s of the phase (MB): shows a plateau or a creep.
    rss_timeline: Vec<f64>,
    hwm_kb: u64,
    write_bytes: u64,
    cpu_secs: f64,
    commits: u64,
    committed: u64,
    commit_mean_ms: f64,
    commit_max_ms: f64,
    commit_hist: String,
    behind_max_ms: f64,
    open_alerts: f64,
    anon_kb: u64,
    file_kb: u64,
    cpu: Cpu,
    acks_dropped: u64,
}

async fn fixed_rate(gw: &Gw, args: &Args, received: &Received) -> Latency {
    let publisher = Publisher::connect(local_port(), args.publisher_inflight)
        .await
        .unwrap_or_else(|e| panic!("publisher: {e}"));
    let m0 = gw.metrics().await;
    let p0 = proc_sample(gw.pid);
    let cpu0 = cpu_now();
    let acks_dropped0 = ACKS_DROPPED.load(Ordering::Relaxed);
    let skip = received.lock().unwrap().len();

    // Resident memory while the phase runs.
    let pid = gw.pid;
    let stop = Arc::new(AtomicU64::new(0));
    let rss_max = Arc::new(AtomicU64::new(0));
    let rss_timeline = Arc::new(Mutex::new(Vec::new()));
    let (st, rm, tl) = (stop.clone(), rss_max.clone(), rss_timeline.clone());
    let sampler = tokio::spawn(async move {
        let mut tick = 0u64;
        while st.load(Ordering::Relaxed) == 0 {
            let rss = proc_sample(pid).rss_kb;
            rm.fetch_max(rss, Ordering::Relaxed);
            tick += 1;
            if tick % 100 == 0 {
                tl.lock().unwrap().push(mb(rss));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let total = args.rate * args.seconds;
    let half = args.pool / 2;
    let mut pending: Vec<VecDeque<Instant>> = vec![VecDeque::new(); args.pool as usize];
    let mut expected = 0u64;
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = Instant::now() + Duration::from_millis(20);
    let mut behind_max = Duration::ZERO;
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        } else {
            behind_max = behind_max.max(now - due);
        }
        let (slot, k) = (i % args.trigger_every, i / args.trigger_every);
        let mut trigger = None;
        let (topic, payload) = if slot == 0 {
            let d = k % args.pool;
            trigger = Some(d as usize);
            door_event(&format!("lat-{d:04}"), "forced")
        } else if slot == 1 && k >= half {
            // Close the door forced `half` triggers ago, so that its device
            // can raise again when the pool wraps.
            door_event(&format!("lat-{:04}", (k - half) % args.pool), "closed")
        } else {
            access_event(&mut rng, args.residents, &now_ts())
        };
        let sent = Instant::now();
        publisher.publish(&topic, payload).await;
        if let Some(d) = trigger {
            pending[d].push_back(sent);
            expected += 1;
        }
    }
    let send_secs = (Instant::now() - start).as_secs_f64();
    let cpu = cpu_now() - cpu0;
    let end = Instant::now();
    let base = m0.mqtt_processed() as u64;
    let caught = gw
        .wait_metrics(Duration::from_secs(30), Duration::from_millis(20), |m| {
            m.mqtt_processed() as u64 >= base + total
        })
        .await;
    let caught_up_after = caught.as_ref().map(|(t, _)| (*t - end).as_secs_f64());
    // Every raise should be at the platform well before this.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    let mut lat_ms = Vec::new();
    let mut duplicates = 0;
    let mut scanned = skip;
    let mut transitions_received = 0;
    loop {
        let batch: Vec<(Instant, Vec<u8>)> = received.lock().unwrap()[scanned..].to_vec();
        scanned += batch.len();
        for (at, payload) in batch {
            transitions_received += 1;
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&payload) else {
                continue;
            };
            if v["rule"] != "door_forced" || v["state"] != "raised" {
                continue;
            }
            let Some(d) = v["subject"]["id"]
                .as_str()
                .and_then(|s| s.strip_prefix("lat-"))
                .and_then(|s| s.parse::<usize>().ok())
            else {
                continue;
            };
            let key = (
                v["alert_id"].as_str().unwrap_or_default().to_string(),
                v["revision"].as_u64().unwrap_or(0),
            );
            if !seen.insert(key) {
                duplicates += 1;
                continue;
            }
            match pending.get_mut(d).and_then(|q| q.pop_front()) {
                Some(sent) => lat_ms.push((at - sent).as_secs_f64() * 1e3),
                None => eprintln!("  unexpected door_forced raise for lat-{d:04}"),
            }
        }
        if lat_ms.len() as u64 >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(1, Ordering::Relaxed);
    let _ = sampler.await;
    let p1 = proc_sample(gw.pid);
    if let Ok(dir) = std::env::var("CG_LOAD_SMAPS") {
        // Where the memory is, for whoever tunes it.
        let _ = std::fs::copy(
            format!("/proc/{}/smaps", gw.pid),
            Path::new(&dir).join("gateway-smaps-after-fixed-rate.txt"),
        );
    }
    let m1 = gw.metrics().await;
    publisher.close().await;
    let commits = (m1.get("cg_commits_total") - m0.get("cg_commits_total")) as u64;
    let commit_secs = m1.get("cg_commit_seconds_sum") - m0.get("cg_commit_seconds_sum");
    let rss_timeline = rss_timeline.lock().unwrap().clone();
    Latency {
        sent: total,
        secs: send_secs,
        expected,
        received: lat_ms.len() as u64,
        duplicates,
        lat_ms,
        processed: (m1.mqtt_processed() - m0.mqtt_processed()) as u64,
        caught_up_after,
        transitions_received,
        rss_max_kb: rss_max.load(Ordering::Relaxed).max(p1.rss_kb),
        rss_timeline,
        hwm_kb: p1.hwm_kb,
        write_bytes: p1.write_bytes - p0.write_bytes,
        cpu_secs: p1.cpu_secs - p0.cpu_secs,
        commits,
        committed: (m1.get("cg_committed_events_total") - m0.get("cg_committed_events_total"))
            as u64,
        commit_mean_ms: if commits > 0 {
            commit_secs / commits as f64 * 1e3
        } else {
            0.0
        },
        commit_max_ms: m1.get("cg_commit_seconds_max") * 1e3,
        commit_hist: commit_histogram(&m0, &m1),
        behind_max_ms: behind_max.as_secs_f64() * 1e3,
        open_alerts: m1.get("cg_open_alerts"),
        anon_kb: p1.anon_kb,
        file_kb: p1.file_kb,
        cpu,
        acks_dropped: ACKS_DROPPED.load(Ordering::Relaxed) - acks_dropped0,
    }
}

struct Ingest {
    events: u64,
    processed: u64,
    complete: bool,
    secs: f64,
    rate: f64,
    steady_rate: f64,
    accept_rate: f64,
    write_bytes: u64,
    cpu_secs: f64,
    commits: u64,
    committed: u64,
    commit_mean_ms: f64,
    transitions: u64,
    outbox_after: f64,
    commit_hist: String,
    cpu: Cpu,
    backlog_max: f64,
    stalled: bool,
    acks_dropped: u64,
}

async fn saturate(gw: &Gw, args: &Args, payloads: Vec<(String, Vec<u8>)>) -> Ingest {
    let publisher = Publisher::connect(local_port(), args.publisher_inflight)
        .await
        .unwrap_or_else(|e| panic!("publisher: {e}"));
    let m = payloads.len() as u64;
    let m0 = gw.metrics().await;
    let p0 = proc_sample(gw.pid);
    let processed0 = m0.mqtt_processed() as u64;
    let committed0 = m0.get("cg_committed_events_total") as u64;
    let cpu0 = cpu_now();
    let start = Instant::now();
    let publisher = Arc::new(publisher);
    let p = publisher.clone();
    let sender = tokio::spawn(async move {
        for (topic, payload) in payloads {
            p.publish(&topic, payload).await;
        }
        p.wait_acks(m, Duration::from_secs(600)).await
    });
    let (mut t10, mut t90) = (None, None);
    let mut backlog_max = 0.0f64;
    let acks_dropped0 = ACKS_DROPPED.load(Ordering::Relaxed);
    let (mut last_done, mut last_progress) = (0, start);
    let mut stalled = false;
    let deadline = start + Duration::from_secs(args.ingest_timeout);
    let (end, m1) = loop {
        let now = Instant::now();
        let mm = gw.metrics().await;
        let processed = mm.mqtt_processed() as u64 - processed0;
        let committed = mm.get("cg_committed_events_total") as u64 - committed0;
        let done = processed.min(committed);
        backlog_max = backlog_max.max(mm.mqtt_received() - mm.get("cg_committed_events_total"));
        if t10.is_none() && done >= m / 10 {
            t10 = Some(now);
        }
        if t90.is_none() && done >= m * 9 / 10 {
            t90 = Some(now);
        }
        if done > last_done {
            (last_done, last_progress) = (done, now);
        } else if now - last_progress > Duration::from_secs(STALL_SECS) {
            stalled = true;
            break (now, mm);
        }
        if done >= m || now > deadline {
            break (now, mm);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let cpu = cpu_now() - cpu0;
    let accepted = sender.await.ok().flatten();
    let p1 = proc_sample(gw.pid);
    let processed = m1.mqtt_processed() as u64 - processed0;
    // A stall is timed up to the last progress, not to when it was noticed.
    let end = if stalled { last_progress } else { end };
    let secs = (end - start).as_secs_f64();
    let commits = (m1.get("cg_commits_total") - m0.get("cg_commits_total")) as u64;
    let commit_secs = m1.get("cg_commit_seconds_sum") - m0.get("cg_commit_seconds_sum");
    if let Ok(p) = Arc::try_unwrap(publisher) {
        p.close().await;
    }
    Ingest {
        events: m,
        processed,
        complete: processed >= m,
        secs,
        rate: processed as f64 / secs,
        steady_rate: match (t10, t90) {
            (Some(a), Some(b)) if b > a => (m * 8 / 10) as f64 / (b - a).as_secs_f64(),
            _ => f64::NAN,
        },
        accept_rate: accepted.map_or(f64::NAN, |t| m as f64 / (t - start).as_secs_f64()),
        write_bytes: p1.write_bytes - p0.write_bytes,
        cpu_secs: p1.cpu_secs - p0.cpu_secs,
        commits,
        committed: m1.get("cg_committed_events_total") as u64 - committed0,
        commit_mean_ms: if commits > 0 {
            commit_secs / commits as f64 * 1e3
        } else {
            0.0
        },
        transitions: (m1.get("cg_alert_transitions_total") - m0.get("cg_alert_transitions_total"))
            as u64,
        outbox_after: m1.get("cg_outbox_entries"),
        commit_hist: commit_histogram(&m0, &m1),
        cpu,
        backlog_max,
        stalled,
        acks_dropped: ACKS_DROPPED.load(Ordering::Relaxed) - acks_dropped0,
    }
}

/// Starts `community-gateway run` on the files. Its output goes through a
/// pipe (as to journald), so its write_bytes counts its store only, and is
/// appended to the log file by a thread that also counts dropped acks.
fn spawn_gateway(children: &mut Children, name: &str, args: &Args, files: &GatewayFiles) -> u32 {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&files.log)
        .unwrap();
    let mut child = Command::new(&args.gateway)
        .arg("run")
        .arg("--config")
        .arg(&files.config)
        .env("RUST_LOG", &args.log)
        .env("NO_COLOR", "1")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", args.gateway.display()));
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let mut out = log.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stream);
            let mut line = Vec::new();
            loop {
                line.clear();
                match std::io::BufRead::read_until(&mut reader, b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if line
                    .windows(ACK_DROP_LINE.len())
                    .any(|w| w == ACK_DROP_LINE)
                {
                    ACKS_DROPPED.fetch_add(1, Ordering::Relaxed);
                }
                if out.write_all(&line).is_err() {
                    break;
                }
            }
        });
    }
    children.add(name, child)
}

/// Polls `/readyz` until 200 (30 s at most; an early exit is an error).
async fn wait_ready(children: &mut Children, name: &str, gw: &Gw) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = children.get(name).try_wait() {
            return Err(format!("the gateway exited: {status}"));
        }
        if let Ok((200, _)) = http_get(gw.admin, "/readyz").await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("no 200 from /readyz within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a second start of the gateway finds at the broker.
struct Restart {
    received: u64,
    duplicates: u64,
    processed: u64,
}

/// Starts the gateway again on the same store and session: whatever it
/// receives is what the broker still held unacknowledged for it.
async fn restart_check(
    children: &mut Children,
    args: &Args,
    files: &GatewayFiles,
) -> Option<Restart> {
    let pid = spawn_gateway(children, "gateway-restart", args, files);
    let gw = Gw {
        pid,
        admin: files.admin_port,
    };
    if let Err(e) = wait_ready(children, "gateway-restart", &gw).await {
        eprintln!("restart check: {e}");
        return None;
    }
    gw.wait_metrics(Duration::from_secs(10), Duration::from_millis(20), |m| {
        m.get("cg_local_mqtt_connected") >= 1.0
    })
    .await?;
    // Until what arrives has been committed and nothing more came for 1 s
    // (MQTT only: elevator samples keep coming).
    let mut last = (u64::MAX, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(15);
    let m = loop {
        let m = gw.metrics().await;
        let received = m.mqtt_received() as u64;
        if Instant::now() > deadline {
            break m;
        }
        if received != last.0 || m.get("cg_committed_events_total") < received as f64 {
            last = (received, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = children.terminate("gateway-restart", Duration::from_secs(20));
    Some(Restart {
        received: m.mqtt_received() as u64,
        duplicates: m.get("cg_events_duplicate_total") as u64,
        processed: m.mqtt_processed() as u64,
    })
}

static LOCAL_PORT: AtomicU64 = AtomicU64::new(0);
fn local_port() -> u16 {
    LOCAL_PORT.load(Ordering::Relaxed) as u16
}

// ---------------------------------------------------------------------------

/// `cargo build --release` of the gateway into `target/load-release` (its
/// own target folder: `cargo bench` puts its bench-profile build of the same
/// binary at `target/release/community-gateway`). Exits on failure.
fn build_release_gateway() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target folder")
        .join("load-release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    eprintln!(
        "building the release gateway: cargo build --release --bin community-gateway --target-dir {}",
        target.display()
    );
    let started = Instant::now();
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--release",
            "--bin",
            "community-gateway",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .stdin(Stdio::null());
    // What `cargo bench` sets for this process must not reach the inner
    // build: ring's build script reruns when CARGO_MANIFEST_DIR changes, so
    // it would rebuild whenever the bench and a shell alternate.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_EXE_")
            || matches!(
                k.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
            )
        {
            build.env_remove(&key);
        }
    }
    let status = build.status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("load: cargo build --release failed ({s}); or pass --gateway PATH|bench");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("load: cannot run cargo: {e}; pass --gateway PATH|bench");
            std::process::exit(1);
        }
    }
    if started.elapsed() > Duration::from_secs(5) {
        eprintln!("built in {:.0} s", started.elapsed().as_secs_f64());
    }
    target.join("release").join("community-gateway")
}

/// Acknowledgements the gateway reported it could not queue (its debug line
/// "could not queue an acknowledgement"): those messages stay unacknowledged
/// at the broker until the next reconnect.
static ACKS_DROPPED: AtomicU64 = AtomicU64::new(0);
const ACK_DROP_LINE: &[u8] = b"could not queue an acknowledgement";

fn main() {
    let args = parse_args();
    if !Path::new(MOSQUITTO).exists() {
        eprintln!(
            "load: {MOSQUITTO} is missing; this benchmark runs two real mosquitto brokers.\n\
             Install it with:  apt-get install -y mosquitto"
        );
        std::process::exit(1);
    }
    let mut args = args;
    if args.gateway.as_os_str().is_empty() {
        args.gateway = build_release_gateway();
    }
    if !args.gateway.exists() {
        eprintln!(
            "load: gateway binary {} is missing; pass --gateway PATH",
            args.gateway.display()
        );
        std::process::exit(1);
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        kill_registered();
        default_hook(info);
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.spawn(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("load: interrupted; stopping the brokers and the gateway");
        kill_registered();
        std::process::exit(130);
    });
    let code = rt.block_on(run(args));
    drop(rt);
    std::process::exit(code);
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run(args: Args) -> i32 {
    let wall = Instant::now();
    let load_start = loadavg();
    let _ = std::fs::create_dir_all(&args.work_dir);
    let tmp = tempfile::Builder::new()
        .prefix("cg-load-")
        .tempdir_in(&args.work_dir)
        .expect("temporary folder");
    let dir = tmp.path().to_path_buf();
    let mut children = Children::default();

    // 1. Brokers.
    let certs = Certs::generate_in(&{
        let d = dir.join("certs");
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    let local = free_port();
    LOCAL_PORT.store(local as u64, Ordering::Relaxed);
    let platform = free_port();
    let local_log = start_mosquitto(&mut children, "local-broker", &dir, local, &args, None);
    PIDS.lock().unwrap()[1] = children.get("local-broker").id();
    let platform_log = start_mosquitto(
        &mut children,
        "platform-broker",
        &dir,
        platform,
        &args,
        Some(TlsFiles {
            ca: &certs.ca,
            cert: &certs.server.cert,
            key: &certs.server.key,
        }),
    );
    PIDS.lock().unwrap()[2] = children.get("platform-broker").id();
    eprintln!(
        "brokers: local 127.0.0.1:{local} (plain), platform 127.0.0.1:{platform} (TLS, client certificates); max_inflight_messages {}, set_tcp_nodelay {}",
        args.broker_inflight, args.broker_nodelay
    );

    // Events for the relay measurement and the saturation phase.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let ts = now_ts();
    let ingest: Vec<(String, Vec<u8>)> = (0..args.ingest_events)
        .map(|_| access_event(&mut rng, args.residents, &ts))
        .collect();

    // 2. What the broker relays.
    eprintln!(
        "relay: {} messages QoS 1 through the local broker (publisher window {})...",
        args.relay_messages, args.publisher_inflight
    );
    let relay = measure_relay(local, &args, &ingest).await;
    eprintln!("relay: {:.0} msg/s", relay.rate);

    // 3. The gateway, and the elevators it polls.
    let elevators = modbus_sim::serve_moving_boxes(args.elevators).await;
    let files = write_gateway_config(&dir, &args, local, platform, &certs, &elevators);
    if let Err(e) = provision_session(local, &files.client_id, &files.filter).await {
        panic!("provisioning the gateway's session: {e}");
    }
    let started = Instant::now();
    let pid = spawn_gateway(&mut children, "gateway", &args, &files);
    PIDS.lock().unwrap()[0] = pid;
    let gw = Gw {
        pid,
        admin: files.admin_port,
    };
    let ready = wait_ready(&mut children, "gateway", &gw).await;
    if let Err(e) = ready {
        panic!(
            "{e}\n--- {}:\n{}",
            files.log.display(),
            tail(&files.log, 40)
        );
    }
    let ready_secs = started.elapsed().as_secs_f64();
    if gw
        .wait_metrics(Duration::from_secs(15), Duration::from_millis(20), |m| {
            m.get("cg_uplink_connected") >= 1.0 && m.get("cg_local_mqtt_connected") >= 1.0
        })
        .await
        .is_none()
    {
        panic!(
            "the gateway did not connect to both brokers within 15 s\n--- {}:\n{}\n--- platform broker:\n{}",
            files.log.display(),
            tail(&files.log, 40),
            tail(&platform_log, 20)
        );
    }
    let at_ready = proc_sample(pid);
    eprintln!(
        "gateway: pid {pid}, ready in {ready_secs:.2} s, RSS {:.1} MB; store {} on {}",
        mb(at_ready.rss_kb),
        files.store.display(),
        fs_type(&dir)
    );
    let (platform_client, received, platform_task) = platform_subscriber(platform, &certs).await;

    // 4. Latency at a fixed rate (and the memory of that regime).
    eprintln!(
        "fixed rate: {} events/s for {} s, every {}th a door `forced`...",
        args.rate, args.seconds, args.trigger_every
    );
    let modbus_before = gw.metrics().await.get(MODBUS_SAMPLES);
    let lat = fixed_rate(&gw, &args, &received).await;
    let modbus_samples = gw.metrics().await.get(MODBUS_SAMPLES) - modbus_before;
    let mut sorted = lat.lat_ms.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p90, p99, pmax) = (
        percentile(&sorted, 50.0),
        percentile(&sorted, 90.0),
        percentile(&sorted, 99.0),
        sorted.last().copied().unwrap_or(f64::NAN),
    );
    eprintln!(
        "fixed rate: {}/{} raises, p50 {p50:.1} ms, p99 {p99:.1} ms",
        lat.received, lat.expected
    );

    // 5. Saturation.
    eprintln!(
        "ingest: {} events QoS 1 as fast as the broker takes them...",
        args.ingest_events
    );
    let ing = saturate(&gw, &args, ingest).await;
    eprintln!(
        "ingest: {:.0} events/s ({} of {})",
        ing.rate, ing.processed, ing.events
    );
    // Let the uplink drain what the burst raised, then read the final state.
    let drained = gw
        .wait_metrics(Duration::from_secs(10), Duration::from_millis(50), |m| {
            m.get("cg_outbox_entries") == 0.0
        })
        .await
        .is_some();
    let m_end = gw.metrics().await;
    let end = proc_sample(pid);
    let (store_apparent, store_allocated) = dir_size(&files.store);
    let _ = platform_client.disconnect().await;
    let (exit, stop) = children.terminate("gateway", Duration::from_secs(20));
    let stop_secs = stop.as_secs_f64();
    eprintln!("restart check: starting the gateway again on the same store and session...");
    let restart = restart_check(&mut children, &args, &files).await;

    // 6. Report.
    let ratio = ing.rate / relay.rate;
    let ingest_ok = ing.complete && ratio >= INGEST_RATIO_BUDGET;
    let latency_ok = lat.received == lat.expected && lat.expected > 0 && p99 < LATENCY_BUDGET_MS;
    let rss_ok = lat.hwm_kb < RSS_BUDGET_KB;
    let bpe_fixed = lat.write_bytes as f64 / lat.processed.max(1) as f64;
    let bpe_ingest = ing.write_bytes as f64 / ing.processed.max(1) as f64;
    let mut r = String::new();
    let _ = writeln!(r, "\n== community-gateway live load ==");
    let _ = writeln!(
        r,
        "machine: {} CPUs, load average {} at start, {} at the end (other work on the machine skews every number)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_start,
        loadavg()
    );
    let _ = writeln!(
        r,
        "setup: {} residents ({} watched), {} access devices declared, {} forced-door devices (undeclared, reused after `closed`); \
         brokers: mosquitto, max_inflight_messages {}, set_tcp_nodelay {}; publisher window {}; gateway {}",
        args.residents,
        args.residents.div_ceil(10),
        UNIT_DOORS + GATES,
        args.pool,
        args.broker_inflight,
        args.broker_nodelay,
        args.publisher_inflight,
        args.gateway.display()
    );
    let _ = writeln!(
        r,
        "relay (broker alone, QoS 1 pub -> QoS 1 sub): {} msgs in {:.2} s = {:.0} msg/s (broker accepted {:.0} msg/s)\n    {}",
        relay.messages,
        relay.secs,
        relay.rate,
        relay.accept_rate,
        relay.cpu.show(relay.secs)
    );
    let _ = writeln!(
        r,
        "ingest (durable commit before ack): {} of {} events{} in {:.2} s = {:.0} events/s (10%-90%: {:.0}/s); broker accepted {:.0}/s\n    \
         = {:.2}x relay (target >= {INGEST_RATIO_BUDGET}) {}",
        ing.processed,
        ing.events,
        if ing.stalled {
            format!(" (STALLED: no progress for {STALL_SECS} s)")
        } else if !ing.complete {
            format!(" (gave up after {} s)", args.ingest_timeout)
        } else {
            String::new()
        },
        ing.secs,
        ing.rate,
        ing.steady_rate,
        ing.accept_rate,
        ratio,
        mark(ingest_ok)
    );
    let _ = writeln!(
        r,
        "    {} commits, {:.1} events/commit, mean commit {:.2} ms; commit times {}\n    \
         {} alert transitions; outbox after: {}; gateway CPU {:.0} µs/event\n    \
         most messages received but not yet committed (seen by /metrics): {} (broker window {}); \
         acknowledgements the gateway dropped: {}\n    {}",
        ing.commits,
        ing.committed as f64 / ing.commits.max(1) as f64,
        ing.commit_mean_ms,
        ing.commit_hist,
        ing.transitions,
        ing.outbox_after,
        ing.cpu_secs / ing.processed.max(1) as f64 * 1e6,
        ing.backlog_max,
        args.broker_inflight,
        ing.acks_dropped,
        ing.cpu.show(ing.secs)
    );
    let over = sorted.iter().filter(|v| **v >= LATENCY_BUDGET_MS).count();
    let _ = writeln!(
        r,
        "latency at {}/s for {} s ({} events sent in {:.2} s, harness at most {:.0} ms behind schedule; {} processed{}):\n    \
         event published -> door_forced raise received at the platform: {}/{} received, p50 {p50:.2} ms, p90 {p90:.2} ms, \
         p99 {p99:.2} ms, max {pmax:.2} ms, {over} >= {LATENCY_BUDGET_MS} ms (target p99 < {LATENCY_BUDGET_MS} ms, all received) {}",
        args.rate,
        args.seconds,
        lat.sent,
        lat.secs,
        lat.behind_max_ms,
        lat.processed,
        match lat.caught_up_after {
            Some(s) => format!(", caught up {:.0} ms after the last", s * 1e3),
            None => ", NOT caught up 30 s after the last".into(),
        },
        lat.received,
        lat.expected,
        mark(latency_ok)
    );
    let _ = writeln!(
        r,
        "    {} commits, {:.2} events/commit, mean commit {:.2} ms, slowest commit since start {:.1} ms; commit times {}\n    \
         {} transitions at the platform ({} duplicate raises); open alerts at the end {}; gateway CPU {:.0} µs/event\n    {}",
        lat.commits,
        lat.committed as f64 / lat.commits.max(1) as f64,
        lat.commit_mean_ms,
        lat.commit_max_ms,
        lat.commit_hist,
        lat.transitions_received,
        lat.duplicates,
        lat.open_alerts,
        lat.cpu_secs / lat.processed.max(1) as f64 * 1e6,
        lat.cpu.show(lat.secs)
    );
    let _ = writeln!(
        r,
        "elevators: {} simulated monitoring boxes (Modbus TCP) polled every 1 s: {:.0} samples during the {}/s phase \
         ({:.0} expected)",
        args.elevators,
        modbus_samples,
        args.rate,
        (args.elevators as u64 * args.seconds) as f64,
    );
    let _ = writeln!(
        r,
        "memory: at ready {:.1} MB; up to the end of the {}/s phase: peak RSS (VmHWM, incl. start-up) {:.1} MB (target < 20 MB) {}, \
         max sampled {:.1} MB (anon {:.1} MB, file {:.1} MB at the end)\n    \
         RSS every 10 s of that phase (MB): {}\n    \
         after saturation: VmHWM {:.1} MB, RSS at end {:.1} MB (anon {:.1}, file {:.1}); {} threads",
        mb(at_ready.rss_kb),
        args.rate,
        mb(lat.hwm_kb),
        mark(rss_ok),
        mb(lat.rss_max_kb),
        mb(lat.anon_kb),
        mb(lat.file_kb),
        lat.rss_timeline
            .iter()
            .map(|m| format!("{m:.1}"))
            .collect::<Vec<_>>()
            .join(" "),
        mb(end.hwm_kb),
        mb(end.rss_kb),
        mb(end.anon_kb),
        mb(end.file_kb),
        end.threads
    );
    let _ = writeln!(
        r,
        "disk: {:.0} B written per event at {}/s ({:.0} B per commit), {:.0} B per event at saturation ({:.0} B per commit); \
         total {:.1} MB\n    \
         (write_bytes of /proc/<pid>/io: page-cache writeback attributed to the gateway, counted when it dirties a page, \
         so a page rewritten after each flush counts each time; its log goes through a pipe and is not included)\n    \
         store now {:.1} MB apparent, {:.1} MB allocated",
        bpe_fixed,
        args.rate,
        lat.write_bytes as f64 / lat.commits.max(1) as f64,
        bpe_ingest,
        ing.write_bytes as f64 / ing.commits.max(1) as f64,
        end.write_bytes as f64 / 1e6,
        store_apparent as f64 / 1e6,
        store_allocated as f64 / 1e6,
    );
    let _ = writeln!(
        r,
        "cpu: gateway {:.2} s in total over {:.1} s alive (utime+stime)",
        end.cpu_secs,
        started.elapsed().as_secs_f64()
    );
    // Anything that looks wrong.
    let mut notes = Vec::new();
    for (name, what) in [
        ("cg_events_rejected_total", "rejected events"),
        ("cg_events_duplicate_total", "duplicate deliveries skipped"),
        ("cg_store_errors_total", "store errors"),
        ("cg_uplink_errors_total", "uplink errors"),
        ("cg_local_mqtt_errors_total", "local broker errors"),
        ("cg_outbox_dropped_total", "outbox drops"),
        ("cg_events_ts_replaced_total", "timestamps replaced"),
    ] {
        let v = m_end.get(name);
        if v > 0.0 {
            let labels = m_end.nonzero_series(name);
            notes.push(format!("{what}: {v} {}", labels.join(" ")));
        }
    }
    for (name, what) in [
        ("cg_uplink_connects_total", "uplink connections"),
        ("cg_local_mqtt_connects_total", "local broker connections"),
    ] {
        if m_end.get(name) > 1.0 {
            notes.push(format!("{what}: {}", m_end.get(name)));
        }
    }
    if !drained {
        notes.push(format!(
            "outbox not empty 10 s after the burst: {} entries",
            m_end.get("cg_outbox_entries")
        ));
    }
    // Counted from the log stream, so it includes the drain and the restart.
    let acks_dropped = ACKS_DROPPED.load(Ordering::Relaxed);
    if acks_dropped > 0 {
        notes.push(format!(
            "the gateway dropped {acks_dropped} acknowledgements ({} during the saturation phase, {} at the fixed rate, \
             the rest after them, restart included): \"could not queue an acknowledgement\" (rumqttc request channel \
             full; logged at debug level only); those messages stay unacknowledged at the broker until the next \
             reconnect, each one holding a slot of its in-flight window",
            ing.acks_dropped, lat.acks_dropped
        ));
    }
    if ing.backlog_max > args.broker_inflight as f64 {
        notes.push(format!(
            "up to {} messages were received by the gateway and not yet committed, more than the broker's \
             max_inflight_messages {} (mosquitto 2.0.x does not hold a manual-ack client to it, cf. eclipse-mosquitto/mosquitto#2301); \
             once over local_mqtt.queue the gateway's MQTT poll task blocks and its acknowledgements pile up",
            ing.backlog_max, args.broker_inflight
        ));
    }
    if lat.duplicates > 0 {
        notes.push(format!(
            "{} duplicate door_forced raises at the platform",
            lat.duplicates
        ));
    }
    match exit {
        Some(s) if s.success() => {
            let _ = writeln!(r, "shutdown: SIGTERM -> exit 0 in {stop_secs:.2} s");
        }
        Some(s) => notes.push(format!("shutdown: SIGTERM -> {s} after {stop_secs:.2} s")),
        None => notes.push("shutdown: no exit 20 s after SIGTERM (killed)".into()),
    }
    // Events published and never processed by the first run arrive at the
    // restart for the first time; anything beyond them was processed twice.
    let never =
        (ing.events - ing.processed.min(ing.events)) + (lat.sent - lat.processed.min(lat.sent));
    let twice = restart
        .as_ref()
        .map(|rs| rs.processed.saturating_sub(never));
    match &restart {
        Some(rs) => {
            let twice = twice.unwrap_or(0);
            let _ = writeln!(
                r,
                "restart on the same store and broker session: {} messages delivered ({} never delivered before, \
                 the rest redelivered after a lost acknowledgement): {} recognised as already committed, \
                 {} applied a second time {}",
                rs.received,
                never.min(rs.received),
                rs.duplicates,
                twice,
                mark(twice == 0)
            );
            if twice > 0 {
                notes.push(format!(
                    "{twice} events were applied twice: committed in the first run, their acknowledgements \
                     dropped, redelivered after a clean restart and not recognised (they are older than what \
                     the redelivery guard remembers)"
                ));
            }
        }
        None => notes.push("restart check failed (see the gateway log)".into()),
    }
    for n in &notes {
        let _ = writeln!(r, "note: {n}");
    }
    let _ = writeln!(
        r,
        "files: {}{}",
        dir.display(),
        if args.keep {
            " (kept)"
        } else {
            " (removed; --keep keeps them)"
        }
    );
    let _ = writeln!(
        r,
        "load: ingest {:.0} ev/s{} = {:.2}x relay {:.0} msg/s ({}); acks dropped {}, applied twice {}; latency@{}/s p50 {p50:.1} p99 {p99:.1} max {pmax:.1} ms, {}/{} raises ({}); \
         rss peak {:.1} MB@{}/s ({}), {:.1} MB after burst; {:.0} B/event@{}/s, {:.0} B/event@max; cpu {:.0} µs/event@max; {:.0} s",
        ing.rate,
        if ing.stalled {
            format!(" (STALLED at {} of {})", ing.processed, ing.events)
        } else {
            String::new()
        },
        ratio,
        relay.rate,
        mark(ingest_ok),
        acks_dropped,
        twice.map_or("?".to_string(), |t| t.to_string()),
        args.rate,
        lat.received,
        lat.expected,
        mark(latency_ok),
        mb(lat.hwm_kb),
        args.rate,
        mark(rss_ok),
        mb(end.hwm_kb),
        bpe_fixed,
        args.rate,
        bpe_ingest,
        ing.cpu_secs / ing.processed.max(1) as f64 * 1e6,
        wall.elapsed().as_secs_f64()
    );
    print!("{r}");
    let _ = std::io::stdout().flush();
    platform_task.abort();
    drop(children);
    let _ = (&local_log, &platform_log);
    if args.keep {
        let kept = tmp.keep();
        eprintln!("kept {}", kept.display());
    }
    0
}
