//! Vendor payload decoding (SPEC §2): how the JSON published on one MQTT
//! subscription becomes a canonical [`Event`].
//!
//! A subscription's `format` is `canonical` (the payload is a canonical
//! event), the name of a built-in preset ([`PRESETS`], shipped as TOML files
//! in `src/sources/presets/` that users can copy), or the name of a
//! `[mappings.<name>]` table. A mapping says, per canonical field, where the
//! value comes from ([`crate::config::FieldSource`]); the decoder reads those
//! values, builds the canonical JSON object and runs it through
//! [`crate::event::decode`], so that a mapped message is validated exactly
//! like canonical input and fails with the same messages.
//!
//! Semantics, in the order they apply to one field:
//!
//! 1. **Raw value.** `pointer` (a JSON pointer, or a list of them: the first
//!    one that is present, not `null` and not `""` wins); `template` (text
//!    with `{/json/pointer}` placeholders; absent when any placeholder is);
//!    `topic_level` (that level of the MQTT topic, 0 = first); `value` (a
//!    constant).
//! 2. **Translation.** With a `values` table, the raw value's text form is
//!    looked up in it: strings as they are, numbers in their JSON spelling
//!    (`1`, `2.5`), booleans as `true` / `false`.
//! 3. **Default.** `default` stands in when the raw value is absent, or is
//!    not in `values`. Without a default, an untranslated value is an error
//!    for a required field (`kind`, `device`, `credential` and `granted` of
//!    an access, `state` of a door) and leaves an optional field out.
//! 4. **Scale.** `scale` multiplies a number read from the payload (only for
//!    `floor`, `fault_code` and `speed`; not combined with `values`).
//! 5. **Type.** Text fields take strings, numbers (decimal text: card number
//!    `8165538` becomes `"8165538"`) and booleans; boolean fields take
//!    `true`/`false`, `1`/`0` and those as strings; number fields take
//!    numbers and numeric strings.
//!
//! Only the fields of the event type chosen by `kind` are read: a door event
//! of a mapping that also maps `credential` does not need a card number.
//! `kind = "skip"` drops the message before anything else is read (it is
//! not an error; the caller counts it separately).
//!
//! **Time stamps** (`ts`, optional; receive time when absent) are read per
//! `ts_format`: `rfc3339` (default), `unix_s`, `unix_ms` (numbers or numeric
//! strings), or a strftime pattern. A pattern with an offset (`%z`, `%:z`)
//! is read as it says; any other pattern is local time in the compound's
//! `timezone`. Controllers such as uhppoted append a zone abbreviation
//! (`2026-11-02 07:58:12 CST`); abbreviations are ambiguous (CST is China,
//! US Central and Cuba), so a trailing space and 1 to 6 letters the pattern
//! does not consume are ignored and the compound's zone is used, except
//! `UTC`, `GMT` and `Z`, which are honoured as UTC.
//!
//! **Device id**: the subscription's `device` (a constant) wins, then its
//! `device_topic_level` (when the topic has that level), then the mapping's
//! `device` (for `canonical`, the payload's `device`). The result, when it is
//! one of the `aliases` of a `[[devices]]` entry, is replaced by that
//! device's id.
//!
//! Decoding never panics; it allocates in proportion to the payload, whose
//! size the caller bounds, and error messages quote at most 64 characters of
//! a payload value.

use crate::config::{Config, FieldSource, FieldSpec, MappingConfig, SubscriptionConfig};
use crate::event::{self, DecodeError, Event};
use crate::time::{parse_rfc3339, Ts};
use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::collections::HashMap;

/// Names of the built-in presets, usable as a subscription's `format`.
pub const PRESETS: &[&str] = &["hikvision", "dahua", "uhppoted"];

/// A built-in preset, parsed from its TOML file (the same schema as a
/// `[mappings.<name>]` table).
pub fn preset(name: &str) -> Option<MappingConfig> {
    let text = match name {
        "hikvision" => include_str!("presets/hikvision.toml"),
        "dahua" => include_str!("presets/dahua.toml"),
        "uhppoted" => include_str!("presets/uhppoted.toml"),
        _ => return None,
    };
    // The presets are tested to parse and to pass `check_mapping`.
    toml::from_str(text).ok()
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub event: Event<'static>,
    /// The payload carried a timestamp (otherwise `event.ts` is the receive time).
    pub ts_from_payload: bool,
}

/// How one subscription's payloads are decoded (built once at start-up / reload).
#[derive(Debug, Clone)]
pub struct SubscriptionDecoder {
    format: String,
    mapping: Option<Box<Compiled>>,
    /// The subscription's `device`.
    device: Option<String>,
    /// The subscription's `device_topic_level`.
    device_topic_level: Option<usize>,
    /// Alias -> device id, from `[[devices]].aliases`.
    aliases: HashMap<String, String>,
}

