//! Resident roster (SPEC §3): a CSV file kept by the property company,
//! usually exported from a spreadsheet.
//!
//! [`load`] and [`parse`] never fail as a whole and never panic: they return
//! the rows that are valid and one [`Problem`] for each thing that is wrong,
//! located by 1-based line number (the header is line 1) and column.
//!
//! # Encoding
//!
//! - A byte-order mark decides: UTF-8, UTF-16 LE or UTF-16 BE (Excel's
//!   "Unicode text"). The BOM is removed.
//! - Without a BOM, bytes that are valid UTF-8 are read as UTF-8; anything
//!   else is read as GB18030, a superset of GBK (what Chinese spreadsheet
//!   software exports).
//! - Bytes that do not decode are replaced with U+FFFD and reported once, at
//!   the line of the first bad sequence; the rows are still loaded.
//!
//! # Format
//!
//! - Comma-separated, with `"` quoting (quoted fields may contain commas and
//!   newlines). The one exception: a UTF-16 file whose header line has tabs
//!   and no comma is read as tab-separated, since that is what Excel writes
//!   as "Unicode text".
//! - CRLF or LF line ends. Blank lines and rows whose fields are all empty
//!   (`,,,,` left by spreadsheets) are skipped. Rows may have more or fewer
//!   fields than the header; missing fields count as empty.
//! - Every field is trimmed (Unicode whitespace, including the full-width
//!   space).
//! - A quote that is never closed would make the rest of the file one
//!   field; such a row is reported (with the lines it swallowed) and ignored.
//!
//! # Header
//!
//! The first non-blank row is the header. Column order is free and unknown
//! columns are ignored. Names are trimmed and compared case-insensitively,
//! with spaces and `-` read as `_` (`Resident ID` is `resident_id`). Chinese
//! aliases:
//!
//! | column             | aliases          |
//! |--------------------|------------------|
//! | `resident_id`      | 住户编号         |
//! | `building`         | 楼栋             |
//! | `unit`             | 单元             |
//! | `room`             | 室, 房号         |
//! | `grid`             | 网格             |
//! | `credentials`      | 凭证, 卡号       |
//! | `watch`            | 关注, 独居       |
//! | `inactivity_after` | 无活动时限       |
//! | `away_until`       | 外出至           |
//!
//! A header without `resident_id` or `building` is one problem per missing
//! column and no rows are loaded. A column named twice (say `room` and `室`)
//! is a problem; the first one is used.
//!
//! # Values
//!
//! - `resident_id`: required, unique (compared exactly).
//! - `building`: required. `unit` and `room` may be empty.
//! - `grid`: empty means none.
//! - `credentials`: separated by `;`, `；`, `,` or `，` (the commas only
//!   inside a quoted field, of course); trimmed; empty items dropped; a
//!   credential repeated within one row is kept once.
//! - `watch`: `yes`/`no`, `y`/`n`, `1`/`0`, `true`/`false`, `是`/`否`,
//!   case-insensitive; empty means no.
//! - `inactivity_after`: a humantime duration such as `36h`; must be more
//!   than zero.
//! - `away_until`: RFC 3339, or a local `YYYY-MM-DD` (end of that day) or
//!   `YYYY-MM-DD HH:MM[:SS]` in the compound's zone.
//!
//! # Bad rows
//!
//! - A row with any bad value (missing `resident_id` or `building`, a bad
//!   `watch`, `inactivity_after` or `away_until`) is dropped, with a problem
//!   for each bad value. A row is loaded exactly as written or not at all, so
//!   that nobody is silently watched with the wrong settings.
//! - A `resident_id` already used on an earlier row (loaded or not) is a
//!   problem, `duplicate resident_id R-1, first on line 3`, and the later row
//!   is dropped: two rows claiming one id are ambiguous either way.
//! - A credential already held by an earlier *loaded* resident is a problem
//!   on the later row naming the credential, the holder and its line. The
//!   later row is still loaded, without that credential: the first holder
//!   keeps it, and the later resident's other credentials keep working.
//!
//! # Line numbers
//!
//! Lines are counted by `\n` from the start of the file. They are computed
//! from each record's byte offset rather than taken from the csv crate's
//! `Position::line`, which points at the line before a record that follows a
//! blank line or a CRLF line end. Quoted fields spanning lines are counted.

