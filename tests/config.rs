//! Loading and checking the configuration file: the shipped example, and
//! every kind of problem located by line and key path.

use community_gateway::alert::Severity;
use community_gateway::config::{
    load, load_str, ClockConfig, DeviceKind, Language, PrivacyConfig, Problem, RulesConfig,
    StorageConfig,
};
use std::path::{Path, PathBuf};

const FILE: &str = "/etc/community-gateway/gateway.toml";

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml")
}

fn problems(text: &str) -> Vec<Problem> {
    match load_str(text, Path::new(FILE)) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(p) => p.0,
    }
}

/// The single problem of `text`.
fn one(text: &str) -> Problem {
    let p = problems(text);
    assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
    p.into_iter().next().unwrap()
}

fn assert_at(p: &Problem, line: usize, key: &str, needle: &str) {
    assert_eq!(p.file, Path::new(FILE), "{p}");
    assert_eq!(p.line, Some(line), "{p}");
    assert_eq!(p.key.as_deref(), Some(key), "{p}");
    assert!(
        p.message.contains(needle),
        "`{}` should mention `{needle}`",
        p.message
    );
}

#[test]
fn example_config_loads_clean() {
    let path = example_path();
    let cfg = match load(&path) {
        Ok(cfg) => cfg,
        Err(p) => panic!("the shipped example has problems:\n{p}"),
    };
    assert_eq!(cfg.source, path);
    assert_eq!(cfg.compound, "tianlin-12");
    assert_eq!(cfg.timezone, chrono_tz::Asia::Shanghai);
    assert_eq!(cfg.language, Language::ZhCn);
    assert_eq!(
        cfg.roster,
        Some(path.parent().unwrap().join("residents.csv"))
    );
    // The example documents the defaults; it must not drift from them.
    assert_eq!(cfg.rules, RulesConfig::default());
    assert_eq!(cfg.storage, StorageConfig::default());
    assert_eq!(cfg.clock, ClockConfig::default());
    assert_eq!(cfg.privacy, PrivacyConfig::default());

    let ids: Vec<&str> = cfg.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "gate-north",
            "gate-south",
            "b12-u1-door",
            "b12-u2-door",
            "b3-u1-door",
            "el-12-1"
        ]
    );
    let north = &cfg.devices[0];
    assert!(north.perimeter && !north.heartbeat);
    assert_eq!(north.name.as_deref(), Some("北门"));
    let door = &cfg.devices[3];
    assert_eq!(
        (door.building.as_deref(), door.unit.as_deref()),
        (Some("12"), Some("2"))
    );
    assert!(!door.perimeter);
    let el = &cfg.devices[5];
    assert_eq!(el.kind, DeviceKind::Elevator);
    assert_eq!(el.name.as_deref(), Some("12号楼1号梯"));
    assert_eq!(
        (el.lowest_floor, el.highest_floor, el.rated_speed),
        (Some(-1), Some(18), Some(1.75))
    );
    assert!(!el.heartbeat);
    assert_eq!(el.fault_codes.len(), 13);
    assert_eq!(el.fault_codes["bit3"].text, "冲顶");
    assert_eq!(el.fault_codes["12"].severity, Some(Severity::Critical));
    assert_eq!(el.fault_codes["12"].text, "安全回路断开");
    assert_eq!(el.fault_codes["35"].severity, Some(Severity::High));
    assert_eq!(el.fault_codes["35"].text, "门锁回路故障");
}

#[test]
fn example_config_sets_every_rule_explicitly() {
    let text = std::fs::read_to_string(example_path()).unwrap();
    for rule in [
        "elderly_inactivity",
        "not_returned",
        "group_rental",
        "card_sharing",
        "repeat_stranger",
        "denied_burst",
        "door_held_open",
        "door_forced",
        "elevator_trapped",
        "elevator_door_open_moving",
        "elevator_overtravel",
        "elevator_stopped_outside_zone",
        "elevator_fault",
        "elevator_out_of_service",
        "elevator_abnormal_usage",
        "device_offline",
        "gateway_health",
    ] {
        assert!(
            text.contains(&format!("\n[rules.{rule}]\n")),
            "missing [rules.{rule}]"
        );
    }
}