impl SubscriptionDecoder {
    /// `format` is `canonical`, a preset name, or a name in `config.mappings`.
    pub fn new(sub: &SubscriptionConfig, config: &Config) -> Result<Self, String> {
        if sub.device.is_some() && sub.device_topic_level.is_some() {
            return Err(format!(
                "subscription `{}`: set either `device` or `device_topic_level`, not both",
                sub.topic
            ));
        }
        let mapping = if sub.format == "canonical" {
            None
        } else {
            let m = preset(&sub.format)
                .or_else(|| config.mappings.get(&sub.format).cloned())
                .ok_or_else(|| {
                    format!(
                        "subscription `{}`: unknown format `{}`; expected {}",
                        sub.topic,
                        sub.format,
                        format_names(config.mappings.keys().map(String::as_str))
                    )
                })?;
            let problems = check_mapping(&m);
            if !problems.is_empty() {
                let list: Vec<String> = problems
                    .iter()
                    .map(|(rel, msg)| format!("{rel}: {msg}"))
                    .collect();
                return Err(format!("mapping `{}`: {}", sub.format, list.join("; ")));
            }
            let c = Compiled::new(&m, config.timezone)
                .map_err(|e| format!("mapping `{}`: {e}", sub.format))?;
            if c.device.is_none() && sub.device.is_none() && sub.device_topic_level.is_none() {
                return Err(format!(
                    "subscription `{}`: mapping `{}` has no `device`; set `device` or `device_topic_level` on the subscription",
                    sub.topic, sub.format
                ));
            }
            Some(Box::new(c))
        };
        let mut aliases = HashMap::new();
        for d in &config.devices {
            for a in &d.aliases {
                aliases.entry(a.clone()).or_insert_with(|| d.id.clone());
            }
        }
        Ok(SubscriptionDecoder {
            format: sub.format.clone(),
            mapping,
            device: sub.device.clone(),
            device_topic_level: sub.device_topic_level,
            aliases,
        })
    }

    /// The subscription's `format` (for logs and metrics labels).
    pub fn format(&self) -> &str {
        &self.format
    }

    /// Decodes one MQTT message. `Ok(None)`: the mapping's `kind` said `skip`
    /// (not an error, counted separately).
    pub fn decode(
        &self,
        topic: &str,
        payload: &[u8],
        received: Ts,
    ) -> Result<Option<Decoded>, DecodeError> {
        let text = utf8(payload)?;
        match &self.mapping {
            None => self.decode_canonical(topic, text, received).map(Some),
            Some(m) => self.decode_mapped(m, topic, text, received),
        }
    }

    /// The subscription's own device id for `topic`, if it sets one.
    fn fixed_device<'t>(&'t self, topic: &'t str) -> Option<&'t str> {
        if let Some(d) = &self.device {
            return Some(d);
        }
        self.device_topic_level.and_then(|n| topic_level(topic, n))
    }

    fn resolve_alias(&self, id: &str) -> Option<&str> {
        self.aliases.get(id).map(String::as_str)
    }

    fn decode_canonical(
        &self,
        topic: &str,
        text: &str,
        received: Ts,
    ) -> Result<Decoded, DecodeError> {
        let mut decoded = match self.fixed_device(topic) {
            None => canonical(text, received)?,
            Some(device) => {
                // Replace (or supply) the payload's device, then decode as usual.
                let mut v: Value =
                    serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
                let Some(obj) = v.as_object_mut() else {
                    return Err(DecodeError::Json(
                        "expected a JSON object (an event)".into(),
                    ));
                };
                obj.insert("device".into(), Value::String(device.to_string()));
                canonical(&v.to_string(), received)?
            }
        };
        if let Some(id) = self.resolve_alias(&decoded.event.device) {
            decoded.event.device = Cow::Owned(id.to_string());
        }
        Ok(decoded)
    }

    fn decode_mapped(
        &self,
        m: &Compiled,
        topic: &str,
        text: &str,
        received: Ts,
    ) -> Result<Option<Decoded>, DecodeError> {
        let doc: Value =
            serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;

        let kind = match m.kind.eval(&doc, topic)? {
            Eval::Value(raw) => raw.text(m.kind.name)?,
            Eval::Absent => return Err(DecodeError::Missing(m.kind.name)),
            Eval::Untranslated(t) => return Err(untranslated(&m.kind, &t)),
        };
        let body: &[Field] = match kind.as_ref() {
            "skip" => return Ok(None),
            "access" => &m.access,
            "door" => &m.door,
            "elevator" => &m.elevator,
            "heartbeat" => &[],
            other => {
                return Err(DecodeError::BadValue {
                    field: m.kind.name,
                    detail: format!(
                        "`{}` is not one of access, door, elevator, heartbeat, skip",
                        clip(other)
                    ),
                })
            }
        };

        // Device: subscription constant > subscription topic level > mapping.
        let device: Cow<'_, str> = match self.fixed_device(topic) {
            Some(d) => Cow::Borrowed(d),
            None => match m.device.as_ref().map(|f| (f, f.eval(&doc, topic))) {
                None => return Err(DecodeError::Missing("device")),
                Some((f, r)) => match r? {
                    Eval::Value(raw) => raw.text(f.name)?,
                    Eval::Absent => return Err(DecodeError::Missing(f.name)),
                    Eval::Untranslated(t) => return Err(untranslated(f, &t)),
                },
            },
        };
        let device = match self.resolve_alias(&device) {
            Some(id) => id.to_string(),
            None => device.into_owned(),
        };