use crate::config::Problem;
use crate::keys::Keys;
use crate::time::{parse_duration, Calendar, Millis, Ts};
use encoding_rs::{Encoding, GB18030, UTF_16BE, UTF_16LE, UTF_8};
use std::borrow::Cow;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resident {
    pub id: String,
    pub building: String,
    pub unit: String,
    pub room: String,
    pub grid: Option<String>,
    pub credentials: Vec<String>,
    pub watch: bool,
    pub inactivity_after: Option<Millis>,
    pub away_until: Option<Ts>,
    /// 1-based line of the row in the file.
    pub line: usize,
}

impl Resident {
    /// The household key, `building-unit-room`.
    pub fn household(&self) -> String {
        let mut key = String::new();
        self.write_household(&mut key);
        key
    }

    /// Appends the household key to `out` (no allocation of its own).
    pub fn write_household(&self, out: &mut String) {
        for (i, part) in [&self.building, &self.unit, &self.room]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                out.push('-');
            }
            out.push_str(part);
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    pub residents: Vec<Resident>,
}

/// The good rows, and a problem for each bad one.
#[derive(Debug, Clone, Default)]
pub struct RosterLoad {
    pub roster: Roster,
    pub problems: Vec<Problem>,
}

/// Reads and parses the roster at `path`. An unreadable file is one problem
/// and an empty roster.
pub fn load(path: &Path, calendar: &Calendar) -> RosterLoad {
    let mut residents = Vec::new();
    let problems = load_each(path, calendar, |r| residents.push(r));
    RosterLoad {
        roster: Roster { residents },
        problems,
    }
}

/// Like [`load`], handing each good row to `each` as it is read instead of
/// collecting them: the daemon indexes a large roster without holding
/// every parsed row at once.
pub fn load_each(path: &Path, calendar: &Calendar, each: impl FnMut(Resident)) -> Vec<Problem> {
    match std::fs::read(path) {
        Ok(bytes) => parse_each(&bytes, path, calendar, each),
        Err(e) => vec![Problem::new(
            path,
            None,
            None,
            format!("cannot read roster: {e}"),
        )],
    }
}

/// The roster `config` names, if any ([`load_each`] in the compound's time
/// zone); without one, no rows and no problems.
pub fn load_configured(config: &crate::config::Config, each: impl FnMut(Resident)) -> Vec<Problem> {
    match &config.roster {
        Some(path) => load_each(path, &Calendar::new(config.timezone), each),
        None => Vec::new(),
    }
}

/// Parses roster bytes; `file` is only used to locate problems.
pub fn parse(bytes: &[u8], file: &Path, calendar: &Calendar) -> RosterLoad {
    let mut residents = Vec::new();
    let problems = parse_each(bytes, file, calendar, |r| residents.push(r));
    RosterLoad {
        roster: Roster { residents },
        problems,
    }
}

