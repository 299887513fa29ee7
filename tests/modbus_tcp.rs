//! Modbus TCP polling against a simulated monitoring box (a tokio-modbus
//! server with the register map of shared/samples/elevator-monitor-box.md):
//! decoding of scripted states, exceptions, slow replies, dropped requests,
//! closed connections, and coalescing counted per poll cycle.

mod modbus_sim;

use community_gateway::event::{CarDoor, ElevatorSample, TravelDirection};
use community_gateway::sources::modbus::PollReport;
use modbus_sim::{is_failure_of, is_sample_of, Car, Harness, Sim, TcpBox};
use std::time::Duration;

const BOX: u8 = 247;

fn one_box(addr: std::net::SocketAddr, settings: &str) -> String {
    format!(
        r#"
compound = "t"
[modbus]
interval = "100ms"
timeout = "150ms"
{settings}

[[devices]]
id = "el-1"
kind = "elevator"
building = "1"
lowest_floor = -2
highest_floor = 18
[devices.modbus]
tcp = "{addr}"
slave = {BOX}
profile = "monitor-box"
"#
    )
}

fn sample_of(r: &PollReport) -> Option<&ElevatorSample> {
    match r {
        PollReport::Sample { sample, .. } => Some(sample),
        PollReport::Failed { .. } => None,
    }
}