        let (ts, ts_from_payload) = match &m.ts {
            None => (received, false),
            Some(f) => match f.eval(&doc, topic)? {
                Eval::Value(raw) => (m.ts_format.parse(&raw, m.tz)?, true),
                Eval::Absent => (received, false),
                Eval::Untranslated(t) => return Err(untranslated(f, &t)),
            },
        };

        let mut out = Map::new();
        out.insert("type".into(), Value::String(kind.into_owned()));
        out.insert("device".into(), Value::String(device));
        for f in body {
            match f.eval(&doc, topic)? {
                Eval::Value(raw) => {
                    out.insert(f.name.into(), f.coerce(&raw)?);
                }
                Eval::Absent => {}
                Eval::Untranslated(t) if f.required => return Err(untranslated(f, &t)),
                Eval::Untranslated(_) => {}
            }
        }
        let line = Value::Object(out).to_string();
        let event = event::decode(&line, Some(ts))?.into_owned();
        Ok(Some(Decoded {
            event,
            ts_from_payload,
        }))
    }
}

/// Decodes a canonical event, noting whether it carried `ts`.
fn canonical(text: &str, received: Ts) -> Result<Decoded, DecodeError> {
    // `decode` checks `type` and `device` before `ts`, so a second pass is
    // needed only for events without a time stamp.
    match event::decode(text, None) {
        Ok(e) => Ok(Decoded {
            event: e.into_owned(),
            ts_from_payload: true,
        }),
        Err(DecodeError::Missing("ts")) => Ok(Decoded {
            event: event::decode(text, Some(received))?.into_owned(),
            ts_from_payload: false,
        }),
        Err(e) => Err(e),
    }
}

