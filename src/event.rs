//! The canonical event model (SPEC §2): every source decodes into [`Event`].
//!
//! Decoding borrows from the input line where it can: replay feeds a million
//! lines a second through here.

use crate::time::{parse_rfc3339, Ts};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub ts: Ts,
    pub device: Cow<'a, str>,
    pub body: EventBody<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventBody<'a> {
    Access(Access<'a>),
    Door(DoorState),
    Elevator(ElevatorSample),
    Heartbeat,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Access<'a> {
    pub credential: Cow<'a, str>,
    pub granted: bool,
    pub direction: Direction,
    pub reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
    #[default]
    Unknown,
}

impl Direction {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "in" => Some(Direction::In),
            "out" => Some(Direction::Out),
            "unknown" => Some(Direction::Unknown),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DoorState {
    Open,
    Closed,
    Forced,
    Held,
}

impl DoorState {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(DoorState::Open),
            "closed" => Some(DoorState::Closed),
            "forced" => Some(DoorState::Forced),
            "held" => Some(DoorState::Held),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            DoorState::Open => "open",
            DoorState::Closed => "closed",
            DoorState::Forced => "forced",
            DoorState::Held => "held",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TravelDirection {
    Up,
    Down,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CarDoor {
    Open,
    Closed,
    Opening,
    Closing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElevatorMode {
    Normal,
    Inspection,
    OutOfService,
    Fire,
    Earthquake,
    PowerBackup,
    Other,
}

/// One elevator state sample; `None` keeps the last known value.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ElevatorSample {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moving: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<TravelDirection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub door: Option<CarDoor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub door_zone: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occupied: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<ElevatorMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_code: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm_button: Option<bool>,
    /// Extension of the canonical model (not in SPEC §2), for Modbus boxes
    /// that report faults as a bitmap: each set bit N is an active fault,
    /// looked up as `bitN` in the elevator's fault table. Like every other
    /// field, missing keeps its last known value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_bits: Option<u32>,
}

/// Why an input was rejected. `reason()` is the stable label used in metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    Json(String),
    Missing(&'static str),
    BadValue { field: &'static str, detail: String },
    UnknownType(String),
}

impl DecodeError {
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Json(_) => "invalid_json",
            DecodeError::Missing(_) => "missing_field",
            DecodeError::BadValue { .. } => "bad_value",
            DecodeError::UnknownType(_) => "unknown_type",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Json(e) => write!(f, "not a valid event: {e}"),
            DecodeError::Missing(field) => write!(f, "missing required field `{field}`"),
            DecodeError::BadValue { field, detail } => write!(f, "field `{field}`: {detail}"),
            DecodeError::UnknownType(t) => write!(
                f,
                "unknown event type `{t}` (expected access, door, elevator or heartbeat)"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A string field that borrows from the input when it has no escapes.
/// (`Option<Cow<str>>` with `#[serde(borrow)]` would always allocate.)
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The wire shape: flat, every field optional, so that missing fields get a
/// precise message and unknown fields are ignored.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
    #[serde(borrow)]
    ts: Option<Text<'a>>,
    #[serde(borrow)]
    device: Option<Text<'a>>,
    #[serde(borrow)]
    credential: Option<Text<'a>>,
    granted: Option<bool>,
    #[serde(borrow)]
    direction: Option<Text<'a>>,
    #[serde(borrow)]
    reason: Option<Text<'a>>,
    #[serde(borrow)]
    state: Option<Text<'a>>,
    floor: Option<i32>,
    moving: Option<bool>,
    #[serde(borrow)]
    door: Option<Text<'a>>,
    door_zone: Option<bool>,
    occupied: Option<bool>,
    #[serde(borrow)]
    mode: Option<Text<'a>>,
    fault_code: Option<u32>,
    speed: Option<f32>,
    alarm_button: Option<bool>,
    fault_bits: Option<u32>,
}

fn bad(field: &'static str, value: &str, expected: &str) -> DecodeError {
    DecodeError::BadValue {
        field,
        detail: format!("`{value}` is not one of {expected}"),
    }
}

fn parse_enum<T: for<'d> Deserialize<'d>>(
    field: &'static str,
    value: Option<&str>,
    expected: &str,
) -> Result<Option<T>, DecodeError> {
    value
        .map(|v| {
            serde_json::from_value::<T>(serde_json::Value::String(v.to_string()))
                .map_err(|_| bad(field, v, expected))
        })
        .transpose()
}

/// Decodes one canonical JSON event. `ts` is required unless `default_ts`
/// is given (MQTT ingest passes its receive time).
pub fn decode<'a>(line: &'a str, default_ts: Option<Ts>) -> Result<Event<'a>, DecodeError> {
    let w: Wire<'a> = serde_json::from_str(line).map_err(|e| DecodeError::Json(e.to_string()))?;
    from_wire(w, default_ts)
}

fn from_wire<'a>(w: Wire<'a>, default_ts: Option<Ts>) -> Result<Event<'a>, DecodeError> {
    let kind = w.kind.ok_or(DecodeError::Missing("type"))?.0;
    let device = match w.device.map(|t| t.0) {
        Some(d) if !d.is_empty() => d,
        Some(_) => {
            return Err(DecodeError::BadValue {
                field: "device",
                detail: "must not be empty".into(),
            })
        }
        None => return Err(DecodeError::Missing("device")),
    };
    let ts = match (&w.ts, default_ts) {
        (Some(s), _) => parse_rfc3339(&s.0).map_err(|e| DecodeError::BadValue {
            field: "ts",
            detail: e.to_string(),
        })?,
        (None, Some(t)) => t,
        (None, None) => return Err(DecodeError::Missing("ts")),
    };
    let body = match &*kind {
        "access" => {
            let credential = w.credential.ok_or(DecodeError::Missing("credential"))?.0;
            if credential.is_empty() {
                return Err(DecodeError::BadValue {
                    field: "credential",
                    detail: "must not be empty".into(),
                });
            }
            let granted = w.granted.ok_or(DecodeError::Missing("granted"))?;
            let direction = match w.direction.as_ref().map(|t| t.0.as_ref()) {
                None => Direction::Unknown,
                Some(d) => {
                    Direction::parse(d).ok_or_else(|| bad("direction", d, "in, out, unknown"))?
                }
            };
            EventBody::Access(Access {
                credential,
                granted,
                direction,
                reason: w.reason.map(|t| t.0).filter(|r| !r.is_empty()),
            })
        }
        "door" => {
            let state = w.state.ok_or(DecodeError::Missing("state"))?.0;
            EventBody::Door(
                DoorState::parse(&state)
                    .ok_or_else(|| bad("state", &state, "open, closed, forced, held"))?,
            )
        }
        "elevator" => EventBody::Elevator(ElevatorSample {
            floor: w.floor,
            moving: w.moving,
            direction: parse_enum(
                "direction",
                w.direction.as_ref().map(|t| t.0.as_ref()),
                "up, down, none",
            )?,
            door: parse_enum(
                "door",
                w.door.as_ref().map(|t| t.0.as_ref()),
                "open, closed, opening, closing",
            )?,
            door_zone: w.door_zone,
            occupied: w.occupied,
            mode: parse_enum(
                "mode",
                w.mode.as_ref().map(|t| t.0.as_ref()),
                "normal, inspection, out_of_service, fire, earthquake, power_backup, other",
            )?,
            fault_code: w.fault_code,
            speed: w.speed,
            alarm_button: w.alarm_button,
            fault_bits: w.fault_bits,
        }),
        "heartbeat" => EventBody::Heartbeat,
        other => return Err(DecodeError::UnknownType(other.to_string())),
    };
    Ok(Event { ts, device, body })
}

impl Event<'_> {
    /// An owned copy, for queues that outlive the input buffer.
    pub fn into_owned(self) -> Event<'static> {
        let body = match self.body {
            EventBody::Access(a) => EventBody::Access(Access {
                credential: Cow::Owned(a.credential.into_owned()),
                granted: a.granted,
                direction: a.direction,
                reason: a.reason.map(|r| Cow::Owned(r.into_owned())),
            }),
            EventBody::Door(d) => EventBody::Door(d),
            EventBody::Elevator(e) => EventBody::Elevator(e),
            EventBody::Heartbeat => EventBody::Heartbeat,
        };
        Event {
            ts: self.ts,
            device: Cow::Owned(self.device.into_owned()),
            body,
        }
    }

    /// The canonical JSON line for this event (SPEC §2), `ts` in `tz`.
    pub fn to_json(&self, tz: &chrono_tz::Tz) -> String {
        let mut v = serde_json::Map::new();
        let ts = crate::time::format_in(tz, self.ts);
        let kind = match &self.body {
            EventBody::Access(a) => {
                v.insert("credential".into(), a.credential.as_ref().into());
                v.insert("granted".into(), a.granted.into());
                v.insert("direction".into(), a.direction.as_str().into());
                if let Some(r) = &a.reason {
                    v.insert("reason".into(), r.as_ref().into());
                }
                "access"
            }
            EventBody::Door(d) => {
                v.insert("state".into(), d.as_str().into());
                "door"
            }
            EventBody::Elevator(e) => {
                if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(e) {
                    v.extend(m);
                }
                "elevator"
            }
            EventBody::Heartbeat => "heartbeat",
        };
        let mut out = serde_json::Map::new();
        out.insert("type".into(), kind.into());
        out.insert("ts".into(), ts.into());
        out.insert("device".into(), self.device.as_ref().into());
        out.extend(v);
        serde_json::Value::Object(out).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_spec_examples() {
        let a = decode(
            r#"{"type":"access","ts":"2026-11-02T08:00:03+08:00","device":"b3-u1-door","credential":"C1001","granted":true,"direction":"in"}"#,
            None,
        )
        .unwrap();
        assert_eq!(a.device, "b3-u1-door");
        match a.body {
            EventBody::Access(x) => {
                assert_eq!(x.credential, "C1001");
                assert!(x.granted);
                assert_eq!(x.direction, Direction::In);
            }
            _ => panic!("not access"),
        }
        let e = decode(
            r#"{"type":"elevator","ts":"2026-11-02T08:00:11+08:00","device":"el-3-1","floor":5,"moving":false,"direction":"none","door":"closed","door_zone":true,"occupied":true,"mode":"normal","fault_code":0,"speed":0.0,"alarm_button":false,"extra":[1,2]}"#,
            None,
        )
        .unwrap();
        match e.body {
            EventBody::Elevator(s) => {
                assert_eq!(s.floor, Some(5));
                assert_eq!(s.mode, Some(ElevatorMode::Normal));
                assert_eq!(s.door, Some(CarDoor::Closed));
            }
            _ => panic!("not elevator"),
        }
    }

    #[test]
    fn rejects_with_precise_reasons() {
        let cases = [
            ("not json", "invalid_json"),
            (
                r#"{"type":"access","device":"d","credential":"c","granted":true}"#,
                "missing_field",
            ),
            (
                r#"{"type":"access","ts":"2026-11-02T08:00:03+08:00","device":"d","credential":"c","granted":"yes"}"#,
                "invalid_json",
            ),
            (
                r#"{"type":"door","ts":"2026-11-02T08:00:03+08:00","device":"d","state":"ajar"}"#,
                "bad_value",
            ),
            (
                r#"{"type":"smoke","ts":"2026-11-02T08:00:03+08:00","device":"d"}"#,
                "unknown_type",
            ),
            (
                r#"{"type":"heartbeat","ts":"yesterday","device":"d"}"#,
                "bad_value",
            ),
        ];
        for (line, reason) in cases {
            let err = decode(line, None).unwrap_err();
            assert_eq!(err.reason(), reason, "{line}: {err}");
        }
        assert!(decode(r#"{"type":"heartbeat","device":"d"}"#, Some(5)).is_ok());
    }

    #[test]
    fn round_trips_through_json() {
        let tz: chrono_tz::Tz = "Asia/Shanghai".parse().unwrap();
        let line = r#"{"type":"access","ts":"2026-11-02T08:00:03+08:00","device":"b3","credential":"C\"1","granted":false,"direction":"out","reason":"antipassback"}"#;
        let e = decode(line, None).unwrap();
        let again = e.to_json(&tz);
        assert_eq!(decode(&again, None).unwrap(), e);
    }
}
