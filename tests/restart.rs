//! Restart: rule state persisted in the store survives the engine; no
//! pending deadline is forgotten and no open alert is raised twice.

mod common;

use common::{briefs, engine, ts};
use community_gateway::engine::Engine;
use community_gateway::event::decode;
use community_gateway::store::Store;

const CONFIG: &str = r#"
compound = "c1"
[[devices]]
id = "door-1"
kind = "access"
building = "1"
"#;

const ROSTER: &str =
    "resident_id,building,unit,room,credentials,watch\nR-1,1,1,101,C1,yes\nR-2,1,1,102,C2,yes\n";

fn commit(
    engine: &mut Engine,
    store: &Store,
    transitions: &[community_gateway::alert::AlertTransition],
) {
    let changes = engine.take_changes();
    store.commit(&changes, transitions).unwrap();
}

fn reopen(path: &std::path::Path) -> (Engine, Store) {
    let store = Store::open(path, 1 << 20, 0).unwrap();
    let mut e = engine(CONFIG, ROSTER);
    e.track_changes(true);
    assert_eq!(e.restore(store.load_state().unwrap()), 0);
    (e, store)
}

#[test]
fn pending_inactivity_deadline_survives_restart_and_fires_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let start = ts("2026-11-02T08:00:00+08:00");
    {
        let store = Store::open(&path, 1 << 20, 0).unwrap();
        let mut e = engine(CONFIG, ROSTER);
        e.track_changes(true);
        let mut out = vec![];
        e.start(start, &mut out);
        let line = r#"{"type":"access","ts":"2026-11-02T10:05:00+08:00","device":"door-1","credential":"C1","granted":true,"direction":"in"}"#;
        e.handle(&decode(line, None).unwrap(), &mut out);
        let line = r#"{"type":"access","ts":"2026-11-02T10:06:00+08:00","device":"door-1","credential":"C2","granted":true,"direction":"in"}"#;
        e.handle(&decode(line, None).unwrap(), &mut out);
        assert!(out.is_empty());
        commit(&mut e, &store, &out);
    } // engine dropped: the process is gone

    // Restart an hour later and advance past the original deadline.
    let (mut e, store) = reopen(&path);
    let mut out = vec![];
    e.start(ts("2026-11-02T11:00:00+08:00"), &mut out);
    e.advance_to(ts("2026-11-03T10:04:59+08:00"), &mut out);
    assert!(
        out.is_empty(),
        "nothing before the deadline: {:?}",
        briefs(&out)
    );
    e.advance_to(ts("2026-11-03T10:05:30+08:00"), &mut out);
    assert_eq!(
        briefs(&out),
        vec!["elderly_inactivity raised R-1 2026-11-03T10:05:00+08:00 medium"],
        "exactly one alert, at the original deadline"
    );
    let raised = out[0].clone();
    commit(&mut e, &store, &out);
    drop((e, store));

    // Restart again: the open alert is remembered and not raised twice; the
    // second resident's deadline still fires at its own time.
    let (mut e, _store) = reopen(&path);
    let mut out = vec![];
    e.start(ts("2026-11-03T10:05:40+08:00"), &mut out);
    e.advance_to(ts("2026-11-03T12:00:00+08:00"), &mut out);
    assert_eq!(
        briefs(&out),
        vec!["elderly_inactivity raised R-2 2026-11-03T10:06:00+08:00 medium"]
    );
    let open = e.open_alerts();
    assert_eq!(open.len(), 2);
    assert_eq!(open[0].alert_id, raised.alert_id);

    // Escalation of the restored alert happens 24h after it was raised.
    let mut out = vec![];
    e.advance_to(ts("2026-11-04T10:05:00+08:00"), &mut out);
    assert_eq!(
        briefs(&out),
        vec!["elderly_inactivity escalated R-1 2026-11-04T10:05:00+08:00 high"]
    );
    assert_eq!(out[0].alert_id, raised.alert_id);
    assert_eq!(out[0].revision, 2);
}

#[test]
fn acknowledged_alert_stays_acknowledged_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let id;
    {
        let store = Store::open(&path, 1 << 20, 0).unwrap();
        let mut e = engine(CONFIG, ROSTER);
        e.track_changes(true);
        let mut out = vec![];
        e.start(ts("2026-11-02T08:00:00+08:00"), &mut out);
        e.advance_to(ts("2026-11-03T08:00:00+08:00"), &mut out);
        assert_eq!(out.len(), 2);
        id = out[0].alert_id.clone();
        assert!(e.acknowledge(&id, "grid-worker-7"));
        commit(&mut e, &store, &out);
    }
    let (mut e, _store) = reopen(&path);
    let mut out = vec![];
    e.start(ts("2026-11-03T09:00:00+08:00"), &mut out);
    e.advance_to(ts("2026-11-06T09:00:00+08:00"), &mut out);
    let escalated: Vec<_> = out.iter().filter(|t| t.alert_id == id).collect();
    assert!(
        escalated.is_empty(),
        "acknowledged alert escalated: {:?}",
        briefs(&out)
    );
    assert!(
        !out.is_empty(),
        "the other resident's alert still escalates"
    );
}