fn utf8(payload: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(payload).map_err(|e| {
        DecodeError::Json(format!(
            "payload is not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })
}

/// Level `n` (0 = first) of an MQTT topic, unless absent or empty.
fn topic_level(topic: &str, n: usize) -> Option<&str> {
    topic.split('/').nth(n).filter(|s| !s.is_empty())
}

/// At most 64 characters of a payload value, for messages.
fn clip(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(64) {
        None => Cow::Borrowed(s),
        Some((i, _)) => Cow::Owned(format!("{}…", &s[..i])),
    }
}

/// "canonical, hikvision, dahua, uhppoted or a [mappings.<name>] table (defined: …)".
pub(crate) fn format_names<'a>(defined: impl Iterator<Item = &'a str>) -> String {
    let defined: Vec<&str> = defined.collect();
    let mut s = format!("canonical, {}", PRESETS.join(", "));
    if defined.is_empty() {
        s.push_str(" or the name of a [mappings.<name>] table (none defined)");
    } else {
        s.push_str(&format!(
            " or a mapping defined in [mappings]: {}",
            defined.join(", ")
        ));
    }
    s
}

fn untranslated(f: &Field, raw: &str) -> DecodeError {
    let mut known: Vec<&str> = f.values.keys().map(String::as_str).collect();
    known.sort_unstable();
    let more = known.len() > 12;
    known.truncate(12);
    DecodeError::BadValue {
        field: f.name,
        detail: format!(
            "`{}` is not in the mapping's `values` table (known: {}{}) and there is no `default`",
            clip(raw),
            known.join(", "),
            if more { ", …" } else { "" }
        ),
    }
}

// ---------------------------------------------------------------------------
// Field types

/// What a canonical field holds, for checking and coercion.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    Text,
    Enum(&'static [&'static str]),
    Bool,
    Int { min: i64, max: i64 },
    Float,
    Ts,
}

const KINDS: &[&str] = &["access", "door", "elevator", "heartbeat", "skip"];
/// `direction` serves both access events (in/out/unknown) and elevators (up/down/none).
const DIRECTIONS: &[&str] = &["in", "out", "unknown", "up", "down", "none"];
const DOOR_STATES: &[&str] = &["open", "closed", "forced", "held"];
const CAR_DOORS: &[&str] = &["open", "closed", "opening", "closing"];
const MODES: &[&str] = &[
    "normal",
    "inspection",
    "out_of_service",
    "fire",
    "earthquake",
    "power_backup",
    "other",
];

/// Every mapping field: name, type, source.
fn fields(m: &MappingConfig) -> [(&'static str, Ty, Option<&FieldSource>); 18] {
    [
        ("kind", Ty::Enum(KINDS), m.kind.as_ref()),
        ("device", Ty::Text, m.device.as_ref()),
        ("ts", Ty::Ts, m.ts.as_ref()),
        ("credential", Ty::Text, m.credential.as_ref()),
        ("granted", Ty::Bool, m.granted.as_ref()),
        ("direction", Ty::Enum(DIRECTIONS), m.direction.as_ref()),
        ("reason", Ty::Text, m.reason.as_ref()),
        ("state", Ty::Enum(DOOR_STATES), m.state.as_ref()),
        (
            "floor",
            Ty::Int {
                min: i32::MIN as i64,
                max: i32::MAX as i64,
            },
            m.floor.as_ref(),
        ),
        ("moving", Ty::Bool, m.moving.as_ref()),
        ("door", Ty::Enum(CAR_DOORS), m.door.as_ref()),
        ("door_zone", Ty::Bool, m.door_zone.as_ref()),
        ("occupied", Ty::Bool, m.occupied.as_ref()),
        ("mode", Ty::Enum(MODES), m.mode.as_ref()),
        (
            "fault_code",
            Ty::Int {
                min: 0,
                max: u32::MAX as i64,
            },
            m.fault_code.as_ref(),
        ),
        (
            "fault_bits",
            Ty::Int {
                min: 0,
                max: u32::MAX as i64,
            },
            m.fault_bits.as_ref(),
        ),
        ("speed", Ty::Float, m.speed.as_ref()),
        ("alarm_button", Ty::Bool, m.alarm_button.as_ref()),
    ]
}

const ACCESS_FIELDS: &[&str] = &["credential", "granted", "direction", "reason"];
const DOOR_FIELDS: &[&str] = &["state"];
const ELEVATOR_FIELDS: &[&str] = &[
    "floor",
    "moving",
    "direction",
    "door",
    "door_zone",
    "occupied",
    "mode",
    "fault_code",
    "fault_bits",
    "speed",
    "alarm_button",
];

// ---------------------------------------------------------------------------
// Checking a mapping

/// Semantic problems of a mapping, as (key path relative to the mapping
/// table, message). Key paths are dotted identifiers (`granted.values`).
pub fn check_mapping(m: &MappingConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if m.kind.is_none() {
        out.push((
            "kind".to_string(),
            "missing required key `kind`: where the event type (access, door, elevator, heartbeat or skip) comes from, e.g. kind = { value = \"access\" }".to_string(),
        ));
    }
    for (name, ty, src) in fields(m) {
        if let Some(src) = src {
            check_field(name, ty, src, &mut out);
        }
    }
    if let Some(f) = &m.ts_format {
        if let Err(e) = TsFormat::parse_name(f) {
            out.push(("ts_format".to_string(), e));
        }
    }
    out
}

fn check_field(name: &str, ty: Ty, src: &FieldSource, out: &mut Vec<(String, String)>) {
    let at = |k: &str| format!("{name}.{k}");
    let spec = match src {
        FieldSource::Pointer(p) => {
            if let Err(e) = check_pointer(p) {
                out.push((name.to_string(), e));
            }
            return;
        }
        FieldSource::Spec(s) => s,
    };
    let given: Vec<&str> = [
        ("pointer", spec.pointer.is_some()),
        ("template", spec.template.is_some()),
        ("topic_level", spec.topic_level.is_some()),
        ("value", spec.value.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(k, _)| *k)
    .collect();
    if given.len() > 1 {
        out.push((
            name.to_string(),
            format!(
                "give only one of `pointer`, `template`, `topic_level` or `value` (found `{}`)",
                given.join("` and `")
            ),
        ));
    } else if given.is_empty() && spec.default.is_none() {
        out.push((
            name.to_string(),
            "needs one of `pointer`, `template`, `topic_level` or `value` (or just a `default`)"
                .to_string(),
        ));
    }
    if let Some(p) = &spec.pointer {
        if p.0.is_empty() {
            out.push((
                at("pointer"),
                "must list at least one JSON pointer".to_string(),
            ));
        }
        for p in &p.0 {
            if let Err(e) = check_pointer(p) {
                out.push((at("pointer"), e));
            }
        }
    }
    if let Some(t) = &spec.template {
        match parse_template(t) {
            Err(e) => out.push((at("template"), e)),
            Ok(parts) if !parts.iter().any(|p| matches!(p, Part::Ptr(_))) => out.push((
                at("template"),
                format!("`{t}` has no {{/json/pointer}} placeholder; use `value` for a constant"),
            )),
            Ok(_) => {}
        }
    }
    if ty == Ty::Ts {
        for (key, set) in [
            ("value", spec.value.is_some()),
            ("values", !spec.values.is_empty()),
            ("default", spec.default.is_some()),
            ("scale", spec.scale.is_some()),
        ] {
            if set {
                out.push((
                    at(key),
                    format!("`ts` does not take `{key}`: it is read from the payload (pointer, template or topic_level) per `ts_format`, and the receive time is used when it is absent"),
                ));
            }
        }
        return;
    }
    if let Some(v) = &spec.value {
        if let Err(e) = check_target(name, ty, v) {
            out.push((at("value"), e));
        }
    }
    for (k, v) in &spec.values {
        if let Err(e) = check_target(name, ty, v) {
            out.push((at("values"), format!("entry `{k}`: {e}")));
        }
    }
    if let Some(v) = &spec.default {
        if let Err(e) = check_target(name, ty, v) {
            out.push((at("default"), e));
        }
    }
    if let Some(s) = spec.scale {
        if !matches!(ty, Ty::Int { .. } | Ty::Float) {
            out.push((
                at("scale"),
                format!("`scale` applies only to floor, fault_code and speed, not to `{name}`"),
            ));
        } else if !(s.is_finite() && s != 0.0) {
            out.push((
                at("scale"),
                format!("must be a number other than 0 (found {s})"),
            ));
        } else if !spec.values.is_empty() {
            out.push((
                at("scale"),
                "cannot be combined with `values`; write the translated values already scaled"
                    .to_string(),
            ));
        } else if spec.value.is_some() {
            out.push((
                at("scale"),
                "applies to numbers read from the payload, not to a constant `value`".to_string(),
            ));
        }
    }
}

fn check_pointer(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("an empty JSON pointer would be the whole payload; pointers start with `/`, e.g. \"/Data/CardNo\"".to_string());
    }
    if !p.starts_with('/') {
        return Err(format!(
            "`{p}` is not a JSON pointer: it must start with `/`, e.g. \"/{p}\""
        ));
    }
    let b = p.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'~' && !matches!(b.get(i + 1), Some(b'0' | b'1')) {
            return Err(format!(
                "`{p}`: in a JSON pointer `~` is written `~0` (and a `/` inside a key `~1`)"
            ));
        }
    }
    Ok(())
}

/// Whether `v` (a `value`, `values` entry or `default`) suits field `name`.
fn check_target(name: &str, ty: Ty, v: &toml::Value) -> Result<(), String> {
    let Some(j) = toml_to_json(v) else {
        return Err(format!(
            "must be text, a number or true/false (found {})",
            v.type_str()
        ));
    };
    match ty {
        Ty::Enum(list) => match j.as_str() {
            Some(s) if list.contains(&s) => Ok(()),
            _ => Err(format!(
                "{} is not a valid `{name}`; expected one of {}",
                show(&j),
                list.join(", ")
            )),
        },
        Ty::Text => match &j {
            Value::String(s) if s.is_empty() => Err("must not be empty".to_string()),
            Value::String(_) | Value::Number(_) => Ok(()),
            _ => Err(format!("{} is not text", show(&j))),
        },
        Ty::Bool => match j {
            Value::Bool(_) => Ok(()),
            _ => Err(format!(
                "{} is not a boolean; write true or false (without quotes)",
                show(&j)
            )),
        },
        Ty::Int { min, max } => match j.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(()),
            _ => Err(format!(
                "{} is not a whole number from {min} to {max}",
                show(&j)
            )),
        },
        Ty::Float => match j {
            Value::Number(_) => Ok(()),
            _ => Err(format!("{} is not a number", show(&j))),
        },
        Ty::Ts => Ok(()),
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        other => format!("`{other}`"),
    }
}

