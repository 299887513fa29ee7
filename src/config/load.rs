//! Reading and validating the configuration file (SPEC §3, §4, §6 `check`).
//!
//! The loader reports every problem it can find, each located by file, line
//! and key path, instead of stopping at the first:
//!
//! 1. The text is parsed twice: into a [`toml::Value`] tree (to deserialize)
//!    and into a [`toml_edit::ImDocument`] (which keeps byte spans, to turn a
//!    key path into a line). A syntax error is one problem and ends there.
//! 2. The tree is deserialized piece by piece (each top-level key, each
//!    `[rules.<name>]` table, each `[[devices]]` entry) with `serde_ignored`
//!    collecting unknown keys and `serde_path_to_error` locating type errors.
//!    After a type error the offending key is removed and the piece is tried
//!    again, so that several bad values in one table are all reported.
//! 3. The pieces that deserialized are assembled into a [`RawConfig`] and
//!    checked for what types cannot say (ids, ranges, cross-field rules).

use super::{
    Config, DeviceConfig, DeviceKind, FieldSpec, LocalMqttConfig, MappingConfig, OutboxConfig,
    PlatformConfig, Problem, Problems, RawConfig, RulesConfig, SubscriptionConfig, TlsConfig,
};
use crate::sources::mapping::{check_mapping, format_names, preset, PRESETS};
use crate::time::{Calendar, HumanDuration};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Value;

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, Problems> {
    let bytes = std::fs::read(path).map_err(|e| {
        Problems(vec![Problem::new(
            path,
            None,
            None,
            format!("cannot read the configuration file: {e}"),
        )])
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => load_str(&text, path),
        Err(e) => {
            let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            Err(Problems(vec![Problem::new(
                path,
                Some(line),
                None,
                "the file is not UTF-8 text; save it as UTF-8",
            )]))
        }
    }
}

/// Validates configuration `text` as if read from `path`: relative paths in
/// it are resolved against `path`'s folder, and problems name `path`.
pub fn load_str(text: &str, path: &Path) -> Result<Config, Problems> {
    // Editors on Windows like to start UTF-8 files with a byte order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut ctx = Ctx {
        file: path,
        loc: Locator::new(text),
        problems: Vec::new(),
        removed: BTreeSet::new(),
    };
    let root = match parse(text, &mut ctx) {
        Some(root) => root,
        None => return Err(Problems(ctx.problems)),
    };
    let result = ctx.load_root(root);
    let mut problems = ctx.problems;
    // File order; problems on the same line keep the order they were found in.
    problems.sort_by_key(|p| p.line.unwrap_or(0));
    match result {
        Some(cfg) if problems.is_empty() => Ok(cfg),
        _ => {
            if problems.is_empty() {
                problems.push(Problem::new(path, None, None, "invalid configuration"));
            }
            Err(Problems(problems))
        }
    }
}

/// Parses `text` into a table and its spans; a syntax error is reported.
fn parse<'a>(text: &'a str, ctx: &mut Ctx<'a>) -> Option<toml::Table> {
    match toml_edit::ImDocument::parse(text) {
        Ok(doc) => ctx.loc.doc = Some(doc),
        Err(e) => {
            let line = e.span().map(|s| ctx.loc.line_at(s.start));
            ctx.problems.push(Problem::new(
                ctx.file,
                line,
                None,
                syntax_message(e.message()),
            ));
            return None;
        }
    }
    match text.parse::<toml::Table>() {
        Ok(t) => Some(t),
        Err(e) => {
            let line = e.span().map(|s| ctx.loc.line_at(s.start));
            ctx.problems.push(Problem::new(
                ctx.file,
                line,
                None,
                syntax_message(e.message()),
            ));
            None
        }
    }
}

/// The parser's message on one line: "invalid table header: expected `.`, `]`".
fn syntax_message(msg: &str) -> String {
    let parts: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    format!("TOML syntax error: {}", parts.join(": "))
}

// ---------------------------------------------------------------------------
// Key paths

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A key path such as `rules.door_held_open.after` or `devices[2].kind`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
struct KeyPath(Vec<Seg>);

impl KeyPath {
    fn root() -> Self {
        KeyPath(Vec::new())
    }
    fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }
    fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    fn join(&self, other: &KeyPath) -> Self {
        let mut p = self.clone();
        p.0.extend(other.0.iter().cloned());
        p
    }
    fn parent(&self) -> Self {
        let mut p = self.clone();
        p.0.pop();
        p
    }
    fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Seg::Key(k)) => Some(k),
            _ => None,
        }
    }

    fn from_ignored(p: &serde_ignored::Path) -> Self {
        fn walk(p: &serde_ignored::Path, out: &mut Vec<Seg>) {
            match p {
                serde_ignored::Path::Root => {}
                serde_ignored::Path::Seq { parent, index } => {
                    walk(parent, out);
                    out.push(Seg::Index(*index));
                }
                serde_ignored::Path::Map { parent, key } => {
                    walk(parent, out);
                    out.push(Seg::Key(key.clone()));
                }
                serde_ignored::Path::Some { parent }
                | serde_ignored::Path::NewtypeStruct { parent }
                | serde_ignored::Path::NewtypeVariant { parent } => walk(parent, out),
            }
        }
        let mut out = Vec::new();
        walk(p, &mut out);
        KeyPath(out)
    }

    fn from_tracked(p: &serde_path_to_error::Path) -> Self {
        let mut out = Vec::new();
        for seg in p.iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => out.push(Seg::Index(*index)),
                serde_path_to_error::Segment::Map { key } => out.push(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Enum { .. } => {}
                serde_path_to_error::Segment::Unknown => break,
            }
        }
        KeyPath(out)
    }
}

/// TOML spelling of a key: bare when it can be, quoted otherwise.
fn fmt_key(k: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        f.write_str(k)
    } else {
        write!(f, "{k:?}")
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    fmt_key(k, f)?;
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Lines

/// Turns key paths into 1-based lines using the spans `toml_edit` keeps.
struct Locator<'a> {
    doc: Option<toml_edit::ImDocument<&'a str>>,
    line_starts: Vec<usize>,
}

enum Node<'d> {
    Item(&'d toml_edit::Item),
    Table(&'d toml_edit::Table),
    Value(&'d toml_edit::Value),
}

impl<'d> Node<'d> {
    fn table_like(&self) -> Option<&'d dyn toml_edit::TableLike> {
        match *self {
            Node::Item(i) => i.as_table_like(),
            Node::Table(t) => Some(t),
            Node::Value(v) => v.as_inline_table().map(|t| t as &dyn toml_edit::TableLike),
        }
    }

    fn array_value(&self) -> Option<&'d toml_edit::Array> {
        match *self {
            Node::Item(i) => i.as_array(),
            Node::Value(v) => v.as_array(),
            Node::Table(_) => None,
        }
    }
}

