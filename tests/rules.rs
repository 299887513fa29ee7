//! Replay fixtures for the rules: `tests/fixtures/rules/<case>/` holds
//! `events.jsonl` (canonical events in) and `expected.jsonl` (transitions
//! out), optionally `gateway.toml` (else the shared one next to the cases)
//! and `case.toml` (`until = "<RFC 3339>"`, `config = "../other.toml"`,
//! `description = "…"`).
//!
//! Each expected line lists the fields to compare (`rule`, `state`,
//! `subject` as `kind:id`, `at`, `severity`, `revision`, `since`, and an
//! `evidence` subset); a transition matches if all listed fields agree.
//!
//! Beyond the full replay, every expected transition at time T is checked to
//! appear when the replay stops at T and not when it stops one second
//! earlier: timers fire at their deadline exactly.

use community_gateway::alert::AlertTransition;
use community_gateway::replay::{engine_from_config, replay};
use community_gateway::time::{parse_rfc3339, Ts};
use serde_json::Value;
use std::path::{Path, PathBuf};

struct Case {
    name: String,
    config: PathBuf,
    events: Vec<(Ts, String)>,
    expected: Vec<Value>,
    until: Option<Ts>,
}

fn load_case(dir: &Path) -> Case {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let meta: Option<toml::Value> = std::fs::read_to_string(dir.join("case.toml"))
        .ok()
        .map(|t| toml::from_str(&t).unwrap_or_else(|e| panic!("{name}: case.toml: {e}")));
    let local = dir.join("gateway.toml");
    let config = match meta
        .as_ref()
        .and_then(|m| m.get("config"))
        .and_then(|c| c.as_str())
    {
        Some(c) => dir.join(c),
        None if local.exists() => local,
        None => dir.parent().unwrap().join("gateway.toml"),
    };
    let text = std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_else(|e| panic!("{name}: events.jsonl: {e}"));
    let events = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{name}: bad fixture line {l}: {e}"));
            let ts = parse_rfc3339(
                v["ts"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: no ts in {l}")),
            )
            .unwrap();
            (ts, l.to_string())
        })
        .collect();
    let expected = std::fs::read_to_string(dir.join("expected.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: bad expected line {l}: {e}"))
        })
        .collect();
    let until = meta
        .as_ref()
        .and_then(|m| m.get("until"))
        .and_then(|u| u.as_str())
        .map(|u| parse_rfc3339(u).unwrap_or_else(|e| panic!("{name}: until: {e}")));
    Case {
        name,
        config,
        events,
        expected,
        until,
    }
}

fn run(case: &Case, stop: Option<Ts>) -> Vec<AlertTransition> {
    let mut diag = Vec::new();
    let mut engine = engine_from_config(&case.config, &mut diag)
        .unwrap_or_else(|p| panic!("{}: {p}", case.name));
    let mut input = String::new();
    for (ts, line) in &case.events {
        if stop.is_none_or(|s| *ts <= s) {
            input.push_str(line);
            input.push('\n');
        }
    }
    let until = stop.or(case.until);
    let mut out = Vec::new();
    let outcome = replay(
        &mut engine,
        input.as_bytes(),
        &case.name,
        until,
        &mut out,
        &mut diag,
    )
    .unwrap();
    assert_eq!(
        outcome.rejected,
        0,
        "{}: {}",
        case.name,
        String::from_utf8_lossy(&diag)
    );
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn matches(t: &AlertTransition, want: &Value) -> Result<(), String> {
    let got = serde_json::to_value(t).unwrap();
    for (k, v) in want.as_object().expect("expected lines are objects") {
        let ok = match k.as_str() {
            "subject" => {
                format!("{}:{}", t.subject.kind.as_str(), t.subject.id)
                    == v.as_str().unwrap_or_default()
            }
            "evidence" => v
                .as_object()
                .unwrap()
                .iter()
                .all(|(ek, ev)| got["evidence"].get(ek) == Some(ev)),
            "message_contains" => t.message.contains(v.as_str().unwrap_or_default()),
            _ => got.get(k) == Some(v),
        };
        if !ok {
            return Err(format!(
                "field `{k}`: want {v}, got {}",
                if k == "subject" {
                    format!("{}:{}", t.subject.kind.as_str(), t.subject.id).into()
                } else {
                    got.get(k).cloned().unwrap_or(Value::Null)
                }
            ));
        }
    }
    Ok(())
}

fn compare(case: &Case, label: &str, got: &[AlertTransition], want: &[&Value]) -> Vec<String> {
    let mut errors = vec![];
    if got.len() != want.len() {
        errors.push(format!(
            "{} [{label}]: {} transitions, expected {}:\n  got: {}",
            case.name,
            got.len(),
            want.len(),
            got.iter()
                .map(|t| format!(
                    "{} {:?} {}:{} {}",
                    t.rule,
                    t.state,
                    t.subject.kind.as_str(),
                    t.subject.id,
                    t.at
                ))
                .collect::<Vec<_>>()
                .join("\n       ")
        ));
        return errors;
    }
    for (i, (t, w)) in got.iter().zip(want).enumerate() {
        if let Err(e) = matches(t, w) {
            errors.push(format!(
                "{} [{label}] transition {}: {e}\n  got: {}",
                case.name,
                i + 1,
                t.to_json()
            ));
        }
    }
    errors
}

#[test]
fn rule_fixtures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no fixtures under {}", root.display());
    let mut errors = vec![];
    for dir in &dirs {
        let case = load_case(dir);
        let all = run(&case, None);
        errors.extend(compare(
            &case,
            "full",
            &all,
            &case.expected.iter().collect::<Vec<_>>(),
        ));
        let mut times: Vec<Ts> = case
            .expected
            .iter()
            .map(|w| {
                parse_rfc3339(
                    w["at"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{}: expected line without `at`", case.name)),
                )
                .unwrap()
            })
            .collect();
        times.dedup();
        for t in times {
            for stop in [t - 1000, t] {
                let want: Vec<&Value> = case
                    .expected
                    .iter()
                    .filter(|w| parse_rfc3339(w["at"].as_str().unwrap()).unwrap() <= stop)
                    .collect();
                let got = run(&case, Some(stop));
                errors.extend(compare(&case, &format!("stopped at {stop}"), &got, &want));
            }
        }
    }
    assert!(
        errors.is_empty(),
        "{} fixture problem(s):\n{}",
        errors.len(),
        errors.join("\n")
    );
    eprintln!("{} rule fixtures checked", dirs.len());
}