fn toml_to_json(v: &toml::Value) -> Option<Value> {
    Some(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::Number((*i).into()),
        toml::Value::Float(f) => Value::Number(Number::from_f64(*f)?),
        toml::Value::Boolean(b) => Value::Bool(*b),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Compiled mappings

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Ptr(String),
}

/// `"{/device-id}-{/door-id}"` -> [Ptr, Lit, Ptr]. No escapes: `{` and `}`
/// always delimit a placeholder.
fn parse_template(t: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = t;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                parts.push(Part::Lit(rest.to_string()));
                break;
            }
            Some(i) if rest.as_bytes()[i] == b'}' => {
                return Err(format!(
                "`{t}`: `}}` without a matching `{{`; placeholders are written {{/json/pointer}}"
            ))
            }
            Some(i) => {
                if i > 0 {
                    parts.push(Part::Lit(rest[..i].to_string()));
                }
                let inner = &rest[i + 1..];
                let Some(end) = inner.find('}') else {
                    return Err(format!(
                        "`{t}`: `{{` without a closing `}}`; placeholders are written {{/json/pointer}}"
                    ));
                };
                let ptr = &inner[..end];
                if ptr.contains('{') {
                    return Err(format!("`{t}`: placeholders cannot be nested"));
                }
                check_pointer(ptr).map_err(|e| format!("placeholder {{{ptr}}}: {e}"))?;
                parts.push(Part::Ptr(ptr.to_string()));
                rest = &inner[end + 1..];
            }
        }
    }
    Ok(parts)
}

#[derive(Debug, Clone)]
enum Source {
    Pointers(Vec<String>),
    Template(Vec<Part>),
    TopicLevel(usize),
    Const(Value),
    /// Only a `default`.
    Nothing,
}

/// One compiled field of a mapping.
#[derive(Debug, Clone)]
struct Field {
    name: &'static str,
    ty: Ty,
    required: bool,
    source: Source,
    values: HashMap<String, Value>,
    default: Option<Value>,
    scale: Option<f64>,
}