/// [`parse`], handing each good row to `each` in file order.
pub fn parse_each(
    bytes: &[u8],
    file: &Path,
    calendar: &Calendar,
    mut each: impl FnMut(Resident),
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let decoded = decode(bytes);
    let text: &str = &decoded.text;
    let lines = LineIndex::new(text);
    if decoded.had_errors {
        let at = text.find('\u{FFFD}').unwrap_or(0);
        let what = if decoded.encoding == GB18030 {
            "the file is neither UTF-8 nor GB18030/GBK".to_string()
        } else {
            format!(
                "the file has a {} byte-order mark but is not valid {}",
                decoded.encoding.name(),
                decoded.encoding.name()
            )
        };
        problems.push(Problem::new(
            file,
            Some(lines.line_of(at)),
            None,
            format!(
                "{what}: undecodable bytes were replaced with U+FFFD \
                 (first on this line); save the roster as UTF-8"
            ),
        ));
    }

    let delimiter = if decoded.utf16 {
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if first.contains('\t') && !first.contains(',') {
            b'\t'
        } else {
            b','
        }
    } else {
        b','
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(text.as_bytes());

    let mut header: Option<Columns> = None;
    let mut rows = RowChecker::new(file, calendar);
    let mut record = csv::StringRecord::new();

    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = e.position().map(|p| lines.record_line(text, p.byte()));
                problems.push(Problem::new(
                    file,
                    line,
                    None,
                    format!("unreadable CSV: {e}"),
                ));
                break;
            }
        }
        let start = record.position().map_or(0, |p| p.byte());
        let end = reader.position().byte();
        let line = lines.record_line(text, start);
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        if unclosed_quote(text, start, end, &record) {
            problems.push(Problem::new(
                file,
                Some(line),
                None,
                format!(
                    "a quote (\") opened in this row is never closed, so lines {line} to {} \
                     were read as one row; the row is ignored",
                    lines.line_of(end.saturating_sub(1) as usize)
                ),
            ));
            continue;
        }
        match &header {
            None => {
                let cols = Columns::from_header(&record, file, line, &mut problems);
                let mut missing = false;
                for required in [Column::ResidentId, Column::Building] {
                    if cols.index(required).is_none() {
                        missing = true;
                        problems.push(Problem::new(
                            file,
                            Some(line),
                            Some(required.name().to_string()),
                            format!(
                                "the header has no {} column (also accepted: {})",
                                required.name(),
                                required.aliases().join(", ")
                            ),
                        ));
                    }
                }
                if missing {
                    return problems;
                }
                header = Some(cols);
            }
            Some(cols) => {
                if let Some(r) = rows.row(cols, &record, line, &mut problems) {
                    each(r);
                }
            }
        }
    }

    if header.is_none() {
        problems.push(Problem::new(
            file,
            Some(1),
            None,
            "the roster is empty: a header row is required (resident_id,building,unit,room,...)",
        ));
    }

    problems
}

/// Whether the record read from bytes `start..end` has a quote that never
/// closes: the csv reader then takes everything up to the end of the file as
/// one field. Quotes come in pairs in well-formed CSV; an odd count in a
/// record whose fields span lines means the rows after it were swallowed.
fn unclosed_quote(text: &str, start: u64, end: u64, record: &csv::StringRecord) -> bool {
    let start = usize::try_from(start).unwrap_or(usize::MAX);
    let end = usize::try_from(end).unwrap_or(usize::MAX);
    let raw = text
        .as_bytes()
        .get(start..end.min(text.len()))
        .unwrap_or(&[]);
    raw.iter().filter(|&&b| b == b'"').count() % 2 == 1
        && record.iter().any(|f| f.contains(['\n', '\r']))
}

/// The file's text and how it was decoded.
struct Decoded<'a> {
    text: Cow<'a, str>,
    encoding: &'static Encoding,
    had_errors: bool,
    utf16: bool,
}

fn decode(bytes: &[u8]) -> Decoded<'_> {
    let (encoding, rest) = match Encoding::for_bom(bytes) {
        Some((enc, bom_len)) => (enc, bytes.get(bom_len..).unwrap_or(&[])),
        None if std::str::from_utf8(bytes).is_ok() => (UTF_8, bytes),
        None => (GB18030, bytes),
    };
    let (text, had_errors) = encoding.decode_without_bom_handling(rest);
    Decoded {
        text,
        encoding,
        had_errors,
        utf16: encoding == UTF_16LE || encoding == UTF_16BE,
    }
}

/// Byte offsets of the `\n`s of the text, to turn offsets into line numbers.
struct LineIndex {
    newlines: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        LineIndex {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// 1-based line of byte offset `at`.
    fn line_of(&self, at: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < at) + 1
    }

    /// Line on which a record read from byte offset `start` begins: the csv
    /// reader's offset is where the previous record stopped, before the line
    /// end and any blank lines it skips.
    fn record_line(&self, text: &str, start: u64) -> usize {
        let start = usize::try_from(start).unwrap_or(usize::MAX).min(text.len());
        let skipped = text.as_bytes()[start..]
            .iter()
            .take_while(|&&b| b == b'\n' || b == b'\r')
            .count();
        self.line_of(start + skipped)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    ResidentId,
    Building,
    Unit,
    Room,
    Grid,
    Credentials,
    Watch,
    InactivityAfter,
    AwayUntil,
}

impl Column {
    const ALL: [Column; 9] = [
        Column::ResidentId,
        Column::Building,
        Column::Unit,
        Column::Room,
        Column::Grid,
        Column::Credentials,
        Column::Watch,
        Column::InactivityAfter,
        Column::AwayUntil,
    ];

