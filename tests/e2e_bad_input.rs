//! Acceptance: bad input on the local broker (malformed JSON, wrong types,
//! missing fields, oversized payloads, bytes that are not UTF-8, events of
//! undeclared devices) is counted in /metrics and logged, never stops the
//! gateway, and good events after it are processed.

mod support;

use serde_json::json;
use support::events::{door, topic};
use support::gateway::sum_of;
use support::{has, secs, Env, Gateway};

#[test]
fn bad_messages_are_counted_and_logged_and_good_ones_after_them_processed() {
    let env = Env::new();
    let sub = env.subscriber();
    let mut cfg = env.config();
    cfg.local_extra = "max_payload = 4096\n".into();
    let mut gw = Gateway::start(cfg);
    gw.wait_ready(secs(20)).unwrap_or_else(|e| panic!("{e}"));
    let mut dev = env.publisher();

    let bad_topic = "e2e/canonical/bad-controller";
    // Not JSON.
    dev.publish(bad_topic, "{\"type\":\"door\",\"device\":\"door-1\",");
    // Wrong types.
    dev.publish_json(
        bad_topic,
        &json!({"type": "access", "device": "door-1", "credential": 1234, "granted": "yes"}),
    );
    // A required field missing.
    dev.publish_json(bad_topic, &json!({"type": "door", "device": "door-1"}));
    // Larger than local_mqtt.max_payload (a valid event, padded).
    dev.publish_json(
        bad_topic,
        &json!({"type": "door", "device": "door-1", "state": "forced", "pad": "x".repeat(8000)}),
    );
    // Not UTF-8.
    dev.publish(bad_topic, vec![0xff, 0xfe, 0x00, 0x80]);
    let rejected = 5.0;
    // An undeclared device: processed, and counted as such.
    dev.publish_json(&topic("ghost-door"), &door("ghost-door", "forced"));
    // A good event after all that.
    dev.publish_json(&topic("door-2"), &door("door-2", "forced"));

    let all = sub
        .wait_for(|a| has(a, "door_forced", "door-2", "raised"), secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        has(&all, "door_forced", "ghost-door", "raised"),
        "events of undeclared devices are still processed:\n{}",
        support::brief(&all)
    );
    // The oversized door-1 event was not applied.
    assert!(
        !has(&all, "door_forced", "door-1", "raised"),
        "{}",
        support::brief(&all)
    );

    let m = gw.metrics().unwrap_or_else(|e| panic!("{e}"));
    let text = format!("{m:#?}");
    assert_eq!(sum_of(&m, "cg_events_rejected_total"), rejected, "{text}");
    assert!(
        m.get("cg_events_rejected_total{reason=\"invalid_json\"}")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert!(
        sum_of(&m, "cg_events_undeclared_device_total") >= 1.0,
        "{text}"
    );
    assert!(sum_of(&m, "cg_events_processed_total") >= 2.0, "{text}");

    // Rejections are logged naming the topic.
    let log = gw.log();
    let lines = log.lines().filter(|l| l.contains(bad_topic)).count();
    assert!(
        lines >= 1,
        "no log line names {bad_topic}:\n{}",
        gw.log_tail(40)
    );
    assert!(gw.is_running(), "{}", gw.log_tail(40));
    gw.wait_ready(secs(1)).unwrap_or_else(|e| panic!("{e}"));
}
