//! `check` of Modbus settings, buses, profiles and register maps: every
//! problem with its line and key path; the shipped example polls `el-12-1`
//! over RTU with the built-in profile and passes on a machine without its
//! serial port.

use community_gateway::config::modbus::{builtin_profile, RegisterTable};
use community_gateway::config::{load, load_str, Problem};
use community_gateway::sources::modbus::RegisterMap;
use std::path::Path;
use std::time::Duration;

const FILE: &str = "/etc/community-gateway/gateway.toml";

fn problems(text: &str) -> Vec<Problem> {
    match load_str(text, Path::new(FILE)) {
        Ok(_) => Vec::new(),
        Err(p) => p.0,
    }
}

/// The 1-based line of the `nth` (from 1) line of `text` containing `what`.
fn line(text: &str, what: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(what))
        .nth(nth - 1)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("no {nth}. line with `{what}`"))
}

/// Asserts a problem at `line` and `key` whose message contains `needle`.
fn has(p: &[Problem], line: usize, key: &str, needle: &str) {
    assert!(
        p.iter().any(|p| p.line == Some(line)
            && p.key.as_deref() == Some(key)
            && p.message.contains(needle)),
        "no problem at line {line} `{key}` mentioning `{needle}` in:\n{}",
        p.iter().map(|p| format!("{p}\n")).collect::<String>()
    );
}

const HEAD: &str = "compound = \"t\"\n";

#[test]
fn the_example_polls_el_12_1_over_rtu_with_the_builtin_profile() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
    let cfg = load(&path).unwrap_or_else(|p| panic!("{p}"));
    let el = cfg.devices.iter().find(|d| d.id == "el-12-1").unwrap();
    let m = el.modbus.as_ref().expect("el-12-1 is polled");
    assert_eq!(m.bus.as_deref(), Some("rs485-1"));
    assert_eq!(m.slave, Some(247));
    assert_eq!(m.profile.as_deref(), Some("monitor-box"));
    let bus = &cfg.modbus.buses["rs485-1"];
    assert_eq!((bus.baud, bus.data_bits, bus.stop_bits), (9600, 8, 1));
    // The example runs `check` clean whether or not the port exists.
    let s = cfg.modbus.settings(m);
    assert_eq!(s.interval, Duration::from_secs(1));
    assert_eq!(s.timeout, Duration::from_millis(500));
    assert_eq!((s.retries, s.max_gap), (1, 8));
    // The built-in map reads registers 0-2 in one request.
    let (readable, points) = cfg.modbus.map_of(m).unwrap();
    let map = RegisterMap::compile(readable, points, s.max_gap).unwrap();
    let reads: Vec<_> = map
        .blocks()
        .iter()
        .map(|b| (b.table, b.start, b.count))
        .collect();
    assert_eq!(reads, [(RegisterTable::Holding, 0, 3)]);
    assert_eq!(builtin_profile("monitor-box").unwrap().points.len(), 9);
}

#[test]
fn a_missing_serial_port_is_not_a_problem() {
    let text = format!(
        "{HEAD}[modbus.buses.b]\npath = \"/dev/ttyUSB-not-plugged-in\"\n\
         [[devices]]\nid = \"e\"\nkind = \"elevator\"\nbuilding = \"1\"\n\
         modbus = {{ bus = \"b\", slave = 3, profile = \"monitor-box\" }}\n"
    );
    assert_eq!(problems(&text), []);
}

