//! Roster loading through the public API (SPEC §3).

use community_gateway::config::Problem;
use community_gateway::roster::{self, Resident, RosterLoad};
use community_gateway::time::{parse_rfc3339, Calendar};
use std::path::Path;

const HOUR: i64 = 3_600_000;

fn cal() -> Calendar {
    Calendar::new(Calendar::parse_zone("Asia/Shanghai").unwrap())
}

fn parse(bytes: &[u8]) -> RosterLoad {
    roster::parse(bytes, Path::new("residents.csv"), &cal())
}

fn parse_str(s: &str) -> RosterLoad {
    parse(s.as_bytes())
}

fn ids(l: &RosterLoad) -> Vec<(&str, usize)> {
    l.roster
        .residents
        .iter()
        .map(|r| (r.id.as_str(), r.line))
        .collect()
}

fn find<'a>(l: &'a RosterLoad, id: &str) -> &'a Resident {
    l.roster
        .residents
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("{id} not loaded"))
}

/// (line, key) of each problem.
fn located(l: &RosterLoad) -> Vec<(Option<usize>, Option<&str>)> {
    l.problems
        .iter()
        .map(|p| (p.line, p.key.as_deref()))
        .collect()
}

fn only_problem(l: &RosterLoad) -> &Problem {
    assert_eq!(l.problems.len(), 1, "{:#?}", l.problems);
    &l.problems[0]
}

const PLAIN: &str =
    "resident_id,building,unit,room,grid,credentials,watch,inactivity_after,away_until\n\
R-1,12,1,502,G-07,3285011022;FACE-1,yes,36h,\n\
R-2,12,1,502,,C2,no,,\n";

fn assert_plain(l: &RosterLoad) {
    assert!(l.problems.is_empty(), "{:#?}", l.problems);
    assert_eq!(ids(l), [("R-1", 2), ("R-2", 3)]);
    let r1 = find(l, "R-1");
    assert_eq!(
        r1,
        &Resident {
            id: "R-1".into(),
            building: "12".into(),
            unit: "1".into(),
            room: "502".into(),
            grid: Some("G-07".into()),
            credentials: vec!["3285011022".into(), "FACE-1".into()],
            watch: true,
            inactivity_after: Some(36 * HOUR),
            away_until: None,
            line: 2,
        }
    );
    assert_eq!(r1.household(), "12-1-502");
    let r2 = find(l, "R-2");
    assert_eq!(r2.grid, None);
    assert!(!r2.watch);
    assert_eq!(r2.credentials, ["C2"]);
    assert_eq!(r2.household(), r1.household());
}

#[test]
fn loads_utf8() {
    assert_plain(&parse_str(PLAIN));
}

#[test]
fn loads_utf8_with_bom() {
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(PLAIN.as_bytes());
    assert_plain(&parse(&bytes));
}

#[test]
fn loads_crlf() {
    assert_plain(&parse_str(&PLAIN.replace('\n', "\r\n")));
}

#[test]
fn loads_gbk_with_chinese_header_and_values() {
    let text = "住户编号,姓名备注,楼栋,单元,房号,网格,卡号,独居,无活动时限,外出至\r\n\
R-0101,独居老人,12栋,1单元,101,东区网格,C1101；C1102,是,36h,\r\n\
R-0102,,12栋,1单元,102,东区网格,C1103,否,,2026-11-10\r\n";
    let (bytes, _, unmappable) = encoding_rs::GBK.encode(text);
    assert!(!unmappable);
    assert!(
        std::str::from_utf8(&bytes).is_err(),
        "test data must not be valid UTF-8"
    );
    let l = parse(&bytes);
    assert!(l.problems.is_empty(), "{:#?}", l.problems);
    assert_eq!(ids(&l), [("R-0101", 2), ("R-0102", 3)]);
    let a = find(&l, "R-0101");
    assert_eq!(a.building, "12栋");
    assert_eq!(a.unit, "1单元");
    assert_eq!(a.room, "101");
    assert_eq!(a.grid.as_deref(), Some("东区网格"));
    assert_eq!(a.credentials, ["C1101", "C1102"]);
    assert!(a.watch);
    assert_eq!(a.inactivity_after, Some(36 * HOUR));
    assert_eq!(a.household(), "12栋-1单元-101");
    let b = find(&l, "R-0102");
    assert!(!b.watch);
    assert_eq!(
        b.away_until,
        Some(parse_rfc3339("2026-11-11T00:00:00+08:00").unwrap())
    );
}

