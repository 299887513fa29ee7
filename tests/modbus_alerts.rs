//! A simulated monitoring box (tokio-modbus TCP server, register map of
//! shared/samples/elevator-monitor-box.md) driven through scripted states;
//! the poller's reports go to the rule engine as the daemon feeds them
//! (samples as `elevator` events, failures as failed polls, stamped with
//! the wall clock). Each elevator alert is raised at the right time and
//! cleared. Thresholds are shortened so that the script runs in seconds.

mod modbus_sim;

use community_gateway::alert::{AlertTransition, Severity, TransitionState};
use modbus_sim::{Car, Harness, Rules, Sim, TcpBox};
use std::time::{Duration, Instant};

const BOX: u8 = 247;

fn is(rule: &'static str, state: TransitionState) -> impl Fn(&AlertTransition) -> bool {
    move |t| t.rule == rule && t.state == state
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::test]
async fn box_states_raise_and_clear_elevator_alerts_on_time() {
    let sim = Sim::new().with_box(BOX);
    let server = TcpBox::serve(sim.clone()).await;
    let toml = format!(
        r#"
compound = "t"
language = "en"
[modbus]
interval = "100ms"
timeout = "100ms"
quarantine_after = 3
quarantine_every = 2

[rules.elevator_trapped]
in_zone_after = "5s"
out_of_zone_after = "800ms"
[rules.elevator_stopped_outside_zone]
after = "800ms"
[rules.elevator_fault]
debounce = "500ms"
clear_after = "600ms"
[rules.device_offline]
failures = 3

[[devices]]
id = "el-1"
kind = "elevator"
building = "1"
lowest_floor = -2
highest_floor = 18
[devices.fault_codes]
"bit7" = {{ severity = "critical", text = "overspeed" }}
[devices.modbus]
tcp = "{}"
slave = {BOX}
profile = "monitor-box"
"#,
        server.addr
    );
    let parked = |floor| Car {
        floor,
        in_zone: true,
        door_open: true,
        ..Car::default()
    };
    sim.set_car(BOX, parked(1));
    let mut h = Harness::start(&toml);
    let mut rules = Rules::new(&h.config);
    let within = Duration::from_secs(4);

    // Parked with the door open: nothing.
    h.drive_for(&mut rules, Duration::from_millis(400)).await;
    assert_eq!(rules.brief(), Vec::<String>::new());

    // Stuck between floors with someone inside: trapped after 800 ms.
    sim.set_car(
        BOX,
        Car {
            floor: 2,
            occupied: true,
            ..Car::default()
        },
    );
    let t0 = Instant::now();
    let (at, t) = h
        .drive(
            &mut rules,
            within,
            "trapped",
            is("elevator_trapped", TransitionState::Raised),
        )
        .await;
    assert_eq!(
        (t.subject.id.as_str(), t.severity),
        ("el-1", Severity::Critical)
    );
    let took = at - t0;
    assert!(
        (750..=800 + 100 + 400).contains(&ms(took)),
        "trapped raised after {took:?}"
    );
    // The door opens at a floor: cleared at the next sample.
    sim.set_car(BOX, parked(2));
    let t0 = Instant::now();
    let (at, _) = h
        .drive(
            &mut rules,
            within,
            "trapped cleared",
            is("elevator_trapped", TransitionState::Cleared),
        )
        .await;
    assert!(ms(at - t0) <= 500, "{:?}", at - t0);

    // Moving up with the door open: raised on the second sample, cleared
    // when the car stops in the door zone.
    sim.set_car(
        BOX,
        Car {
            floor: 3,
            up: true,
            door_open: true,
            speed_dm: 10,
            ..Car::default()
        },
    );
    let t0 = Instant::now();
    let (at, _) = h
        .drive(
            &mut rules,
            within,
            "door open while moving",
            is("elevator_door_open_moving", TransitionState::Raised),
        )
        .await;
    assert!(
        (100..=700).contains(&ms(at - t0)),
        "two samples: {:?}",
        at - t0
    );
    sim.set_car(BOX, parked(4));
    h.drive(
        &mut rules,
        within,
        "its clear",
        is("elevator_door_open_moving", TransitionState::Cleared),
    )
    .await;

    // Above the top floor (18), stopped outside the zone, empty: overtravel
    // at once, stopped-outside-zone after 800 ms; both clear at the top
    // floor in the zone.
    sim.set_car(
        BOX,
        Car {
            floor: 19,
            ..Car::default()
        },
    );
    let t0 = Instant::now();
    let (at, _) = h
        .drive(
            &mut rules,
            within,
            "overtravel",
            is("elevator_overtravel", TransitionState::Raised),
        )
        .await;
    assert!(ms(at - t0) <= 500, "{:?}", at - t0);
    let (at, _) = h
        .drive(
            &mut rules,
            within,
            "stopped outside the zone",
            is("elevator_stopped_outside_zone", TransitionState::Raised),
        )
        .await;
    assert!(
        (750..=800 + 100 + 400).contains(&ms(at - t0)),
        "{:?}",
        at - t0
    );
    sim.set_car(BOX, parked(18));
    h.drive(
        &mut rules,
        within,
        "overtravel cleared",
        is("elevator_overtravel", TransitionState::Cleared),
    )
    .await;
    assert!(rules
        .brief()
        .contains(&"elevator_stopped_outside_zone cleared el-1".to_string()));

    // The box's overspeed bit (bit7) for longer than the 500 ms debounce:
    // a fault named by the fault table; cleared 600 ms after the bit drops.
    sim.set_car(
        BOX,
        Car {
            faults: 1 << 7,
            ..parked(18)
        },
    );
    let t0 = Instant::now();
    let (at, t) = h
        .drive(
            &mut rules,
            within,
            "the overspeed fault",
            is("elevator_fault", TransitionState::Raised),
        )
        .await;
    assert_eq!(t.severity, Severity::Critical);
    assert!(t.message.contains("overspeed"), "{}", t.message);
    assert!(
        (450..=500 + 100 + 400).contains(&ms(at - t0)),
        "{:?}",
        at - t0
    );
    sim.set_car(BOX, parked(18));
    let t0 = Instant::now();
    let (at, _) = h
        .drive(
            &mut rules,
            within,
            "the fault's clear",
            is("elevator_fault", TransitionState::Cleared),
        )
        .await;
    assert!(
        (550..=600 + 100 + 400).contains(&ms(at - t0)),
        "{:?}",
        at - t0
    );

    // The box stops answering: device_offline after 3 failed polls; it
    // clears at the first answer.
    sim.set_silent(BOX, true);
    let t0 = Instant::now();
    let (at, t) = h
        .drive(
            &mut rules,
            within,
            "device_offline",
            is("device_offline", TransitionState::Raised),
        )
        .await;
    assert_eq!(t.severity, Severity::High);
    assert_eq!(t.evidence["failures"], 3);
    // Three polls, the first retried: about 3 × (interval + timeout).
    assert!(ms(at - t0) <= 1500, "{:?}", at - t0);
    sim.set_silent(BOX, false);
    h.drive(
        &mut rules,
        within,
        "device_offline cleared",
        is("device_offline", TransitionState::Cleared),
    )
    .await;

    // Every alert raised was cleared.
    let raised = rules
        .transitions
        .iter()
        .filter(|(_, t)| t.state == TransitionState::Raised)
        .count();
    let cleared = rules
        .transitions
        .iter()
        .filter(|(_, t)| t.state == TransitionState::Cleared)
        .count();
    assert_eq!(raised, cleared, "{:#?}", rules.brief());
    assert_eq!(rules.engine.open_alert_count(), 0);
    h.shutdown().await;
}