impl<'a> Locator<'a> {
    fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Locator {
            doc: None,
            line_starts,
        }
    }

    /// 1-based line of byte `offset`.
    fn line_at(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset).max(1)
    }

    /// The line of the deepest part of `path` present in the file: the key's
    /// own line when the key exists, else its nearest existing ancestor's.
    fn line_of(&self, path: &KeyPath) -> usize {
        self.span_of(path).map_or(1, |s| self.line_at(s.start))
    }

    fn span_of(&self, path: &KeyPath) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Item(doc.as_item());
        let mut best = None;
        for seg in &path.0 {
            match seg {
                Seg::Key(k) => {
                    let Some((key, item)) = node.table_like().and_then(|t| t.get_key_value(k))
                    else {
                        break;
                    };
                    if let Some(s) = key.span().or_else(|| item.span()) {
                        best = Some(s);
                    }
                    node = Node::Item(item);
                }
                Seg::Index(i) => {
                    if let Node::Item(toml_edit::Item::ArrayOfTables(a)) = node {
                        let Some(t) = a.get(*i) else { break };
                        if let Some(s) = t.span() {
                            best = Some(s);
                        }
                        node = Node::Table(t);
                    } else {
                        let Some(v) = node.array_value().and_then(|a| a.get(*i)) else {
                            break;
                        };
                        if let Some(s) = v.span() {
                            best = Some(s);
                        }
                        node = Node::Value(v);
                    }
                }
            }
        }
        best
    }
}

// ---------------------------------------------------------------------------
// Loading

struct Ctx<'a> {
    file: &'a Path,
    loc: Locator<'a>,
    problems: Vec<Problem>,
    /// Keys whose values were reported and removed; checks that depend on
    /// them are skipped, since the default that took their place would
    /// only produce follow-on noise.
    removed: BTreeSet<KeyPath>,
}

/// What the piecewise pass keeps of each `[[devices]]` entry.
struct DeviceEntry {
    /// The entry with its bad keys removed.
    value: Value,
    /// Index of the parsed device in `RawConfig::devices`, if it parsed.
    parsed: Option<usize>,
}

impl<'a> Ctx<'a> {
    fn report(&mut self, path: &KeyPath, message: impl Into<String>) {
        let line = self.loc.line_of(path);
        let key = (!path.0.is_empty()).then(|| path.to_string());
        self.problems
            .push(Problem::new(self.file, Some(line), key, message));
    }

    fn load_root(&mut self, root: toml::Table) -> Option<Config> {
        let top_keys = keys_at::<RawConfig>(&KeyPath::root());
        let mut clean = toml::Table::new();
        let mut devices: Vec<DeviceEntry> = Vec::new();
        let mut parsed_devices: Vec<Value> = Vec::new();
        let has_compound = root.contains_key("compound");
        let mut compound_ok = false;

        for (k, v) in root {
            let here = KeyPath::root().key(&k);
            match (k.as_str(), v) {
                ("devices", Value::Array(entries)) => {
                    for (i, mut entry) in entries.into_iter().enumerate() {
                        let ok = self.de_part::<DeviceConfig>(&here.index(i), &mut entry);
                        let parsed = ok.then(|| {
                            parsed_devices.push(entry.clone());
                            parsed_devices.len() - 1
                        });
                        devices.push(DeviceEntry {
                            value: entry,
                            parsed,
                        });
                    }
                }
                ("rules", Value::Table(rules)) => {
                    let names = keys_at::<RulesConfig>(&KeyPath::root());
                    let mut good = toml::Table::new();
                    for (name, table) in rules {
                        let at = here.key(&name);
                        if !names.contains(&name.as_str()) {
                            self.report(&at, unknown_message("rule", &name, &names));
                            continue;
                        }
                        let mut wrapper = Value::Table(toml::Table::from_iter([(name, table)]));
                        if self.de_part::<RulesConfig>(&here, &mut wrapper) {
                            if let Value::Table(t) = wrapper {
                                good.extend(t);
                            }
                        }
                    }
                    clean.insert(k, Value::Table(good));
                }
                (name, v) if top_keys.contains(&name) => {
                    // Deserialize the key as part of a RawConfig holding only
                    // it (and a stand-in for the required `compound`).
                    let mut wrapper = toml::Table::new();
                    if name != "compound" {
                        wrapper.insert("compound".into(), Value::String(String::new()));
                    }
                    wrapper.insert(k.clone(), v);
                    let mut wrapper = Value::Table(wrapper);
                    if self.de_part::<RawConfig>(&KeyPath::root(), &mut wrapper) {
                        if let Value::Table(mut t) = wrapper {
                            if let Some(v) = t.remove(&k) {
                                compound_ok |= name == "compound";
                                clean.insert(k, v);
                            }
                        }
                    }
                }
                (name, _) => {
                    let msg = unknown_message("key", name, &top_keys);
                    self.report(&here, msg);
                }
            }
        }
        if !has_compound {
            self.report(
                &KeyPath::root().key("compound"),
                "missing required key `compound` (the compound's id, e.g. \"tianlin-12\")",
            );
        }
        if !compound_ok {
            clean.insert("compound".into(), Value::String(String::new()));
        }
        clean.insert("devices".into(), Value::Array(parsed_devices));

        let raw = match RawConfig::deserialize(Value::Table(clean)) {
            Ok(raw) => raw,
            Err(e) => {
                // Every piece deserialized alone, so this should not happen.
                self.report(&KeyPath::root(), e.message().to_string());
                return None;
            }
        };
        self.validate(raw, compound_ok, &devices)
    }

    /// Deserializes `value` as a `T`, reporting unknown keys and every type
    /// error under `prefix`. After a type error the offending key is removed
    /// from `value` and the rest is tried again. Returns whether `value` (as
    /// left) deserializes.
    fn de_part<T: DeserializeOwned>(&mut self, prefix: &KeyPath, value: &mut Value) -> bool {
        let mut unknown: BTreeSet<KeyPath> = BTreeSet::new();
        let mut removed: Vec<KeyPath> = Vec::new();
        let mut ok = false;
        // Each round removes one key, so this bounds the rounds generously.
        for _ in 0..256 {
            let attempt = {
                let mut cb = |p: serde_ignored::Path| {
                    unknown.insert(KeyPath::from_ignored(&p));
                };
                let de = serde_ignored::Deserializer::new(value.clone(), &mut cb);
                serde_path_to_error::deserialize::<_, T>(de)
            };
            let err = match attempt {
                Ok(_) => {
                    ok = true;
                    break;
                }
                Err(e) => e,
            };
            let mut rel = KeyPath::from_tracked(err.path());
            let msg = err.inner().message();
            if let Some(field) = missing_field(msg) {
                rel = rel.key(field);
                if removed.contains(&rel) {
                    // We removed a required key after reporting its value.
                    break;
                }
                self.report(
                    &prefix.join(&rel),
                    format!("missing required key `{field}`"),
                );
                break;
            }
            self.report(
                &prefix.join(&rel),
                hint_quotes(&polish(msg), rel.last_key()),
            );
            if !remove_at(value, &rel) {
                break;
            }
            self.removed.insert(prefix.join(&rel));
            removed.push(rel);
        }
        for u in unknown {
            let name = u.last_key().unwrap_or_default().to_string();
            let mut valid = keys_at::<T>(&u.parent());
            let parent = prefix.join(&u.parent());
            if valid.is_empty() && is_mapping_field(&parent) {
                // A FieldSource table: its visitor hides the struct from the probe.
                valid = keys_at::<FieldSpec>(&KeyPath::root());
            }
            self.report(&prefix.join(&u), unknown_message("key", &name, &valid));
        }
        ok
    }

