//! Acceptance: commands from the platform (`community/{compound}/commands`):
//! `ack` stops escalation, `away` suppresses inactivity.

mod support;

use serde_json::{json, Value};
use support::events::{access, door, topic};
use support::{has, of, secs, Env, Gateway};

fn ts(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{v}: {e}"))
}

#[test]
fn ack_from_the_platform_stops_escalation() {
    let env = Env::new();
    let sub = env.subscriber();
    let mut cfg = env.config();
    cfg.rules = "[rules.door_forced]\nseverity = \"low\"\nescalate_after = \"2s\"\n".into();
    let gw = Gateway::start(cfg);
    let mut dev = env.publisher();

    dev.publish_json(&topic("door-1"), &door("door-1", "forced"));
    dev.publish_json(&topic("door-2"), &door("door-2", "forced"));
    let all = sub
        .wait_for(
            |a| {
                has(a, "door_forced", "door-1", "raised")
                    && has(a, "door_forced", "door-2", "raised")
            },
            secs(20),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let acked = of(&all, "door_forced", "door-1")[0]["alert_id"].clone();
    sub.command(&json!({"command": "ack", "alert_id": acked, "by": "grid-worker-7"}));

    // door-2, not acknowledged, escalates twice (low -> medium -> high) ...
    let all = sub
        .wait_for(
            |a| {
                of(a, "door_forced", "door-2")
                    .iter()
                    .filter(|t| t["state"] == "escalated")
                    .count()
                    >= 2
            },
            secs(15),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    // ... while door-1, acknowledged before its first deadline, does not.
    let door1 = of(&all, "door_forced", "door-1");
    assert!(
        door1.iter().all(|t| t["state"] != "escalated"),
        "the acknowledged alert escalated:\n{}",
        support::brief(&all)
    );
    let escalated: Vec<&Value> = of(&all, "door_forced", "door-2")
        .into_iter()
        .filter(|t| t["state"] == "escalated")
        .collect();
    assert_eq!(escalated[0]["severity"], "medium");
    assert_eq!(escalated[1]["severity"], "high");

    // The admin endpoint lists both open alerts (built by the daemon's loop
    // when asked), door-2 at its latest revision.
    let (status, body) = gw.get("/alerts").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 200, "{body}");
    let open: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(open.len(), 2, "{body}");
    assert!(open.iter().any(|t| t["alert_id"] == acked), "{body}");
    let door2 = open
        .iter()
        .find(|t| t["subject"]["id"] == "door-2")
        .unwrap();
    assert!(door2["revision"].as_u64().unwrap() >= 3, "{body}");

    // Clearing still works for the acknowledged alert, as its next revision.
    dev.publish_json(&topic("door-1"), &door("door-1", "closed"));
    let all = sub
        .wait_for(|a| has(a, "door_forced", "door-1", "cleared"), secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    let cleared = of(&all, "door_forced", "door-1")
        .into_iter()
        .find(|t| t["state"] == "cleared")
        .unwrap();
    assert_eq!(cleared["alert_id"], acked);
    assert_eq!(cleared["revision"], 2);
}

#[test]
fn away_from_the_platform_suppresses_inactivity() {
    let env = Env::new();
    let sub = env.subscriber();
    let mut cfg = env.config();
    cfg.roster = Some(
        "resident_id,building,unit,room,grid,credentials,watch\n\
         R-AWAY,1,1,101,G-1,C-AWAY,yes\n\
         R-HOME,1,1,102,G-1,C-HOME,yes\n"
            .into(),
    );
    cfg.rules = "[rules.elderly_inactivity]\nafter = \"3s\"\n".into();
    let gw = Gateway::start(cfg);
    let mut dev = env.publisher();

    // The gateway subscribes to commands before it announces itself online.
    sub.wait_for_status(|v| v["state"] == "online", secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    let until = (support::events::local_now() + chrono::Duration::hours(2)).to_rfc3339();
    sub.command(&json!({"command": "away", "resident_id": "R-AWAY", "until": until}));
    gw.wait_metric("cg_commands_total", |n| n >= 1.0, secs(10))
        .unwrap_or_else(|e| panic!("the away command was not taken: {e}"));
    let away_sent = support::events::local_now();

    // Both badge in: each one's inactivity deadline is now + 3 s.
    dev.publish_json(&topic("door-1"), &access("door-1", "C-AWAY", true, "in"));
    // (R-AWAY strictly first: its deadline comes first.)
    std::thread::sleep(std::time::Duration::from_millis(20));
    dev.publish_json(&topic("door-1"), &access("door-1", "C-HOME", true, "in"));

    let all = sub
        .wait_for(
            |a| {
                of(a, "elderly_inactivity", "R-HOME")
                    .iter()
                    .any(|t| t["state"] == "raised" && ts(&t["at"]) > away_sent)
            },
            secs(15),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    // R-AWAY badged in first, so its deadline (had it no absence) came
    // before R-HOME's: timers fire in deadline order and the outbox is
    // delivered in order, so its raise would have arrived by now.
    let away_raises: Vec<&Value> = of(&all, "elderly_inactivity", "R-AWAY")
        .into_iter()
        .filter(|t| t["state"] == "raised" && ts(&t["at"]) > away_sent)
        .collect();
    assert!(
        away_raises.is_empty(),
        "inactivity raised for a resident away:\n{}",
        support::brief(&all)
    );
}