#[test]
fn chinese_header_aliases_in_utf8() {
    let l = parse_str("住户编号,楼栋,单元,室,网格,凭证,关注,无活动时限,外出至\nR-1,3,2,201,G-02,C1,是,2d,2026-11-10 18:30\n");
    assert!(l.problems.is_empty(), "{:#?}", l.problems);
    let r = find(&l, "R-1");
    assert_eq!(r.household(), "3-2-201");
    assert_eq!(r.grid.as_deref(), Some("G-02"));
    assert_eq!(r.credentials, ["C1"]);
    assert!(r.watch);
    assert_eq!(r.inactivity_after, Some(48 * HOUR));
    assert_eq!(
        r.away_until,
        Some(parse_rfc3339("2026-11-10T18:30:00+08:00").unwrap())
    );
}

#[test]
fn columns_in_any_order_and_unknown_columns_ignored() {
    let l = parse_str(
        " Watch ,phone,ROOM,Resident_ID,notes,Building,unit,credentials\n\
         yes,13800000000,502,R-9,ground floor,7,3,\"C9, C10\"\n",
    );
    assert!(l.problems.is_empty(), "{:#?}", l.problems);
    let r = find(&l, "R-9");
    assert_eq!(
        (r.building.as_str(), r.unit.as_str(), r.room.as_str()),
        ("7", "3", "502")
    );
    assert!(r.watch);
    assert_eq!(r.credentials, ["C9", "C10"]);
    assert_eq!(r.grid, None);
    assert_eq!(r.inactivity_after, None);
    assert_eq!(r.away_until, None);
}

#[test]
fn all_watch_spellings() {
    let cases = [
        ("yes", true),
        ("YES", true),
        ("y", true),
        ("Y", true),
        ("1", true),
        ("true", true),
        ("True", true),
        ("是", true),
        ("no", false),
        ("No", false),
        ("n", false),
        ("N", false),
        ("0", false),
        ("false", false),
        ("FALSE", false),
        ("否", false),
        ("", false),
    ];
    let mut csv = String::from("resident_id,building,watch\n");
    for (i, (w, _)) in cases.iter().enumerate() {
        csv.push_str(&format!("R-{i},1, {w} \n"));
    }
    let l = parse_str(&csv);
    assert!(l.problems.is_empty(), "{:#?}", l.problems);
    for (i, (w, expected)) in cases.iter().enumerate() {
        let r = find(&l, &format!("R-{i}"));
        assert_eq!(r.watch, *expected, "watch `{w}`");
        assert_eq!(r.line, i + 2);
    }
}

#[test]
fn bad_watch_is_reported_and_row_dropped() {
    let l = parse_str("resident_id,building,watch\nR-1,1,yes\nR-2,1,maybe\nR-3,1,no\n");
    assert_eq!(ids(&l), [("R-1", 2), ("R-3", 4)]);
    let p = only_problem(&l);
    assert_eq!((p.line, p.key.as_deref()), (Some(3), Some("watch")));
    assert!(p.message.contains("maybe"), "{}", p.message);
    assert!(p.to_string().starts_with("residents.csv:3: watch: "), "{p}");
}

#[test]
fn bad_rows_reported_by_line_and_good_rows_kept() {
    let l = parse_str(
        "resident_id,building,unit,room,watch,inactivity_after,away_until\n\
         R-1,1,1,101,yes,,\n\
         ,1,1,102,no,,\n\
         R-3,,1,103,no,,\n\
         R-4,1,1,104,yes,36h,\n\
         R-5,1,1,105,yes,a while,\n\
         R-6,1,1,106,no,,next week\n\
         R-7,1,1,107,no,,2026-11-10T08:00:00+08:00\n",
    );
    assert_eq!(ids(&l), [("R-1", 2), ("R-4", 5), ("R-7", 8)]);
    assert_eq!(
        located(&l),
        [
            (Some(3), Some("resident_id")),
            (Some(4), Some("building")),
            (Some(6), Some("inactivity_after")),
            (Some(7), Some("away_until")),
        ]
    );
    assert!(
        l.problems[2].message.contains("a while"),
        "{}",
        l.problems[2].message
    );
    assert!(
        l.problems[3].message.contains("next week"),
        "{}",
        l.problems[3].message
    );
    assert_eq!(find(&l, "R-4").inactivity_after, Some(36 * HOUR));
    assert_eq!(
        find(&l, "R-7").away_until,
        Some(parse_rfc3339("2026-11-10T00:00:00Z").unwrap())
    );
}

#[test]
fn missing_resident_id_in_a_row() {
    let l = parse_str("resident_id,building,room\nR-1,1,101\n  ,1,102\nR-3,1,103\n");
    assert_eq!(ids(&l), [("R-1", 2), ("R-3", 4)]);
    let p = only_problem(&l);
    assert_eq!((p.line, p.key.as_deref()), (Some(3), Some("resident_id")));
}

