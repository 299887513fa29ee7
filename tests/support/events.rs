//! Payloads devices publish: canonical events (SPEC §2) stamped with the
//! current time, and the vendor shapes of `shared/samples/` with their
//! timestamps refreshed.

use super::now_ts;
use serde_json::{json, Value};

/// Topic a canonical event for `device` is published on in the default
/// test configuration (subscription `e2e/canonical/#`).
pub fn topic(device: &str) -> String {
    format!("e2e/canonical/{device}")
}

pub fn access(device: &str, credential: &str, granted: bool, direction: &str) -> Value {
    json!({
        "type": "access",
        "ts": now_ts(),
        "device": device,
        "credential": credential,
        "granted": granted,
        "direction": direction,
    })
}

pub fn door(device: &str, state: &str) -> Value {
    json!({"type": "door", "ts": now_ts(), "device": device, "state": state})
}

/// The current time in the compound's zone (+08:00).
pub fn local_now() -> chrono::DateTime<chrono::FixedOffset> {
    chrono::Utc::now().with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap())
}

/// `shared/samples/hikvision-isapi-access.json` with `subEventType` and
/// `cardNo` replaced and `dateTime` set to now.
pub fn hikvision(sub_event_type: u32, card: &str) -> Value {
    let mut v: Value = serde_json::from_str(HIKVISION_SAMPLE).unwrap();
    v["dateTime"] = json!(local_now().format("%Y-%m-%dT%H:%M:%S+08:00").to_string());
    v["AccessControllerEvent"]["subEventType"] = json!(sub_event_type);
    v["AccessControllerEvent"]["cardNo"] = json!(card);
    v
}

/// `shared/samples/dahua-vto2mqtt-access.json` with `Status`, `CardNo` and
/// `Type` replaced and `UTC` / `LocaleTime` set to now.
pub fn dahua(status: u8, card: &str, kind: &str) -> Value {
    let mut v: Value = serde_json::from_str(DAHUA_SAMPLE).unwrap();
    let local = local_now();
    v["Data"]["UTC"] = json!(local.timestamp());
    v["Data"]["LocaleTime"] = json!(local.format("%Y-%m-%d %H:%M:%S").to_string());
    v["Data"]["Status"] = json!(status);
    v["Data"]["CardNo"] = json!(card);
    v["Data"]["Type"] = json!(kind);
    v
}

/// `shared/samples/uhppoted-mqtt-event.json` with `access-granted`,
/// `card-number` and `direction` replaced and `timestamp` set to now.
pub fn uhppoted(granted: bool, card: u64, direction: u8) -> Value {
    let mut v: Value = serde_json::from_str(UHPPOTED_SAMPLE).unwrap();
    let local = local_now();
    v["timestamp"] = json!(format!("{} CST", local.format("%Y-%m-%d %H:%M:%S")));
    v["access-granted"] = json!(granted);
    v["card-number"] = json!(card);
    v["direction"] = json!(direction);
    v["direction-text"] = json!(if direction == 2 { "out" } else { "in" });
    v
}

/// Device names the vendor samples report themselves by.
pub const HIKVISION_DEVICE_NAME: &str = "12-1-entrance";
pub const DAHUA_SERIAL: &str = "8L0A1B2PAZ8C3D4";

pub const HIKVISION_SAMPLE: &str = r#"{"ipAddress":"192.0.2.41","portNo":80,"protocol":"HTTP","dateTime":"2026-11-02T07:58:12+08:00","activePostCount":1,"eventType":"AccessControllerEvent","eventState":"active","eventDescription":"Access Controller Event","AccessControllerEvent":{"deviceName":"12-1-entrance","majorEventType":5,"subEventType":1,"name":"","cardReaderKind":1,"cardReaderNo":1,"verifyNo":201,"employeeNoString":"R-0312","cardNo":"3285011022","serialNo":25523,"userType":"normal","currentVerifyMode":"cardOrFaceOrFp","attendanceStatus":"undefined","mask":"no"}}"#;

pub const DAHUA_SAMPLE: &str = r#"{"Action":"Pulse","Code":"AccessControl","Data":{"CardNo":"A3F09C21","CardType":null,"LocaleTime":"2026-11-02 07:58:12","Method":1,"Name":"OpenDoor","Password":"","ReaderID":"1","RecNo":691,"SnapPath":"/mnt/appdata1/userpic/SnapShot/2026-11-02/075812.jpg","Status":1,"Type":"Entry","UTC":1793577492,"UserID":"R-0312","UserType":null},"Index":0,"deviceType":"VTO2202F","serialNumber":"8L0A1B2PAZ8C3D4"}"#;

pub const UHPPOTED_SAMPLE: &str = r#"{"device-id":405419896,"event-id":50,"event-type":1,"event-type-text":"card swipe","door-id":2,"card-number":8165538,"access-granted":true,"direction":1,"direction-text":"in","event-reason":1,"event-reason-text":"swipe","timestamp":"2026-11-02 07:58:12 CST"}"#;
