//! The subcommands behind `main`: each returns the process exit code.

use crate::config::{self, Problem};
use crate::roster;
use std::io::Write;
use std::path::Path;

/// `check`: every problem of the configuration and roster, one per line on
/// stdout; exit 1 if there is any, 0 otherwise.
pub fn check(config_path: &Path) -> u8 {
    let problems = check_problems(config_path);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if let Ok(cfg) = config::load(config_path) {
        for w in warnings(&cfg) {
            let _ = writeln!(out, "{w}");
        }
    }
    for p in &problems {
        let _ = writeln!(out, "{p}");
    }
    if problems.is_empty() {
        let _ = writeln!(out, "{}: ok", config_path.display());
        0
    } else {
        let _ = writeln!(out, "{} problem(s) found", problems.len());
        1
    }
}

/// All problems of a configuration and the roster it names.
pub fn check_problems(config_path: &Path) -> Vec<Problem> {
    let cfg = match config::load(config_path) {
        Ok(cfg) => cfg,
        Err(problems) => return problems.0,
    };
    roster::load_configured(&cfg, |_| {})
}

/// Things that work but that a careful operator should change.
pub fn warnings(cfg: &config::Config) -> Vec<String> {
    let mut w = Vec::new();
    if cfg.privacy.pseudonymize && cfg.privacy.key.is_none() {
        w.push(format!(
            "{}: privacy.key: warning: not set; pseudonyms are keyed by the compound id, \
             so short card numbers could be recovered from them. Set a long random secret.",
            cfg.source.display()
        ));
    }
    w
}

/// `replay`: see [`crate::replay`].
pub fn replay(config_path: &Path, events: &Path, until: Option<&str>) -> u8 {
    crate::replay::run_cli(config_path, events, until)
}
