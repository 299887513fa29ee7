//! Acceptance: the delivery guarantee (SPEC §6). Alert transitions survive a
//! platform outage, a platform impostor and repeated SIGKILLs of the gateway;
//! each alert's transitions arrive in order; duplicates, if any, are exact
//! copies (same `alert_id` and `revision`).

mod support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use support::events::{door, topic};
use support::gateway::PlatformTarget;
use support::{has, of, revisions_by_alert, secs, Env, Gateway, PlatformBroker, Subscriber};

/// `n` extra access devices `kd-<prefix>-<i>` (building 9).
fn devices(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "\n[[devices]]\nid = \"kd-{prefix}-{i}\"\nkind = \"access\"\nbuilding = \"9\"\n"
            )
        })
        .collect()
}

/// The fields that say which transition a message is: copies sharing
/// (`alert_id`, `revision`) must agree on them.
const IDENTITY: [&str; 6] = ["rule", "subject", "state", "severity", "since", "compound"];

/// Checks the transitions of `door_forced` for each of `devices`: exactly
/// one alert per device (a re-raise under a new `alert_id` would stay open
/// on the platform forever), revisions 1 (raised) and 2 (cleared) present,
/// first arrivals in increasing revision order, duplicates the same
/// transition.
fn check_forced_and_cleared(all: &[Value], devices: &[String]) {
    let text = support::brief(all);
    let mut copies: BTreeMap<(String, u64), &Value> = BTreeMap::new();
    for a in all {
        let key = (
            a["alert_id"].as_str().unwrap_or_default().to_string(),
            a["revision"].as_u64().unwrap_or_default(),
        );
        if let Some(first) = copies.get(&key) {
            for field in IDENTITY {
                assert_eq!(
                    first[field], a[field],
                    "two different transitions share {key:?}:\n{first}\n{a}\n{text}"
                );
            }
            if first["at"] != a["at"] {
                eprintln!(
                    "note: copies of {key:?} differ in `at`: {} / {}",
                    first["at"], a["at"]
                );
            }
        } else {
            copies.insert(key, a);
        }
    }
    let order = revisions_by_alert(all);
    for (id, revs) in &order {
        let mut sorted = revs.clone();
        sorted.sort_unstable();
        assert_eq!(revs, &sorted, "alert {id} arrived out of order:\n{text}");
    }
    for d in devices {
        let ts = of(all, "door_forced", d);
        let ids: BTreeSet<&str> = ts.iter().filter_map(|t| t["alert_id"].as_str()).collect();
        assert_eq!(
            ids.len(),
            1,
            "{d}: expected one alert, got {ids:?}:\n{text}"
        );
        let id = *ids.iter().next().unwrap();
        assert_eq!(order[id], vec![1, 2], "{d}: revisions:\n{text}");
        assert!(has(all, "door_forced", d, "raised") && has(all, "door_forced", d, "cleared"));
    }
}

fn all_forced_and_cleared(devices: &[String]) -> impl Fn(&[Value]) -> bool + '_ {
    move |a: &[Value]| {
        devices
            .iter()
            .all(|d| has(a, "door_forced", d, "raised") && has(a, "door_forced", d, "cleared"))
    }
}