#[test]
fn buses_devices_and_profiles_are_checked_with_key_paths() {
    let text = r#"compound = "t"
[modbus]
interval = "5ms"
max_gap = 200
quarantine_every = 0

[modbus.buses.line-1]
path = "/dev/ttyS1"
baud = 9601
parity = "mark"
data_bits = 6
stop_bits = 3

[modbus.buses.line-2]
baud = 19200

[modbus.buses.line-3]
path = "/dev/ttyS1"

[modbus.profiles.monitor-box]
points = [ { field = "floor", address = 2 } ]

[[devices]]
id = "e1"
kind = "elevator"
building = "1"
modbus = { bus = "line-1", slave = 5, profile = "monitor-box" }

[[devices]]
id = "e2"
kind = "elevator"
building = "1"
modbus = { bus = "line-1", slave = 5, profile = "monitr-box" }

[[devices]]
id = "e3"
kind = "elevator"
building = "1"
modbus = { bus = "line-9", slave = 1, profile = "monitor-box" }

[[devices]]
id = "e4"
kind = "elevator"
building = "1"
modbus = { bus = "line-1", profile = "monitor-box" }

[[devices]]
id = "e5"
kind = "elevator"
building = "1"
modbus = { bus = "line-1", tcp = "10.0.0.5:502", slave = 9, profile = "monitor-box" }

[[devices]]
id = "e6"
kind = "elevator"
building = "1"
modbus = { tcp = "10.0.0.5", profile = "monitor-box" }

[[devices]]
id = "e7"
kind = "elevator"
building = "1"
modbus = { tcp = "10.0.0.5:502" }

[[devices]]
id = "d1"
kind = "access"
building = "1"
modbus = { tcp = "10.0.0.6:502", profile = "monitor-box" }

[[devices]]
id = "e8"
kind = "elevator"
building = "1"
modbus = { bus = "line-1", slave = 248, profile = "monitor-box", timeout = "0s", retries = 20 }
"#;
    let p = problems(text);
    let at = |what: &str, nth: usize| line(text, what, nth);
    has(&p, 3, "modbus.interval", "at least 10ms");
    has(&p, 4, "modbus.max_gap", "at most 123");
    has(&p, 5, "modbus.quarantine_every", "at least 1");
    has(
        &p,
        9,
        "modbus.buses.line-1.baud",
        "9601 is not a serial baud rate",
    );
    has(
        &p,
        10,
        "modbus.buses.line-1.parity",
        "unknown variant `mark`",
    );
    has(&p, 11, "modbus.buses.line-1.data_bits", "use 8");
    has(&p, 12, "modbus.buses.line-1.stop_bits", "use 1 or 2");
    has(
        &p,
        14,
        "modbus.buses.line-2.path",
        "missing required key `path`",
    );
    has(
        &p,
        18,
        "modbus.buses.line-3.path",
        "already the path of bus `line-1`",
    );
    has(
        &p,
        20,
        "modbus.profiles.monitor-box",
        "name of a built-in profile",
    );
    let e2 = at("monitr-box", 1);
    has(
        &p,
        e2,
        "devices[1].modbus.slave",
        "slave 5 on bus `line-1` is already device `e1`",
    );
    has(
        &p,
        e2,
        "devices[1].modbus.profile",
        "unknown profile `monitr-box`; expected one of: monitor-box (or",
    );
    has(
        &p,
        at("line-9", 1),
        "devices[2].modbus.bus",
        "bus `line-9` is not declared; add a [modbus.buses.line-9] section",
    );
    has(
        &p,
        at("id = \"e4\"", 1) + 3,
        "devices[3].modbus.slave",
        "needs its `slave` id",
    );
    has(
        &p,
        at("tcp = \"10.0.0.5:502\", slave = 9", 1),
        "devices[4].modbus.bus",
        "either `tcp`",
    );
    has(
        &p,
        at("tcp = \"10.0.0.5\"", 1),
        "devices[5].modbus.tcp",
        "has no port",
    );
    has(
        &p,
        at("tcp = \"10.0.0.5:502\" }", 1),
        "devices[6].modbus",
        "has no register map",
    );
    has(
        &p,
        at("10.0.0.6", 1),
        "devices[7].modbus",
        "applies only to elevators",
    );
    let e8 = at("slave = 248", 1);
    has(
        &p,
        e8,
        "devices[8].modbus.slave",
        "slave 248 is out of range",
    );
    has(&p, e8, "devices[8].modbus.timeout", "longer than 0s");
    has(&p, e8, "devices[8].modbus.retries", "at most 10");
    // Nothing else: no follow-on noise.
    assert_eq!(p.len(), 21, "{p:#?}");
}