    /// Checks what types cannot express; builds the [`Config`] if all is well.
    fn validate(
        &mut self,
        raw: RawConfig,
        compound_ok: bool,
        devices: &[DeviceEntry],
    ) -> Option<Config> {
        let root = KeyPath::root();

        if compound_ok {
            let at = root.key("compound");
            if raw.compound.is_empty() {
                self.report(
                    &at,
                    "must not be empty (the compound's id, e.g. \"tianlin-12\")",
                );
            } else if !raw
                .compound
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                self.report(
                    &at,
                    format!(
                        "`{}` may contain only letters A-Z and a-z, digits, `.`, `_` and `-` (it is used in MQTT topics)",
                        raw.compound
                    ),
                );
            }
        }

        let timezone = match Calendar::parse_zone(&raw.timezone) {
            Ok(tz) => Some(tz),
            Err(e) => {
                self.report(&root.key("timezone"), e.to_string());
                None
            }
        };

        let base = base_dir(self.file);
        let roster = raw.roster.as_ref().map(|r| base.join(r));
        if let Some(r) = &roster {
            let at = root.key("roster");
            if raw
                .roster
                .as_ref()
                .is_some_and(|r| r.as_os_str().is_empty())
            {
                self.report(
                    &at,
                    "must not be empty; remove the key if there is no roster",
                );
            } else {
                match std::fs::metadata(r) {
                    Ok(m) if m.is_dir() => {
                        self.report(&at, format!("`{}` is a folder, not a roster file", r.display()))
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.report(
                        &at,
                        format!(
                            "roster file `{}` does not exist (relative paths are resolved against the configuration file's folder)",
                            r.display()
                        ),
                    ),
                    Err(e) => self.report(&at, format!("cannot read roster file `{}`: {e}", r.display())),
                }
            }
        }

        let storage = root.key("storage");
        if raw.storage.path.as_os_str().is_empty() {
            self.report(&storage.key("path"), "must not be empty");
        }
        if raw.storage.cache_bytes < 64 * 1024 {
            self.report(
                &storage.key("cache_bytes"),
                format!(
                    "{} is too small; use at least 65536 (64 KiB)",
                    raw.storage.cache_bytes
                ),
            );
        }
        let clock = root.key("clock");
        self.positive(&clock.key("max_skew"), raw.clock.max_skew);
        self.positive(&clock.key("jump_threshold"), raw.clock.jump_threshold);
        if raw.privacy.key.as_deref() == Some("") {
            self.report(
                &root.key("privacy").key("key"),
                "must not be empty; set a long random secret or remove the key",
            );
        }

        self.check_devices(&raw.devices, devices);
        self.check_aliases(&raw.devices, devices);
        self.check_rules(&raw.rules);
        self.check_mappings(&raw.mappings);
        let local_mqtt = raw
            .local_mqtt
            .map(|m| self.check_local_mqtt(m, &raw.devices, &raw.mappings, &base));
        let platform = raw.platform.map(|p| self.check_platform(p, &base));
        self.check_outbox(&raw.outbox);
        self.check_admin(&raw.admin);

        // ---- Modbus: `[modbus]` and `[devices.modbus]` (checks in super::modbus) ----
        {
            let checked: Vec<super::modbus::CheckedDevice<'_>> = devices
                .iter()
                .enumerate()
                .filter_map(|(index, e)| {
                    let d = e.parsed.and_then(|p| raw.devices.get(p))?;
                    Some(super::modbus::CheckedDevice {
                        index,
                        id: &d.id,
                        is_elevator: d.kind == DeviceKind::Elevator,
                        modbus: d.modbus.as_ref(),
                    })
                })
                .collect();
            for issue in super::modbus::check(&raw.modbus, &checked) {
                let path = KeyPath(
                    issue
                        .path
                        .iter()
                        .map(|s| match s {
                            super::modbus::Seg::Key(k) => Seg::Key(k.clone()),
                            super::modbus::Seg::Index(i) => Seg::Index(*i),
                        })
                        .collect(),
                );
                // A point with a bad value was reported (and the value
                // removed); what follows from the default in its place is noise.
                let point = path
                    .0
                    .windows(2)
                    .rposition(|w| matches!(w, [Seg::Key(k), Seg::Index(_)] if k == "points"))
                    .map(|i| KeyPath(path.0[..i + 2].to_vec()));
                let noise = self.removed_at_or_above(&path)
                    || point.is_some_and(|p| self.removed.iter().any(|r| r.0.starts_with(&p.0)));
                if !noise {
                    self.report(&path, issue.message);
                }
            }
        }
        // ---- end Modbus ----

        let timezone = timezone?;
        let mut storage = raw.storage;
        storage.path = base.join(&storage.path);
        Some(Config {
            source: self.file.to_path_buf(),
            compound: raw.compound,
            timezone,
            language: raw.language,
            roster,
            storage,
            clock: raw.clock,
            privacy: raw.privacy,
            devices: raw.devices,
            rules: raw.rules,
            local_mqtt,
            mappings: raw.mappings,
            platform,
            outbox: raw.outbox,
            admin: raw.admin,
            modbus: raw.modbus,
        })
    }

    /// Whether any of `keys` under `at` had a bad value (and was reported).
    fn any_removed(&self, at: &KeyPath, keys: &[&str]) -> bool {
        keys.iter().any(|k| self.removed.contains(&at.key(k)))
    }

    fn positive(&mut self, at: &KeyPath, d: HumanDuration) {
        if d.0.is_zero() {
            self.report(at, "must be longer than 0s");
        }
    }

    fn at_least_one(&mut self, at: &KeyPath, n: u32) {
        if n < 1 {
            self.report(at, "must be at least 1");
        }
    }

