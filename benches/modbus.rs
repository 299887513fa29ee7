//! The cost of Modbus polling (SPEC §7: 50 elevators polled every second
//! within the gateway's memory budget).
//!
//! 50 simulated monitoring boxes (in-process tokio-modbus TCP servers, on
//! their own runtime and threads) are polled every second, each over its own
//! connection with the built-in `monitor-box` map, for `CG_BENCH_SECS`
//! seconds (default 20). The poller runs alone on one thread (a
//! current-thread runtime), whose CPU time is read from the kernel
//! (`/proc/thread-self/schedstat`, else `stat`); reports are drained as the
//! daemon would (counted, dropped). Memory: live heap bytes (a counting
//! allocator) and RSS, after a warm-up and at the end.
//!
//!     cargo bench --bench modbus
//!
//! Prints one summary line (and a few details before it).

#[path = "../tests/modbus_sim/mod.rs"]
mod modbus_sim;

use community_gateway::config;
use community_gateway::metrics::Metrics;
use community_gateway::sources::modbus::{self, PollReport};
use modbus_sim::TcpBox;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Counts live heap bytes and allocations made on the poller's thread
/// (the simulated boxes run on other threads and are not counted).
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static POLLER_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    POLLER_THREAD.try_with(Cell::get).unwrap_or(false)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if counted() {
            LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if counted() {
            LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        }
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if counted() {
            LIVE.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ELEVATORS: usize = 50;

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    if let Ok(s) = std::fs::read_to_string("/proc/thread-self/schedstat") {
        if let Some(ns) = s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            return Duration::from_nanos(ns);
        }
    }
    stat_cpu("/proc/thread-self/stat")
}

/// utime + stime of a `/proc/.../stat` file (clock ticks of 10 ms).
fn stat_cpu(path: &str) -> Duration {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may contain spaces), from field 3.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Mark {
    at: Instant,
    cpu: Duration,
    live: i64,
    allocs: u64,
    rss: u64,
    requests: u64,
    polls: u64,
}

fn main() {
    let secs: u64 = std::env::var("CG_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    // Half an interval off the polls' phase, so that the measured window
    // holds exactly `secs` polls of each elevator.
    let warmup = Duration::from_millis(3500);

    // The boxes, on a runtime of their own.
    let servers_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The cars move now and then (a different state every few seconds).
    let boxes: Vec<TcpBox> = servers_rt.block_on(modbus_sim::serve_moving_boxes(ELEVATORS));

    let mut toml =
        String::from("compound = \"bench\"\n[modbus]\ninterval = \"1s\"\ntimeout = \"500ms\"\n");
    for (i, b) in boxes.iter().enumerate() {
        toml.push_str(&format!(
            "[[devices]]\nid = \"el-{i}\"\nkind = \"elevator\"\nbuilding = \"{}\"\n\
             modbus = {{ tcp = \"{}\", slave = 247, profile = \"monitor-box\" }}\n",
            i / 2 + 1,
            b.addr
        ));
    }
    let config = config::load_str(&toml, Path::new("bench.toml")).unwrap_or_else(|p| panic!("{p}"));

    // The poller, alone on this thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    POLLER_THREAD.with(|c| c.set(true));
    let (start, end, failures, samples) = rt.block_on(async {
        let (tx, mut rx) = mpsc::channel::<PollReport>(1024);
        let (stop_tx, stop_rx) = watch::channel(false);
        let poller = modbus::start(&config, tx, Arc::new(Metrics::new()), stop_rx);
        let stats = poller.stats.clone();
        let drain = tokio::spawn(async move {
            let (mut samples, mut failures) = (0u64, 0u64);
            while let Some(r) = rx.recv().await {
                match r {
                    PollReport::Sample { .. } => samples += 1,
                    PollReport::Failed { .. } => failures += 1,
                }
            }
            (samples, failures)
        });
        let mark = |stats: &modbus::ModbusStats| {
            let t = stats.total();
            Mark {
                at: Instant::now(),
                cpu: thread_cpu(),
                live: LIVE.load(Ordering::Relaxed),
                allocs: ALLOCS.load(Ordering::Relaxed),
                rss: rss_kib(),
                requests: t.requests,
                polls: t.polls(),
            }
        };
        tokio::time::sleep(warmup).await;
        let start = mark(&stats);
        let mut peak_live = start.live;
        let until = tokio::time::Instant::now() + Duration::from_secs(secs);
        while tokio::time::Instant::now() < until {
            let step = tokio::time::Instant::now() + Duration::from_millis(500);
            tokio::time::sleep_until(step.min(until)).await;
            peak_live = peak_live.max(LIVE.load(Ordering::Relaxed));
        }
        let end = mark(&stats);
        eprintln!(
            "poller thread's live heap: {} KiB after warm-up, {} KiB peak, {} KiB at the end",
            start.live / 1024,
            peak_live / 1024,
            end.live / 1024
        );
        let _ = stop_tx.send(true);
        for t in poller.tasks {
            let _ = t.await;
        }
        let (samples, failures) = drain.await.unwrap();
        let total = stats.total();
        eprintln!(
            "totals: {} requests, {} connects, {} timeouts, {} failures",
            total.requests, total.connects, total.timeouts, total.failures
        );
        (start, end, failures, samples)
    });
    POLLER_THREAD.with(|c| c.set(false));
    drop(boxes);
    drop(servers_rt);

    let wall = end.at - start.at;
    let cpu = end.cpu - start.cpu;
    let requests = end.requests - start.requests;
    let polls = end.polls - start.polls;
    let allocs = end.allocs - start.allocs;
    let heap_growth = end.live - start.live;
    let rss_growth = end.rss as i64 - start.rss as i64;
    eprintln!(
        "process: RSS {} KiB after warm-up, {} KiB at the end (servers and harness included); {} samples, {} failed polls in all",
        start.rss, end.rss, samples, failures
    );
    println!(
        "modbus: {ELEVATORS} elevators every 1s over TCP for {:.1}s: {polls} polls ({:.2} per elevator per second), {:.1} requests/s, poller CPU {:.3}s ({:.3}% of one core, {:.1} µs per poll), {:.1} allocations per poll, heap growth {:+} KiB, RSS growth {:+} KiB, failed polls {failures}",
        wall.as_secs_f64(),
        polls as f64 / wall.as_secs_f64() / ELEVATORS as f64,
        requests as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / polls.max(1) as f64,
        allocs as f64 / polls.max(1) as f64,
        heap_growth / 1024,
        rss_growth,
    );
}