#[test]
fn short_rows_count_missing_fields_as_empty() {
    let l = parse_str("resident_id,building,unit,room,watch\nR-1,1\nR-2\n");
    assert_eq!(ids(&l), [("R-1", 2)]);
    let r = find(&l, "R-1");
    assert_eq!(r.household(), "1--");
    assert!(!r.watch);
    assert_eq!(located(&l), [(Some(3), Some("building"))]);
}

#[test]
fn missing_header_column_loads_nothing() {
    let l = parse_str("id,building,room\nR-1,1,101\nR-2,1,102\n");
    assert!(l.roster.residents.is_empty());
    let p = only_problem(&l);
    assert_eq!((p.line, p.key.as_deref()), (Some(1), Some("resident_id")));
    assert!(p.message.contains("resident_id"), "{}", p.message);

    let l = parse_str("resident_id,楼号,room\nR-1,1,101\n");
    assert!(l.roster.residents.is_empty());
    let p = only_problem(&l);
    assert_eq!((p.line, p.key.as_deref()), (Some(1), Some("building")));
}

#[test]
fn duplicate_resident_id_drops_later_row() {
    let l = parse_str("resident_id,building,room\nR-0,1,100\nR-1,1,101\nR-2,1,102\nR-1,1,999\n");
    assert_eq!(ids(&l), [("R-0", 2), ("R-1", 3), ("R-2", 4)]);
    assert_eq!(find(&l, "R-1").room, "101");
    let p = only_problem(&l);
    assert_eq!((p.line, p.key.as_deref()), (Some(5), Some("resident_id")));
    assert_eq!(p.message, "duplicate resident_id R-1, first on line 3");
}

#[test]
fn duplicate_credential_kept_by_first_holder() {
    let l = parse_str(
        "resident_id,building,credentials\n\
         R-1,1,C1;C2\n\
         R-2,1,C3;C2;C4\n",
    );
    assert_eq!(ids(&l), [("R-1", 2), ("R-2", 3)]);
    assert_eq!(find(&l, "R-1").credentials, ["C1", "C2"]);
    assert_eq!(find(&l, "R-2").credentials, ["C3", "C4"]);
    let p = only_problem(&l);
    assert_eq!((p.line, p.key.as_deref()), (Some(3), Some("credentials")));
    for part in ["C2", "R-1", "line 2"] {
        assert!(
            p.message.contains(part),
            "{part} missing from {}",
            p.message
        );
    }
}

#[test]
fn credential_separators() {
    let l =
        parse_str("resident_id,building,credentials\nR-1,1,\" A ; B；C,D ;; \"\nR-2,1,\nR-3,1,;\n");
    assert!(l.problems.is_empty(), "{:#?}", l.problems);
    assert_eq!(find(&l, "R-1").credentials, ["A", "B", "C", "D"]);
    assert!(find(&l, "R-2").credentials.is_empty());
    assert!(find(&l, "R-3").credentials.is_empty());
}

#[test]
fn away_until_date_and_rfc3339() {
    let l = parse_str(
        "resident_id,building,away_until\n\
         R-1,1,2026-11-10\n\
         R-2,1,2026-11-10T08:00:00+08:00\n\
         R-3,1,2026-11-10T00:00:00Z\n\
         R-4,1,2026-11-10 07:30\n\
         R-5,1,\n",
    );
    assert!(l.problems.is_empty(), "{:#?}", l.problems);
    let at = |s: &str| Some(parse_rfc3339(s).unwrap());
    // A bare date is the end of that local day.
    assert_eq!(find(&l, "R-1").away_until, at("2026-11-11T00:00:00+08:00"));
    assert_eq!(find(&l, "R-2").away_until, at("2026-11-10T00:00:00Z"));
    assert_eq!(find(&l, "R-3").away_until, at("2026-11-10T08:00:00+08:00"));
    assert_eq!(find(&l, "R-4").away_until, at("2026-11-10T07:30:00+08:00"));
    assert_eq!(find(&l, "R-5").away_until, None);
}

#[test]
fn bad_inactivity_after_and_away_until_drop_row() {
    let l = parse_str(
        "resident_id,building,watch,inactivity_after,away_until\n\
         R-1,1,yes,36 hours please,\n\
         R-2,1,yes,,2026-13-40\n\
         R-3,1,yes,12h,\n",
    );
    assert_eq!(ids(&l), [("R-3", 4)]);
    assert_eq!(find(&l, "R-3").inactivity_after, Some(12 * HOUR));
    assert_eq!(
        located(&l),
        [
            (Some(2), Some("inactivity_after")),
            (Some(3), Some("away_until"))
        ]
    );
}