    fn check_devices(&mut self, parsed: &[DeviceConfig], entries: &[DeviceEntry]) {
        let devices = KeyPath::root().key("devices");
        let mut first_seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let at = devices.index(i);
            let table = entry.value.as_table();
            if let Some(id) = table.and_then(|t| t.get("id")).and_then(Value::as_str) {
                let id_at = at.key("id");
                if id.is_empty() {
                    self.report(&id_at, "device id must not be empty");
                } else if id
                    .chars()
                    .any(|c| matches!(c, '/' | '+' | '#') || c.is_whitespace())
                {
                    self.report(
                        &id_at,
                        format!("device id `{id}` must not contain `/`, `+`, `#` or spaces (it is used in MQTT topics)"),
                    );
                }
                if let Some(&first) = first_seen.get(id) {
                    let line = self.loc.line_of(&devices.index(first).key("id"));
                    self.report(
                        &id_at,
                        format!("duplicate device id `{id}`, first declared at line {line}"),
                    );
                } else {
                    first_seen.insert(id, i);
                }
            }
            let (Some(d), Some(table)) = (entry.parsed.and_then(|p| parsed.get(p)), table) else {
                continue;
            };
            let is_elevator = d.kind == DeviceKind::Elevator;
            let needs_building = is_elevator || (d.kind == DeviceKind::Access && !d.perimeter);
            match d.building.as_deref() {
                Some("") => self.report(&at.key("building"), "must not be empty"),
                None if needs_building && !self.any_removed(&at, &["building", "perimeter"]) => {
                    let msg = if is_elevator {
                        "an elevator needs `building`"
                    } else {
                        "an access device needs `building` unless it is a compound gate (`perimeter = true`)"
                    };
                    self.report(&at.key("building"), msg);
                }
                _ => {}
            }
            if !is_elevator {
                for key in [
                    "lowest_floor",
                    "highest_floor",
                    "rated_speed",
                    "fault_codes",
                ] {
                    if table.contains_key(key) {
                        self.report(
                            &at.key(key),
                            format!(
                                "`{key}` applies only to elevators (this device is `kind = \"{}\"`)",
                                d.kind.as_str()
                            ),
                        );
                    }
                }
                continue;
            }
            if let (Some(lo), Some(hi)) = (d.lowest_floor, d.highest_floor) {
                // Both are Options with no default, so neither was removed.
                if lo > hi {
                    self.report(
                        &at.key("lowest_floor"),
                        format!("lowest_floor ({lo}) is above highest_floor ({hi})"),
                    );
                }
            }
            if let Some(speed) = d.rated_speed {
                if !(speed.is_finite() && speed > 0.0) {
                    self.report(
                        &at.key("rated_speed"),
                        format!("must be greater than 0 m/s (found {speed})"),
                    );
                }
            }
            let codes = at.key("fault_codes");
            let mut numbers: BTreeMap<u64, &str> = BTreeMap::new();
            // In file order, so that the later of two equal codes is the one reported.
            let mut in_order: Vec<(usize, &str)> = d
                .fault_codes
                .keys()
                .map(|c| (self.loc.line_of(&codes.key(c)), c.as_str()))
                .collect();
            in_order.sort();
            for (_, code) in in_order {
                match parse_fault_code(code) {
                    None => self.report(&codes.key(code), fault_code_problem(code)),
                    Some(n) => {
                        if let Some(other) = numbers.get(&n) {
                            self.report(
                                &codes.key(code),
                                format!("fault code `{code}` is the same code as `{other}`"),
                            );
                        } else {
                            numbers.insert(n, code);
                        }
                    }
                }
            }
        }
    }

    /// Whether `path` or one of its ancestors had a bad value (and was reported).
    fn removed_at_or_above(&self, path: &KeyPath) -> bool {
        (0..=path.0.len()).any(|n| self.removed.contains(&KeyPath(path.0[..n].to_vec())))
    }

    /// `[[devices]].aliases`: unique across devices, never another device's id.
    fn check_aliases(&mut self, parsed: &[DeviceConfig], entries: &[DeviceEntry]) {
        let devices = KeyPath::root().key("devices");
        let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, entry) in entries.iter().enumerate() {
            if let Some(d) = entry.parsed.and_then(|p| parsed.get(p)) {
                ids.entry(d.id.as_str()).or_insert(i);
            }
        }
        let mut seen: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let Some(d) = entry.parsed.and_then(|p| parsed.get(p)) else {
                continue;
            };
            for (j, alias) in d.aliases.iter().enumerate() {
                let at = devices.index(i).key("aliases").index(j);
                if alias.is_empty() {
                    self.report(&at, "an alias must not be empty");
                    continue;
                }
                if let Some(&k) = ids.get(alias.as_str()) {
                    if k != i {
                        let line = self.loc.line_of(&devices.index(k).key("id"));
                        self.report(
                            &at,
                            format!("alias `{alias}` is the id of another device (declared at line {line})"),
                        );
                        continue;
                    }
                }
                match seen.get(alias.as_str()) {
                    Some(&(k, _)) if k == i => {
                        self.report(&at, format!("alias `{alias}` is listed twice"))
                    }
                    Some(&(k, other)) => {
                        let line = self.loc.line_of(&devices.index(k).key("aliases"));
                        self.report(
                            &at,
                            format!("alias `{alias}` is already an alias of device `{other}` (line {line}); an alias names one device"),
                        );
                    }
                    None => {
                        seen.insert(alias, (i, d.id.as_str()));
                    }
                }
            }
        }
    }

    /// `[mappings.<name>]`: names free, each mapping consistent.
    fn check_mappings(&mut self, mappings: &BTreeMap<String, MappingConfig>) {
        let root = KeyPath::root().key("mappings");
        for (name, m) in mappings {
            let at = root.key(name);
            if name == "canonical" || PRESETS.contains(&name.as_str()) {
                self.report(
                    &at,
                    format!("`{name}` is the name of a built-in format; give this mapping another name (to change a preset, copy it under a new name)"),
                );
            }
            for (rel, msg) in check_mapping(m) {
                let path = rel.split('.').fold(at.clone(), |p, k| p.key(k));
                if !self.removed_at_or_above(&path) {
                    self.report(&path, msg);
                }
            }
        }
    }

    /// `[local_mqtt]` and its subscriptions; TLS paths come back resolved.
    fn check_local_mqtt(
        &mut self,
        mut m: LocalMqttConfig,
        devices: &[DeviceConfig],
        mappings: &BTreeMap<String, MappingConfig>,
        base: &Path,
    ) -> LocalMqttConfig {
        let at = KeyPath::root().key("local_mqtt");
        if m.host.trim().is_empty() && !self.any_removed(&at, &["host"]) {
            self.report(
                &at.key("host"),
                "must not be empty (the local broker's address, e.g. \"127.0.0.1\")",
            );
        }
        if m.port == 0 {
            self.report(&at.key("port"), "must be from 1 to 65535 (usually 1883)");
        }
        self.client_id(&at, &m.client_id);
        self.keep_alive(&at, m.keep_alive);
        if m.max_payload < 256 {
            self.report(
                &at.key("max_payload"),
                format!("{} is too small; use at least 256 (bytes)", m.max_payload),
            );
        }
        if m.queue < 1 {
            self.report(&at.key("queue"), "must be at least 1");
        }
        if let Some(tls) = m.tls.as_mut() {
            self.check_tls(&at.key("tls"), tls, base);
        }
        let subs = at.key("subscriptions");
        let mut topics: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, s) in m.subscriptions.iter().enumerate() {
            let here = subs.index(i);
            self.check_subscription(&here, s, devices, mappings);
            if let Some(&first) = topics.get(s.topic.as_str()) {
                let line = self.loc.line_of(&subs.index(first).key("topic"));
                self.report(
                    &here.key("topic"),
                    format!("topic `{}` is already subscribed at line {line}; each message would be counted twice", s.topic),
                );
            } else {
                topics.insert(&s.topic, i);
            }
        }
        m
    }

    fn check_subscription(
        &mut self,
        at: &KeyPath,
        s: &SubscriptionConfig,
        devices: &[DeviceConfig],
        mappings: &BTreeMap<String, MappingConfig>,
    ) {
        let topic_ok = if s.topic.is_empty() {
            self.report(
                &at.key("topic"),
                "must not be empty (an MQTT topic filter, e.g. \"community/tianlin-12/events/#\")",
            );
            false
        } else if let Err(e) = check_topic_filter(&s.topic) {
            self.report(&at.key("topic"), e);
            false
        } else {
            true
        };
        if s.qos > 1 {
            self.report(
                &at.key("qos"),
                format!("QoS {} is not supported; use 1 (a message is acknowledged only after its alerts are stored) or 0", s.qos),
            );
        }
        let mapping: Option<MappingConfig> = if s.format == "canonical" {
            None
        } else if let Some(p) = preset(&s.format) {
            Some(p)
        } else if let Some(m) = mappings.get(&s.format) {
            Some(m.clone())
        } else {
            if !self.any_removed(at, &["format"]) {
                self.report(
                    &at.key("format"),
                    format!(
                        "unknown format `{}`; expected {}",
                        s.format,
                        format_names(mappings.keys().map(String::as_str))
                    ),
                );
            }
            None
        };
        if s.device.is_some() && s.device_topic_level.is_some() {
            self.report(
                &at.key("device_topic_level"),
                "set either `device` (every message comes from that device) or `device_topic_level` (the device id is in the topic), not both",
            );
        }
        if let Some(d) = &s.device {
            if !devices.iter().any(|x| &x.id == d) {
                let msg = match devices.iter().find(|x| x.aliases.contains(d)) {
                    Some(owner) => format!(
                        "`{d}` is an alias of device `{}`; write the device id here",
                        owner.id
                    ),
                    None => format!(
                        "`{d}` is not a declared device; declare it in a [[devices]] block or use one of: {}",
                        devices.iter().map(|x| x.id.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                };
                self.report(&at.key("device"), msg);
            }
        }
        if let (Some(n), true) = (s.device_topic_level, topic_ok) {
            let levels: Vec<&str> = s.topic.split('/').collect();
            if !levels.contains(&"#") && n >= levels.len() {
                self.report(
                    &at.key("device_topic_level"),
                    format!(
                        "topic `{}` has {} levels, numbered 0 to {}; level {n} never exists",
                        s.topic,
                        levels.len(),
                        levels.len() - 1
                    ),
                );
            }
        }
        if let Some(m) = mapping {
            if m.device.is_none() && s.device.is_none() && s.device_topic_level.is_none() {
                self.report(
                    at,
                    format!("mapping `{}` does not say which device a message comes from; set `device` or `device_topic_level` here", s.format),
                );
            }
        }
    }

    /// `[platform]`; TLS paths come back resolved.
    fn check_platform(&mut self, mut p: PlatformConfig, base: &Path) -> PlatformConfig {
        let at = KeyPath::root().key("platform");
        if p.host.trim().is_empty() && !self.any_removed(&at, &["host"]) {
            self.report(
                &at.key("host"),
                "must be set to the platform broker's address, e.g. \"platform.example.cn\"",
            );
        }
        if p.port == 0 {
            self.report(&at.key("port"), "must be from 1 to 65535 (usually 8883)");
        }
        self.client_id(&at, &p.client_id);
        self.keep_alive(&at, p.keep_alive);
        match (p.tls.as_mut(), p.plaintext) {
            (None, false) => {
                if !self.any_removed(&at, &["tls", "plaintext"]) {
                    self.report(
                        &at.key("tls"),
                        "missing [platform.tls]: the platform is reached over TLS; give at least `ca_file` (plaintext = true is for tests on one machine only)",
                    );
                }
            }
            (Some(tls), plaintext) => {
                if plaintext {
                    self.report(
                        &at.key("plaintext"),
                        "plaintext = true contradicts [platform.tls]; remove one of them",
                    );
                }
                self.check_tls(&at.key("tls"), tls, base);
            }
            (None, true) => {}
        }
        if p.inflight < 1 {
            self.report(&at.key("inflight"), "must be at least 1");
        }
        for (key, topic) in [
            ("alerts_topic", &p.alerts_topic),
            ("status_topic", &p.status_topic),
            ("commands_topic", &p.commands_topic),
        ] {
            if topic.is_empty() {
                self.report(&at.key(key), "must not be empty");
            } else if topic.contains(['+', '#']) {
                self.report(
                    &at.key(key),
                    format!("`{topic}` must not contain `+` or `#`: it is one topic, not a filter"),
                );
            }
        }
        p
    }

    fn client_id(&mut self, at: &KeyPath, id: &Option<String>) {
        if id.as_deref().is_some_and(|s| s.trim().is_empty()) {
            self.report(
                &at.key("client_id"),
                "must not be empty; remove the key to use community-gateway-<compound>",
            );
        }
    }

    fn keep_alive(&mut self, at: &KeyPath, d: HumanDuration) {
        if d.0 < std::time::Duration::from_secs(5) {
            self.report(
                &at.key("keep_alive"),
                format!("{d} is too short; use at least 5s"),
            );
        }
    }

    /// Checks a TLS table and resolves its paths against the config folder.
    fn check_tls(&mut self, at: &KeyPath, tls: &mut TlsConfig, base: &Path) {
        tls.ca_file = self.check_file(&at.key("ca_file"), &tls.ca_file, base, "CA certificate");
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => self.report(
                &at.key("cert_file"),
                "a client certificate needs its private key: set `key_file` too, or remove `cert_file`",
            ),
            (None, Some(_)) => self.report(
                &at.key("key_file"),
                "a private key needs its client certificate: set `cert_file` too, or remove `key_file`",
            ),
            _ => {}
        }
        if let Some(c) = &tls.cert_file {
            tls.cert_file =
                Some(self.check_file(&at.key("cert_file"), c, base, "client certificate"));
        }
        if let Some(k) = &tls.key_file {
            tls.key_file = Some(self.check_file(&at.key("key_file"), k, base, "private key"));
        }
        if tls
            .server_name
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            self.report(
                &at.key("server_name"),
                "must not be empty; remove the key to verify the broker's `host`",
            );
        }
    }

    /// Reports a missing or unreadable file; returns the resolved path.
    fn check_file(&mut self, at: &KeyPath, path: &Path, base: &Path, what: &str) -> PathBuf {
        let resolved = base.join(path);
        if path.as_os_str().is_empty() {
            self.report(at, "must not be empty");
            return resolved;
        }
        match std::fs::metadata(&resolved) {
            Ok(m) if m.is_dir() => self.report(
                at,
                format!("`{}` is a folder, not a {what} file", resolved.display()),
            ),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.report(
                at,
                format!(
                    "{what} file `{}` does not exist (relative paths are resolved against the configuration file's folder)",
                    resolved.display()
                ),
            ),
            Err(e) => self.report(
                at,
                format!("cannot read {what} file `{}`: {e}", resolved.display()),
            ),
        }
        resolved
    }

    fn check_outbox(&mut self, o: &OutboxConfig) {
        let at = KeyPath::root().key("outbox");
        if o.max_entries < 10 {
            self.report(
                &at.key("max_entries"),
                format!("{} is too small; use at least 10", o.max_entries),
            );
        }
        if o.max_bytes < 64 * 1024 {
            self.report(
                &at.key("max_bytes"),
                format!("{} is too small; use at least 65536 (64 KiB)", o.max_bytes),
            );
        }
    }

    fn check_admin(&mut self, a: &super::AdminConfig) {
        if a.listen.parse::<std::net::SocketAddr>().is_err() {
            self.report(
                &KeyPath::root().key("admin").key("listen"),
                format!(
                    "`{}` is not an address and port, e.g. \"127.0.0.1:9464\"",
                    a.listen
                ),
            );
        }
    }

    fn check_rules(&mut self, r: &RulesConfig) {
        let rules = KeyPath::root().key("rules");
        for (name, escalate_after) in escalations(r) {
            if let Some(d) = escalate_after {
                self.positive(&rules.key(name).key("escalate_after"), d);
            }
        }
        let at = |rule: &str, key: &str| rules.key(rule).key(key);
        if r.card_sharing.escalate_after.is_some() {
            self.report(
                &at("card_sharing", "escalate_after"),
                "card_sharing alerts are one-shot and never escalate; remove this key",
            );
        }

        self.positive(
            &at("elderly_inactivity", "after"),
            r.elderly_inactivity.after,
        );
        self.positive(&at("not_returned", "after"), r.not_returned.after);

        let g = &r.group_rental;
        if !(1..=366).contains(&g.window_days) {
            self.report(
                &at("group_rental", "window_days"),
                "must be between 1 and 366 days",
            );
        }
        self.at_least_one(&at("group_rental", "max_daily"), g.max_daily);
        self.at_least_one(&at("group_rental", "min_days"), g.min_days);
        if !(1..=63).contains(&g.max_credentials) {
            // The engine keeps a household's used credentials as 64 bits.
            self.report(
                &at("group_rental", "max_credentials"),
                "must be between 1 and 63",
            );
        }
        if g.min_days > g.window_days
            && !self.any_removed(&rules.key("group_rental"), &["min_days", "window_days"])
        {
            self.report(
                &at("group_rental", "min_days"),
                format!(
                    "min_days ({}) is larger than window_days ({})",
                    g.min_days, g.window_days
                ),
            );
        }

        self.positive(&at("card_sharing", "window"), r.card_sharing.window);
        self.positive(&at("card_sharing", "cooldown"), r.card_sharing.cooldown);

        self.at_least_one(&at("repeat_stranger", "days"), r.repeat_stranger.days);
        self.positive(
            &at("repeat_stranger", "forget_after"),
            r.repeat_stranger.forget_after,
        );

        self.at_least_one(&at("denied_burst", "count"), r.denied_burst.count);
        self.positive(&at("denied_burst", "window"), r.denied_burst.window);
        self.positive(&at("denied_burst", "quiet"), r.denied_burst.quiet);

        self.positive(&at("door_held_open", "after"), r.door_held_open.after);

        self.positive(
            &at("elevator_trapped", "in_zone_after"),
            r.elevator_trapped.in_zone_after,
        );
        self.positive(
            &at("elevator_trapped", "out_of_zone_after"),
            r.elevator_trapped.out_of_zone_after,
        );

        self.at_least_one(
            &at("elevator_door_open_moving", "samples"),
            r.elevator_door_open_moving.samples,
        );

        self.positive(
            &at("elevator_stopped_outside_zone", "after"),
            r.elevator_stopped_outside_zone.after,
        );

        self.positive(&at("elevator_fault", "debounce"), r.elevator_fault.debounce);
        self.positive(
            &at("elevator_fault", "clear_after"),
            r.elevator_fault.clear_after,
        );

        self.positive(
            &at("elevator_out_of_service", "after"),
            r.elevator_out_of_service.after,
        );

        let u = &r.elevator_abnormal_usage;
        self.at_least_one(&at("elevator_abnormal_usage", "door_cycles"), u.door_cycles);
        self.positive(&at("elevator_abnormal_usage", "window"), u.window);
        if !(u.overspeed_ratio.is_finite() && u.overspeed_ratio > 1.0) {
            self.report(
                &at("elevator_abnormal_usage", "overspeed_ratio"),
                format!("must be greater than 1.0 (found {})", u.overspeed_ratio),
            );
        }
        self.at_least_one(
            &at("elevator_abnormal_usage", "overspeed_samples"),
            u.overspeed_samples,
        );
        self.positive(&at("elevator_abnormal_usage", "quiet"), u.quiet);

        self.positive(&at("device_offline", "after"), r.device_offline.after);
        self.at_least_one(&at("device_offline", "failures"), r.device_offline.failures);

        let h = &r.gateway_health;
        for (key, v) in [
            ("outbox_fill", h.outbox_fill),
            ("disk_free_min", h.disk_free_min),
        ] {
            if !(v > 0.0 && v < 1.0) {
                self.report(
                    &at("gateway_health", key),
                    format!("must be a fraction between 0 and 1, exclusive (found {v})"),
                );
            }
        }
    }
}