#[test]
fn minimal_config_uses_defaults() {
    let cfg = load_str("compound = \"c1\"\n", Path::new(FILE)).unwrap();
    assert_eq!(cfg.timezone, chrono_tz::Asia::Shanghai);
    assert_eq!(cfg.roster, None);
    assert_eq!(cfg.rules, RulesConfig::default());
    assert!(
        cfg.privacy.key.is_none(),
        "an absent privacy.key is left to the caller"
    );
    assert!(cfg.devices.is_empty());
}

#[test]
fn syntax_error_reports_the_parser_line() {
    let p = one("compound = \"c1\"\n\n[rules.door_held_open\nafter = \"1m\"\n");
    assert_eq!(p.line, Some(3), "{p}");
    assert_eq!(p.key, None);
    assert!(p.message.contains("TOML syntax error"), "{p}");
    assert!(!p.message.contains('\n'), "one problem, one line: {p}");
}

#[test]
fn unknown_top_level_key() {
    let p = one("compound = \"c1\"\ntimezon = \"Asia/Shanghai\"\n");
    assert_at(&p, 2, "timezon", "unknown key `timezon`");
    assert!(p.message.contains("did you mean `timezone`"), "{p}");
    assert_eq!(
        p.to_string().split(" (").next().unwrap(),
        format!("{FILE}:2: timezon: unknown key `timezon`")
    );
}

#[test]
fn unknown_key_in_rule_table() {
    let p = one("compound = \"c1\"\n\n[rules.door_held_open]\nenabled = true\naftr = \"3m\"\n");
    assert_at(&p, 5, "rules.door_held_open.aftr", "unknown key `aftr`");
    assert!(p.message.contains("did you mean `after`"), "{p}");
    assert!(
        p.message
            .contains("enabled, severity, escalate_after, after"),
        "{p}"
    );
}

#[test]
fn unknown_rule_name_lists_valid_rules() {
    let p = one("compound = \"c1\"\n[rules.door_held_open]\nafter = \"3m\"\n[rules.door_open_long]\nafter = \"3m\"\n");
    assert_at(
        &p,
        4,
        "rules.door_open_long",
        "unknown rule `door_open_long`",
    );
    for name in ["elderly_inactivity", "door_held_open", "gateway_health"] {
        assert!(p.message.contains(name), "{p}");
    }
}

#[test]
fn unknown_keys_in_sections_devices_and_fault_codes() {
    let text = "\
compound = \"c1\"
[storage]
size = 1
[[devices]]
id = \"el\"
kind = \"elevator\"
building = \"1\"
floors = 18
[devices.fault_codes]
\"12\" = { text = \"x\", level = \"high\" }
";
    let p = problems(text);
    assert_eq!(p.len(), 3, "{p:#?}");
    assert_at(&p[0], 3, "storage.size", "unknown key `size`");
    assert_at(&p[1], 8, "devices[0].floors", "unknown key `floors`");
    assert_at(
        &p[2],
        10,
        "devices[0].fault_codes.12.level",
        "unknown key `level`",
    );
}

#[test]
fn bad_duration() {
    let p = one("compound = \"c1\"\n[rules.door_held_open]\nafter = \"2 mins?\"\n");
    assert_at(
        &p,
        3,
        "rules.door_held_open.after",
        "`2 mins?` is not a duration",
    );
}

#[test]
fn bad_time_zone() {
    let p = one("compound = \"c1\"\ntimezone = \"Mars/Olympus\"\n");
    assert_at(&p, 2, "timezone", "`Mars/Olympus` is not a time zone name");
}

