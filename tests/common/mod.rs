//! Helpers shared by the integration tests: engines built from TOML and CSV
//! text, and compact views of alert transitions.
#![allow(dead_code)]

use community_gateway::alert::AlertTransition;
use community_gateway::config::{self, Config};
use community_gateway::engine::Engine;
use community_gateway::roster::{self, Roster};
use community_gateway::time::{parse_rfc3339, Calendar, Ts};
use std::path::Path;
use std::sync::Arc;

pub fn config(toml: &str) -> Config {
    config::load_str(toml, Path::new("test.toml")).unwrap_or_else(|p| panic!("config: {p}"))
}

pub fn roster(cfg: &Config, csv: &str) -> Roster {
    let loaded = roster::parse(
        csv.as_bytes(),
        Path::new("test.csv"),
        &Calendar::new(cfg.timezone),
    );
    assert!(loaded.problems.is_empty(), "roster: {:?}", loaded.problems);
    loaded.roster
}

pub fn engine(toml: &str, csv: &str) -> Engine {
    let cfg = config(toml);
    let r = roster(&cfg, csv);
    Engine::new(Arc::new(cfg), &r)
}

pub fn ts(s: &str) -> Ts {
    parse_rfc3339(s).unwrap_or_else(|e| panic!("{e}"))
}

/// `rule state subject at severity` — what most assertions need.
pub fn brief(t: &AlertTransition) -> String {
    format!(
        "{} {} {} {} {}",
        t.rule,
        serde_json::to_value(t.state).unwrap().as_str().unwrap(),
        t.subject.id,
        t.at,
        t.severity
    )
}

pub fn briefs(ts: &[AlertTransition]) -> Vec<String> {
    ts.iter().map(brief).collect()
}