/// `escalate_after` of every rule, by rule name.
fn escalations(r: &RulesConfig) -> [(&'static str, Option<HumanDuration>); 17] {
    [
        ("elderly_inactivity", r.elderly_inactivity.escalate_after),
        ("not_returned", r.not_returned.escalate_after),
        ("group_rental", r.group_rental.escalate_after),
        ("card_sharing", r.card_sharing.escalate_after),
        ("repeat_stranger", r.repeat_stranger.escalate_after),
        ("denied_burst", r.denied_burst.escalate_after),
        ("door_held_open", r.door_held_open.escalate_after),
        ("door_forced", r.door_forced.escalate_after),
        ("elevator_trapped", r.elevator_trapped.escalate_after),
        (
            "elevator_door_open_moving",
            r.elevator_door_open_moving.escalate_after,
        ),
        ("elevator_overtravel", r.elevator_overtravel.escalate_after),
        (
            "elevator_stopped_outside_zone",
            r.elevator_stopped_outside_zone.escalate_after,
        ),
        ("elevator_fault", r.elevator_fault.escalate_after),
        (
            "elevator_out_of_service",
            r.elevator_out_of_service.escalate_after,
        ),
        (
            "elevator_abnormal_usage",
            r.elevator_abnormal_usage.escalate_after,
        ),
        ("device_offline", r.device_offline.escalate_after),
        ("gateway_health", r.gateway_health.escalate_after),
    ]
}

/// `mappings.<name>.<field>`: where a [`FieldSpec`] table sits.
fn is_mapping_field(p: &KeyPath) -> bool {
    matches!(p.0.as_slice(), [Seg::Key(m), Seg::Key(_), Seg::Key(_)] if m == "mappings")
}

/// An MQTT topic filter: `+` and `#` only as whole levels, `#` only last.
fn check_topic_filter(t: &str) -> Result<(), String> {
    if t.len() > 65_535 {
        return Err("is longer than MQTT allows (65535 bytes)".to_string());
    }
    if t.contains('\0') {
        return Err("must not contain a NUL character".to_string());
    }
    let levels: Vec<&str> = t.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "`{t}` is not a valid topic filter: `#` must be a whole level and the last one, e.g. \"a/b/#\""
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "`{t}` is not a valid topic filter: `+` must be a whole level, e.g. \"a/+/c\""
            ));
        }
    }
    Ok(())
}