/// A value as read (borrowed from the payload or the mapping where possible).
#[derive(Debug)]
enum Raw<'a> {
    Json(&'a Value),
    Text(Cow<'a, str>),
    Num(f64),
}

enum Eval<'a> {
    Absent,
    /// Present but not in `values`, and no `default`.
    Untranslated(String),
    Value(Raw<'a>),
}

fn present(v: &Value) -> bool {
    !v.is_null() && v.as_str() != Some("")
}

/// Number text the way JSON writes it, without a useless `.0`.
fn num_text(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

impl<'a> Raw<'a> {
    /// The text form: strings as-is, numbers in their JSON text, booleans `true`/`false`.
    fn text(&self, field: &'static str) -> Result<Cow<'a, str>, DecodeError> {
        match self {
            Raw::Json(Value::String(s)) => Ok(Cow::Borrowed(s.as_str())),
            Raw::Json(Value::Number(n)) => Ok(Cow::Owned(n.to_string())),
            Raw::Json(Value::Bool(b)) => Ok(Cow::Borrowed(if *b { "true" } else { "false" })),
            Raw::Json(Value::Null) => Ok(Cow::Borrowed("null")),
            Raw::Json(Value::Array(_)) => Err(DecodeError::BadValue {
                field,
                detail: "found a JSON array where a single value was expected".into(),
            }),
            Raw::Json(Value::Object(_)) => Err(DecodeError::BadValue {
                field,
                detail: "found a JSON object where a single value was expected".into(),
            }),
            Raw::Text(t) => Ok(t.clone()),
            Raw::Num(x) => Ok(Cow::Owned(num_text(*x))),
        }
    }

    /// A number: JSON numbers, numeric strings.
    fn number(&self, field: &'static str) -> Result<f64, DecodeError> {
        let from_text = |s: &str| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| DecodeError::BadValue {
                    field,
                    detail: format!(
                        "`{}` is not a number (translate it with a `values` table)",
                        clip(s)
                    ),
                })
        };
        match self {
            Raw::Json(Value::Number(n)) => n.as_f64().ok_or_else(|| DecodeError::BadValue {
                field,
                detail: format!("`{n}` is not a usable number"),
            }),
            Raw::Json(Value::String(s)) => from_text(s),
            Raw::Text(t) => from_text(t),
            Raw::Num(x) => Ok(*x),
            other => {
                let t = other.text(field)?;
                Err(DecodeError::BadValue {
                    field,
                    detail: format!(
                        "`{}` is not a number (translate it with a `values` table)",
                        clip(&t)
                    ),
                })
            }
        }
    }
}

impl Field {
    fn compile(name: &'static str, ty: Ty, src: &FieldSource) -> Result<Field, String> {
        let plain;
        let spec: &FieldSpec = match src {
            FieldSource::Pointer(p) => {
                plain = FieldSpec {
                    pointer: Some(crate::config::OneOrMany(vec![p.clone()])),
                    ..FieldSpec::default()
                };
                &plain
            }
            FieldSource::Spec(s) => s,
        };
        let conv = |v: &toml::Value| {
            toml_to_json(v).ok_or_else(|| format!("{name}: unsupported value {v}"))
        };
        let source = if let Some(p) = &spec.pointer {
            Source::Pointers(p.0.clone())
        } else if let Some(t) = &spec.template {
            Source::Template(parse_template(t).map_err(|e| format!("{name}.template: {e}"))?)
        } else if let Some(n) = spec.topic_level {
            Source::TopicLevel(n)
        } else if let Some(v) = &spec.value {
            Source::Const(conv(v)?)
        } else {
            Source::Nothing
        };
        let mut values = HashMap::with_capacity(spec.values.len());
        for (k, v) in &spec.values {
            values.insert(k.clone(), conv(v)?);
        }
        Ok(Field {
            name,
            ty,
            required: matches!(name, "kind" | "device" | "credential" | "granted" | "state"),
            source,
            values,
            default: spec.default.as_ref().map(conv).transpose()?,
            scale: spec.scale,
        })
    }

    fn eval<'a>(&'a self, doc: &'a Value, topic: &'a str) -> Result<Eval<'a>, DecodeError> {
        let raw: Option<Raw<'a>> = match &self.source {
            Source::Pointers(ps) => ps
                .iter()
                .find_map(|p| doc.pointer(p).filter(|v| present(v)))
                .map(Raw::Json),
            Source::Template(parts) => self.render(parts, doc)?.map(|s| Raw::Text(Cow::Owned(s))),
            Source::TopicLevel(n) => topic_level(topic, *n).map(|s| Raw::Text(Cow::Borrowed(s))),
            Source::Const(v) => Some(Raw::Json(v)),
            Source::Nothing => None,
        };
        let fallback = || match &self.default {
            Some(d) => Eval::Value(Raw::Json(d)),
            None => Eval::Absent,
        };
        let Some(raw) = raw else {
            return Ok(fallback());
        };
        if !self.values.is_empty() {
            let key = raw.text(self.name)?;
            return Ok(match self.values.get(key.as_ref()) {
                Some(v) => Eval::Value(Raw::Json(v)),
                None => match &self.default {
                    Some(d) => Eval::Value(Raw::Json(d)),
                    None => Eval::Untranslated(key.into_owned()),
                },
            });
        }
        if let (Some(s), false) = (self.scale, matches!(self.source, Source::Const(_))) {
            return Ok(Eval::Value(Raw::Num(raw.number(self.name)? * s)));
        }
        Ok(Eval::Value(raw))
    }

    fn render(&self, parts: &[Part], doc: &Value) -> Result<Option<String>, DecodeError> {
        let mut s = String::new();
        for p in parts {
            match p {
                Part::Lit(l) => s.push_str(l),
                Part::Ptr(ptr) => match doc.pointer(ptr).filter(|v| present(v)) {
                    None => return Ok(None),
                    Some(v) => s.push_str(&Raw::Json(v).text(self.name)?),
                },
            }
        }
        Ok(Some(s))
    }

    /// The canonical JSON value of this field.
    fn coerce(&self, raw: &Raw<'_>) -> Result<Value, DecodeError> {
        let field = self.name;
        match self.ty {
            Ty::Text | Ty::Enum(_) | Ty::Ts => Ok(Value::String(raw.text(field)?.into_owned())),
            Ty::Bool => {
                let b = match raw {
                    Raw::Json(Value::Bool(b)) => Some(*b),
                    other => match other.text(field)?.as_ref() {
                        "true" | "1" => Some(true),
                        "false" | "0" => Some(false),
                        _ => None,
                    },
                };
                b.map(Value::Bool).ok_or_else(|| DecodeError::BadValue {
                    field,
                    detail: format!(
                        "`{}` is not a boolean (true/false or 1/0; translate other values with a `values` table)",
                        raw.text(field).map(|t| clip(&t).into_owned()).unwrap_or_default()
                    ),
                })
            }
            Ty::Int { min, max } => {
                let n = match raw {
                    Raw::Json(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
                    other => {
                        let x = other.number(field)?;
                        let r = x.round();
                        ((x - r).abs() < 1e-6 && r.abs() < 9e15).then_some(r as i64)
                    }
                };
                match n {
                    Some(n) if (min..=max).contains(&n) => Ok(Value::Number(n.into())),
                    _ => Err(DecodeError::BadValue {
                        field,
                        detail: format!(
                            "`{}` is not a whole number from {min} to {max}",
                            clip(&raw.text(field)?)
                        ),
                    }),
                }
            }
            Ty::Float => {
                let x = raw.number(field)?;
                Number::from_f64(x)
                    .map(Value::Number)
                    .ok_or_else(|| DecodeError::BadValue {
                        field,
                        detail: format!("`{x}` is not a finite number"),
                    })
            }
        }
    }
}