    fn name(self) -> &'static str {
        match self {
            Column::ResidentId => "resident_id",
            Column::Building => "building",
            Column::Unit => "unit",
            Column::Room => "room",
            Column::Grid => "grid",
            Column::Credentials => "credentials",
            Column::Watch => "watch",
            Column::InactivityAfter => "inactivity_after",
            Column::AwayUntil => "away_until",
        }
    }

    fn aliases(self) -> &'static [&'static str] {
        match self {
            Column::ResidentId => &["住户编号"],
            Column::Building => &["楼栋"],
            Column::Unit => &["单元"],
            Column::Room => &["室", "房号"],
            Column::Grid => &["网格"],
            Column::Credentials => &["凭证", "卡号"],
            Column::Watch => &["关注", "独居"],
            Column::InactivityAfter => &["无活动时限"],
            Column::AwayUntil => &["外出至"],
        }
    }

    /// The column a header cell names, if any.
    fn from_header(cell: &str) -> Option<Column> {
        let cell = cell.trim_matches(|c: char| c.is_whitespace() || c == '\u{FEFF}');
        let norm: String = cell
            .chars()
            .map(|c| {
                if c == ' ' || c == '-' {
                    '_'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        Column::ALL
            .into_iter()
            .find(|c| c.name() == norm || c.aliases().contains(&cell))
    }
}

/// Field index of each known column.
struct Columns([Option<usize>; 9]);

impl Columns {
    fn from_header(
        record: &csv::StringRecord,
        file: &Path,
        line: usize,
        problems: &mut Vec<Problem>,
    ) -> Self {
        let mut cols = [None; 9];
        for (i, cell) in record.iter().enumerate() {
            let Some(col) = Column::from_header(cell) else {
                continue;
            };
            match cols[col as usize] {
                None => cols[col as usize] = Some(i),
                Some(first) => problems.push(Problem::new(
                    file,
                    Some(line),
                    Some(col.name().to_string()),
                    format!(
                        "column {} appears twice (columns {} and {}, `{}`); the first is used",
                        col.name(),
                        first + 1,
                        i + 1,
                        cell.trim()
                    ),
                )),
            }
        }
        Columns(cols)
    }

    fn index(&self, col: Column) -> Option<usize> {
        self.0[col as usize]
    }

    fn get<'r>(&self, record: &'r csv::StringRecord, col: Column) -> &'r str {
        self.index(col)
            .and_then(|i| record.get(i))
            .map(str::trim)
            .unwrap_or("")
    }
}

/// Checks data rows one by one, remembering ids and credentials seen so far
/// (compactly: this is most of what parsing a large roster holds at once).
struct RowChecker<'a> {
    file: &'a Path,
    calendar: &'a Calendar,
    /// Every resident_id seen on a row, loaded or not…
    ids: Keys,
    /// …with its first line.
    id_lines: Vec<usize>,
    /// Credentials given to a loaded resident…
    credentials: Keys,
    /// …and the holder's id (in `ids`).
    holders: Vec<u32>,
}

impl<'a> RowChecker<'a> {
    fn new(file: &'a Path, calendar: &'a Calendar) -> Self {
        RowChecker {
            file,
            calendar,
            ids: Keys::default(),
            id_lines: Vec::new(),
            credentials: Keys::default(),
            holders: Vec::new(),
        }
    }