#[test]
fn quoted_multiline_field_keeps_line_numbers_right() {
    let l = parse_str(
        "resident_id,notes,building,watch\n\
         R-1,\"first line\nsecond line\nthird, with comma\",1,yes\n\
         \n\
         R-2,,2,no\n\
         R-3,,3,perhaps\n",
    );
    assert_eq!(ids(&l), [("R-1", 2), ("R-2", 6)]);
    assert_eq!(located(&l), [(Some(7), Some("watch"))]);
}

#[test]
fn unclosed_quote_is_reported() {
    let l = parse_str("resident_id,building,room\nR-1,1,101\nR-2,2,\"102\nR-3,3,103\n");
    assert_eq!(ids(&l), [("R-1", 2)]);
    let p = only_problem(&l);
    assert_eq!((p.line, p.key.as_deref()), (Some(3), None));
    assert!(p.message.contains("never closed"), "{}", p.message);
}

#[test]
fn blank_lines_and_trailing_empty_columns() {
    let l = parse_str("\r\nresident_id,building,,,\r\n\r\nR-1,1,,,\r\n,,,,\r\n\r\nR-2,2,,,,,\r\n");
    assert!(l.problems.is_empty(), "{:#?}", l.problems);
    assert_eq!(ids(&l), [("R-1", 4), ("R-2", 7)]);
}

#[test]
fn undecodable_bytes_reported_rest_loaded() {
    let mut bytes = b"resident_id,building,grid\nR-1,1,G1\nR-2,2,".to_vec();
    bytes.push(0xFF); // invalid in UTF-8 and GB18030
    bytes.extend_from_slice(b"\nR-3,3,G3\n");
    let l = parse(&bytes);
    assert_eq!(ids(&l), [("R-1", 2), ("R-2", 3), ("R-3", 4)]);
    assert_eq!(find(&l, "R-3").grid.as_deref(), Some("G3"));
    let p = only_problem(&l);
    assert_eq!((p.line, p.key.as_deref()), (Some(3), None));
}

#[test]
fn utf16_with_bom() {
    let text = "resident_id,building,watch\r\nR-1,十二,是\r\n";
    for le in [true, false] {
        let mut bytes = if le {
            vec![0xFF, 0xFE]
        } else {
            vec![0xFE, 0xFF]
        };
        for u in text.encode_utf16() {
            bytes.extend_from_slice(&if le { u.to_le_bytes() } else { u.to_be_bytes() });
        }
        let l = parse(&bytes);
        assert!(l.problems.is_empty(), "{:#?}", l.problems);
        let r = find(&l, "R-1");
        assert_eq!((r.building.as_str(), r.watch, r.line), ("十二", true, 2));
    }
}

#[test]
fn empty_file_is_a_problem() {
    let l = parse(b"");
    assert!(l.roster.residents.is_empty());
    assert_eq!(l.problems.len(), 1);
}

#[test]
fn unreadable_file_is_one_problem() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/no-such-roster.csv");
    let l = roster::load(&path, &cal());
    assert!(l.roster.residents.is_empty());
    let p = only_problem(&l);
    assert_eq!(p.file, path);
    assert_eq!(p.line, None);
}

#[test]
fn load_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.csv");
    let (gbk, _, _) = encoding_rs::GBK.encode("住户编号,楼栋,独居\nR-1,1,是\nR-2,2,也许\n");
    std::fs::write(&path, &gbk).unwrap();
    let l = roster::load(&path, &cal());
    assert_eq!(ids(&l), [("R-1", 2)]);
    let p = only_problem(&l);
    assert_eq!(
        (p.file.as_path(), p.line, p.key.as_deref()),
        (path.as_path(), Some(3), Some("watch"))
    );
    assert!(p.message.contains("也许"), "{}", p.message);
}

#[test]
fn shipped_example_loads_cleanly() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/residents.csv");
    let l = roster::load(&path, &cal());
    assert!(l.problems.is_empty(), "{:#?}", l.problems);
    assert!(!l.roster.residents.is_empty());
    let r = find(&l, "R-0312");
    assert_eq!(r.household(), "12-1-502");
    assert_eq!(r.credentials, ["3285011022", "FACE-0312"]);
    assert!(r.watch);
    assert_eq!(r.line, 2);
    let r = find(&l, "R-0101");
    assert!(r.watch);
    assert_eq!(r.inactivity_after, Some(36 * HOUR));
    let r = find(&l, "R-0420");
    assert_eq!(
        r.away_until,
        Some(parse_rfc3339("2026-11-11T00:00:00+08:00").unwrap())
    );
    assert!(!find(&l, "R-0702").watch);
}