#[test]
fn alerts_raised_during_a_platform_outage_arrive_in_order_after_it() {
    let mut env = Env::new();
    let sub = env.subscriber();
    let mut cfg = env.config();
    cfg.devices.push_str(&devices("o", 4));
    let gw = Gateway::start(cfg);
    let mut dev = env.publisher();
    let kd: Vec<String> = (0..4).map(|i| format!("kd-o-{i}")).collect();

    // Connected: the first raise goes straight through.
    dev.publish_json(&topic(&kd[0]), &door(&kd[0], "forced"));
    sub.wait_for(|a| has(a, "door_forced", &kd[0], "raised"), secs(20))
        .unwrap_or_else(|e| panic!("{e}"));

    env.platform.stop();
    dev.publish_json(&topic(&kd[0]), &door(&kd[0], "closed"));
    for d in &kd[1..] {
        dev.publish_json(&topic(d), &door(d, "forced"));
    }
    for d in &kd[1..] {
        dev.publish_json(&topic(d), &door(d, "closed"));
    }
    // All seven transitions wait in the outbox while the platform is away.
    gw.wait_metric("cg_outbox_entries", |n| n >= 7.0, secs(10))
        .unwrap_or_else(|e| panic!("{e}"));

    env.platform.start();
    let all = sub
        .wait_for(all_forced_and_cleared(&kd), secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", env.platform.log()));
    check_forced_and_cleared(&all, &kd);
    gw.wait_metric("cg_outbox_entries", |n| n == 0.0, secs(10))
        .unwrap_or_else(|e| panic!("the outbox did not empty: {e}"));
}

#[test]
fn a_platform_with_a_certificate_of_another_ca_is_refused_and_nothing_is_lost() {
    let env = Env::new();
    let rogue = PlatformBroker::rogue(&env.certs);
    // Someone trusting the rogue CA watches what reaches the impostor.
    let watcher = Subscriber::connect_with(
        rogue.port(),
        &rogue.ca,
        &env.certs.subscriber,
        &env.compound,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let sub = env.subscriber();
    let mut cfg = env.config();
    // The gateway trusts the platform CA only, and is pointed at the impostor.
    cfg.platform = Some(PlatformTarget::new(&rogue, &env.certs));
    let mut gw = Gateway::start(cfg.clone());
    let mut dev = env.publisher();

    dev.publish_json(&topic("door-1"), &door("door-1", "forced"));
    let line = gw
        .wait_log(|l| l.to_lowercase().contains("certificate"), secs(20))
        .unwrap_or_else(|e| panic!("no log line about the certificate: {e}"));
    eprintln!("refusal logged as: {line}");
    gw.wait_metric("cg_outbox_entries", |n| n >= 1.0, secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(gw.is_running(), "{}", gw.log_tail(40));
    assert!(
        watcher.messages().is_empty(),
        "the impostor received: {:?}",
        watcher.messages()
    );

    // Pointed at the real platform, it delivers what it kept.
    let status = gw.terminate().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0), "{}", gw.log_tail(40));
    cfg.platform = Some(PlatformTarget::new(&env.platform, &env.certs));
    gw.set_config(cfg);
    gw.spawn();
    sub.wait_for(|a| has(a, "door_forced", "door-1", "raised"), secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(watcher.messages().is_empty(), "{:?}", watcher.messages());
}

#[test]
fn every_transition_arrives_despite_repeated_sigkill() {
    let env = Env::new();
    let sub = env.subscriber();
    let mut cfg = env.config();
    let cycles = 10;
    let per = 10;
    cfg.devices.push_str(&devices("k", cycles * per));
    let mut gw = Gateway::start(cfg);
    let mut dev = env.publisher();
    let mut expected = Vec::new();

    for c in 0..cycles {
        gw.wait_ready(secs(20)).unwrap_or_else(|e| panic!("{e}"));
        let batch: Vec<String> = (0..per).map(|i| format!("kd-k-{}", c * per + i)).collect();
        // Doors forced while the gateway runs ...
        for d in &batch {
            dev.send(&topic(d), door(d, "forced").to_string());
        }
        // ... killed at a different point of its work each time ...
        std::thread::sleep(std::time::Duration::from_millis((c as u64 * 7) % 40));
        gw.kill9();
        dev.flush(secs(10));
        // ... and closed while it is down.
        for d in &batch {
            dev.send(&topic(d), door(d, "closed").to_string());
        }
        dev.flush(secs(10));
        gw.spawn();
        expected.extend(batch);
    }

    let all = sub
        .wait_for(all_forced_and_cleared(&expected), secs(45))
        .unwrap_or_else(|e| panic!("{e}\n--- gateway log:\n{}", gw.log_tail(80)));
    check_forced_and_cleared(&all, &expected);
}
