//! Schema of vendor payload mappings (`[mappings.<name>]` and the built-in
//! presets): how each canonical event field is read from a JSON payload.

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// One or several strings (`"/a"` or `["/a", "/b"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON pointer string or an array of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    v.push(s);
                }
                Ok(OneOrMany(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Where a canonical field comes from: a JSON pointer (`"/Data/CardNo"`), or
/// a table with more options.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FieldSource {
    Pointer(String),
    Spec(FieldSpec),
}

impl<'de> Deserialize<'de> for FieldSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Hand-written rather than untagged, so that unknown keys inside the
        // table are still seen (and reported) by the configuration loader.
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON pointer string or a table (pointer, template, topic_level, value, values, default, scale)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldSource, E> {
                Ok(FieldSource::Pointer(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldSource, A::Error> {
                FieldSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(FieldSource::Spec)
            }
        }
        d.deserialize_any(V)
    }
}

/// The table form of a [`FieldSource`]. Exactly one of `pointer`,
/// `template`, `topic_level` and `value` gives the raw value; `values`
/// translates it; `default` stands in when it is absent or untranslated.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct FieldSpec {
    /// JSON pointers tried in order; the first present, non-empty one is used.
    pub pointer: Option<OneOrMany>,
    /// A string built from pointers: `"uhppote-{/device-id}-{/door-id}"`.
    pub template: Option<String>,
    /// A level of the MQTT topic (0 = first).
    pub topic_level: Option<usize>,
    /// A constant.
    pub value: Option<toml::Value>,
    /// Raw value (as text: `1`, `true`, `Entry`) -> canonical value.
    pub values: BTreeMap<String, toml::Value>,
    /// Used when the raw value is absent, or present but not in `values`
    /// (when `values` is given). Without it such a message is rejected
    /// for a required field and the field is left out otherwise.
    pub default: Option<toml::Value>,
    /// Numbers are multiplied by this (e.g. 0.1 for a speed in 0.1 m/s).
    pub scale: Option<f64>,
}

/// A vendor payload mapping: one [`FieldSource`] per canonical field.
/// `kind` decides the event type (`access`, `door`, `elevator`,
/// `heartbeat`); a `kind` of `skip` drops the message as not relevant.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct MappingConfig {
    pub kind: Option<FieldSource>,
    pub device: Option<FieldSource>,
    pub ts: Option<FieldSource>,
    /// `rfc3339`, `unix_s`, `unix_ms`, or a strftime pattern such as
    /// `%Y%m%d%H%M%S` or `%Y-%m-%d %H:%M:%S` read in the compound's time zone.
    pub ts_format: Option<String>,
    pub credential: Option<FieldSource>,
    pub granted: Option<FieldSource>,
    pub direction: Option<FieldSource>,
    pub reason: Option<FieldSource>,
    pub state: Option<FieldSource>,
    pub floor: Option<FieldSource>,
    pub moving: Option<FieldSource>,
    pub door: Option<FieldSource>,
    pub door_zone: Option<FieldSource>,
    pub occupied: Option<FieldSource>,
    pub mode: Option<FieldSource>,
    pub fault_code: Option<FieldSource>,
    /// A fault bitmap (bit N active = fault key `bitN` of the elevator's table).
    pub fault_bits: Option<FieldSource>,
    pub speed: Option<FieldSource>,
    pub alarm_button: Option<FieldSource>,
}
