//! Self-tests of the end-to-end infrastructure in `tests/support/`: they need
//! no gateway process, and run against the broker backend chosen by
//! `CG_TEST_BROKER` (`rumqttd` by default, `mosquitto` in CI).

mod support;

use serde_json::json;
use std::time::Duration;
use support::mqtt::{try_connect_tls, Listener};
use support::{
    port_open, secs, Certs, GatewayConfig, LocalBroker, PlatformBroker, Publisher, Subscriber,
};

const T: Duration = Duration::from_secs(10);

#[test]
fn platform_broker_requires_a_client_certificate_signed_by_the_ca() {
    let certs = Certs::generate();
    let platform = PlatformBroker::new(&certs);
    let port = platform.port();

    try_connect_tls(port, &certs.ca, Some(&certs.subscriber), T)
        .unwrap_or_else(|e| panic!("subscriber certificate refused: {e}\n{}", platform.log()));
    try_connect_tls(port, &certs.ca, Some(&certs.gateway), T)
        .unwrap_or_else(|e| panic!("gateway certificate refused: {e}\n{}", platform.log()));

    let none = try_connect_tls(port, &certs.ca, None, T);
    eprintln!("without a client certificate: {none:?}");
    assert!(none.is_err(), "connected without a client certificate");
    let rogue = try_connect_tls(port, &certs.ca, Some(&certs.rogue_client), T);
    eprintln!("with a client certificate of another CA: {rogue:?}");
    assert!(
        rogue.is_err(),
        "connected with a client certificate of another CA"
    );
    eprintln!("broker: {:?}", platform.tls_failures());
    // The client side checks the broker too.
    let untrusted = try_connect_tls(port, &certs.rogue_ca, Some(&certs.subscriber), T);
    let e = untrusted.expect_err("a client trusting only the rogue CA accepted the platform");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
}

#[test]
fn rogue_platform_presents_a_certificate_the_ca_did_not_sign() {
    let certs = Certs::generate();
    let rogue = PlatformBroker::rogue(&certs);
    let e = try_connect_tls(rogue.port(), &certs.ca, Some(&certs.gateway), T)
        .expect_err("a client trusting the platform CA accepted the rogue broker");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // Someone who trusts the rogue CA can watch it.
    assert_eq!(rogue.ca, certs.rogue_ca);
    Subscriber::connect_with(rogue.port(), &rogue.ca, &certs.subscriber, "e2e-1")
        .unwrap_or_else(|e| panic!("watching the rogue broker: {e}\n{}", rogue.log()));
}

#[test]
fn platform_broker_stops_and_starts_on_the_same_port_keeping_subscriptions() {
    let certs = Certs::generate();
    let mut platform = PlatformBroker::new(&certs);
    let port = platform.port();
    let sub = Subscriber::connect(port, &certs, "e2e-1").unwrap();
    let other = Subscriber::connect(port, &certs, "e2e-1").unwrap();

    other.command(&json!({"n": 1}));
    sub.wait_for(|_| true, T).unwrap();
    support::wait_until(T, "first message", || {
        (sub.messages().len() == 1).then_some(())
    })
    .unwrap();

    platform.stop();
    assert!(!port_open(port), "port {port} still open after stop()");
    let down = try_connect_tls(port, &certs.ca, Some(&certs.subscriber), secs(3));
    assert!(down.is_err(), "connected while stopped");

    platform.start();
    assert!(port_open(port), "port {port} closed after start()");
    // Whoever reconnects first, the subscriber's persistent session holds
    // its subscription, so nothing published after the restart is missed.
    support::wait_until(T, "the publisher to reconnect", || {
        (other.connections() >= 2).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", other.last_error()));
    other.command(&json!({"n": 2}));
    support::wait_until(T, "the message published after the restart", || {
        (sub.messages().len() == 2).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}; last error {}\n{}",
            sub.messages(),
            sub.last_error(),
            platform.log()
        )
    });
    assert!(sub.connections() >= 2);
    let last: serde_json::Value = serde_json::from_slice(&sub.messages()[1].payload).unwrap();
    assert_eq!(last, json!({"n": 2}));
}

