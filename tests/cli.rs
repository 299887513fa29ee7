//! The command line as a user runs it: `check` and `replay` on real files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_community-gateway"))
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check(config: &Path) -> Output {
    bin()
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

/// A compound folder with the given config and roster bytes.
fn compound(config: &str, roster: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("residents.csv"), roster).unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    (dir, path)
}

const BASE: &str = "compound = \"c1\"\nroster = \"residents.csv\"\n";
const ROSTER: &str = "resident_id,building,unit,room,credentials,watch\nR-1,1,1,101,C1,yes\n";

#[test]
fn check_accepts_the_shipped_example() {
    let out = check(&repo("config/gateway.toml"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("ok"));
}

#[test]
fn check_reports_config_problems_with_file_line_and_key() {
    let cases = [
        ("[rules.door_held_open]\naftr = \"2m\"\n", ":4: rules.door_held_open.aftr: unknown key"),
        ("[rules.door_held_open]\nafter = \"2 minutes?\"\n", ":4: rules.door_held_open.after:"),
        ("timezone = \"Mars/Olympus\"\n", ":3: timezone:"),
        ("[[devices]]\nid = \"d1\"\nkind = \"access\"\nbuilding = \"1\"\n[[devices]]\nid = \"d1\"\nkind = \"access\"\nbuilding = \"1\"\n", ":8: devices[1].id: duplicate device id"),
    ];
    for (extra, want) in cases {
        let (_dir, path) = compound(&format!("{BASE}{extra}"), ROSTER.as_bytes());
        let out = check(&path);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{extra}: {stdout}");
        assert!(
            stdout.contains(&format!("{}{want}", path.display())),
            "want `{want}` for {extra:?} in:\n{stdout}"
        );
    }
}

#[test]
fn check_reports_roster_problems_by_line() {
    let cases: [(&[u8], &str); 2] = [
        (
            b"resident_id,building,credentials\nR-1,1,C1\n,1,C2\n",
            "residents.csv:3: resident_id:",
        ),
        (
            b"resident_id,building,credentials\nR-1,1,C1\nR-2,1,C1\n",
            "residents.csv:3: credentials:",
        ),
    ];
    for (roster, want) in cases {
        let (_dir, path) = compound(BASE, roster);
        let out = check(&path);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains(want), "want `{want}` in:\n{stdout}");
    }
}

#[test]
fn check_loads_a_gbk_roster_and_locates_its_bad_rows() {
    let good = "住户编号,楼栋,单元,室,卡号,独居\nR-1,12,1,502,C1,是\nR-2,12,1,503,C2,否\n";
    let (encoded, _, bad_chars) = encoding_rs::GBK.encode(good);
    assert!(!bad_chars);
    let (_dir, path) = compound(BASE, &encoded);
    let out = check(&path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    let bad = format!("{good}R-3,12,1,504,C3,也许\n");
    let (encoded, _, _) = encoding_rs::GBK.encode(&bad);
    let (_dir, path) = compound(BASE, &encoded);
    let out = check(&path);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("residents.csv:4: watch:"), "{stdout}");
    assert!(
        stdout.contains("也许"),
        "the message quotes the value, decoded: {stdout}"
    );
}

#[test]
fn replay_of_the_shipped_example_gives_the_documented_alerts() {
    let out = bin()
        .args(["replay", "--config"])
        .arg(repo("config/gateway.toml"))
        .arg("--events")
        .arg(repo("config/example-events.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let got: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| {
            let t: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "{} {} {} {}:{} {} {}",
                t["at"].as_str().unwrap(),
                t["state"].as_str().unwrap(),
                t["rule"].as_str().unwrap(),
                t["subject"]["kind"].as_str().unwrap(),
                t["subject"]["id"].as_str().unwrap(),
                t["severity"].as_str().unwrap(),
                t["revision"]
            )
        })
        .collect();
    let want = std::fs::read_to_string(repo("tests/fixtures/example-expected.txt")).unwrap();
    let want: Vec<&str> = want.lines().collect();
    assert_eq!(got, want);
    // The SPEC §5 example, to the letter.
    let first_inactivity = text(&out.stdout)
        .lines()
        .find(|l| l.contains("elderly_inactivity"))
        .unwrap()
        .to_string();
    let t: serde_json::Value = serde_json::from_str(&first_inactivity).unwrap();
    assert_eq!(
        t["message"],
        "独居老人 R-0312（12号楼1单元502室）已24小时无门禁记录，请网格员上门查看"
    );
    assert_eq!(t["since"], "2026-11-02T10:05:00+08:00");
    assert_eq!(t["evidence"]["threshold"], "24h");
    assert_eq!(t["location"]["grid"], "G-07");
    assert_eq!(t["compound"], "tianlin-12");
    assert_eq!(t["alert_id"].as_str().unwrap().len(), 26);
}