/// A fault-code key: decimal (`12`) or hexadecimal (`0x1A`), at most
/// `u32::MAX` like the events' `fault_code`; or a bit of the events'
/// `fault_bits` (`bit0` .. `bit31`), which gets a number above every code.
/// The engine reads the table with the same function.
fn parse_fault_code(s: &str) -> Option<u64> {
    crate::engine::parse_fault_key(s)
}

/// Why `code` is not a fault-code key.
fn fault_code_problem(code: &str) -> String {
    let s = code.trim();
    let digits = |t: &str, hex: bool| {
        !t.is_empty()
            && t.bytes().all(|b| {
                if hex {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
    };
    let bit = s
        .get(..3)
        .filter(|p| p.eq_ignore_ascii_case("bit"))
        .map(|_| &s[3..]);
    match (bit, s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))) {
        (Some(n), _) if digits(n, false) => format!(
            "fault bit `{code}` is out of range: `fault_bits` has bits bit0 to bit31"
        ),
        (_, Some(hex)) if digits(hex, true) => format!(
            "fault code `{code}` is out of range: codes are 32-bit, at most 0xFFFFFFFF"
        ),
        (None, None) if digits(s, false) => format!(
            "fault code `{code}` is out of range: codes are 32-bit, at most 4294967295"
        ),
        _ => format!(
            "fault code `{code}` is not a non-negative integer or a fault bit (write it in decimal, e.g. \"12\", hex, e.g. \"0x1A\", or for a bit of `fault_bits`, e.g. \"bit3\")"
        ),
    }
}

/// The folder relative paths in the file are resolved against.
fn base_dir(file: &Path) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new(""));
    if dir.is_absolute() {
        return dir.to_path_buf();
    }
    match std::env::current_dir() {
        Ok(cwd) if dir.as_os_str().is_empty() => cwd,
        Ok(cwd) => cwd.join(dir),
        Err(_) => dir.to_path_buf(),
    }
}