#[test]
fn duplicate_device_id() {
    let text = "\
compound = \"c1\"

[[devices]]
id = \"gate-north\"
kind = \"access\"
perimeter = true

[[devices]]
id = \"gate-north\"
kind = \"access\"
perimeter = true
";
    let p = one(text);
    assert_at(
        &p,
        9,
        "devices[1].id",
        "duplicate device id `gate-north`, first declared at line 4",
    );
}

#[test]
fn bad_device_ids() {
    let text = "\
compound = \"c1\"
[[devices]]
id = \"\"
kind = \"other\"
[[devices]]
id = \"gate/north\"
kind = \"other\"
[[devices]]
id = \"gate north\"
kind = \"other\"
";
    let p = problems(text);
    assert_eq!(p.len(), 3, "{p:#?}");
    assert_at(&p[0], 3, "devices[0].id", "must not be empty");
    assert_at(&p[1], 6, "devices[1].id", "must not contain");
    assert_at(&p[2], 9, "devices[2].id", "must not contain");
}

#[test]
fn wrong_type() {
    let p = one("compound = \"c1\"\n[[devices]]\nid = \"g\"\nkind = \"access\"\nbuilding = \"1\"\nperimeter = \"yes\"\n");
    assert_at(&p, 6, "devices[0].perimeter", "expected a boolean");
}

#[test]
fn bad_severity_and_kind() {
    let p = one("compound = \"c1\"\n[rules.door_forced]\nseverity = \"urgent\"\n");
    assert_at(
        &p,
        3,
        "rules.door_forced.severity",
        "unknown variant `urgent`",
    );
    assert!(p.message.contains("`critical`"), "{p}");

    let p = one("compound = \"c1\"\n[[devices]]\nid = \"l\"\nkind = \"lift\"\n");
    assert_at(&p, 4, "devices[0].kind", "unknown variant `lift`");
}

#[test]
fn card_sharing_never_escalates() {
    let p =
        one("compound = \"c1\"\n[rules.card_sharing]\nwindow = \"2m\"\nescalate_after = \"1h\"\n");
    assert_at(&p, 4, "rules.card_sharing.escalate_after", "never escalate");
}

#[test]
fn compound_must_be_topic_safe() {
    let p = one("compound = \"天林/12\"\n");
    assert_at(&p, 1, "compound", "may contain only");
    let p = one("timezone = \"Asia/Shanghai\"\n");
    assert_eq!(p.key.as_deref(), Some("compound"));
    assert!(p.message.contains("missing required key `compound`"), "{p}");
}

#[test]
fn device_location_and_elevator_keys() {
    let text = "\
compound = \"c1\"
[[devices]]
id = \"b1-door\"
kind = \"access\"
rated_speed = 1.0
[[devices]]
id = \"el-1\"
kind = \"elevator\"
building = \"1\"
lowest_floor = 20
highest_floor = 3
rated_speed = 0.0
[devices.fault_codes]
\"E7\" = { text = \"?\" }
\"0x0C\" = { text = \"a\" }
\"12\" = { text = \"b\" }
";
    let p = problems(text);
    assert_eq!(p.len(), 6, "{p:#?}");
    assert_at(&p[0], 2, "devices[0].building", "needs `building`");
    assert_at(
        &p[1],
        5,
        "devices[0].rated_speed",
        "applies only to elevators",
    );
    assert_at(&p[2], 10, "devices[1].lowest_floor", "above highest_floor");
    assert_at(&p[3], 12, "devices[1].rated_speed", "greater than 0");
    assert_at(
        &p[4],
        14,
        "devices[1].fault_codes.E7",
        "not a non-negative integer",
    );
    assert_at(
        &p[5],
        16,
        "devices[1].fault_codes.12",
        "same code as `0x0C`",
    );
}