#[test]
fn replay_names_bad_lines_and_processes_the_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        concat!(
            "{\"type\":\"door\",\"ts\":\"2026-11-02T09:00:00+08:00\",\"device\":\"b3-u1-door\",\"state\":\"open\"}\n",
            "this is not json\n",
            "{\"type\":\"access\",\"ts\":\"2026-11-02T09:00:10+08:00\",\"device\":\"b3-u1-door\",\"granted\":true}\n",
            "{\"type\":\"door\",\"ts\":\"2026-11-02T09:00:20+08:00\",\"device\":\"b3-u1-door\",\"state\":\"ajar\"}\n",
            "{\"type\":\"door\",\"ts\":\"not a time\",\"device\":\"b3-u1-door\",\"state\":\"open\"}\n",
            "{\"type\":\"access\",\"ts\":\"2026-11-02T09:00:30+08:00\",\"device\":\"b3-u1-door\",\"credential\":\"C3201\",\"granted\":\"yes\"}\n",
            "\n",
            "{\"type\":\"door\",\"ts\":\"2026-11-02T09:05:00+08:00\",\"device\":\"b3-u1-door\",\"state\":\"closed\"}\n",
        ),
    )
    .unwrap();
    let out = bin()
        .args(["replay", "--config"])
        .arg(repo("config/gateway.toml"))
        .arg("--events")
        .arg(&events)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let name = events.display().to_string();
    for (line, what) in [
        (2, "not a valid event"),
        (3, "missing required field `credential`"),
        (4, "field `state`: `ajar`"),
        (5, "field `ts`"),
        (6, "invalid type: string \"yes\", expected a boolean"),
    ] {
        assert!(
            stderr.contains(&format!("{name}:{line}: ")) && stderr.contains(what),
            "line {line} ({what}) in:\n{stderr}"
        );
    }
    assert!(stderr.contains("replayed 2 events (5 rejected"), "{stderr}");
    let stdout = text(&out.stdout);
    let states: Vec<&str> = stdout
        .lines()
        .map(|l| {
            if l.contains("\"raised\"") {
                "raised"
            } else {
                "cleared"
            }
        })
        .collect();
    assert_eq!(states, vec!["raised", "cleared"], "{stdout}");
    assert!(stdout.contains("door_held_open"));
}

#[test]
fn replay_reads_stdin_and_honours_until() {
    use std::io::Write;
    let mut child = bin()
        .args(["replay", "--config"])
        .arg(repo("config/gateway.toml"))
        .args(["--events", "-", "--until", "2026-11-03T10:05:00+08:00"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"type\":\"access\",\"ts\":\"2026-11-02T10:05:00+08:00\",\"device\":\"b12-u1-door\",\"credential\":\"3285011022\",\"granted\":true}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // R-0312 at its deadline; R-0101 (36h) and R-0701 (24h from start, same instant) too.
    assert!(stdout.lines().any(|l| l.contains("\"R-0312\"") && l.contains("\"at\":\"2026-11-03T10:05:00+08:00\"")), "{stdout}");
    assert!(!stdout.contains("R-0101"));

    let out = bin()
        .args(["replay", "--config"])
        .arg(repo("config/gateway.toml"))
        .args(["--events", "-", "--until", "tomorrow"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--until"));
}
