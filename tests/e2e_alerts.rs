//! Acceptance: door events published to the local broker, canonical and in
//! each vendor preset's shape, come out as alerts on the platform broker's
//! alerts topic over mutual TLS.

mod support;

use serde_json::Value;
use support::events::{self, access, door, topic};
use support::{has, of, secs, Env, Gateway, Subscription};

fn online(v: &Value) -> bool {
    v["state"] == "online"
}

#[test]
fn canonical_events_raise_alerts_on_the_platform_over_mutual_tls() {
    let env = Env::new();
    let sub = env.subscriber();
    let mut cfg = env.config();
    cfg.rules = "[rules.denied_burst]\ncount = 2\n".into();
    let mut gw = Gateway::start(cfg);
    let mut dev = env.publisher();

    // denied_burst: two refusals at door-1.
    dev.publish_json(&topic("door-1"), &access("door-1", "X-1", false, "in"));
    dev.publish_json(&topic("door-1"), &access("door-1", "X-2", false, "in"));
    // door_forced at door-2.
    dev.publish_json(&topic("door-2"), &door("door-2", "forced"));
    // card_sharing: R-1's card let in at both perimeter gates within the window.
    dev.publish_json(
        &topic("gate-north"),
        &access("gate-north", "C-1001", true, "in"),
    );
    dev.publish_json(
        &topic("gate-south"),
        &access("gate-south", "C-1001", true, "in"),
    );

    let all = sub
        .wait_for(
            |a| {
                has(a, "denied_burst", "door-1", "raised")
                    && has(a, "door_forced", "door-2", "raised")
                    && has(a, "card_sharing", "R-1", "raised")
            },
            secs(20),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    gw.wait_ready(secs(5)).unwrap();

    let burst = of(&all, "denied_burst", "door-1")[0];
    assert_eq!(burst["revision"], 1);
    assert_eq!(burst["compound"], "e2e-1");
    assert_eq!(burst["subject"]["kind"], "device");
    assert_eq!(burst["location"]["building"], "1");
    assert!(!burst["alert_id"].as_str().unwrap_or("").is_empty());
    let forced = of(&all, "door_forced", "door-2")[0].clone();
    assert_eq!(forced["severity"], "high");
    assert_eq!(
        of(&all, "card_sharing", "R-1")[0]["subject"]["kind"],
        "resident"
    );

    // The door closes: the same alert, next revision.
    dev.publish_json(&topic("door-2"), &door("door-2", "closed"));
    let all = sub
        .wait_for(|a| has(a, "door_forced", "door-2", "cleared"), secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    let cleared = of(&all, "door_forced", "door-2")
        .into_iter()
        .find(|a| a["state"] == "cleared")
        .unwrap();
    assert_eq!(cleared["alert_id"], forced["alert_id"]);
    assert_eq!(cleared["revision"], 2);

    // The gateway announced itself on the status topic, retained: a
    // platform client connecting now still gets it.
    sub.wait_for_status(online, secs(5)).unwrap();
    let late = env.subscriber();
    let status = late.wait_for_status(online, secs(5)).unwrap();
    assert_eq!(status["compound"], "e2e-1");
    assert!(late
        .messages()
        .iter()
        .any(|m| m.topic == late.status_topic() && m.retain));
    assert!(gw.is_running());
}

/// The vendor presets, with devices found by the names they report
/// (`aliases`) or fixed per subscription (`device`).
#[test]
fn vendor_presets_hikvision_dahua_uhppoted_raise_alerts() {
    let env = Env::new();
    let sub = env.subscriber();
    let mut cfg = env.config();
    cfg.devices = cfg
        .devices
        .replace(
            "id = \"hik-door\"\n",
            &format!(
                "id = \"hik-door\"\naliases = [\"{}\"]\n",
                events::HIKVISION_DEVICE_NAME
            ),
        )
        .replace(
            "id = \"dahua-door\"\n",
            &format!(
                "id = \"dahua-door\"\naliases = [\"{}\"]\n",
                events::DAHUA_SERIAL
            ),
        );
    cfg.subscriptions = vec![
        Subscription::canonical("e2e/canonical/#"),
        Subscription {
            device: None,
            ..Subscription::preset("e2e/hikvision", "hikvision", "-")
        },
        Subscription {
            device: None,
            ..Subscription::preset("DahuaVTO/AccessControl/Event", "dahua", "-")
        },
        Subscription::preset("e2e/uhppoted", "uhppoted", "uhppoted-door"),
    ];
    cfg.rules = "[rules.denied_burst]\ncount = 2\n".into();
    let _gw = Gateway::start(cfg);
    let mut dev = env.publisher();

    // Hikvision: minor 6 = no permission (twice), 27 = door forced open.
    dev.publish_json("e2e/hikvision", &events::hikvision(6, "9990001"));
    dev.publish_json("e2e/hikvision", &events::hikvision(6, "9990002"));
    dev.publish_json("e2e/hikvision", &events::hikvision(27, ""));
    // Dahua: Status 0 = refused (twice).
    dev.publish_json(
        "DahuaVTO/AccessControl/Event",
        &events::dahua(0, "B0000001", "Entry"),
    );
    dev.publish_json(
        "DahuaVTO/AccessControl/Event",
        &events::dahua(0, "B0000002", "Entry"),
    );
    // uhppoted: access-granted false (twice).
    dev.publish_json("e2e/uhppoted", &events::uhppoted(false, 11111, 1));
    dev.publish_json("e2e/uhppoted", &events::uhppoted(false, 22222, 1));

    sub.wait_for(
        |a| {
            has(a, "denied_burst", "hik-door", "raised")
                && has(a, "door_forced", "hik-door", "raised")
                && has(a, "denied_burst", "dahua-door", "raised")
                && has(a, "denied_burst", "uhppoted-door", "raised")
        },
        secs(20),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
