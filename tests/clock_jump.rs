//! NTP stepping the wall clock of a board without RTC must not raise a wave
//! of inactivity alerts; deadlines are re-based by the step.

mod common;

use common::{briefs, engine, ts};
use community_gateway::clock::{ClockWatch, ManualClock};
use community_gateway::engine::Engine;
use community_gateway::event::decode;
use std::time::Duration;

const CONFIG: &str = r#"
compound = "c1"
[clock]
jump_threshold = "1m"
[[devices]]
id = "door-1"
kind = "access"
building = "1"
"#;

const HOUR: i64 = 3_600_000;

fn hundred_watched() -> Engine {
    let mut csv = String::from("resident_id,building,unit,room,credentials,watch\n");
    for i in 0..100 {
        csv.push_str(&format!("R-{i},1,1,{i},C{i},yes\n"));
    }
    engine(CONFIG, &csv)
}

/// Every resident badges in between 08:00 and 09:39; deadlines fall 24h later.
fn setup() -> (Engine, ClockWatch, ManualClock) {
    let mut e = hundred_watched();
    let start = ts("2026-11-02T08:00:00+08:00");
    let mut clock = ManualClock {
        wall: start,
        monotonic: Duration::from_secs(1000),
    };
    let mut watch = ClockWatch::new(60_000);
    let mut out = vec![];
    e.start(start, &mut out);
    watch.advance(&mut e, &clock, &mut out);
    for i in 0..100 {
        clock.pass(Duration::from_secs(60));
        let line = format!(
            r#"{{"type":"access","ts":"{}","device":"door-1","credential":"C{i}","granted":true}}"#,
            e.calendar().format(clock.wall)
        );
        watch.advance(&mut e, &clock, &mut out);
        e.handle(&decode(&line, None).unwrap(), &mut out);
    }
    assert!(out.is_empty());
    (e, watch, clock)
}

#[test]
fn forward_step_of_ten_hours_raises_nothing() {
    let (mut e, mut watch, mut clock) = setup();
    // 14 real hours pass; the deadlines are ~24h after each access.
    let mut out = vec![];
    clock.pass(Duration::from_secs(14 * 3600));
    watch.advance(&mut e, &clock, &mut out);
    // NTP steps the clock forward by 10 hours.
    clock.step(10 * HOUR);
    clock.pass(Duration::from_secs(1));
    watch.advance(&mut e, &clock, &mut out);
    assert!(out.is_empty(), "the step raised: {:?}", briefs(&out));
    assert_eq!(e.stats().clock_jumps, 1);
    // The deadlines moved with the clock: they come 24h of real time after
    // each access, i.e. 10h later on the new wall clock.
    clock.pass(Duration::from_secs(8 * 3600));
    watch.advance(&mut e, &clock, &mut out);
    assert!(out.is_empty(), "too early: {:?}", briefs(&out));
    clock.pass(Duration::from_secs(3 * 3600));
    watch.advance(&mut e, &clock, &mut out);
    assert_eq!(out.len(), 100, "{:?}", briefs(&out));
    // The first resident badged at 08:01; with the 10h step its deadline is 18:01 the next day.
    assert_eq!(out[0].at, "2026-11-03T18:01:00+08:00");
    assert!(out.iter().all(|t| t.rule == "elderly_inactivity"
        && t.state == community_gateway::alert::TransitionState::Raised));
}

#[test]
fn backward_step_neither_raises_nor_loses_deadlines() {
    let (mut e, mut watch, mut clock) = setup();
    let mut out = vec![];
    clock.pass(Duration::from_secs(3600));
    watch.advance(&mut e, &clock, &mut out);
    clock.step(-6 * HOUR);
    clock.pass(Duration::from_secs(1));
    watch.advance(&mut e, &clock, &mut out);
    assert!(out.is_empty());
    // 24h of real time after the last access, every deadline has fired once.
    clock.pass(Duration::from_secs(24 * 3600));
    watch.advance(&mut e, &clock, &mut out);
    assert_eq!(out.len(), 100, "{:?}", briefs(&out));
}

#[test]
fn without_rebasing_the_same_step_would_raise_the_wave() {
    // Guards the test above: the scenario really is dangerous.
    let (mut e, _watch, mut clock) = setup();
    let mut out = vec![];
    clock.pass(Duration::from_secs(14 * 3600));
    clock.step(10 * HOUR);
    e.advance_to(clock.wall, &mut out);
    assert_eq!(out.len(), 100);
    let _ = ts("2026-11-02T08:00:00+08:00");
}