/// Removes the key at `rel` from `value`; false if there is none.
fn remove_at(value: &mut Value, rel: &KeyPath) -> bool {
    let Some((Seg::Key(last), parents)) = rel.0.split_last() else {
        return false;
    };
    let mut v = value;
    for seg in parents {
        let next = match (seg, v) {
            (Seg::Key(k), Value::Table(t)) => t.get_mut(k),
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => v = n,
            None => return false,
        }
    }
    match v {
        Value::Table(t) => t.remove(last).is_some(),
        _ => false,
    }
}

/// The field named by serde's "missing field `x`" message.
fn missing_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("missing field `")?.strip_suffix('`')
}

/// Keys holding a duration (`"90s"`), for a better message when the quotes
/// or the unit are missing.
fn is_duration_key(key: &str) -> bool {
    key.ends_with("after")
        || matches!(
            key,
            "window"
                | "quiet"
                | "cooldown"
                | "debounce"
                | "max_skew"
                | "jump_threshold"
                | "commit_interval"
        )
}

/// A number where text is expected: say how to write it.
fn hint_quotes(msg: &str, key: Option<&str>) -> String {
    let number =
        msg.starts_with("invalid type: integer") || msg.starts_with("invalid type: floating point");
    match msg.strip_suffix(", expected a string") {
        Some(head) if number && key.is_some_and(is_duration_key) => {
            format!(
                "{head}, expected a duration in quotes with a unit, e.g. \"90s\", \"2m\", \"24h\""
            )
        }
        Some(_) if number => format!("{msg}; write it in quotes, e.g. \"12\""),
        _ => msg.to_string(),
    }
}

/// Rewrites serde's Rust-flavoured wording into the terms of the TOML file.
fn polish(msg: &str) -> String {
    let mut out = msg.to_string();
    while let Some(i) = out.find("expected struct ") {
        let rest = &out[i + "expected struct ".len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let tail = rest[end..].to_string();
        out = format!("{}expected a table{}", &out[..i], tail);
    }
    for (from, to) in [
        ("invalid type: map", "invalid type: table"),
        ("invalid type: sequence", "invalid type: array"),
        ("expected a map", "expected a table"),
        ("expected a sequence", "expected an array"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number of 0 or more"),
        (
            "expected i32",
            "expected a whole number from -2147483648 to 2147483647",
        ),
        ("expected i64", "expected a whole number"),
        ("expected f32", "expected a number"),
        ("expected f64", "expected a number"),
    ] {
        if let Some(i) = out.find(from) {
            // Only whole words: `expected u32` but not `expected u32x`.
            let after = out[i + from.len()..].chars().next();
            if !after.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                out.replace_range(i..i + from.len(), to);
            }
        }
    }
    out
}

/// "unknown key `x` (did you mean `y`?); valid keys here: …".
fn unknown_message(what: &str, name: &str, valid: &[&str]) -> String {
    let mut msg = format!("unknown {what} `{name}`");
    if let Some(best) = closest(name, valid) {
        msg.push_str(&format!(" (did you mean `{best}`?)"));
    }
    if !valid.is_empty() {
        let plural = if what == "rule" { "rules" } else { "keys here" };
        msg.push_str(&format!("; valid {plural}: {}", valid.join(", ")));
    }
    msg
}

fn closest<'v>(name: &str, valid: &[&'v str]) -> Option<&'v str> {
    valid
        .iter()
        .map(|v| (edit_distance(name, v), *v))
        .filter(|&(d, v)| d <= 2.max(v.chars().count() / 4))
        .min_by_key(|&(d, _)| d)
        .map(|(_, v)| v)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------
// Schema introspection: the keys serde expects at a path of a type, found by
// walking `T::deserialize` down the path and catching `deserialize_struct`.
// This keeps hints in step with the structs in `mod.rs` without a list here.

/// Field names of the struct (or the rule names, for `RulesConfig`) at `path` inside `T`.
fn keys_at<T: DeserializeOwned>(path: &KeyPath) -> Vec<&'static str> {
    let mut found: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe {
        path: &path.0,
        found: &mut found,
    });
    found.to_vec()
}

#[derive(Debug)]
struct ProbeEnd;

impl fmt::Display for ProbeEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probe end")
    }
}

impl std::error::Error for ProbeEnd {}

impl de::Error for ProbeEnd {
    fn custom<T: fmt::Display>(_: T) -> Self {
        ProbeEnd
    }
}