/// How `ts` is read.
#[derive(Debug, Clone, PartialEq)]
enum TsFormat {
    Rfc3339,
    UnixS,
    UnixMs,
    /// A strftime pattern; `offset`: it has `%z` (or a variant) and is read as it says.
    Pattern {
        pattern: String,
        offset: bool,
    },
}

/// Latest accepted time stamp: 9999-12-31T23:59:59Z, in seconds.
const MAX_UNIX_S: f64 = 253_402_300_799.0;

impl TsFormat {
    fn parse_name(s: &str) -> Result<TsFormat, String> {
        match s {
            "rfc3339" => Ok(TsFormat::Rfc3339),
            "unix_s" => Ok(TsFormat::UnixS),
            "unix_ms" => Ok(TsFormat::UnixMs),
            p if p.contains('%') => {
                use chrono::format::{Item, StrftimeItems};
                if StrftimeItems::new(p).any(|i| matches!(i, Item::Error)) {
                    return Err(format!(
                        "`{p}` is not a valid strftime pattern (e.g. \"%Y-%m-%d %H:%M:%S\" or \"%Y%m%d%H%M%S\")"
                    ));
                }
                Ok(TsFormat::Pattern {
                    pattern: p.to_string(),
                    offset: ["%z", "%:z", "%::z", "%#z"].iter().any(|z| p.contains(z)),
                })
            }
            other => Err(format!(
                "unknown timestamp format `{other}`; use rfc3339, unix_s, unix_ms or a strftime pattern such as \"%Y-%m-%d %H:%M:%S\" (local time in the compound's time zone)"
            )),
        }
    }

