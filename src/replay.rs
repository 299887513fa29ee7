//! `replay`: canonical events (JSON lines) through the rule engine on a
//! simulated clock (SPEC §6). Before each event every timer due at or before
//! its `ts` fires; after the last, the clock advances to `--until`. Alert
//! transitions go to `out` as JSON lines, diagnostics to `diag`. Nothing is
//! written to the gateway's store.

use crate::alert::AlertTransition;
use crate::config;
use crate::engine::{Engine, RosterIndex};
use crate::event::decode;
use crate::roster;
use crate::time::Ts;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayOutcome {
    pub lines: u64,
    pub events: u64,
    pub rejected: u64,
    pub transitions: u64,
}

/// Replays `input` through `engine`. `source` names the input in diagnostics.
pub fn replay<R: BufRead, W: Write, D: Write>(
    engine: &mut Engine,
    mut input: R,
    source: &str,
    until: Option<Ts>,
    out: &mut W,
    diag: &mut D,
) -> io::Result<ReplayOutcome> {
    let mut outcome = ReplayOutcome::default();
    let mut buf = Vec::with_capacity(512);
    let mut transitions: Vec<AlertTransition> = Vec::new();
    let mut started = false;
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        outcome.lines += 1;
        let line = match std::str::from_utf8(&buf) {
            Ok(l) => l.trim_end_matches(['\n', '\r']),
            Err(e) => {
                outcome.rejected += 1;
                writeln!(diag, "{source}:{}: not UTF-8 text ({e})", outcome.lines)?;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match decode(line, None) {
            Ok(ev) => {
                if !started {
                    engine.start(ev.ts, &mut transitions);
                    started = true;
                }
                engine.handle(&ev, &mut transitions);
                outcome.events += 1;
            }
            Err(e) => {
                outcome.rejected += 1;
                writeln!(diag, "{source}:{}: {e}", outcome.lines)?;
            }
        }
        if !transitions.is_empty() {
            write_transitions(out, &mut transitions, &mut outcome)?;
        }
    }
    if let Some(until) = until {
        if !started {
            engine.start(until, &mut transitions);
        }
        engine.advance_to(until, &mut transitions);
        write_transitions(out, &mut transitions, &mut outcome)?;
    }
    out.flush()?;
    Ok(outcome)
}

fn write_transitions<W: Write>(
    out: &mut W,
    transitions: &mut Vec<AlertTransition>,
    outcome: &mut ReplayOutcome,
) -> io::Result<()> {
    for t in transitions.drain(..) {
        serde_json::to_writer(&mut *out, &t)?;
        out.write_all(b"\n")?;
        outcome.transitions += 1;
    }
    Ok(())
}

/// Builds an engine from a configuration file and its roster. Roster rows
/// with problems are reported to `diag` and left out; the rest load.
pub fn engine_from_config<D: Write>(
    config_path: &Path,
    diag: &mut D,
) -> Result<Engine, config::Problems> {
    let cfg = config::load(config_path)?;
    let mut index = RosterIndex::default();
    for p in roster::load_configured(&cfg, |row| index.add(&row)) {
        let _ = writeln!(diag, "{p} (row skipped)");
    }
    Ok(Engine::with_roster(Arc::new(cfg), index))
}

/// The `replay` subcommand. Exit codes: 0 done (bad lines are reported and
/// skipped), 1 unusable configuration or input, 2 bad `--until`.
pub fn run_cli(config_path: &Path, events: &Path, until: Option<&str>) -> u8 {
    let stderr = io::stderr();
    let mut diag = stderr.lock();
    let mut engine = match engine_from_config(config_path, &mut diag) {
        Ok(e) => e,
        Err(problems) => {
            let _ = writeln!(diag, "{problems}");
            return 1;
        }
    };
    let until = match until.map(|u| engine.calendar().parse_time_or_date(u)) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            let _ = writeln!(diag, "--until: {e}");
            return 2;
        }
    };
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    let result = if events == Path::new("-") {
        let stdin = io::stdin();
        replay(
            &mut engine,
            stdin.lock(),
            "<stdin>",
            until,
            &mut out,
            &mut diag,
        )
    } else {
        match std::fs::File::open(events) {
            Ok(f) => replay(
                &mut engine,
                BufReader::with_capacity(256 * 1024, f),
                &events.display().to_string(),
                until,
                &mut out,
                &mut diag,
            ),
            Err(e) => {
                let _ = writeln!(diag, "{}: cannot open: {e}", events.display());
                return 1;
            }
        }
    };
    match result {
        Ok(o) => {
            let s = engine.stats();
            let _ = writeln!(
                diag,
                "replayed {} events ({} rejected, {} from undeclared devices, {} late), {} alert transitions",
                o.events, o.rejected, s.undeclared_device_events, s.late_events, o.transitions
            );
            0
        }
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            let _ = writeln!(diag, "replay failed: {e}");
            1
        }
    }
}
