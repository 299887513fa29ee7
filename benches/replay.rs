//! Replay throughput (SPEC §7: at least 1,000,000 canonical events per second
//! on one core).
//!
//! Generates a compound with a 10,000-resident roster and a file of
//! 1,200,000 canonical events spread over about two weeks (so midnight
//! evaluations, inactivity deadlines and escalations all happen), then times
//! `replay` from an in-memory copy of the file: JSON decoding, the rule
//! engine and the JSON output of every transition, on one thread.
//!
//! Run: `cargo bench --bench replay` (optionally `-- --events N`).

use community_gateway::replay::{engine_from_config, replay};
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Instant;

const RESIDENTS: usize = 10_000;
const UNIT_DOORS: usize = 200;
const GATES: usize = 4;

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

fn write_compound(dir: &std::path::Path) -> std::path::PathBuf {
    let mut cfg = String::from(
        "compound = \"bench\"\ntimezone = \"Asia/Shanghai\"\nroster = \"residents.csv\"\n[privacy]\nkey = \"bench\"\n",
    );
    for g in 0..GATES {
        let _ = write!(
            cfg,
            "[[devices]]\nid = \"gate-{g}\"\nkind = \"access\"\nperimeter = true\n"
        );
    }
    for d in 0..UNIT_DOORS {
        let _ = write!(
            cfg,
            "[[devices]]\nid = \"door-{d}\"\nkind = \"access\"\nbuilding = \"{}\"\nunit = \"{}\"\n",
            d / 4 + 1,
            d % 4 + 1
        );
    }
    let mut csv = String::from("resident_id,building,unit,room,grid,credentials,watch\n");
    for r in 0..RESIDENTS {
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
    std::fs::write(dir.join("residents.csv"), csv).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn generate_events(n: usize) -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::with_capacity(n * 140);
    // 2026-11-02T00:00:00+08:00, about one event per second on average.
    let mut t: i64 = 1_793_548_800;
    for _ in 0..n {
        t += rng.below(2) as i64;
        let secs = t + 8 * 3600;
        let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        // civil date from days since epoch
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
        let ts = format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+08:00",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        );
        let roll = rng.below(100);
        let r = rng.below(RESIDENTS);
        let device = if rng.below(5) == 0 {
            format!("gate-{}", rng.below(GATES))
        } else {
            format!("door-{}", r % UNIT_DOORS)
        };
        let dir = ["in", "out", "unknown"][rng.below(3)];
        let _ = match roll {
            0..=79 => writeln!(
                out,
                r#"{{"type":"access","ts":"{ts}","device":"{device}","credential":"C{r:05}","granted":true,"direction":"{dir}"}}"#
            ),
            80..=84 => writeln!(
                out,
                r#"{{"type":"access","ts":"{ts}","device":"{device}","credential":"C{r:05}","granted":false,"direction":"in"}}"#
            ),
            85..=89 => writeln!(
                out,
                r#"{{"type":"access","ts":"{ts}","device":"{device}","credential":"V{:04}","granted":{},"direction":"in"}}"#,
                rng.below(2000),
                rng.below(2) == 0
            ),
            90..=97 => writeln!(
                out,
                r#"{{"type":"door","ts":"{ts}","device":"{device}","state":"{}"}}"#,
                ["open", "closed"][rng.below(2)]
            ),
            _ => writeln!(
                out,
                r#"{{"type":"heartbeat","ts":"{ts}","device":"{device}"}}"#
            ),
        };
    }
    out
}

fn main() {
    let mut n = 1_200_000usize;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--events") {
        n = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(n);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_compound(dir.path());
    let t0 = Instant::now();
    let events = generate_events(n);
    eprintln!(
        "generated {n} events ({:.1} MB) for {RESIDENTS} residents in {:.2?}",
        events.len() as f64 / 1e6,
        t0.elapsed()
    );
    let mut best = f64::MAX;
    let mut transitions = 0;
    for round in 0..3 {
        let mut diag = Vec::new();
        let mut engine = engine_from_config(&config, &mut diag).unwrap();
        let mut sink = std::io::sink();
        let start = Instant::now();
        let outcome = replay(
            &mut engine,
            events.as_slice(),
            "bench",
            None,
            &mut sink,
            &mut diag,
        )
        .unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(
            outcome.events as usize,
            n,
            "{}",
            String::from_utf8_lossy(&diag)
        );
        transitions = outcome.transitions;
        eprintln!(
            "round {round}: {:.3}s, {:.0} events/s",
            secs,
            n as f64 / secs
        );
        best = best.min(secs);
    }
    let mut stdout = std::io::stdout();
    let _ = writeln!(
        stdout,
        "replay: {n} events, {RESIDENTS} residents, {transitions} alert transitions: best {:.3}s = {:.0} events/s (one thread)",
        best,
        n as f64 / best
    );
}