    fn parse(&self, raw: &Raw<'_>, tz: Tz) -> Result<Ts, DecodeError> {
        let bad = |detail: String| DecodeError::BadValue {
            field: "ts",
            detail,
        };
        match self {
            TsFormat::Rfc3339 => {
                let t = raw.text("ts")?;
                parse_rfc3339(t.trim()).map_err(|e| bad(e.to_string()))
            }
            TsFormat::UnixS | TsFormat::UnixMs => {
                let per_s = if *self == TsFormat::UnixS {
                    1000.0
                } else {
                    1.0
                };
                if let (Raw::Json(Value::Number(n)), TsFormat::UnixMs) = (raw, self) {
                    if let Some(ms) = n.as_i64() {
                        if ms >= 0 && (ms as f64) <= MAX_UNIX_S * 1000.0 {
                            return Ok(ms);
                        }
                    }
                }
                let x = raw.number("ts")?;
                let ms = x * per_s;
                if !(0.0..=MAX_UNIX_S * 1000.0).contains(&ms) {
                    return Err(bad(format!(
                        "`{}` is out of range for {}",
                        num_text(x),
                        if per_s == 1.0 { "unix_ms" } else { "unix_s" }
                    )));
                }
                Ok(ms.round() as Ts)
            }
            TsFormat::Pattern { pattern, offset } => {
                let text = raw.text("ts")?;
                let text = text.trim();
                let bad_fmt = || {
                    bad(format!(
                        "`{}` does not match the format `{pattern}`",
                        clip(text)
                    ))
                };
                if *offset {
                    return DateTime::parse_from_str(text, pattern)
                        .map(|d| d.timestamp_millis())
                        .map_err(|_| bad_fmt());
                }
                let (naive, utc) = match NaiveDateTime::parse_from_str(text, pattern) {
                    Ok(n) => (n, false),
                    Err(_) => {
                        let (head, zone) = split_zone_abbreviation(text).ok_or_else(bad_fmt)?;
                        let n =
                            NaiveDateTime::parse_from_str(head, pattern).map_err(|_| bad_fmt())?;
                        (n, matches!(zone, "UTC" | "GMT" | "Z"))
                    }
                };
                if utc {
                    return Ok(Utc.from_utc_datetime(&naive).timestamp_millis());
                }
                match tz.from_local_datetime(&naive) {
                    LocalResult::Single(t) => Ok(t.timestamp_millis()),
                    LocalResult::Ambiguous(t, _) => Ok(t.timestamp_millis()),
                    LocalResult::None => Err(bad(format!(
                        "`{}` does not exist in time zone {} (skipped by a daylight saving change)",
                        clip(text),
                        tz.name()
                    ))),
                }
            }
        }
    }
}

/// `"2026-11-02 07:58:12 CST"` -> (`"2026-11-02 07:58:12"`, `"CST"`).
fn split_zone_abbreviation(s: &str) -> Option<(&str, &str)> {
    let (head, zone) = s.rsplit_once(' ')?;
    ((1..=6).contains(&zone.len()) && zone.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| (head.trim_end(), zone))
}

/// A mapping ready to decode: fields grouped by the event type that reads them.
#[derive(Debug, Clone)]
struct Compiled {
    kind: Field,
    device: Option<Field>,
    ts: Option<Field>,
    ts_format: TsFormat,
    access: Vec<Field>,
    door: Vec<Field>,
    elevator: Vec<Field>,
    tz: Tz,
}

impl Compiled {
    /// Compiles a mapping that passed [`check_mapping`].
    fn new(m: &MappingConfig, tz: Tz) -> Result<Compiled, String> {
        let ts_format = match &m.ts_format {
            None => TsFormat::Rfc3339,
            Some(f) => TsFormat::parse_name(f)?,
        };
        let mut kind = None;
        let mut device = None;
        let mut ts = None;
        let (mut access, mut door, mut elevator) = (Vec::new(), Vec::new(), Vec::new());
        for (name, ty, src) in fields(m) {
            let Some(src) = src else { continue };
            let f = Field::compile(name, ty, src)?;
            match name {
                "kind" => kind = Some(f),
                "device" => device = Some(f),
                "ts" => ts = Some(f),
                _ => {
                    if ACCESS_FIELDS.contains(&name) {
                        access.push(f.clone());
                    }
                    if DOOR_FIELDS.contains(&name) {
                        door.push(f.clone());
                    }
                    if ELEVATOR_FIELDS.contains(&name) {
                        elevator.push(f);
                    }
                }
            }
        }
        Ok(Compiled {
            kind: kind.ok_or("missing required key `kind`")?,
            device,
            ts,
            ts_format,
            access,
            door,
            elevator,
            tz,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_pass_their_checks() {
        for name in PRESETS {
            let m = preset(name).unwrap_or_else(|| panic!("preset {name} does not parse"));
            assert_eq!(check_mapping(&m), Vec::<(String, String)>::new(), "{name}");
            assert!(m.device.is_some(), "{name}");
            Compiled::new(&m, chrono_tz::Asia::Shanghai).unwrap();
        }
        assert!(preset("canonical").is_none());
    }

    #[test]
    fn templates_parse() {
        assert_eq!(
            parse_template("u-{/device-id}-{/door-id}").unwrap(),
            [
                Part::Lit("u-".into()),
                Part::Ptr("/device-id".into()),
                Part::Lit("-".into()),
                Part::Ptr("/door-id".into()),
            ]
        );
        for bad in ["{/a", "a}", "{a}", "{/a{/b}}", "{}"] {
            assert!(parse_template(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zone_abbreviations_split() {
        assert_eq!(
            split_zone_abbreviation("2026-11-02 07:58:12 CST"),
            Some(("2026-11-02 07:58:12", "CST"))
        );
        assert_eq!(split_zone_abbreviation("2026-11-02 07:58:12"), None);
        assert_eq!(split_zone_abbreviation("2026-11-02 07:58:12 +08"), None);
    }

    #[test]
    fn clip_is_bounded_and_char_safe() {
        let long = "卡".repeat(100);
        let c = clip(&long);
        assert_eq!(c.chars().count(), 65);
        assert_eq!(clip("short"), "short");
    }
}