    /// The row as a resident, or `None` (its problems reported).
    fn row(
        &mut self,
        cols: &Columns,
        record: &csv::StringRecord,
        line: usize,
        problems: &mut Vec<Problem>,
    ) -> Option<Resident> {
        let file = self.file;
        let mut ok = true;
        let mut bad = |col: Column, message: String| {
            problems.push(Problem::new(
                file,
                Some(line),
                Some(col.name().to_string()),
                message,
            ));
        };

        let id = cols.get(record, Column::ResidentId);
        let mut id_key = None;
        if id.is_empty() {
            ok = false;
            bad(
                Column::ResidentId,
                "resident_id is empty; every row needs one".into(),
            );
        } else {
            match self.ids.insert(id) {
                (k, true) => {
                    self.id_lines.push(line);
                    id_key = Some(k);
                }
                (k, false) => {
                    ok = false;
                    let first = self.id_lines[k as usize];
                    bad(
                        Column::ResidentId,
                        format!("duplicate resident_id {id}, first on line {first}"),
                    );
                }
            }
        }

        let building = cols.get(record, Column::Building);
        if building.is_empty() {
            ok = false;
            bad(
                Column::Building,
                "building is empty; every row needs one".into(),
            );
        }

        let watch_text = cols.get(record, Column::Watch);
        let watch = parse_watch(watch_text).unwrap_or_else(|| {
            ok = false;
            bad(
                Column::Watch,
                format!("`{watch_text}` is not yes or no (accepted: yes/no, y/n, 1/0, true/false, 是/否)"),
            );
            false
        });

        let after_text = cols.get(record, Column::InactivityAfter);
        let inactivity_after = if after_text.is_empty() {
            None
        } else {
            match parse_duration(after_text) {
                Ok(d) if d.is_zero() => {
                    ok = false;
                    bad(
                        Column::InactivityAfter,
                        format!("`{after_text}` must be more than zero"),
                    );
                    None
                }
                Ok(d) => Some(d.as_millis().min(i64::MAX as u128) as Millis),
                Err(e) => {
                    ok = false;
                    bad(Column::InactivityAfter, e.to_string());
                    None
                }
            }
        };

        let away_text = cols.get(record, Column::AwayUntil);
        let away_until = if away_text.is_empty() {
            None
        } else {
            match self.calendar.parse_time_or_date(away_text) {
                Ok(t) => Some(t),
                Err(e) => {
                    ok = false;
                    bad(Column::AwayUntil, e.to_string());
                    None
                }
            }
        };

        let id_key = id_key.filter(|_| ok)?;

        let mut credentials: Vec<String> = Vec::new();
        for cred in split_credentials(cols.get(record, Column::Credentials)) {
            if credentials.iter().any(|c| c == cred) {
                continue;
            }
            if let Some(c) = self.credentials.get(cred) {
                let holder = self.holders[c as usize];
                let other = self.ids.text(holder);
                bad(
                    Column::Credentials,
                    format!(
                        "credential {cred} is already assigned to resident {other} on line {}; \
                         it stays with {other} and is not given to {id}",
                        self.id_lines[holder as usize]
                    ),
                );
                continue;
            }
            credentials.push(cred.to_string());
        }
        for cred in &credentials {
            self.credentials.insert(cred);
            self.holders.push(id_key);
        }

        let grid = cols.get(record, Column::Grid);
        Some(Resident {
            id: id.to_string(),
            building: building.to_string(),
            unit: cols.get(record, Column::Unit).to_string(),
            room: cols.get(record, Column::Room).to_string(),
            grid: (!grid.is_empty()).then(|| grid.to_string()),
            credentials,
            watch,
            inactivity_after,
            away_until,
            line,
        })
    }
}

/// `yes`/`no` and friends; empty is no; `None` if not recognised.
fn parse_watch(s: &str) -> Option<bool> {
    match s.trim().to_lowercase().as_str() {
        "" | "no" | "n" | "0" | "false" | "否" => Some(false),
        "yes" | "y" | "1" | "true" | "是" => Some(true),
        _ => None,
    }
}

