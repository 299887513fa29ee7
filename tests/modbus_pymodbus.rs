//! Interoperability: the gateway polls an independent Modbus TCP server,
//! pymodbus (`tests/fixtures/modbus/box_server.py`), serving the monitoring
//! box's register map and a device with 32-bit values in all four byte
//! orders, input registers, coils and discrete inputs; the decoded samples
//! must equal the canonical values the script encoded.
//!
//! CI installs pymodbus (`.ci/run`: `pip install pymodbus`). Without
//! python3 or pymodbus the test fails when `CI` is set, and is skipped
//! (saying why) otherwise.

mod modbus_sim;

use community_gateway::event::{CarDoor, ElevatorMode, TravelDirection};
use community_gateway::sources::modbus::PollReport;
use modbus_sim::{is_failure_of, is_sample_of, Harness};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server {
    child: Child,
    port: u16,
    expected: Value,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing stdin ends the script; kill it in case it does not.
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails under CI, skips (returning None) elsewhere.
fn unavailable(why: String) -> Option<Server> {
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

fn start_server() -> Option<Server> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/modbus/box_server.py"
    );
    let spawned = Command::new("python3")
        .args([script, "--port", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return unavailable(format!("cannot run python3 ({e}); the interoperability test needs python3 and pymodbus (python3 -m pip install pymodbus)")),
    };
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    if let Some(rest) = line.strip_prefix("READY ") {
        let (port, json) = rest.split_once(' ').expect("READY <port> <json>");
        return Some(Server {
            child,
            port: port.parse().expect("port"),
            expected: serde_json::from_str(json).expect("expected values as JSON"),
        });
    }
    let _ = child.kill();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let _ = child.wait();
    let tail: Vec<&str> = err.lines().rev().take(5).collect();
    unavailable(format!(
        "the pymodbus server did not start (python3 -m pip install pymodbus): {}{}",
        line.trim(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    ))
}

fn direction(s: &str) -> TravelDirection {
    match s {
        "up" => TravelDirection::Up,
        "down" => TravelDirection::Down,
        _ => TravelDirection::None,
    }
}

fn door(s: &str) -> CarDoor {
    match s {
        "open" => CarDoor::Open,
        "closed" => CarDoor::Closed,
        "opening" => CarDoor::Opening,
        _ => CarDoor::Closing,
    }
}

#[tokio::test]
async fn decodes_what_pymodbus_serves() {
    let Some(server) = start_server() else { return };
    let port = server.port;
    eprintln!("pymodbus {}", server.expected["pymodbus"]);
    let toml = format!(
        r#"
compound = "t"
[modbus]
interval = "100ms"
timeout = "500ms"

[[devices]]
id = "el-box"
kind = "elevator"
building = "1"
modbus = {{ tcp = "127.0.0.1:{port}", slave = 247, profile = "monitor-box" }}

[[devices]]
id = "el-vendor"
kind = "elevator"
building = "1"
[devices.modbus]
tcp = "127.0.0.1:{port}"
slave = 1
readable = {{ holding = [[100, 107]], input = [[0, 1]] }}
points = [
  {{ field = "speed", address = 100, type = "f32" }},
  {{ field = "floor", address = 102, type = "i32", order = "CDAB" }},
  {{ field = "fault_code", address = 104, type = "u32", order = "BADC" }},
  {{ field = "fault_bits", address = 106, type = "u32", order = "DCBA" }},
  {{ field = "mode", table = "input", address = 0, values = {{ "0" = "normal", "1" = "inspection", "2" = "out_of_service", "3" = "fire" }}, default = "other" }},
  {{ field = "door", table = "input", address = 1, values = {{ "0" = "closed", "1" = "opening", "2" = "open", "3" = "closing" }} }},
  {{ field = "alarm_button", table = "coil", address = 5 }},
  {{ field = "door_zone", table = "discrete", address = 2 }},
]

# The same box, asked for register 14, which it does not have.
[[devices]]
id = "el-hole"
kind = "elevator"
building = "1"
[devices.modbus]
tcp = "127.0.0.1:{port}"
slave = 247
points = [ {{ field = "fault_code", address = 14 }} ]
"#
    );
    let mut h = Harness::start(&toml);

    let got = h
        .until(
            Duration::from_secs(10),
            "a sample of the box",
            is_sample_of("el-box"),
        )
        .await;
    let PollReport::Sample { sample: s, .. } = got.report else {
        unreachable!()
    };
    let e = &server.expected["box"];
    assert_eq!(s.floor, Some(e["floor"].as_i64().unwrap() as i32), "floor");
    assert_eq!(s.moving, Some(e["moving"].as_bool().unwrap()), "moving");
    assert_eq!(
        s.direction,
        Some(direction(e["direction"].as_str().unwrap()))
    );
    assert_eq!(s.door, Some(door(e["door"].as_str().unwrap())));
    assert_eq!(s.door_zone, Some(e["door_zone"].as_bool().unwrap()));
    assert_eq!(s.occupied, Some(e["occupied"].as_bool().unwrap()));
    assert_eq!(s.speed, Some(e["speed"].as_f64().unwrap() as f32), "speed");
    assert_eq!(s.fault_bits, Some(e["fault_bits"].as_u64().unwrap() as u32));
    assert_eq!((s.mode, s.fault_code, s.alarm_button), (None, None, None));

    let got = h
        .until(
            Duration::from_secs(10),
            "a sample of the vendor device",
            is_sample_of("el-vendor"),
        )
        .await;
    let PollReport::Sample { sample: s, .. } = got.report else {
        unreachable!()
    };
    let e = &server.expected["vendor"];
    assert_eq!(
        s.speed,
        Some(e["speed"].as_f64().unwrap() as f32),
        "f32 ABCD"
    );
    assert_eq!(
        s.floor,
        Some(e["floor"].as_i64().unwrap() as i32),
        "i32 CDAB"
    );
    assert_eq!(
        s.fault_code,
        Some(e["fault_code"].as_u64().unwrap() as u32),
        "u32 BADC"
    );
    assert_eq!(
        s.fault_bits,
        Some(e["fault_bits"].as_u64().unwrap() as u32),
        "u32 DCBA"
    );
    assert_eq!(e["mode"], "fire");
    assert_eq!(s.mode, Some(ElevatorMode::Fire), "input register code");
    assert_eq!(
        s.door,
        Some(door(e["door"].as_str().unwrap())),
        "input register code"
    );
    assert_eq!(
        s.alarm_button,
        Some(e["alarm_button"].as_bool().unwrap()),
        "coil"
    );
    assert_eq!(
        s.door_zone,
        Some(e["door_zone"].as_bool().unwrap()),
        "discrete input"
    );

    // pymodbus's exception 02 for an address the box does not have.
    h.until(
        Duration::from_secs(10),
        "exception 02 from pymodbus",
        is_failure_of("el-hole", "exception"),
    )
    .await;
    let hole = h.counts("el-hole");
    assert_eq!(hole.connects, 1, "{hole:?}");
    let vendor = h.counts("el-vendor");
    // One read per table (coil, discrete, holding, input) per poll; a poll
    // may be under way.
    assert!(
        (4 * vendor.polls()..=4 * vendor.polls() + 4).contains(&vendor.requests),
        "{vendor:?}"
    );
    h.shutdown().await;
    drop(server);
}