struct Probe<'p, 'f> {
    path: &'p [Seg],
    found: &'f mut &'static [&'static str],
}

/// Hands the visitor one entry: the next key of the path, whose value is
/// probed further.
struct ProbeMap<'p, 'f> {
    key: Option<String>,
    rest: Option<Probe<'p, 'f>>,
}

impl<'de> de::MapAccess<'de> for ProbeMap<'_, '_> {
    type Error = ProbeEnd;
    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeEnd> {
        match self.key.take() {
            Some(k) => seed.deserialize(k.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }
    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ProbeEnd> {
        match self.rest.take() {
            Some(p) => seed.deserialize(p),
            None => Err(ProbeEnd),
        }
    }
}

struct ProbeSeq<'p, 'f>(Option<Probe<'p, 'f>>);

impl<'de> de::SeqAccess<'de> for ProbeSeq<'_, '_> {
    type Error = ProbeEnd;
    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ProbeEnd> {
        match self.0.take() {
            Some(p) => seed.deserialize(p).map(Some),
            None => Ok(None),
        }
    }
}

impl<'p, 'f> Probe<'p, 'f> {
    fn enter_map<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeEnd> {
        match self.path.split_first() {
            Some((Seg::Key(k), rest)) => visitor.visit_map(ProbeMap {
                key: Some(k.clone()),
                rest: Some(Probe {
                    path: rest,
                    found: self.found,
                }),
            }),
            _ => Err(ProbeEnd),
        }
    }
}

impl<'de> de::Deserializer<'de> for Probe<'_, '_> {
    type Error = ProbeEnd;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeEnd> {
        Err(ProbeEnd)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeEnd> {
        if self.path.is_empty() {
            *self.found = fields;
            return Err(ProbeEnd);
        }
        self.enter_map(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeEnd> {
        self.enter_map(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeEnd> {
        match self.path.split_first() {
            Some((Seg::Index(_), rest)) => visitor.visit_seq(ProbeSeq(Some(Probe {
                path: rest,
                found: self.found,
            }))),
            _ => Err(ProbeEnd),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeEnd> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeEnd> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct tuple tuple_struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<Problem> {
        match load_str(text, Path::new("/etc/community-gateway/gateway.toml")) {
            Ok(_) => Vec::new(),
            Err(p) => p.0,
        }
    }

    #[test]
    fn key_paths_display_like_toml() {
        let p = KeyPath::root()
            .key("devices")
            .index(2)
            .key("fault_codes")
            .key("12");
        assert_eq!(p.to_string(), "devices[2].fault_codes.12");
        assert_eq!(KeyPath::root().key("a b").key("c").to_string(), "\"a b\".c");
    }

    #[test]
    fn introspection_finds_nested_keys() {
        let rules = keys_at::<RulesConfig>(&KeyPath::root());
        assert_eq!(rules.len(), 17);
        assert!(rules.contains(&"door_held_open"));
        let held = keys_at::<RulesConfig>(&KeyPath::root().key("door_held_open"));
        assert_eq!(held, ["enabled", "severity", "escalate_after", "after"]);
        let fault = keys_at::<DeviceConfig>(&KeyPath::root().key("fault_codes").key("7"));
        assert_eq!(fault, ["severity", "text"]);
        let storage = keys_at::<RawConfig>(&KeyPath::root().key("storage"));
        assert!(storage.contains(&"cache_bytes"));
    }

    #[test]
    fn escalation_list_covers_every_rule() {
        let names: Vec<&str> = escalations(&RulesConfig::default())
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(names, keys_at::<RulesConfig>(&KeyPath::root()));
    }

    #[test]
    fn duration_keys_are_known() {
        // Every duration in the defaults serializes as a humantime string.
        let mut found = Vec::new();
        let mut walk = |v: Value| {
            if let Value::Table(t) = v {
                for (k, v) in t {
                    match v {
                        Value::Table(inner) => {
                            for (k, v) in inner {
                                if v.as_str()
                                    .is_some_and(|s| crate::time::parse_duration(s).is_ok())
                                {
                                    found.push(k);
                                }
                            }
                        }
                        Value::String(s) if crate::time::parse_duration(&s).is_ok() => {
                            found.push(k)
                        }
                        _ => {}
                    }
                }
            }
        };
        walk(Value::try_from(RulesConfig::default()).unwrap());
        walk(Value::try_from(super::super::ClockConfig::default()).unwrap());
        walk(Value::try_from(super::super::StorageConfig::default()).unwrap());
        assert!(found.len() > 20);
        for k in found {
            assert!(is_duration_key(&k), "{k}");
        }
        assert!(!is_duration_key("building"));
        assert_eq!(
            hint_quotes("invalid type: integer `5`, expected a string", Some("max_skew")),
            "invalid type: integer `5`, expected a duration in quotes with a unit, e.g. \"90s\", \"2m\", \"24h\""
        );
        assert!(hint_quotes(
            "invalid type: integer `12`, expected a string",
            Some("building")
        )
        .ends_with("in quotes, e.g. \"12\""));
    }

    #[test]
    fn fault_codes_parse_decimal_and_hex() {
        assert_eq!(parse_fault_code("12"), Some(12));
        assert_eq!(parse_fault_code("0x1A"), Some(26));
        assert_eq!(parse_fault_code("0X1a"), Some(26));
        for bad in ["", "-1", "0x", "E12", "1.5", "0xZZ", "+3"] {
            assert_eq!(parse_fault_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn fault_codes_parse_bits_and_ranges() {
        let bit = crate::engine::FAULT_BIT;
        assert_eq!(parse_fault_code("bit0"), Some(bit));
        assert_eq!(parse_fault_code("BIT31"), Some(bit + 31));
        assert_eq!(parse_fault_code("4294967295"), Some(u32::MAX as u64));
        assert_eq!(parse_fault_code("0xFFFFFFFF"), Some(u32::MAX as u64));
        for bad in [
            "bit32",
            "bit",
            "bit-1",
            "bit1x",
            "4294967296",
            "0x100000000",
        ] {
            assert_eq!(parse_fault_code(bad), None, "{bad}");
        }
        assert!(fault_code_problem("bit32").contains("bit0 to bit31"));
        assert!(fault_code_problem("4294967296").contains("at most 4294967295"));
        assert!(fault_code_problem("0x100000000").contains("at most 0xFFFFFFFF"));
        assert!(fault_code_problem("E7").contains("not a non-negative integer"));
    }

    #[test]
    fn messages_are_polished() {
        assert_eq!(
            polish("invalid type: integer `5`, expected struct DoorHeldOpen"),
            "invalid type: integer `5`, expected a table"
        );
        assert_eq!(
            polish("invalid value: integer `-1`, expected u32"),
            "invalid value: integer `-1`, expected a whole number from 0 to 4294967295"
        );
    }

    #[test]
    fn several_errors_in_one_table_are_all_reported() {
        let p = problems(
            "compound = \"x\"\n[rules.denied_burst]\ncount = -1\nwindow = \"soon\"\nquiet = 5\nloud = true\n",
        );
        let keys: Vec<_> = p
            .iter()
            .map(|p| (p.line, p.key.clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            keys,
            [
                (Some(3), "rules.denied_burst.count".to_string()),
                (Some(4), "rules.denied_burst.window".to_string()),
                (Some(5), "rules.denied_burst.quiet".to_string()),
                (Some(6), "rules.denied_burst.loud".to_string()),
            ]
        );
    }

    #[test]
    fn inline_arrays_and_tables_are_located() {
        let text = "compound = \"x\"\ndevices = [\n  { id = \"a\", kind = \"access\", perimeter = true },\n  { id = \"b\", kind = \"lift\" },\n]\n";
        let p = problems(text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].line, Some(4));
        assert_eq!(p[0].key.as_deref(), Some("devices[1].kind"));
    }

    #[test]
    fn missing_required_keys() {
        let p = problems("[[devices]]\nid = \"a\"\n");
        let shown: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert!(
            shown
                .iter()
                .any(|s| s.contains("compound: missing required key")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.contains(":1: devices[0].kind: missing required key `kind`")),
            "{shown:?}"
        );
    }

    #[test]
    fn a_removed_required_key_is_not_reported_twice() {
        let p = problems(
            "compound = \"x\"\n[[devices]]\nid = 5\nkind = \"access\"\nperimeter = true\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key.as_deref(), Some("devices[0].id"));
        assert_eq!(p[0].line, Some(3));
    }

    #[test]
    fn never_panics_on_mangled_input() {
        let example = include_str!("../../config/gateway.toml");
        let mut cut = 0;
        while cut < example.len() {
            if example.is_char_boundary(cut) {
                let _ = problems(&example[..cut]);
            }
            cut += 97;
        }
        for text in [
            "",
            "\u{feff}",
            "=",
            "[[rules]]",
            "rules = 1",
            "devices = 1",
            "devices = [1, \"x\", []]",
            "[rules]\ndoor_held_open = []",
            "storage = { path = 1, cache_bytes = -1 }",
            "compound = \"x\"\n[[devices]]\nid=\"e\"\nkind=\"elevator\"\nbuilding=\"1\"\nfault_codes = { \"\" = { text = \"\" }, \"0x\" = { text = 1 } }",
            "[rules.elevator_abnormal_usage]\noverspeed_ratio = nan",
            "[rules.gateway_health]\noutbox_fill = inf\ndisk_free_min = -inf",
            "a.b.c.d = 1\n[x.\"y\".z]\n[[x.w]]",
            "compound = 1979-05-27T07:32:00Z",
        ] {
            let _ = problems(text);
        }
    }
}