#[test]
fn local_broker_queues_qos1_messages_for_an_offline_persistent_session() {
    let local = LocalBroker::new();
    let id = "community-gateway-selftest";
    let first = Listener::connect(local.port(), id, false, "e2e/canonical/#").unwrap();
    first.disconnect();

    let n = 1200;
    let mut publisher = Publisher::connect(local.port()).unwrap();
    for i in 0..n {
        publisher.send(&format!("e2e/canonical/dev-{}", i % 7), format!("{i}"));
    }
    publisher.flush(secs(20));

    let again = Listener::connect(local.port(), id, false, "e2e/canonical/#").unwrap();
    let got = again
        .wait_count(n, secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", local.log()));
    let mut seen: Vec<usize> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).parse().unwrap())
        .collect();
    // In order per topic (QoS 1 order guarantee), every message present.
    for topic in 0..7 {
        let per: Vec<usize> = seen.iter().copied().filter(|i| i % 7 == topic).collect();
        let mut sorted = per.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(per.len(), sorted.len(), "duplicates on dev-{topic}");
        assert_eq!(per, sorted, "out of order on dev-{topic}");
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (0..n).collect::<Vec<_>>());
}

#[test]
fn local_broker_stops_and_starts_on_the_same_port() {
    let mut local = LocalBroker::new();
    let port = local.port();
    let listener = Listener::connect(port, "selftest-watch", false, "e2e/#").unwrap();
    let mut publisher = Publisher::connect(port).unwrap();
    publisher.publish("e2e/a", "1");
    listener.wait_count(1, T).unwrap();

    local.stop();
    assert!(!port_open(port));
    local.start();
    assert!(port_open(port));
    // Both clients reconnect by themselves.
    publisher.publish("e2e/a", "2");
    listener
        .wait_count(2, T)
        .unwrap_or_else(|e| panic!("{e}\n{}", local.log()));
}

#[test]
fn generated_gateway_configuration_passes_check() {
    let certs = Certs::generate();
    let local = LocalBroker::new();
    let platform = PlatformBroker::new(&certs);
    let mut cfg = GatewayConfig::new("e2e-1", &local, &platform, &certs);
    cfg.rules =
        "[rules.denied_burst]\ncount = 2\n\n[rules.elderly_inactivity]\nafter = \"2s\"\n".into();
    cfg.local_extra = "max_payload = 4096\n".into();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("residents.csv"),
        cfg.roster.as_ref().unwrap(),
    )
    .unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, cfg.render(&dir.path().join("store"), 9999)).unwrap();

    let loaded = community_gateway::config::load(&path)
        .unwrap_or_else(|p| panic!("{p}\n{}", std::fs::read_to_string(&path).unwrap()));
    let lm = loaded.local_mqtt.as_ref().unwrap();
    assert_eq!(lm.port, local.port());
    assert_eq!(lm.max_payload, 4096);
    assert_eq!(lm.subscriptions.len(), 4);
    let p = loaded.platform.as_ref().unwrap();
    assert_eq!(p.port, platform.port());
    assert_eq!(p.tls.as_ref().unwrap().ca_file, certs.ca);
    assert_eq!(loaded.admin.listen, "127.0.0.1:9999");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_community-gateway"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
}

#[test]
fn metrics_text_is_parsed_into_series() {
    let m = support::gateway::parse_metrics(
        "# HELP cg_events_processed_total Events.\n# TYPE cg_events_processed_total counter\n\
         cg_events_processed_total 12\n\
         cg_events_rejected_total{reason=\"invalid_json\"} 2\n\
         cg_events_rejected_total{reason=\"too large\",topic=\"a b\"} 1 1700000000000\n",
    );
    assert_eq!(m["cg_events_processed_total"], 12.0);
    assert_eq!(m["cg_events_rejected_total{reason=\"invalid_json\"}"], 2.0);
    assert_eq!(
        support::gateway::sum_of(&m, "cg_events_rejected_total"),
        3.0
    );
    assert_eq!(support::gateway::sum_of(&m, "cg_events"), 0.0);
}