#[test]
fn register_maps_are_checked_point_by_point() {
    let text = r#"compound = "t"
[modbus.profiles.p]
readable = { holding = [[0, 12], [16, 18]], input = [[5, 2]] }

[[modbus.profiles.p.points]]
field = "flor"
address = 1

[[modbus.profiles.p.points]]
field = "floor"
address = 2
type = "u64"
bit = 3

[[modbus.profiles.p.points]]
field = "floor"
address = 3

[[modbus.profiles.p.points]]
field = "speed"
address = 3
type = "u8_low"

[[modbus.profiles.p.points]]
field = "fault_code"
address = 4
type = "u32"
order = "ACBD"

[[modbus.profiles.p.points]]
field = "fault_bits"
address = 5

[[modbus.profiles.p.points]]
field = "moving"
address = 1
type = "bit"
bit = 16

[[modbus.profiles.p.points]]
field = "door_zone"
address = 14
type = "bit"
bit = 2

[[modbus.profiles.p.points]]
field = "occupied"
address = 70000

[[modbus.profiles.p.points]]
field = "mode"
address = 6

[[modbus.profiles.p.points]]
field = "door"
address = 7
values = { "0" = "closed", "one" = "open", "2" = "ajar" }

[[modbus.profiles.p.points]]
field = "direction"
address = 1
type = "up_down"
up_bit = 8
down_bit = 8

[[modbus.profiles.p.points]]
field = "alarm_button"
table = "coil"
address = 0
type = "u16"

[modbus.profiles.q]
points = [
  { field = "fault_code", table = "input", address = 65535, type = "i32" },
  { field = "speed", address = 9, scale = 0.0, values = { "1" = 2.0 } },
  { field = "occupied", value = "yes" },
  { field = "floor", value = 3, address = 4 },
  { field = "mode", address = 10, type = "f32" },
]

[modbus.profiles.empty]
"#;
    let p = problems(text);
    let at = |what: &str, nth: usize| line(text, what, nth);
    let pt = "modbus.profiles.p.points";
    has(
        &p,
        3,
        "modbus.profiles.p.readable.input[0]",
        "must not be above the last",
    );
    has(
        &p,
        at("\"flor\"", 1),
        &format!("{pt}[0].field"),
        "unknown variant `flor`",
    );
    has(
        &p,
        at("\"u64\"", 1),
        &format!("{pt}[1].type"),
        "unknown variant `u64`",
    );
    has(
        &p,
        at("field = \"floor\"", 2),
        &format!("{pt}[2].field"),
        "`floor` is already read by points[1]",
    );
    has(
        &p,
        at("address = 3", 2),
        &format!("{pt}[3].address"),
        "holding register 3 is already read as a value by points[2] (`floor`)",
    );
    has(
        &p,
        at("ACBD", 1),
        &format!("{pt}[4].order"),
        "unknown variant `ACBD`, expected one of `ABCD`, `CDAB`, `BADC`, `DCBA`",
    );
    has(
        &p,
        at("address = 5", 1),
        &format!("{pt}[5].address"),
        "register 5 is already read as a value by points[4] (`fault_code`)",
    );
    has(
        &p,
        at("bit = 16", 1),
        &format!("{pt}[6].bit"),
        "bit 16 does not exist",
    );
    has(
        &p,
        at("address = 14", 1),
        &format!("{pt}[7].address"),
        "address 14 is outside this map's readable holding ranges (0-12, 16-18)",
    );
    has(
        &p,
        at("70000", 1),
        &format!("{pt}[8].address"),
        "address 70000 is out of range",
    );
    // A missing key is located at its table.
    has(
        &p,
        at("[[modbus.profiles.p.points]]", 10),
        &format!("{pt}[9].values"),
        "`mode` read as \"u16\" needs a `values` table",
    );
    has(
        &p,
        at("ajar", 1),
        &format!("{pt}[10].values.one"),
        "not a raw value",
    );
    has(
        &p,
        at("ajar", 1),
        &format!("{pt}[10].values.2"),
        "\"ajar\" is not a value of `door`",
    );
    has(
        &p,
        at("down_bit = 8", 1),
        &format!("{pt}[11].down_bit"),
        "must differ",
    );
    has(
        &p,
        at("type = \"u16\"", 1),
        &format!("{pt}[12].type"),
        "a coil holds one bit: use type = \"bool\"",
    );
    let q = "modbus.profiles.q.points";
    has(
        &p,
        at("65535", 1),
        &format!("{q}[0].address"),
        "needs registers 65535 and 65536",
    );
    has(
        &p,
        at("scale = 0.0", 1),
        &format!("{q}[1].scale"),
        "0 is not a usable scale",
    );
    has(
        &p,
        at("\"yes\"", 1),
        &format!("{q}[2].value"),
        "expected true or false",
    );
    has(
        &p,
        at("value = 3, address = 4", 1),
        &format!("{q}[3].address"),
        "fixed `value` reads no register; remove `address`",
    );
    has(
        &p,
        at("\"f32\"", 1),
        &format!("{q}[4].type"),
        "f32\" applies to floor and speed",
    );
    has(
        &p,
        at("profiles.empty", 1),
        "modbus.profiles.empty.points",
        "at least one point",
    );
    // The point whose type was refused (points[1]) says nothing more, e.g.
    // about its `bit` on a type that has none.
    assert!(
        !p.iter()
            .any(|x| x.key.as_deref() == Some("modbus.profiles.p.points[1].bit")),
        "{p:#?}"
    );
}

#[test]
fn a_device_map_of_its_own_is_checked_like_a_profile() {
    let text = r#"compound = "t"
[[devices]]
id = "e"
kind = "elevator"
building = "1"
[devices.modbus]
tcp = "192.168.1.20:502"
readable = { input = [[0, 9]] }
points = [
  { field = "floor", table = "input", address = 12 },
]
"#;
    let p = problems(text);
    has(
        &p,
        10,
        "devices[0].modbus.points[0].address",
        "address 12 is outside this map's readable input ranges (0-9)",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
}