#[tokio::test]
async fn scripted_box_states_are_decoded() {
    let sim = Sim::new().with_box(BOX);
    let server = TcpBox::serve(sim.clone()).await;
    let mut h = Harness::start(&one_box(server.addr, ""));

    let expect = |floor: i32,
                  direction: TravelDirection,
                  door: CarDoor,
                  zone: bool,
                  occupied: bool,
                  speed: f32,
                  faults: u32| ElevatorSample {
        floor: Some(floor),
        moving: Some(direction != TravelDirection::None),
        direction: Some(direction),
        door: Some(door),
        door_zone: Some(zone),
        occupied: Some(occupied),
        speed: Some(speed),
        fault_bits: Some(faults),
        ..ElevatorSample::default()
    };
    use CarDoor::{Closed, Open};
    use TravelDirection::{Down, None as Stopped, Up};
    let script = [
        // Parked at 1, door open, empty.
        (
            Car {
                floor: 1,
                in_zone: true,
                door_open: true,
                ..Car::default()
            },
            expect(1, Stopped, Open, true, false, 0.0, 0),
        ),
        // Someone gets in; going up at 1.6 m/s between 2 and 3.
        (
            Car {
                floor: 2,
                up: true,
                occupied: true,
                speed_dm: 16,
                ..Car::default()
            },
            expect(2, Up, Closed, false, true, 1.6, 0),
        ),
        // Down to the second basement.
        (
            Car {
                floor: -2,
                down: true,
                occupied: true,
                speed_dm: 5,
                ..Car::default()
            },
            expect(-2, Down, Closed, false, true, 0.5, 0),
        ),
        // Stuck between -1 and -2 with someone inside: the box sets
        // "trapped outside door zone" (bit1) and "stopped outside zone" (bit5).
        (
            Car {
                floor: -1,
                occupied: true,
                faults: 0b10_0010,
                ..Car::default()
            },
            expect(-1, Stopped, Closed, false, true, 0.0, 0b10_0010),
        ),
        // Rescued; parked at the top floor, every fault bit cleared but
        // "door open too long" (bit10).
        (
            Car {
                floor: 18,
                in_zone: true,
                door_open: true,
                faults: 1 << 10,
                ..Car::default()
            },
            expect(18, Stopped, Open, true, false, 0.0, 1 << 10),
        ),
        // The lowest floor a signed byte holds.
        (
            Car {
                floor: -128,
                in_zone: true,
                speed_dm: 255,
                ..Car::default()
            },
            expect(-128, Stopped, Closed, true, false, 25.5, 0),
        ),
    ];
    for (car, want) in script {
        sim.set_car(BOX, car);
        let set = std::time::Instant::now();
        let got = h
            .until(Duration::from_secs(3), &format!("{want:?}"), |r| {
                sample_of(r) == Some(&want)
            })
            .await;
        // One interval, plus a poll already under way, plus scheduling slack.
        let lag = got.at - set;
        assert!(lag < Duration::from_millis(700), "{car:?} took {lag:?}");
    }
    let c = h.counts("el-1");
    assert_eq!(c.failures, 0, "{c:?}");
    assert_eq!(c.connects, 1, "one connection for the whole script: {c:?}");
    // One request per poll (plus one if a poll is under way).
    assert!(
        (c.samples..=c.samples + 1).contains(&c.requests),
        "one request per poll: {c:?}"
    );
    assert_eq!(c.unmapped_values, 0, "{c:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn reads_are_coalesced_into_the_fewest_requests_per_cycle() {
    // One TCP gateway in front of three boxes (unit ids 247, 1 and 2).
    let sim = Sim::new().with_box(BOX).with_box(1).with_box(2);
    let server = TcpBox::serve(sim.clone()).await;
    let addr = server.addr;
    // `el-plus` also reads the door-open count (a u32 at 3-4) and a threshold
    // at 17: a gap of 20 would let one read cover 0-17, but 13-15 are not
    // readable, so it takes two. `el-blind` has the same points without
    // `readable`, so its one read spans 13-15 and gets exception 02.
    let points = r#"
        { field = "fault_bits", address = 0 },
        { field = "floor", address = 2, type = "i8_high" },
        { field = "fault_code", address = 3, type = "u32", order = "ABCD" },
        { field = "speed", address = 17, scale = 0.1 },
    "#;
    let toml = format!(
        r#"
compound = "t"
[modbus]
interval = "100ms"
timeout = "150ms"
max_gap = 20
[modbus.profiles.box-plus]
readable = {{ holding = [[0, 12], [16, 18]] }}
points = [ {points} ]
[modbus.profiles.box-blind]
points = [ {points} ]

[[devices]]
id = "el-plus"
kind = "elevator"
building = "1"
modbus = {{ tcp = "{addr}", slave = {BOX}, profile = "box-plus" }}

[[devices]]
id = "el-box"
kind = "elevator"
building = "1"
modbus = {{ tcp = "{addr}", slave = 1, profile = "monitor-box" }}

[[devices]]
id = "el-blind"
kind = "elevator"
building = "1"
modbus = {{ tcp = "{addr}", slave = 2, profile = "box-blind" }}
"#
    );
    for unit in [BOX, 1, 2] {
        sim.set_car(
            unit,
            Car {
                floor: 7,
                ..Car::default()
            },
        );
    }
    let mut h = Harness::start(&toml);
    for _ in 0..5 {
        let got = h
            .until(
                Duration::from_secs(2),
                "a sample of el-plus",
                is_sample_of("el-plus"),
            )
            .await;
        let s = sample_of(&got.report).unwrap();
        assert_eq!(s.floor, Some(7));
        assert_eq!(s.fault_code, Some(70000), "u32 high word first");
        assert_eq!(s.speed, Some(1.5), "threshold 15 × 0.1");
    }
    h.until(
        Duration::from_secs(2),
        "an exception for el-blind",
        is_failure_of("el-blind", "exception"),
    )
    .await;
    h.until(
        Duration::from_secs(2),
        "a sample of el-box",
        is_sample_of("el-box"),
    )
    .await;

    let plus = h.counts("el-plus");
    assert_eq!(plus.failures, 0, "{plus:?}");
    // Exactly two requests per poll cycle (a poll under way may have sent
    // one or both of its own).
    assert!(
        (2 * plus.samples..=2 * plus.samples + 2).contains(&plus.requests),
        "{plus:?}"
    );
    let bx = h.counts("el-box");
    assert!(bx.requests <= bx.samples + 1 && bx.samples >= 1, "{bx:?}");
    let blind = h.counts("el-blind");
    assert_eq!(blind.samples, 0, "{blind:?}");
    assert!(blind.exceptions >= 1, "{blind:?}");

    // What the box saw: for the mapped devices only reads within 0-12 or
    // 16-18, and the reads of one cycle of el-plus are 0-4 and 17.
    let log = sim.log();
    let reads: std::collections::BTreeSet<(u16, u16)> =
        log.iter().map(|s| (s.start, s.count)).collect();
    assert!(reads.contains(&(0, 5)), "{reads:?}");
    assert!(reads.contains(&(17, 1)), "{reads:?}");
    assert!(reads.contains(&(0, 3)), "{reads:?}");
    assert!(reads.contains(&(0, 18)), "el-blind's read: {reads:?}");
    assert_eq!(reads.len(), 4, "{reads:?}");
    assert!(log.iter().all(|s| s.function == 3));
    for s in &log {
        let expected: &[(u16, u16)] = match s.slave {
            BOX => &[(0, 5), (17, 1)],
            1 => &[(0, 3)],
            _ => &[(0, 18)],
        };
        assert!(expected.contains(&(s.start, s.count)), "{s:?}");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn exceptions_fail_polls_but_keep_the_connection() {
    let sim = Sim::new().with_box(BOX).with_box(1);
    let server = TcpBox::serve(sim.clone()).await;
    let addr = server.addr;
    // Register 20 does not exist on the box: exception 02 on every poll.
    let toml = format!(
        r#"
compound = "t"
[modbus]
interval = "100ms"
timeout = "150ms"
[[devices]]
id = "el-bad"
kind = "elevator"
building = "1"
[devices.modbus]
tcp = "{addr}"
slave = {BOX}
points = [
  {{ field = "floor", address = 2, type = "i8_high" }},
  {{ field = "fault_code", address = 20 }},
]
[[devices]]
id = "el-ok"
kind = "elevator"
building = "1"
modbus = {{ tcp = "{addr}", slave = 1, profile = "monitor-box" }}
"#
    );
    let mut h = Harness::start(&toml);
    for _ in 0..4 {
        h.until(
            Duration::from_secs(2),
            "an exception",
            is_failure_of("el-bad", "exception"),
        )
        .await;
    }
    h.until(
        Duration::from_secs(2),
        "a sample of el-ok",
        is_sample_of("el-ok"),
    )
    .await;
    let bad = h.counts("el-bad");
    assert_eq!(
        bad.connects, 1,
        "an exception keeps the connection: {bad:?}"
    );
    assert_eq!(bad.retries, 0, "an exception is not retried: {bad:?}");
    assert!(bad.exceptions >= 4 && bad.failures >= 4, "{bad:?}");
    assert_eq!(bad.samples, 0);
    assert_eq!(
        bad.timeouts + bad.io_errors + bad.decode_errors,
        0,
        "{bad:?}"
    );
    // It is quarantined after 3 failures (polled every 5 intervals) ...
    assert!(bad.quarantined_skips > 0, "{bad:?}");
    // ... while the other device on the same box keeps its rate.
    let ok = h.counts("el-ok");
    assert_eq!(ok.failures, 0, "{ok:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn slow_replies_and_dropped_requests_time_out_and_reconnect() {
    let sim = Sim::new().with_box(BOX);
    let server = TcpBox::serve(sim.clone()).await;
    let mut h = Harness::start(&one_box(server.addr, "retries = 1"));
    let car = |floor| Car {
        floor,
        in_zone: true,
        ..Car::default()
    };
    sim.set_car(BOX, car(3));
    h.until(
        Duration::from_secs(2),
        "a first sample",
        is_sample_of("el-1"),
    )
    .await;
    let before = h.counts("el-1");

    // Replies 400 ms late, after the 150 ms timeout.
    sim.set_delay(BOX, Duration::from_millis(400));
    h.until(
        Duration::from_secs(3),
        "a timeout",
        is_failure_of("el-1", "timeout"),
    )
    .await;
    let slow = h.counts("el-1");
    // The first slow poll was retried once (on a new connection).
    assert!(slow.retries > before.retries, "{slow:?}");
    assert!(slow.connects > before.connects, "{slow:?}");

    // The box answers promptly again, with a new floor: the first sample
    // after that is the new state, never a late reply to an old request.
    sim.set_delay(BOX, Duration::ZERO);
    sim.set_car(BOX, car(4));
    let got = h
        .until(
            Duration::from_secs(3),
            "a sample after the slow replies",
            is_sample_of("el-1"),
        )
        .await;
    assert_eq!(sample_of(&got.report).unwrap().floor, Some(4));

    // Requests dropped without a reply.
    sim.set_silent(BOX, true);
    h.until(
        Duration::from_secs(3),
        "a timeout",
        is_failure_of("el-1", "timeout"),
    )
    .await;
    sim.set_silent(BOX, false);
    sim.set_car(BOX, car(5));
    let got = h
        .until(
            Duration::from_secs(3),
            "a sample after the silence",
            is_sample_of("el-1"),
        )
        .await;
    assert_eq!(sample_of(&got.report).unwrap().floor, Some(5));

    let c = h.counts("el-1");
    assert!(c.timeouts >= 4, "{c:?}");
    assert!(c.connects >= 3, "reconnected after timeouts: {c:?}");
    assert_eq!(
        c.decode_errors, 0,
        "no late reply mistaken for an answer: {c:?}"
    );
    assert_eq!(c.exceptions, 0, "{c:?}");
    // Every failed poll was reported, and the device is back.
    let failed = h
        .seen
        .iter()
        .filter(|g| matches!(g.report, PollReport::Failed { .. }))
        .count() as u64;
    assert_eq!(failed, c.failures);
    assert_eq!(c.consecutive_failures, 0);
    h.shutdown().await;
}

#[tokio::test]
async fn a_closed_connection_is_reopened() {
    let sim = Sim::new().with_box(BOX);
    let server = TcpBox::serve(sim.clone()).await;
    let mut h = Harness::start(&one_box(server.addr, "retries = 1"));
    sim.set_car(
        BOX,
        Car {
            floor: 9,
            ..Car::default()
        },
    );
    for _ in 0..3 {
        h.until(Duration::from_secs(2), "a sample", is_sample_of("el-1"))
            .await;
    }
    assert_eq!(h.counts("el-1").connects, 1);
    for round in 1..=3u64 {
        assert_eq!(server.cut_connections(), 1);
        // Polls go on: the lost connection is found at the next request,
        // reopened, and the request retried.
        for _ in 0..3 {
            h.until(
                Duration::from_secs(2),
                "a sample after the cut",
                is_sample_of("el-1"),
            )
            .await;
        }
        let c = h.counts("el-1");
        assert_eq!(c.connects, 1 + round, "{c:?}");
        assert!(c.io_errors + c.decode_errors >= round, "{c:?}");
    }
    // The retry made every cut invisible: no poll failed.
    let c = h.counts("el-1");
    assert_eq!(c.failures, 0, "{c:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_device_fails_every_poll_and_recovers() {
    // Nothing listens on this port yet.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut h = Harness::start(&one_box(addr, "quarantine_after = 100"));
    for _ in 0..5 {
        h.until(
            Duration::from_secs(2),
            "a failed connect",
            is_failure_of("el-1", "io"),
        )
        .await;
    }
    assert!(h.counts("el-1").consecutive_failures >= 5);
    // The box comes up on that port.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let sim = Sim::new().with_box(BOX);
    let serve = sim.clone();
    let task = tokio::spawn(async move {
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let on_connected = move |stream, _| {
            let s = serve.clone();
            async move { Ok(Some((s, stream))) }
        };
        let _ = server.serve(&on_connected, |_| {}).await;
    });
    h.until(Duration::from_secs(2), "a sample", is_sample_of("el-1"))
        .await;
    assert_eq!(h.counts("el-1").consecutive_failures, 0);
    task.abort();
    h.shutdown().await;
}