#[test]
fn rule_thresholds_are_checked() {
    let text = "\
compound = \"c1\"
[rules.group_rental]
window_days = 5
min_days = 6
[rules.denied_burst]
count = 0
[rules.elevator_abnormal_usage]
overspeed_ratio = 0.9
[rules.gateway_health]
outbox_fill = 1.0
disk_free_min = 0
[rules.door_held_open]
after = \"0s\"
[storage]
cache_bytes = 1024
[clock]
jump_threshold = \"0s\"
";
    let p = problems(text);
    let got: Vec<(usize, &str)> = p
        .iter()
        .map(|p| (p.line.unwrap(), p.key.as_deref().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            (4, "rules.group_rental.min_days"),
            (6, "rules.denied_burst.count"),
            (8, "rules.elevator_abnormal_usage.overspeed_ratio"),
            (10, "rules.gateway_health.outbox_fill"),
            (11, "rules.gateway_health.disk_free_min"),
            (13, "rules.door_held_open.after"),
            (15, "storage.cache_bytes"),
            (17, "clock.jump_threshold"),
        ],
        "{p:#?}"
    );
}

#[test]
fn several_problems_are_all_reported_in_file_order() {
    let text = "\
compound = \"tianlin-12\"
timezone = \"Mars/Olympus\"
colour = \"blue\"

[rules.door_held_open]
after = \"2 mins?\"
severity = \"urgent\"

[rules.card_sharing]
escalate_after = \"1h\"

[rules.door_open_long]
after = \"1m\"

[[devices]]
id = \"gate-north\"
kind = \"access\"
perimeter = \"yes\"

[[devices]]
id = \"gate-north\"
kind = \"access\"
perimeter = true
";
    let p = problems(text);
    let got: Vec<(usize, &str)> = p
        .iter()
        .map(|p| (p.line.unwrap(), p.key.as_deref().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            (2, "timezone"),
            (3, "colour"),
            (6, "rules.door_held_open.after"),
            (7, "rules.door_held_open.severity"),
            (10, "rules.card_sharing.escalate_after"),
            (12, "rules.door_open_long"),
            (18, "devices[0].perimeter"),
            (21, "devices[1].id"),
        ],
        "{p:#?}"
    );
    // A removed bad value does not cause follow-on complaints (device 0 is
    // not told it needs a building because `perimeter` was unreadable).
    assert!(
        p[7].message.contains("first declared at line 16"),
        "{}",
        p[7]
    );
    // Display is `file:line: key: message`.
    assert_eq!(
        p[0].to_string(),
        format!("{FILE}:2: timezone: {}", p[0].message)
    );
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("residents.csv"),
        "resident_id,building\nR-1,1\n",
    )
    .unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "compound = \"c1\"\nroster = \"residents.csv\"\n[storage]\npath = \"state/store\"\n",
    )
    .unwrap();
    let cfg = load(&path).unwrap();
    assert_eq!(cfg.source, path);
    assert_eq!(cfg.roster, Some(dir.path().join("residents.csv")));
    assert_eq!(cfg.storage.path, dir.path().join("state/store"));
}

#[test]
fn missing_roster_is_a_problem_at_roster() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, "compound = \"c1\"\n\nroster = \"people.csv\"\n").unwrap();
    let p = load(&path).unwrap_err().0;
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].file, path);
    assert_eq!(p[0].line, Some(3));
    assert_eq!(p[0].key.as_deref(), Some("roster"));
    assert!(p[0].message.contains("does not exist"), "{}", p[0]);
    assert!(p[0]
        .message
        .contains(&dir.path().join("people.csv").display().to_string()));
}

#[test]
fn unreadable_file_is_one_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let p = load(&path).unwrap_err().0;
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].file, path);
    assert!(p[0].message.contains("cannot read"), "{}", p[0]);
}

#[test]
fn byte_order_mark_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, "\u{feff}compound = \"c1\"\nlanguage = \"en\"\n").unwrap();
    assert_eq!(load(&path).unwrap().language, Language::En);
}

#[test]
fn group_rental_max_credentials_is_at_most_63() {
    let p = one("compound = \"c1\"\n\n[rules.group_rental]\nmax_credentials = 64\n");
    assert_at(
        &p,
        4,
        "rules.group_rental.max_credentials",
        "between 1 and 63",
    );
}