/// Credentials of one field: split on `;`, `；`, `,`, `，`, trimmed, empties dropped.
fn split_credentials(s: &str) -> impl Iterator<Item = &str> {
    s.split([';', '；', ',', '，'])
        .map(str::trim)
        .filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal() -> Calendar {
        Calendar::new(Calendar::parse_zone("Asia/Shanghai").unwrap())
    }

    fn p(bytes: &[u8]) -> RosterLoad {
        parse(bytes, Path::new("r.csv"), &cal())
    }

    fn lines_of(l: &RosterLoad) -> Vec<(Option<usize>, Option<String>)> {
        l.problems.iter().map(|p| (p.line, p.key.clone())).collect()
    }

    #[test]
    fn watch_spellings() {
        for s in [
            "yes", "YES", "Yes", "y", "Y", "1", "true", "TRUE", "是", " yes ",
        ] {
            assert_eq!(parse_watch(s), Some(true), "{s}");
        }
        for s in ["", "no", "NO", "n", "N", "0", "false", "False", "否"] {
            assert_eq!(parse_watch(s), Some(false), "{s}");
        }
        for s in ["maybe", "2", "yes!", "是的", "ja"] {
            assert_eq!(parse_watch(s), None, "{s}");
        }
    }

    #[test]
    fn credential_separators() {
        let v: Vec<&str> = split_credentials(" A1; B2 ；C3,D4，E5;; ").collect();
        assert_eq!(v, ["A1", "B2", "C3", "D4", "E5"]);
        assert_eq!(split_credentials("").count(), 0);
        assert_eq!(split_credentials(" ; ; ").count(), 0);
    }

    #[test]
    fn header_names_normalise() {
        assert_eq!(
            Column::from_header(" Resident ID "),
            Some(Column::ResidentId)
        );
        assert_eq!(Column::from_header("RESIDENT-ID"), Some(Column::ResidentId));
        assert_eq!(
            Column::from_header("\u{FEFF}resident_id"),
            Some(Column::ResidentId)
        );
        assert_eq!(
            Column::from_header("Inactivity After"),
            Some(Column::InactivityAfter)
        );
        assert_eq!(Column::from_header("房号"), Some(Column::Room));
        assert_eq!(Column::from_header("室"), Some(Column::Room));
        assert_eq!(Column::from_header(" 卡号 "), Some(Column::Credentials));
        assert_eq!(Column::from_header("独居"), Some(Column::Watch));
        assert_eq!(Column::from_header("name_note"), None);
        assert_eq!(Column::from_header(""), None);
    }

    #[test]
    fn decode_detection() {
        let d = decode(b"\xEF\xBB\xBFa,b");
        assert_eq!((&*d.text, d.encoding, d.had_errors), ("a,b", UTF_8, false));
        let d = decode("楼栋".as_bytes());
        assert_eq!((&*d.text, d.encoding), ("楼栋", UTF_8));
        let (gbk, _, _) = encoding_rs::GBK.encode("楼栋,是");
        let d = decode(&gbk);
        assert_eq!(
            (&*d.text, d.encoding, d.had_errors),
            ("楼栋,是", GB18030, false)
        );
        let d = decode(b"\xFF\xFEa\x00,\x00");
        assert_eq!((&*d.text, d.utf16), ("a,", true));
        let d = decode(b"\xFE\xFF\x00a\x00,");
        assert_eq!((&*d.text, d.utf16), ("a,", true));
        let d = decode(b"a,\x80\xFF");
        assert!(d.had_errors);
    }

    #[test]
    fn line_numbers_with_blank_lines_and_crlf() {
        let text = "resident_id,building\r\n\r\nR-1,1\r\n\r\n\r\nR-2,\r\nR-3,3\r\n";
        let l = p(text.as_bytes());
        let got: Vec<(&str, usize)> = l
            .roster
            .residents
            .iter()
            .map(|r| (r.id.as_str(), r.line))
            .collect();
        assert_eq!(got, [("R-1", 3), ("R-3", 7)]);
        assert_eq!(lines_of(&l), [(Some(6), Some("building".to_string()))]);
    }

    #[test]
    fn header_after_blank_lines() {
        let l = p(b"\n\nresident_id,building\nR-1,1\n");
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert_eq!(l.roster.residents[0].line, 4);
    }

    #[test]
    fn all_empty_rows_are_skipped() {
        let l = p(b"resident_id,building,unit\nR-1,1,2\n,,\n , ,\nR-2,1,3,,,\n");
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert_eq!(l.roster.residents.len(), 2);
        assert_eq!(l.roster.residents[1].line, 5);
        assert_eq!(l.roster.residents[1].household(), "1-3-");
    }

    #[test]
    fn utf16_tab_separated_excel_unicode_text() {
        let text = "resident_id\tbuilding\twatch\r\nR-1\t12\t是\r\n";
        let mut bytes = vec![0xFF, 0xFE];
        for u in text.encode_utf16() {
            bytes.extend_from_slice(&u.to_le_bytes());
        }
        let l = p(&bytes);
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert_eq!(l.roster.residents[0].id, "R-1");
        assert!(l.roster.residents[0].watch);
        assert_eq!(l.roster.residents[0].line, 2);
    }

    #[test]
    fn undecodable_bytes_are_reported_on_their_line() {
        // \xFF is invalid in both UTF-8 and GB18030 (\x80 is € in GB18030).
        let l = p(b"resident_id,building,grid\nR-1,1,G\nR-2,2,\xFF\n");
        assert_eq!(l.roster.residents.len(), 2);
        assert_eq!(lines_of(&l), [(Some(3), None)]);
        assert!(
            l.problems[0].message.contains("neither UTF-8 nor GB18030"),
            "{}",
            l.problems[0].message
        );
    }

    #[test]
    fn empty_and_header_only() {
        let l = p(b"");
        assert_eq!(l.problems.len(), 1);
        assert!(l.roster.residents.is_empty());
        let l = p(b"\xEF\xBB\xBF\r\n\r\n");
        assert_eq!(l.problems.len(), 1);
        let l = p(b"resident_id,building\n");
        assert!(l.problems.is_empty());
        assert!(l.roster.residents.is_empty());
    }

    #[test]
    fn duplicate_header_column_uses_first() {
        let l = p("resident_id,building,room,房号\nR-1,1,101,999\n".as_bytes());
        assert_eq!(lines_of(&l), [(Some(1), Some("room".to_string()))]);
        assert_eq!(l.roster.residents[0].room, "101");
    }

    #[test]
    fn zero_inactivity_is_rejected() {
        let l = p(b"resident_id,building,inactivity_after\nR-1,1,0s\nR-2,1,90m\n");
        assert_eq!(
            lines_of(&l),
            [(Some(2), Some("inactivity_after".to_string()))]
        );
        assert_eq!(l.roster.residents[0].inactivity_after, Some(90 * 60 * 1000));
    }

    #[test]
    fn several_problems_in_one_row() {
        let l = p(b"resident_id,building,watch,away_until\n,,maybe,soon\n");
        let keys: Vec<_> = l.problems.iter().map(|p| p.key.clone().unwrap()).collect();
        assert_eq!(keys, ["resident_id", "building", "watch", "away_until"]);
        assert!(l.problems.iter().all(|p| p.line == Some(2)));
        assert!(l.roster.residents.is_empty());
    }

    #[test]
    fn duplicate_credential_in_one_row_is_kept_once() {
        let l = p(b"resident_id,building,credentials\nR-1,1,\"C1;C1,C2\"\n");
        assert!(l.problems.is_empty());
        assert_eq!(l.roster.residents[0].credentials, ["C1", "C2"]);
    }

    #[test]
    fn unclosed_quote_is_reported_not_swallowed_silently() {
        let l = p(b"resident_id,building,room\nR-0,1,100\nR-1,1,\"101\nR-2,2,102\nR-3,3,103\n");
        assert_eq!(l.roster.residents.len(), 1);
        assert_eq!(l.roster.residents[0].id, "R-0");
        assert_eq!(lines_of(&l), [(Some(3), None)]);
        assert!(
            l.problems[0].message.contains("lines 3 to 5"),
            "{}",
            l.problems[0].message
        );
    }

    #[test]
    fn escaped_quotes_in_multiline_field_are_fine() {
        let l = p(b"resident_id,note,building\nR-1,\"say \"\"hi\"\"\nthere\",1\nR-2,,2\n");
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        let got: Vec<usize> = l.roster.residents.iter().map(|r| r.line).collect();
        assert_eq!(got, [2, 4]);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let alphabet: &[u8] = b"ab,;\"\r\n \t\x80\xFF\xFE\xEF\xBB\xBF\xE6\xA5\xBC1-:T";
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 64) as usize;
            let mut bytes =
                b"resident_id,building,watch,credentials,inactivity_after,away_until\n".to_vec();
            let mut s = seed;
            for _ in 0..len {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                bytes.push(alphabet[(s >> 33) as usize % alphabet.len()]);
            }
            let _ = p(&bytes);
            let _ = p(&bytes[bytes.len().min(70)..]);
        }
    }
}
