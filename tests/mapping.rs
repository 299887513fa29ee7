//! Vendor payload decoding: the presets against the field samples, generic
//! mappings, device ids, precise errors, and the configuration checks of the
//! local broker, mappings, platform, outbox and admin sections.

use community_gateway::config::{load, load_str, Config, Problem, SubscriptionConfig};
use community_gateway::event::{Access, DecodeError, Direction, DoorState, EventBody};
use community_gateway::sources::mapping::{
    check_mapping, preset, Decoded, SubscriptionDecoder, PRESETS,
};
use community_gateway::time::{parse_rfc3339, Ts};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const FILE: &str = "/etc/community-gateway/gateway.toml";
/// Receive time used throughout: 2026-11-02T08:00:00+08:00.
const RECEIVED: Ts = 1_793_577_600_000;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn sample(name: &str) -> Value {
    let text = std::fs::read_to_string(repo(&format!("tests/fixtures/vendor/{name}"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ts(s: &str) -> Ts {
    parse_rfc3339(s).unwrap()
}

fn config(text: &str) -> Config {
    match load_str(text, Path::new(FILE)) {
        Ok(c) => c,
        Err(p) => panic!("unexpected problems:\n{p}\nin:\n{text}"),
    }
}

const DEVICES: &str = r#"
compound = "tianlin-12"
[[devices]]
id = "gate-south"
kind = "access"
perimeter = true
aliases = ["8L0A1B2PAZ8C3D4"]
[[devices]]
id = "b12-u1-door"
kind = "access"
building = "12"
aliases = ["12-1-entrance", "405419896-2"]
"#;

fn sub(topic: &str, format: &str) -> SubscriptionConfig {
    SubscriptionConfig {
        topic: topic.into(),
        format: format.into(),
        device: None,
        device_topic_level: None,
        qos: 1,
    }
}

fn decoder(cfg: &Config, s: &SubscriptionConfig) -> SubscriptionDecoder {
    SubscriptionDecoder::new(s, cfg).unwrap_or_else(|e| panic!("{e}"))
}

/// Decodes `payload` with preset `format` and no declared devices.
fn preset_decode(
    format: &str,
    topic: &str,
    payload: &Value,
) -> Result<Option<Decoded>, DecodeError> {
    let cfg = config("compound = \"c1\"\n");
    decoder(&cfg, &sub(topic, format)).decode(topic, payload.to_string().as_bytes(), RECEIVED)
}

fn access(d: &Decoded) -> &Access<'static> {
    match &d.event.body {
        EventBody::Access(a) => a,
        other => panic!("not an access event: {other:?}"),
    }
}

fn door(d: &Decoded) -> DoorState {
    match &d.event.body {
        EventBody::Door(s) => *s,
        other => panic!("not a door event: {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Presets against the field samples

#[test]
fn presets_are_listed_parse_and_pass_their_checks() {
    assert_eq!(PRESETS, ["hikvision", "dahua", "uhppoted"]);
    for name in PRESETS {
        let m = preset(name).unwrap_or_else(|| panic!("{name}"));
        assert!(
            check_mapping(&m).is_empty(),
            "{name}: {:?}",
            check_mapping(&m)
        );
    }
    assert!(preset("canonical").is_none());
    assert!(preset("zkteco").is_none());
}

#[test]
fn hikvision_sample_decodes_to_the_canonical_event() {
    let d = preset_decode(
        "hikvision",
        "hikvision/x/event",
        &sample("hikvision-isapi-access.json"),
    )
    .unwrap()
    .unwrap();
    assert!(d.ts_from_payload);
    assert_eq!(d.event.ts, ts("2026-11-02T07:58:12+08:00"));
    assert_eq!(d.event.device, "12-1-entrance");
    let a = access(&d);
    assert_eq!(a.credential, "3285011022");
    assert!(a.granted);
    assert_eq!(a.direction, Direction::Unknown);
    assert_eq!(a.reason, None);
}

fn hik(sub_type: i64) -> Value {
    let mut v = sample("hikvision-isapi-access.json");
    v["AccessControllerEvent"]["subEventType"] = json!(sub_type);
    v
}

fn hik_decode(v: &Value) -> Result<Option<Decoded>, DecodeError> {
    preset_decode("hikvision", "hikvision/x/event", v)
}

#[test]
fn hikvision_sub_types() {
    // 10: anti-passback failure, refused.
    let d = hik_decode(&hik(10)).unwrap().unwrap();
    let a = access(&d);
    assert!(!a.granted);
    assert_eq!(a.reason.as_deref(), Some("antipassback"));
    assert_eq!(a.credential, "3285011022");

    // 133: tailgating, an access with a reason.
    let d = hik_decode(&hik(133)).unwrap().unwrap();
    let a = access(&d);
    assert!(a.granted);
    assert_eq!(a.reason.as_deref(), Some("tailgating"));

    // 6 and 9: refused without a reason.
    for minor in [6, 9] {
        let d = hik_decode(&hik(minor)).unwrap().unwrap();
        assert!(!access(&d).granted, "{minor}");
        assert_eq!(access(&d).reason, None, "{minor}");
    }

    // Door states; door events need no card.
    for (minor, state) in [
        (27, DoorState::Forced),
        (28, DoorState::Held),
        (25, DoorState::Open),
        (26, DoorState::Closed),
    ] {
        let mut v = hik(minor);
        v["AccessControllerEvent"]
            .as_object_mut()
            .unwrap()
            .remove("cardNo");
        let d = hik_decode(&v).unwrap().unwrap();
        assert_eq!(door(&d), state, "{minor}");
        assert_eq!(d.event.device, "12-1-entrance");
        assert_eq!(d.event.ts, ts("2026-11-02T07:58:12+08:00"));
    }

    // Unknown sub types, and known minors under another major type, are skipped.
    assert_eq!(hik_decode(&hik(1024)).unwrap(), None);
    let mut other_major = hik(1);
    other_major["AccessControllerEvent"]["majorEventType"] = json!(3);
    assert_eq!(hik_decode(&other_major).unwrap(), None);
}

#[test]
fn hikvision_faces_use_the_person_number() {
    // 75: face granted; no card, the person number stands in.
    let mut v = hik(75);
    v["AccessControllerEvent"]["cardNo"] = json!("");
    let d = hik_decode(&v).unwrap().unwrap();
    assert_eq!(access(&d).credential, "R-0312");
    assert!(access(&d).granted);

    // 76: face failed, nobody known: the event has no credential.
    let mut v = hik(76);
    let ace = v["AccessControllerEvent"].as_object_mut().unwrap();
    ace.remove("cardNo");
    ace.remove("employeeNoString");
    assert_eq!(hik_decode(&v), Err(DecodeError::Missing("credential")));
}

#[test]
fn dahua_sample_decodes_to_the_canonical_event() {
    let topic = "DahuaVTO/AccessControl/Event";
    let d = preset_decode("dahua", topic, &sample("dahua-vto2mqtt-access.json"))
        .unwrap()
        .unwrap();
    assert!(d.ts_from_payload);
    assert_eq!(d.event.ts, 1_793_577_492_000);
    assert_eq!(d.event.ts, ts("2026-11-02T07:58:12+08:00"));
    assert_eq!(d.event.device, "8L0A1B2PAZ8C3D4");
    let a = access(&d);
    assert_eq!(a.credential, "A3F09C21");
    assert!(a.granted);
    assert_eq!(a.direction, Direction::In);
    assert_eq!(a.reason, None);
}

#[test]
fn dahua_exit_denied_user_id_and_other_events() {
    let topic = "DahuaVTO/AccessControl/Event";
    let mut v = sample("dahua-vto2mqtt-access.json");
    v["Data"]["Type"] = json!("Exit");
    v["Data"]["Status"] = json!(0);
    v["Data"]["CardNo"] = json!("");
    let d = preset_decode("dahua", topic, &v).unwrap().unwrap();
    let a = access(&d);
    assert_eq!(a.direction, Direction::Out);
    assert!(!a.granted);
    assert_eq!(a.credential, "R-0312");

    // A reader type the table does not know: direction unknown.
    v["Data"]["Type"] = json!("Remote");
    let d = preset_decode("dahua", topic, &v).unwrap().unwrap();
    assert_eq!(access(&d).direction, Direction::Unknown);

    // A status that is neither 1 nor 0 is an error naming the field.
    v["Data"]["Status"] = json!(7);
    match preset_decode("dahua", topic, &v) {
        Err(DecodeError::BadValue {
            field: "granted",
            detail,
        }) => {
            assert!(detail.contains("`7`"), "{detail}")
        }
        other => panic!("{other:?}"),
    }

    // No time stamp: the receive time, and the event says so.
    let mut v = sample("dahua-vto2mqtt-access.json");
    v["Data"].as_object_mut().unwrap().remove("UTC");
    let d = preset_decode("dahua", topic, &v).unwrap().unwrap();
    assert_eq!(d.event.ts, RECEIVED);
    assert!(!d.ts_from_payload);

    // Calls and other station events are skipped.
    let mut v = sample("dahua-vto2mqtt-access.json");
    v["Code"] = json!("CallNoAnswered");
    assert_eq!(preset_decode("dahua", topic, &v).unwrap(), None);
}

#[test]
fn uhppoted_sample_decodes_with_local_time_and_zone_name() {
    let topic = "uhppoted/gateway/events";
    let d = preset_decode("uhppoted", topic, &sample("uhppoted-mqtt-event.json"))
        .unwrap()
        .unwrap();
    assert!(d.ts_from_payload);
    // "2026-11-02 07:58:12 CST": CST ignored, read in Asia/Shanghai.
    assert_eq!(d.event.ts, ts("2026-11-02T07:58:12+08:00"));
    assert_eq!(d.event.device, "405419896-2");
    let a = access(&d);
    assert_eq!(a.credential, "8165538");
    assert!(a.granted);
    assert_eq!(a.direction, Direction::In);
}

#[test]
fn uhppoted_time_zones_directions_and_event_types() {
    let topic = "uhppoted/gateway/events";
    let mut v = sample("uhppoted-mqtt-event.json");

    // The zone name is ignored: the compound's zone decides.
    let cfg = config("compound = \"c1\"\ntimezone = \"Europe/Berlin\"\n");
    let dec = decoder(&cfg, &sub(topic, "uhppoted"));
    let d = dec
        .decode(topic, v.to_string().as_bytes(), RECEIVED)
        .unwrap()
        .unwrap();
    assert_eq!(d.event.ts, ts("2026-11-02T07:58:12+01:00"));

    // Without a zone name, and with UTC (honoured).
    v["timestamp"] = json!("2026-11-02 07:58:12");
    let d = preset_decode("uhppoted", topic, &v).unwrap().unwrap();
    assert_eq!(d.event.ts, ts("2026-11-02T07:58:12+08:00"));
    v["timestamp"] = json!("2026-11-02 07:58:12 UTC");
    let d = preset_decode("uhppoted", topic, &v).unwrap().unwrap();
    assert_eq!(d.event.ts, ts("2026-11-02T07:58:12Z"));

    // A time stamp in another shape is an error naming `ts`.
    v["timestamp"] = json!("02/11/2026 07:58");
    match preset_decode("uhppoted", topic, &v) {
        Err(DecodeError::BadValue {
            field: "ts",
            detail,
        }) => {
            assert!(detail.contains("%Y-%m-%d %H:%M:%S"), "{detail}")
        }
        other => panic!("{other:?}"),
    }

    // Direction 2 is out; others unknown; refusals.
    let mut v = sample("uhppoted-mqtt-event.json");
    v["direction"] = json!(2);
    v["access-granted"] = json!(false);
    let d = preset_decode("uhppoted", topic, &v).unwrap().unwrap();
    assert_eq!(access(&d).direction, Direction::Out);
    assert!(!access(&d).granted);
    v["direction"] = json!(0);
    let d = preset_decode("uhppoted", topic, &v).unwrap().unwrap();
    assert_eq!(access(&d).direction, Direction::Unknown);

    // Event types other than a swipe are skipped.
    v["event-type"] = json!(2);
    assert_eq!(preset_decode("uhppoted", topic, &v).unwrap(), None);
}

// ---------------------------------------------------------------------------
// Generic mappings

const LIFT: &str = r#"
compound = "c1"
[[devices]]
id = "el-12-1"
kind = "elevator"
building = "12"
aliases = ["LB-0042"]

[local_mqtt]
[[local_mqtt.subscriptions]]
topic = "lifts/+/status"
format = "lift-box"

[mappings.lift-box]
kind = { pointer = "/msgType", values = { status = "elevator", ping = "heartbeat" }, default = "skip" }
device = { topic_level = 1 }
ts = "/time"
ts_format = "%Y%m%d%H%M%S"
floor = "/floor"
moving = { pointer = "/running", values = { "1" = true, "0" = false } }
direction = { pointer = "/dir", values = { "1" = "up", "2" = "down" }, default = "none" }
door = { pointer = "/door", values = { "0" = "closed", "1" = "open" } }
door_zone = "/zone"
occupied = "/passenger"
mode = { pointer = "/mode", values = { "0" = "normal", "1" = "inspection" }, default = "other" }
fault_code = { pointer = ["/fault", "/err"], default = 0 }
speed = { pointer = "/speed", scale = 0.01 }
alarm_button = "/alarm"

[[local_mqtt.subscriptions]]
topic = "readers/#"
format = "reader"
device = "el-12-1"

[mappings.reader]
kind = { value = "access" }
credential = { template = "{/site}-{/card}" }
granted = { value = true }
reason = { pointer = "/why", values = { "7" = "tailgating" } }
"#;

fn lift(payload: Value, topic: &str) -> Result<Option<Decoded>, DecodeError> {
    let cfg = config(LIFT);
    let s = cfg.local_mqtt.as_ref().unwrap().subscriptions[0].clone();
    decoder(&cfg, &s).decode(topic, payload.to_string().as_bytes(), RECEIVED)
}

fn reader(payload: Value) -> Result<Option<Decoded>, DecodeError> {
    let cfg = config(LIFT);
    let s = cfg.local_mqtt.as_ref().unwrap().subscriptions[1].clone();
    decoder(&cfg, &s).decode("readers/1", payload.to_string().as_bytes(), RECEIVED)
}

#[test]
fn generic_mapping_values_default_scale_and_topic_level() {
    let d = lift(
        json!({"msgType":"status","time":20261102080011u64,"floor":"5","running":0,"dir":9,
               "door":"0","zone":1,"passenger":"true","mode":3,"err":35,"speed":175,"alarm":false}),
        "lifts/el-12-1/status",
    )
    .unwrap()
    .unwrap();
    assert_eq!(d.event.device, "el-12-1");
    assert_eq!(d.event.ts, ts("2026-11-02T08:00:11+08:00"));
    assert!(d.ts_from_payload);
    let EventBody::Elevator(e) = d.event.body else {
        panic!("{d:?}")
    };
    assert_eq!(e.floor, Some(5)); // numeric string
    assert_eq!(e.moving, Some(false)); // values table
    assert_eq!(
        e.direction,
        Some(community_gateway::event::TravelDirection::None)
    ); // default for an untranslated value
    assert_eq!(e.door, Some(community_gateway::event::CarDoor::Closed));
    assert_eq!(e.door_zone, Some(true)); // 1 as a boolean
    assert_eq!(e.occupied, Some(true)); // "true" as a boolean
    assert_eq!(e.mode, Some(community_gateway::event::ElevatorMode::Other));
    assert_eq!(e.fault_code, Some(35)); // second pointer of the list
    assert_eq!(e.speed, Some(1.75)); // scaled
    assert_eq!(e.alarm_button, Some(false));

    // Absent fields are left out (or take their default); an alias in the topic.
    let d = lift(
        json!({"msgType":"status","door":"7"}),
        "lifts/LB-0042/status",
    )
    .unwrap()
    .unwrap();
    assert_eq!(d.event.device, "el-12-1");
    assert_eq!(d.event.ts, RECEIVED);
    assert!(!d.ts_from_payload);
    let EventBody::Elevator(e) = d.event.body else {
        panic!()
    };
    assert_eq!(e.floor, None);
    assert_eq!(e.door, None); // optional, untranslated, no default: left out
    assert_eq!(e.fault_code, Some(0));
    assert_eq!(
        e.direction,
        Some(community_gateway::event::TravelDirection::None)
    );

    // Heartbeats, skips.
    let d = lift(json!({"msgType":"ping"}), "lifts/el-12-1/status")
        .unwrap()
        .unwrap();
    assert_eq!(d.event.body, EventBody::Heartbeat);
    assert_eq!(
        lift(json!({"msgType":"boot"}), "lifts/el-12-1/status").unwrap(),
        None
    );
}

#[test]
fn generic_mapping_template_and_constant() {
    let d = reader(json!({"site":"N","card":1001,"why":7}))
        .unwrap()
        .unwrap();
    assert_eq!(d.event.device, "el-12-1");
    let a = access(&d);
    assert_eq!(a.credential, "N-1001");
    assert!(a.granted);
    assert_eq!(a.direction, Direction::Unknown);
    assert_eq!(a.reason.as_deref(), Some("tailgating"));
    // A reason code not in the table: no reason.
    let d = reader(json!({"site":"N","card":1001,"why":1}))
        .unwrap()
        .unwrap();
    assert_eq!(access(&d).reason, None);
    // A template with a missing part is absent.
    assert_eq!(
        reader(json!({"card":1001})),
        Err(DecodeError::Missing("credential"))
    );
}

#[test]
fn generic_mapping_type_errors_name_the_field() {
    let topic = "lifts/el-12-1/status";
    let bad = |payload: Value, field: &str, needle: &str| match lift(payload.clone(), topic) {
        Err(DecodeError::BadValue { field: f, detail }) => {
            assert_eq!(f, field, "{payload}: {detail}");
            assert!(
                detail.contains(needle),
                "{payload}: `{detail}` lacks `{needle}`"
            );
        }
        other => panic!("{payload}: {other:?}"),
    };
    bad(
        json!({"msgType":"status","floor":"B1"}),
        "floor",
        "`B1` is not a number",
    );
    bad(
        json!({"msgType":"status","floor":2.5}),
        "floor",
        "not a whole number",
    );
    bad(
        json!({"msgType":"status","floor":1e12}),
        "floor",
        "not a whole number",
    );
    bad(
        json!({"msgType":"status","zone":"yes"}),
        "door_zone",
        "`yes` is not a boolean",
    );
    bad(
        json!({"msgType":"status","floor":{"n":1}}),
        "floor",
        "JSON object",
    );
    bad(
        json!({"msgType":"status","fault":-3}),
        "fault_code",
        "from 0 to 4294967295",
    );
    bad(
        json!({"msgType":"status","time":"yesterday"}),
        "ts",
        "does not match",
    );
    bad(json!({"msgType":[1]}), "kind", "JSON array");
    assert_eq!(
        lift(json!({"type":"status"}), topic),
        Ok(None),
        "kind absent: its default, skip"
    );
}

#[test]
fn unix_timestamps() {
    let text = r#"
compound = "c1"
[mappings.s]
kind = { value = "heartbeat" }
device = "/id"
ts = "/t"
ts_format = "unix_s"
[mappings.ms]
kind = { value = "heartbeat" }
device = "/id"
ts = { pointer = ["/t"] }
ts_format = "unix_ms"
"#;
    let cfg = config(text);
    let s = decoder(&cfg, &sub("t", "s"));
    let ms = decoder(&cfg, &sub("t", "ms"));
    let at = |d: &SubscriptionDecoder, p: &str| {
        d.decode("t", p.as_bytes(), RECEIVED)
            .map(|d| d.unwrap().event.ts)
    };
    assert_eq!(
        at(&s, r#"{"id":"d","t":1793577492}"#),
        Ok(1_793_577_492_000)
    );
    assert_eq!(
        at(&s, r#"{"id":"d","t":"1793577492"}"#),
        Ok(1_793_577_492_000)
    );
    assert_eq!(
        at(&s, r#"{"id":"d","t":1793577492.25}"#),
        Ok(1_793_577_492_250)
    );
    assert_eq!(
        at(&ms, r#"{"id":"d","t":1793577492123}"#),
        Ok(1_793_577_492_123)
    );
    assert_eq!(
        at(&ms, r#"{"id":"d","t":"1793577492123"}"#),
        Ok(1_793_577_492_123)
    );
    for bad in [
        r#"{"id":"d","t":-5}"#,
        r#"{"id":"d","t":1e300}"#,
        r#"{"id":"d","t":"soon"}"#,
        r#"{"id":"d","t":true}"#,
    ] {
        match at(&s, bad) {
            Err(DecodeError::BadValue { field: "ts", .. }) => {}
            other => panic!("{bad}: {other:?}"),
        }
    }
    assert_eq!(at(&s, r#"{"id":"d"}"#), Ok(RECEIVED));
}

// ---------------------------------------------------------------------------
// Device ids

#[test]
fn device_aliases_and_subscription_overrides() {
    let cfg = config(DEVICES);
    let dahua = sample("dahua-vto2mqtt-access.json").to_string();
    let topic = "DahuaVTO/AccessControl/Event";

    // The serial number is an alias of gate-south.
    let d = decoder(&cfg, &sub(topic, "dahua"))
        .decode(topic, dahua.as_bytes(), RECEIVED)
        .unwrap()
        .unwrap();
    assert_eq!(d.event.device, "gate-south");

    // A fixed device on the subscription wins over the payload.
    let mut s = sub(topic, "dahua");
    s.device = Some("b12-u1-door".into());
    let d = decoder(&cfg, &s)
        .decode(topic, dahua.as_bytes(), RECEIVED)
        .unwrap()
        .unwrap();
    assert_eq!(d.event.device, "b12-u1-door");

    // A topic level wins over the payload, and goes through the aliases.
    let hik = sample("hikvision-isapi-access.json").to_string();
    let mut s = sub("hikvision/+/event", "hikvision");
    s.device_topic_level = Some(1);
    let dec = decoder(&cfg, &s);
    let at = |topic: &str| {
        dec.decode(topic, hik.as_bytes(), RECEIVED)
            .unwrap()
            .unwrap()
            .event
            .device
    };
    assert_eq!(at("hikvision/gate-south/event"), "gate-south");
    assert_eq!(at("hikvision/405419896-2/event"), "b12-u1-door");
    // An empty level: the payload's device name (an alias) is used.
    assert_eq!(at("hikvision//event"), "b12-u1-door");

    // uhppoted's "<serial>-<door>" is an alias too.
    let uh = sample("uhppoted-mqtt-event.json").to_string();
    let d = decoder(&cfg, &sub("u", "uhppoted"))
        .decode("u", uh.as_bytes(), RECEIVED)
        .unwrap()
        .unwrap();
    assert_eq!(d.event.device, "b12-u1-door");
}

#[test]
fn canonical_payloads() {
    let cfg = config(DEVICES);
    let topic = "community/tianlin-12/events/gate";
    let dec = decoder(&cfg, &sub("community/tianlin-12/events/#", "canonical"));
    let line = r#"{"type":"access","ts":"2026-11-02T08:00:03+08:00","device":"8L0A1B2PAZ8C3D4","credential":"C1001","granted":true,"direction":"in"}"#;
    let d = dec
        .decode(topic, line.as_bytes(), RECEIVED)
        .unwrap()
        .unwrap();
    assert!(d.ts_from_payload);
    assert_eq!(d.event.ts, ts("2026-11-02T08:00:03+08:00"));
    assert_eq!(
        d.event.device, "gate-south",
        "aliases apply to canonical events"
    );
    assert_eq!(access(&d).credential, "C1001");

    let d = dec
        .decode(
            topic,
            br#"{"type":"heartbeat","device":"b12-u1-door"}"#,
            RECEIVED,
        )
        .unwrap()
        .unwrap();
    assert!(!d.ts_from_payload);
    assert_eq!(d.event.ts, RECEIVED);

    // A fixed device supplies or replaces the payload's.
    let mut s = sub("community/tianlin-12/events/#", "canonical");
    s.device = Some("gate-south".into());
    let d = decoder(&cfg, &s)
        .decode(topic, br#"{"type":"heartbeat"}"#, RECEIVED)
        .unwrap()
        .unwrap();
    assert_eq!(d.event.device, "gate-south");

    // Same errors as replay.
    assert_eq!(
        dec.decode(
            topic,
            br#"{"type":"access","device":"d","granted":true}"#,
            RECEIVED
        ),
        Err(DecodeError::Missing("credential"))
    );
    assert!(matches!(
        dec.decode(topic, b"{\"type\":", RECEIVED),
        Err(DecodeError::Json(_))
    ));
    assert!(matches!(
        dec.decode(
            topic,
            br#"{"type":"door","device":"d","state":"ajar"}"#,
            RECEIVED
        ),
        Err(DecodeError::BadValue { field: "state", .. })
    ));
}

// ---------------------------------------------------------------------------
// Errors

#[test]
fn errors_are_precise() {
    let cfg = config("compound = \"c1\"\n");
    let dahua = decoder(&cfg, &sub("d", "dahua"));
    let canonical = decoder(&cfg, &sub("c", "canonical"));

    // Not JSON.
    match dahua.decode("d", b"{\"Code\": AccessControl}", RECEIVED) {
        Err(e @ DecodeError::Json(_)) => assert_eq!(e.reason(), "invalid_json"),
        other => panic!("{other:?}"),
    }
    // Not UTF-8 (GBK bytes), for mappings and canonical alike.
    for dec in [&dahua, &canonical] {
        match dec.decode("d", b"{\"Data\":{\"CardNo\":\"\xd5\xc5\"}}", RECEIVED) {
            Err(DecodeError::Json(m)) => assert!(m.contains("not UTF-8"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    // Missing credential.
    let mut v = sample("dahua-vto2mqtt-access.json");
    v["Data"]["CardNo"] = json!(null);
    v["Data"].as_object_mut().unwrap().remove("UserID");
    assert_eq!(
        dahua.decode("d", v.to_string().as_bytes(), RECEIVED),
        Err(DecodeError::Missing("credential"))
    );
    // Missing device.
    let mut v = sample("dahua-vto2mqtt-access.json");
    v.as_object_mut().unwrap().remove("serialNumber");
    assert_eq!(
        dahua.decode("d", v.to_string().as_bytes(), RECEIVED),
        Err(DecodeError::Missing("device"))
    );
    // A value the table does not know, for a required field.
    let mut v = sample("dahua-vto2mqtt-access.json");
    v["Data"]["Status"] = json!("maybe");
    let e = dahua
        .decode("d", v.to_string().as_bytes(), RECEIVED)
        .unwrap_err();
    assert_eq!(e.reason(), "bad_value");
    assert_eq!(
        e.to_string(),
        "field `granted`: `maybe` is not in the mapping's `values` table (known: 0, 1) and there is no `default`"
    );
    // An enum value read as-is that the canonical model rejects.
    let cfg = config(
        "compound = \"c1\"\n[mappings.m]\nkind = { value = \"access\" }\ndevice = \"/d\"\ncredential = \"/c\"\ngranted = \"/g\"\ndirection = \"/dir\"\n",
    );
    let m = decoder(&cfg, &sub("m", "m"));
    assert_eq!(
        m.decode(
            "m",
            br#"{"d":"x","c":"1","g":true,"dir":"sideways"}"#,
            RECEIVED
        ),
        Err(DecodeError::BadValue {
            field: "direction",
            detail: "`sideways` is not one of in, out, unknown".into()
        })
    );
    // A huge value is quoted only in part.
    let long = "x".repeat(10_000);
    let e = m
        .decode(
            "m",
            json!({"d":"x","c":"1","g":long}).to_string().as_bytes(),
            RECEIVED,
        )
        .unwrap_err();
    assert!(e.to_string().len() < 300, "{e}");
    // A non-object payload.
    assert_eq!(
        m.decode("m", b"[1,2]", RECEIVED),
        Err(DecodeError::Missing("device"))
    );
}

#[test]
fn decoders_refuse_bad_setups() {
    let cfg = config("compound = \"c1\"\n[mappings.nodev]\nkind = { value = \"heartbeat\" }\n");
    let e = SubscriptionDecoder::new(&sub("t", "zkteco"), &cfg).unwrap_err();
    assert!(e.contains("unknown format `zkteco`"), "{e}");
    assert!(e.contains("canonical, hikvision, dahua, uhppoted"), "{e}");
    assert!(e.contains("nodev"), "{e}");
    let e = SubscriptionDecoder::new(&sub("t", "nodev"), &cfg).unwrap_err();
    assert!(e.contains("has no `device`"), "{e}");
    let mut s = sub("t/+", "nodev");
    s.device_topic_level = Some(1);
    assert!(SubscriptionDecoder::new(&s, &cfg).is_ok());
    s.device = Some("x".into());
    assert!(SubscriptionDecoder::new(&s, &cfg).is_err());
}

// ---------------------------------------------------------------------------
// Configuration checks

fn problems(text: &str) -> Vec<Problem> {
    match load_str(text, Path::new(FILE)) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(p) => p.0,
    }
}

/// (line, key path) of each problem, and the messages.
fn located(text: &str) -> (Vec<(usize, String)>, Vec<String>) {
    let p = problems(text);
    (
        p.iter()
            .map(|p| (p.line.unwrap_or(0), p.key.clone().unwrap_or_default()))
            .collect(),
        p.iter().map(|p| p.message.clone()).collect(),
    )
}

fn at(v: &[(usize, &str)]) -> Vec<(usize, String)> {
    v.iter().map(|(l, k)| (*l, k.to_string())).collect()
}

#[test]
fn bad_mappings_are_located() {
    let text = r#"compound = "c1"
[mappings.hikvision]
kind = { value = "access" }
device = "/d"
[mappings.m]
device = "deviceName"
ts = "/t"
ts_format = "dd.mm.yyyy"
credential = { pointer = "/a", value = "x" }
granted = { pointer = "/g", values = { "1" = "yes" } }
direction = { pointer = "/dir", values = { "1" = "inward" } }
reason = { pointer = "/r", scale = 2.0 }
state = { }
floor = { pointer = [] }
mode = { pointer = "", default = "broken" }
door = { template = "{/a}-{b}" }
"#;
    let (got, msgs) = located(text);
    assert_eq!(
        got,
        at(&[
            (2, "mappings.hikvision"),
            (5, "mappings.m.kind"),
            (6, "mappings.m.device"),
            (8, "mappings.m.ts_format"),
            (9, "mappings.m.credential"),
            (10, "mappings.m.granted.values"),
            (11, "mappings.m.direction.values"),
            (12, "mappings.m.reason.scale"),
            (13, "mappings.m.state"),
            (14, "mappings.m.floor.pointer"),
            (15, "mappings.m.mode.pointer"),
            (15, "mappings.m.mode.default"),
            (16, "mappings.m.door.template"),
        ]),
        "{msgs:#?}"
    );
    assert!(msgs[0].contains("built-in format"), "{}", msgs[0]);
    assert!(
        msgs[1].contains("missing required key `kind`"),
        "{}",
        msgs[1]
    );
    assert!(msgs[2].contains("must start with `/`"), "{}", msgs[2]);
    assert!(
        msgs[3].contains("unknown timestamp format `dd.mm.yyyy`"),
        "{}",
        msgs[3]
    );
    assert!(msgs[4].contains("only one of"), "{}", msgs[4]);
    assert!(msgs[5].contains("`yes` is not a boolean"), "{}", msgs[5]);
    assert!(
        msgs[6].contains("`inward` is not a valid `direction`"),
        "{}",
        msgs[6]
    );
    assert!(
        msgs[7].contains("only to floor, fault_code and speed"),
        "{}",
        msgs[7]
    );
    assert!(msgs[8].contains("needs one of"), "{}", msgs[8]);
    assert!(msgs[10].contains("empty JSON pointer"), "{}", msgs[10]);
    assert!(
        msgs[11].contains("`broken` is not a valid `mode`"),
        "{}",
        msgs[11]
    );
}

#[test]
fn a_bad_strftime_pattern_and_unknown_mapping_keys() {
    let text = r#"compound = "c1"
[mappings.m]
kind = { value = "heartbeat" }
device = { pointr = "/d" }
ts = "/t"
ts_format = "%Y-%m-%d %Q"
"#;
    let (got, msgs) = located(text);
    assert_eq!(
        got,
        at(&[
            (4, "mappings.m.device.pointr"),
            (4, "mappings.m.device"),
            (6, "mappings.m.ts_format"),
        ]),
        "{msgs:#?}"
    );
    assert!(msgs[0].contains("unknown key `pointr`"), "{}", msgs[0]);
    assert!(msgs[1].contains("needs one of"), "{}", msgs[1]);
    assert!(
        msgs[2].contains("not a valid strftime pattern"),
        "{}",
        msgs[2]
    );
}

#[test]
fn bad_subscriptions_are_located() {
    let text = r#"compound = "c1"
[[devices]]
id = "gate-south"
kind = "access"
perimeter = true
aliases = ["VTO-1"]
[mappings.nodev]
kind = { value = "heartbeat" }
[local_mqtt]
host = ""
port = 0
keep_alive = "1s"
max_payload = 100
queue = 0
[[local_mqtt.subscriptions]]
topic = "a/#/b"
format = "zkteco"
qos = 2
[[local_mqtt.subscriptions]]
topic = "a/b+"
device = "gate-north"
device_topic_level = 1
[[local_mqtt.subscriptions]]
topic = "c/d"
format = "nodev"
[[local_mqtt.subscriptions]]
topic = "e/+"
format = "dahua"
device = "VTO-1"
[[local_mqtt.subscriptions]]
topic = "e/+"
device_topic_level = 2
[[local_mqtt.subscriptions]]
topic = ""
"#;
    let (got, msgs) = located(text);
    assert_eq!(
        got,
        at(&[
            (10, "local_mqtt.host"),
            (11, "local_mqtt.port"),
            (12, "local_mqtt.keep_alive"),
            (13, "local_mqtt.max_payload"),
            (14, "local_mqtt.queue"),
            (16, "local_mqtt.subscriptions[0].topic"),
            (17, "local_mqtt.subscriptions[0].format"),
            (18, "local_mqtt.subscriptions[0].qos"),
            (20, "local_mqtt.subscriptions[1].topic"),
            (21, "local_mqtt.subscriptions[1].device"),
            (22, "local_mqtt.subscriptions[1].device_topic_level"),
            (23, "local_mqtt.subscriptions[2]"),
            (29, "local_mqtt.subscriptions[3].device"),
            (31, "local_mqtt.subscriptions[4].topic"),
            (32, "local_mqtt.subscriptions[4].device_topic_level"),
            (34, "local_mqtt.subscriptions[5].topic"),
        ]),
        "{msgs:#?}"
    );
    assert!(
        msgs[5].contains("`#` must be a whole level and the last one"),
        "{}",
        msgs[5]
    );
    assert!(
        msgs[6].contains("unknown format `zkteco`; expected canonical, hikvision, dahua, uhppoted")
            && msgs[6].contains("nodev"),
        "{}",
        msgs[6]
    );
    assert!(msgs[7].contains("QoS 2 is not supported"), "{}", msgs[7]);
    assert!(msgs[8].contains("`+` must be a whole level"), "{}", msgs[8]);
    assert!(
        msgs[9].contains("`gate-north` is not a declared device"),
        "{}",
        msgs[9]
    );
    assert!(msgs[10].contains("not both"), "{}", msgs[10]);
    assert!(
        msgs[11].contains("mapping `nodev` does not say which device"),
        "{}",
        msgs[11]
    );
    assert!(
        msgs[12].contains("alias of device `gate-south`"),
        "{}",
        msgs[12]
    );
    assert!(
        msgs[13].contains("already subscribed at line 27"),
        "{}",
        msgs[13]
    );
    assert!(msgs[14].contains("level 2 never exists"), "{}", msgs[14]);
}

#[test]
fn platform_needs_tls_files_or_plaintext() {
    let (got, msgs) = located("compound = \"c1\"\n[platform]\nport = 8883\n");
    assert_eq!(
        got,
        at(&[(2, "platform.host"), (2, "platform.tls")]),
        "{msgs:#?}"
    );
    assert!(msgs[1].contains("missing [platform.tls]"), "{}", msgs[1]);

    let text = r#"compound = "c1"
[platform]
host = "platform.example.cn"
plaintext = true
inflight = 0
alerts_topic = "community/{compound}/alerts/#"
commands_topic = ""
[platform.tls]
ca_file = "tls/ca.pem"
cert_file = "tls/cert.pem"
server_name = ""
"#;
    let (got, msgs) = located(text);
    assert_eq!(
        got,
        at(&[
            (4, "platform.plaintext"),
            (5, "platform.inflight"),
            (6, "platform.alerts_topic"),
            (7, "platform.commands_topic"),
            (9, "platform.tls.ca_file"),
            (10, "platform.tls.cert_file"),
            (10, "platform.tls.cert_file"),
            (11, "platform.tls.server_name"),
        ]),
        "{msgs:#?}"
    );
    // Relative paths are shown resolved against the config file's folder.
    assert!(
        msgs[4].contains("`/etc/community-gateway/tls/ca.pem` does not exist"),
        "{}",
        msgs[4]
    );
    assert!(msgs[5].contains("set `key_file` too"), "{}", msgs[5]);
}

#[test]
fn tls_paths_are_resolved_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    for f in ["ca.pem", "cert.pem", "key.pem", "local-ca.pem"] {
        std::fs::write(dir.path().join("tls").join(f), "-----BEGIN-----\n").unwrap();
    }
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        r#"compound = "c1"
[local_mqtt]
tls = { ca_file = "tls/local-ca.pem" }
[platform]
host = "platform.example.cn"
[platform.tls]
ca_file = "tls/ca.pem"
cert_file = "tls/cert.pem"
key_file = "tls/key.pem"
"#,
    )
    .unwrap();
    let cfg = load(&path).unwrap_or_else(|p| panic!("{p}"));
    let tls = cfg.platform.unwrap().tls.unwrap();
    let tdir = dir.path().join("tls");
    assert_eq!(tls.ca_file, tdir.join("ca.pem"));
    assert_eq!(tls.cert_file, Some(tdir.join("cert.pem")));
    assert_eq!(tls.key_file, Some(tdir.join("key.pem")));
    assert_eq!(
        cfg.local_mqtt.unwrap().tls.unwrap().ca_file,
        tdir.join("local-ca.pem")
    );

    // A folder is not a file; a key without its certificate.
    std::fs::write(
        &path,
        "compound = \"c1\"\n[local_mqtt.tls]\nca_file = \"tls\"\nkey_file = \"tls/key.pem\"\n",
    )
    .unwrap();
    let p = load(&path).unwrap_err().0;
    let keys: Vec<_> = p.iter().map(|p| p.key.clone().unwrap()).collect();
    assert_eq!(
        keys,
        ["local_mqtt.tls.ca_file", "local_mqtt.tls.key_file"],
        "{p:#?}"
    );
    assert!(p[0].message.contains("is a folder"), "{}", p[0]);
}

#[test]
fn outbox_admin_and_aliases() {
    let text = r#"compound = "c1"
[outbox]
max_entries = 5
max_bytes = 1000
[admin]
listen = "localhost"
[[devices]]
id = "a"
kind = "other"
aliases = ["x", "b", "x"]
[[devices]]
id = "b"
kind = "other"
aliases = ["x", ""]
"#;
    let (got, msgs) = located(text);
    assert_eq!(
        got,
        at(&[
            (3, "outbox.max_entries"),
            (4, "outbox.max_bytes"),
            (6, "admin.listen"),
            (10, "devices[0].aliases[1]"),
            (10, "devices[0].aliases[2]"),
            (14, "devices[1].aliases[0]"),
            (14, "devices[1].aliases[1]"),
        ]),
        "{msgs:#?}"
    );
    assert!(msgs[0].contains("at least 10"), "{}", msgs[0]);
    assert!(msgs[1].contains("at least 65536"), "{}", msgs[1]);
    assert!(
        msgs[2].contains("`localhost` is not an address and port"),
        "{}",
        msgs[2]
    );
    assert!(
        msgs[3].contains("`b` is the id of another device (declared at line 12)"),
        "{}",
        msgs[3]
    );
    assert!(msgs[4].contains("listed twice"), "{}", msgs[4]);
    assert!(
        msgs[5].contains("already an alias of device `a`"),
        "{}",
        msgs[5]
    );
    assert!(msgs[6].contains("must not be empty"), "{}", msgs[6]);
}

// ---------------------------------------------------------------------------
// The shipped example

#[test]
fn shipped_example_subscriptions_decode_the_samples() {
    let cfg = load(&repo("config/gateway.toml")).unwrap_or_else(|p| panic!("{p}"));
    let mqtt = cfg.local_mqtt.as_ref().expect("[local_mqtt] is active");
    let defaults = community_gateway::config::LocalMqttConfig::default();
    assert_eq!(
        (
            mqtt.host.as_str(),
            mqtt.port,
            mqtt.keep_alive,
            mqtt.max_payload,
            mqtt.queue
        ),
        (
            defaults.host.as_str(),
            defaults.port,
            defaults.keep_alive,
            defaults.max_payload,
            defaults.queue
        ),
        "the example documents the defaults"
    );
    assert_eq!(cfg.outbox, Default::default());
    assert_eq!(cfg.admin, Default::default());
    assert!(cfg.platform.is_none() && cfg.mappings.is_empty());
    let formats: Vec<&str> = mqtt
        .subscriptions
        .iter()
        .map(|s| s.format.as_str())
        .collect();
    assert_eq!(formats, ["canonical", "hikvision", "dahua"]);

    let decoders: Vec<SubscriptionDecoder> = mqtt
        .subscriptions
        .iter()
        .map(|s| decoder(&cfg, s))
        .collect();
    let hik = sample("hikvision-isapi-access.json").to_string();
    let d = decoders[1]
        .decode("hikvision/12-1-entrance/event", hik.as_bytes(), RECEIVED)
        .unwrap()
        .unwrap();
    assert_eq!(d.event.device, "b12-u1-door");
    let dahua = sample("dahua-vto2mqtt-access.json").to_string();
    let d = decoders[2]
        .decode("DahuaVTO/AccessControl/Event", dahua.as_bytes(), RECEIVED)
        .unwrap()
        .unwrap();
    assert_eq!(d.event.device, "gate-south");
    let line = std::fs::read_to_string(repo("config/example-events.jsonl")).unwrap();
    let first = line.lines().next().unwrap();
    assert!(decoders[0]
        .decode("community/tianlin-12/events/x", first.as_bytes(), RECEIVED)
        .is_ok());
}

/// The commented-out `[platform]` and `[mappings.lift-box]` blocks of the
/// shipped example, switched on as its notes say, are valid too.
#[test]
fn shipped_example_commented_blocks_are_valid() {
    let text = std::fs::read_to_string(repo("config/gateway.toml")).unwrap();
    let block = |start: &str| -> String {
        let mut out = String::new();
        let mut on = false;
        for line in text.lines() {
            if line == start {
                on = true;
            }
            if on {
                if !line.starts_with('#') {
                    break;
                }
                let l = line
                    .strip_prefix("# ")
                    .unwrap_or(line.trim_start_matches('#'));
                out.push_str(l);
                out.push('\n');
            }
        }
        assert!(on, "no `{start}` block");
        out
    };
    let platform = block("# [platform]");
    let lift = block("# [mappings.lift-box]");
    assert!(platform.contains("ca_file"), "{platform}");
    assert!(lift.contains("speed"), "{lift}");

    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    for f in ["platform-ca.pem", "gateway-cert.pem", "gateway-key.pem"] {
        std::fs::write(tls.join(f), "x").unwrap();
    }
    let platform = platform.replace("/etc/community-gateway/tls/", "tls/");
    let mut cfg_text = text
        .replace("roster = \"residents.csv\"\n", "")
        .replace("[outbox]\n", &format!("{platform}\n[outbox]\n"));
    cfg_text.push_str(&lift);
    cfg_text.push_str(
        "\n[[local_mqtt.subscriptions]]\ntopic = \"lifts/+/status\"\nformat = \"lift-box\"\n",
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &cfg_text).unwrap();
    let cfg = load(&path).unwrap_or_else(|p| panic!("{p}\n{cfg_text}"));
    let p = cfg.platform.as_ref().unwrap();
    assert_eq!(p.host, "platform.example.cn");
    assert_eq!(p.tls.as_ref().unwrap().ca_file, tls.join("platform-ca.pem"));
    let s = cfg
        .local_mqtt
        .as_ref()
        .unwrap()
        .subscriptions
        .last()
        .unwrap()
        .clone();
    let d = decoder(&cfg, &s)
        .decode(
            "lifts/el-12-1/status",
            br#"{"msgType":"status","time":"20261102080011","floor":3,"speed":150,"err":12}"#,
            RECEIVED,
        )
        .unwrap()
        .unwrap();
    assert_eq!(d.event.device, "el-12-1");
    assert_eq!(d.event.ts, ts("2026-11-02T08:00:11+08:00"));
    let EventBody::Elevator(e) = d.event.body else {
        panic!()
    };
    assert_eq!(
        (e.floor, e.speed, e.fault_code),
        (Some(3), Some(1.5), Some(12))
    );
}

#[test]
fn elevator_mapping_reads_a_fault_bitmap() {
    let cfg = community_gateway::config::load_str(
        r#"
compound = "c1"
[[devices]]
id = "lift-1"
kind = "elevator"
building = "1"
[mappings.box]
kind = { value = "elevator" }
device = { topic_level = 1 }
floor = "/f"
fault_bits = "/bits"
[local_mqtt]
[[local_mqtt.subscriptions]]
topic = "lift/+/state"
format = "box"
"#,
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let sub = &cfg.local_mqtt.as_ref().unwrap().subscriptions[0];
    let d = community_gateway::sources::mapping::SubscriptionDecoder::new(sub, &cfg).unwrap();
    let decoded = d
        .decode(
            "lift/lift-1/state",
            br#"{"f":-1,"bits":9}"#,
            1_793_577_600_000,
        )
        .unwrap()
        .unwrap();
    match decoded.event.body {
        community_gateway::event::EventBody::Elevator(s) => {
            assert_eq!(s.floor, Some(-1));
            assert_eq!(s.fault_bits, Some(9));
        }
        other => panic!("not an elevator event: {other:?}"),
    }
}
