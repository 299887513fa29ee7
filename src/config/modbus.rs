//! Schema of Modbus polling and its checks (SPEC §3 "how they are read").
//!
//! ```toml
//! [modbus]                       # defaults for every polled device
//! interval = "1s"
//! timeout = "500ms"
//! retries = 1
//! max_gap = 8
//!
//! [modbus.buses.rs485-1]         # an RS-485 line (Modbus RTU)
//! path = "/dev/ttyS1"
//! baud = 9600
//!
//! [modbus.profiles.lift-x]       # a reusable register map
//! readable = { holding = [[0, 40]] }
//! points = [ { field = "floor", address = 3, type = "i16" } ]
//!
//! [[devices]]                    # an elevator polled on that bus
//! id = "el-1"
//! kind = "elevator"
//! building = "1"
//! modbus = { bus = "rs485-1", slave = 247, profile = "monitor-box" }
//! ```
//!
//! Every key has a serde default (required ones are `Option`s checked by
//! [`check`]), so that one missing key is one located problem and does not
//! make the whole `[modbus]` table fail to parse.

use crate::event::{CarDoor, ElevatorMode, TravelDirection};
use crate::time::HumanDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// `[modbus]`: defaults shared by every polled device, serial buses and
/// register-map profiles.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ModbusConfig {
    /// Time between two polls of a device.
    pub interval: HumanDuration,
    /// Longest wait for one reply (and for a TCP connection).
    pub timeout: HumanDuration,
    /// Extra attempts of a poll after a timeout, an I/O error or a garbled
    /// reply, before the poll counts as failed. Made only while the device
    /// was answering: a device that failed its last poll gets one attempt.
    pub retries: u32,
    /// Largest run of unneeded registers read to save a request.
    pub max_gap: u16,
    /// Consecutive failed polls after which a device is quarantined.
    pub quarantine_after: u32,
    /// A quarantined device is polled only every this many intervals, so
    /// that the others on its bus keep their rate.
    pub quarantine_every: u32,
    /// Serial lines (Modbus RTU), by name.
    pub buses: BTreeMap<String, BusConfig>,
    /// Reusable register maps, by name.
    pub profiles: BTreeMap<String, ProfileConfig>,
}

impl Default for ModbusConfig {
    fn default() -> Self {
        ModbusConfig {
            interval: HumanDuration::secs(1),
            timeout: HumanDuration(Duration::from_millis(500)),
            retries: 1,
            max_gap: 8,
            quarantine_after: 3,
            quarantine_every: 5,
            buses: BTreeMap::new(),
            profiles: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

/// `[modbus.buses.<name>]`: one serial line. A serial device that does not
/// exist is not a configuration problem (USB adapters come and go); it is a
/// connection failure of every slave on the bus at run time.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct BusConfig {
    /// The serial device, e.g. `/dev/ttyS1` or `/dev/ttyUSB0`.
    pub path: PathBuf,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
    /// Defaults for the slaves on this bus (else those of `[modbus]`).
    pub interval: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
    pub retries: Option<u32>,
    pub max_gap: Option<u16>,
    pub quarantine_after: Option<u32>,
    pub quarantine_every: Option<u32>,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            path: PathBuf::new(),
            baud: 9600,
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
            interval: None,
            timeout: None,
            retries: None,
            max_gap: None,
            quarantine_after: None,
            quarantine_every: None,
        }
    }
}

/// The four Modbus data tables.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Deserialize, Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RegisterTable {
    /// Coils (function 01), one bit each.
    #[serde(alias = "coils")]
    Coil,
    /// Discrete inputs (function 02), one bit each.
    #[serde(alias = "discrete_input", alias = "discrete_inputs")]
    Discrete,
    /// Holding registers (function 03), 16 bits each.
    #[default]
    #[serde(alias = "holding_register", alias = "holding_registers")]
    Holding,
    /// Input registers (function 04), 16 bits each.
    #[serde(alias = "input_register", alias = "input_registers")]
    Input,
}

impl RegisterTable {
    /// Coils and discrete inputs hold bits; the others 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, RegisterTable::Coil | RegisterTable::Discrete)
    }
    /// Most items one request may read (Modbus application protocol §6).
    pub fn max_per_request(self) -> u16 {
        if self.is_bits() {
            2000
        } else {
            125
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RegisterTable::Coil => "coil",
            RegisterTable::Discrete => "discrete",
            RegisterTable::Holding => "holding",
            RegisterTable::Input => "input",
        }
    }
}

/// How a point's raw value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PointType {
    /// A coil or discrete input; on a register, "not zero".
    Bool,
    /// One bit of a register (`bit = 0..15`).
    Bit,
    /// Two bits of a register (`up_bit`, `down_bit`) giving `direction`.
    UpDown,
    U16,
    I16,
    /// Two registers; `order` says how their bytes make the value.
    U32,
    I32,
    F32,
    /// High (first) byte of a register, unsigned.
    U8High,
    /// Low (second) byte of a register, unsigned.
    U8Low,
    /// High byte, signed (two's complement).
    I8High,
    /// Low byte, signed.
    I8Low,
}

impl PointType {
    pub fn as_str(self) -> &'static str {
        match self {
            PointType::Bool => "bool",
            PointType::Bit => "bit",
            PointType::UpDown => "up_down",
            PointType::U16 => "u16",
            PointType::I16 => "i16",
            PointType::U32 => "u32",
            PointType::I32 => "i32",
            PointType::F32 => "f32",
            PointType::U8High => "u8_high",
            PointType::U8Low => "u8_low",
            PointType::I8High => "i8_high",
            PointType::I8Low => "i8_low",
        }
    }
    /// Registers the value occupies.
    pub fn registers(self) -> u32 {
        if self.is_32bit() {
            2
        } else {
            1
        }
    }
    pub fn is_32bit(self) -> bool {
        matches!(self, PointType::U32 | PointType::I32 | PointType::F32)
    }
    /// Reads single bits (which may be shared with other points).
    pub fn is_flag(self) -> bool {
        matches!(self, PointType::Bool | PointType::Bit | PointType::UpDown)
    }
    /// Bits of its register a point of this type reads (for overlap checks).
    fn mask(self, bit: u32, up: u32, down: u32) -> u16 {
        let one = |b: u32| if b < 16 { 1u16 << b } else { 0 };
        match self {
            PointType::Bit => one(bit),
            PointType::UpDown => one(up) | one(down),
            PointType::U8High | PointType::I8High => 0xFF00,
            PointType::U8Low | PointType::I8Low => 0x00FF,
            _ => 0xFFFF,
        }
    }
}

/// Byte order of a 32-bit value over its two registers, with A the most
/// significant byte: `ABCD` big-endian (high word first), `CDAB` low word
/// first, `BADC` bytes swapped in each word, `DCBA` little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
pub enum WordOrder {
    #[default]
    #[serde(rename = "ABCD")]
    Abcd,
    #[serde(rename = "CDAB")]
    Cdab,
    #[serde(rename = "BADC")]
    Badc,
    #[serde(rename = "DCBA")]
    Dcba,
}

/// The canonical elevator fields (SPEC §2) a point can feed, and the fault
/// bitmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ElevatorField {
    Floor,
    Moving,
    Direction,
    Door,
    DoorZone,
    Occupied,
    Mode,
    FaultCode,
    FaultBits,
    Speed,
    AlarmButton,
}

impl ElevatorField {
    pub fn as_str(self) -> &'static str {
        match self {
            ElevatorField::Floor => "floor",
            ElevatorField::Moving => "moving",
            ElevatorField::Direction => "direction",
            ElevatorField::Door => "door",
            ElevatorField::DoorZone => "door_zone",
            ElevatorField::Occupied => "occupied",
            ElevatorField::Mode => "mode",
            ElevatorField::FaultCode => "fault_code",
            ElevatorField::FaultBits => "fault_bits",
            ElevatorField::Speed => "speed",
            ElevatorField::AlarmButton => "alarm_button",
        }
    }
    /// An on/off field: several points for it are combined with OR.
    pub fn is_flag(self) -> bool {
        matches!(
            self,
            ElevatorField::Moving
                | ElevatorField::DoorZone
                | ElevatorField::Occupied
                | ElevatorField::AlarmButton
        )
    }
    /// Takes `scale` and `offset`.
    pub fn is_scalable(self) -> bool {
        matches!(self, ElevatorField::Floor | ElevatorField::Speed)
    }
}

/// A value in a point's `values` table, `default` or `value`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Literal {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Float(x) => write!(f, "{x}"),
            Literal::Text(s) => write!(f, "\"{s}\""),
        }
    }
}

/// A canonical value a point produces, already checked against its field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Bool(bool),
    Int(i64),
    Float(f64),
    Direction(TravelDirection),
    Door(CarDoor),
    Mode(ElevatorMode),
}

/// `literal` as a value of `field`, or why it cannot be one.
pub fn parse_target(field: ElevatorField, literal: &Literal) -> Result<Target, String> {
    use ElevatorField as F;
    let bad = |expected: &str| {
        format!(
            "{literal} is not a value of `{}`; expected {expected}",
            field.as_str()
        )
    };
    match (field, literal) {
        (f, Literal::Bool(b)) if f.is_flag() => Ok(Target::Bool(*b)),
        (f, _) if f.is_flag() => Err(bad("true or false")),
        (F::Floor, Literal::Int(i)) if i32::try_from(*i).is_ok() => Ok(Target::Int(*i)),
        (F::Floor, _) => Err(bad("a whole number (the floor)")),
        (F::FaultCode | F::FaultBits, Literal::Int(i)) if u32::try_from(*i).is_ok() => {
            Ok(Target::Int(*i))
        }
        (F::FaultCode | F::FaultBits, _) => Err(bad("a whole number from 0 to 4294967295")),
        (F::Speed, Literal::Int(i)) => Ok(Target::Float(*i as f64)),
        (F::Speed, Literal::Float(x)) if x.is_finite() => Ok(Target::Float(*x)),
        (F::Speed, _) => Err(bad("a number (m/s)")),
        (F::Direction, Literal::Text(s)) => match s.as_str() {
            "up" => Ok(Target::Direction(TravelDirection::Up)),
            "down" => Ok(Target::Direction(TravelDirection::Down)),
            "none" => Ok(Target::Direction(TravelDirection::None)),
            _ => Err(bad("\"up\", \"down\" or \"none\"")),
        },
        (F::Door, Literal::Text(s)) => match s.as_str() {
            "open" => Ok(Target::Door(CarDoor::Open)),
            "closed" => Ok(Target::Door(CarDoor::Closed)),
            "opening" => Ok(Target::Door(CarDoor::Opening)),
            "closing" => Ok(Target::Door(CarDoor::Closing)),
            _ => Err(bad("\"open\", \"closed\", \"opening\" or \"closing\"")),
        },
        (F::Mode, Literal::Text(s)) => match s.as_str() {
            "normal" => Ok(Target::Mode(ElevatorMode::Normal)),
            "inspection" => Ok(Target::Mode(ElevatorMode::Inspection)),
            "out_of_service" => Ok(Target::Mode(ElevatorMode::OutOfService)),
            "fire" => Ok(Target::Mode(ElevatorMode::Fire)),
            "earthquake" => Ok(Target::Mode(ElevatorMode::Earthquake)),
            "power_backup" => Ok(Target::Mode(ElevatorMode::PowerBackup)),
            "other" => Ok(Target::Mode(ElevatorMode::Other)),
            _ => Err(bad("\"normal\", \"inspection\", \"out_of_service\", \"fire\", \"earthquake\", \"power_backup\" or \"other\"")),
        },
        (F::Direction, _) => Err(bad("\"up\", \"down\" or \"none\"")),
        (F::Door, _) => Err(bad("\"open\", \"closed\", \"opening\" or \"closing\"")),
        (F::Mode, _) => Err(bad("a mode name such as \"normal\" or \"inspection\"")),
        // Flags are handled above.
        (_, _) => Err(bad("a value")),
    }
}

/// A raw-value key of a `values` table: decimal (`"12"`, `"-1"`) or hex (`"0x1A"`).
pub fn parse_raw_key(s: &str) -> Option<i64> {
    let t = s.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return i64::from_str_radix(hex, 16).ok();
        }
        return None;
    }
    let digits = t.strip_prefix('-').unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// One point of a register map: where a canonical field is read.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct PointConfig {
    /// The canonical field fed (required).
    pub field: Option<ElevatorField>,
    /// Default `holding`.
    pub table: RegisterTable,
    /// Register or bit address, 0-65535 (protocol addresses, counted from 0).
    pub address: Option<u32>,
    /// Default `bool` on coils and discrete inputs, `u16` on registers.
    #[serde(rename = "type")]
    pub kind: Option<PointType>,
    /// `type = "bit"`: which bit, 0 (least significant) to 15.
    pub bit: Option<u32>,
    /// `type = "up_down"`: the bits meaning "moving up" and "moving down".
    pub up_bit: Option<u32>,
    pub down_bit: Option<u32>,
    /// 32-bit types: byte order, default `ABCD`.
    pub order: Option<WordOrder>,
    /// `floor` and `speed`: value = raw × scale + offset.
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    /// Flags (`bool`, `bit`): true when the bit is clear.
    pub invert: bool,
    /// Raw value (decimal or `0x` hex, as a string key) to canonical value.
    pub values: BTreeMap<String, Literal>,
    /// Used for a raw value not in `values`; without it such a value leaves
    /// the field out of the sample (it keeps its last known value).
    pub default: Option<Literal>,
    /// A fixed value, for a field the device does not report (no address).
    pub value: Option<Literal>,
}

impl PointConfig {
    /// The type, with its default for the table.
    pub fn effective_type(&self) -> PointType {
        self.kind.unwrap_or(if self.table.is_bits() {
            PointType::Bool
        } else {
            PointType::U16
        })
    }
}

/// Readable address ranges per table, inclusive: `{ holding = [[0, 12], [16, 18]] }`.
pub type ReadableRanges = BTreeMap<RegisterTable, Vec<[u32; 2]>>;

/// `[modbus.profiles.<name>]`, and the built-in profiles (same schema).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ProfileConfig {
    /// Address ranges the device answers, per table. A request never spans
    /// an address outside them. A table not listed is readable everywhere.
    pub readable: ReadableRanges,
    pub points: Vec<PointConfig>,
}

/// `[devices.modbus]`: how one elevator is polled.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct DeviceModbusConfig {
    /// Modbus TCP: `"host:port"` (port usually 502).
    pub tcp: Option<String>,
    /// Modbus RTU: the name of a `[modbus.buses.<name>]` table.
    pub bus: Option<String>,
    /// Slave (unit) id: 1-247 on a bus; on TCP default 255.
    pub slave: Option<u8>,
    /// A `[modbus.profiles.<name>]` or built-in profile (`monitor-box`) ...
    pub profile: Option<String>,
    /// ... or a register map of its own.
    pub readable: ReadableRanges,
    pub points: Vec<PointConfig>,
    /// Overrides of the bus's or `[modbus]`'s settings.
    pub interval: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
    pub retries: Option<u32>,
    pub max_gap: Option<u16>,
    pub quarantine_after: Option<u32>,
    pub quarantine_every: Option<u32>,
}

/// Poll settings of one device, after device > bus > `[modbus]` resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSettings {
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub max_gap: u16,
    pub quarantine_after: u32,
    pub quarantine_every: u32,
}

/// Names of the built-in profiles.
pub const BUILTIN_PROFILES: &[&str] = &["monitor-box"];

/// A built-in profile, parsed from its TOML file in `src/sources/modbus/profiles/`.
pub fn builtin_profile(name: &str) -> Option<&'static ProfileConfig> {
    static MONITOR_BOX: OnceLock<ProfileConfig> = OnceLock::new();
    match name {
        "monitor-box" => Some(MONITOR_BOX.get_or_init(|| {
            // Tested to parse and to pass `check`.
            toml::from_str(include_str!("../sources/modbus/profiles/monitor-box.toml"))
                .expect("the built-in profile monitor-box parses")
        })),
        _ => None,
    }
}

impl ModbusConfig {
    /// The settings of a device: its own, else its bus's, else these.
    pub fn settings(&self, dev: &DeviceModbusConfig) -> PollSettings {
        let bus = dev.bus.as_ref().and_then(|b| self.buses.get(b));
        macro_rules! pick {
            ($k:ident) => {
                dev.$k.or_else(|| bus.and_then(|b| b.$k))
            };
        }
        PollSettings {
            interval: pick!(interval).unwrap_or(self.interval).0,
            timeout: pick!(timeout).unwrap_or(self.timeout).0,
            retries: pick!(retries).unwrap_or(self.retries),
            max_gap: pick!(max_gap).unwrap_or(self.max_gap),
            quarantine_after: pick!(quarantine_after).unwrap_or(self.quarantine_after),
            quarantine_every: pick!(quarantine_every).unwrap_or(self.quarantine_every),
        }
    }

    /// A profile by name: configured, else built-in.
    pub fn profile(&self, name: &str) -> Option<&ProfileConfig> {
        self.profiles.get(name).or_else(|| builtin_profile(name))
    }

    /// The register map of a device: its profile's, or its own points.
    pub fn map_of<'a>(
        &'a self,
        dev: &'a DeviceModbusConfig,
    ) -> Option<(&'a ReadableRanges, &'a [PointConfig])> {
        match &dev.profile {
            Some(name) => self
                .profile(name)
                .map(|p| (&p.readable, p.points.as_slice())),
            None if !dev.points.is_empty() => Some((&dev.readable, dev.points.as_slice())),
            None => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Checks

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A problem found by [`check`], at a key path from the file's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: Vec<Seg>,
    pub message: String,
}

impl Issue {
    /// The path as the loader prints it (`devices[5].modbus.bus`).
    pub fn key_path(&self) -> String {
        let mut s = String::new();
        for (i, seg) in self.path.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        s.push('.');
                    }
                    s.push_str(k);
                }
                Seg::Index(n) => s.push_str(&format!("[{n}]")),
            }
        }
        s
    }
}

#[derive(Clone)]
struct At(Vec<Seg>);

impl At {
    fn key(&self, k: &str) -> At {
        let mut p = self.0.clone();
        p.push(Seg::Key(k.to_string()));
        At(p)
    }
    fn index(&self, i: usize) -> At {
        let mut p = self.0.clone();
        p.push(Seg::Index(i));
        At(p)
    }
}

struct Out(Vec<Issue>);

impl Out {
    fn push(&mut self, at: &At, message: impl Into<String>) {
        self.0.push(Issue {
            path: at.0.clone(),
            message: message.into(),
        });
    }
}

/// Baud rates accepted on a bus.
pub const BAUD_RATES: &[u32] = &[
    1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400, 460800, 921600,
];

/// A device as the loader parsed it, with its index in the file's
/// `[[devices]]` (for key paths).
pub struct CheckedDevice<'a> {
    pub index: usize,
    pub id: &'a str,
    pub is_elevator: bool,
    pub modbus: Option<&'a DeviceModbusConfig>,
}

/// Checks `[modbus]` and every `[devices.modbus]`: settings, buses, profiles
/// and register maps. Problems come back with key paths from the root.
pub fn check(modbus: &ModbusConfig, devices: &[CheckedDevice<'_>]) -> Vec<Issue> {
    let mut out = Out(Vec::new());
    let root = At(vec![Seg::Key("modbus".into())]);
    check_settings(
        &root,
        &Settings {
            interval: Some(modbus.interval),
            timeout: Some(modbus.timeout),
            retries: Some(modbus.retries),
            max_gap: Some(modbus.max_gap),
            quarantine_after: Some(modbus.quarantine_after),
            quarantine_every: Some(modbus.quarantine_every),
        },
        &mut out,
    );

    let mut paths: BTreeMap<&PathBuf, &str> = BTreeMap::new();
    for (name, bus) in &modbus.buses {
        let at = root.key("buses").key(name);
        check_bus(&at, bus, &mut out);
        if !bus.path.as_os_str().is_empty() {
            if let Some(other) = paths.get(&bus.path) {
                out.push(
                    &at.key("path"),
                    format!(
                        "`{}` is already the path of bus `{other}`; one serial port is one bus (put all its slaves on one bus)",
                        bus.path.display()
                    ),
                );
            } else {
                paths.insert(&bus.path, name);
            }
        }
    }

    for (name, profile) in &modbus.profiles {
        let at = root.key("profiles").key(name);
        if BUILTIN_PROFILES.contains(&name.as_str()) {
            out.push(
                &at,
                format!("`{name}` is the name of a built-in profile; give this profile another name (to change the built-in one, copy it under a new name)"),
            );
        }
        check_map(&at, &profile.readable, &profile.points, &mut out);
    }

    // (bus, slave) -> first device.
    let mut on_bus: BTreeMap<(&str, u8), &str> = BTreeMap::new();
    for d in devices {
        let Some(m) = d.modbus else { continue };
        let at = At(vec![Seg::Key("devices".into()), Seg::Index(d.index)]).key("modbus");
        if !d.is_elevator {
            out.push(
                &at,
                "Modbus polling applies only to elevators (`kind = \"elevator\"`): a poll becomes an elevator event",
            );
            continue;
        }
        check_settings(
            &at,
            &Settings {
                interval: m.interval,
                timeout: m.timeout,
                retries: m.retries,
                max_gap: m.max_gap,
                quarantine_after: m.quarantine_after,
                quarantine_every: m.quarantine_every,
            },
            &mut out,
        );
        match (&m.tcp, &m.bus) {
            (Some(_), Some(_)) => out.push(
                &at.key("bus"),
                "set either `tcp` (Modbus TCP, \"host:port\") or `bus` (Modbus RTU on a [modbus.buses.<name>] line), not both",
            ),
            (None, None) => out.push(
                &at,
                "says neither how to reach the device: set `tcp = \"host:port\"` (Modbus TCP) or `bus = \"<name>\"` (Modbus RTU on a [modbus.buses.<name>] line)",
            ),
            // Several devices may read one TCP unit (a group controller
            // exposing each car in its own registers); each has its own
            // connection.
            (Some(addr), None) => {
                if let Err(e) = check_tcp_address(addr) {
                    out.push(&at.key("tcp"), e);
                }
            }
            (None, Some(bus)) => {
                if !modbus.buses.contains_key(bus) {
                    let declared: Vec<&str> = modbus.buses.keys().map(String::as_str).collect();
                    let list = if declared.is_empty() {
                        "none is declared".to_string()
                    } else {
                        format!("declared: {}", declared.join(", "))
                    };
                    out.push(
                        &at.key("bus"),
                        format!("bus `{bus}` is not declared; add a [modbus.buses.{bus}] section with its `path` ({list})"),
                    );
                }
                match m.slave {
                    None => out.push(
                        &at.key("slave"),
                        "a device on a bus needs its `slave` id (1-247; the monitoring box uses 247)",
                    ),
                    Some(0) => out.push(
                        &at.key("slave"),
                        "slave 0 is the broadcast address, which never answers; use the device's id (1-247)",
                    ),
                    Some(s) if s > 247 => out.push(
                        &at.key("slave"),
                        format!("slave {s} is out of range; on a serial bus ids are 1-247"),
                    ),
                    Some(s) => {
                        if let Some(other) = on_bus.get(&(bus.as_str(), s)) {
                            out.push(
                                &at.key("slave"),
                                format!("slave {s} on bus `{bus}` is already device `{other}`; two devices on one bus need different slave ids"),
                            );
                        } else {
                            on_bus.insert((bus, s), d.id);
                        }
                    }
                }
            }
        }
        match (&m.profile, m.points.is_empty()) {
            (Some(_), false) => out.push(
                &at.key("points"),
                "set either `profile` (a named register map) or `points` (a map of this device's own), not both",
            ),
            (Some(name), true) => {
                if modbus.profile(name).is_none() {
                    let mut names: Vec<&str> = BUILTIN_PROFILES.to_vec();
                    names.extend(
                        modbus
                            .profiles
                            .keys()
                            .map(String::as_str)
                            .filter(|n| !BUILTIN_PROFILES.contains(n)),
                    );
                    out.push(
                        &at.key("profile"),
                        format!(
                            "unknown profile `{name}`; expected one of: {} (or a [modbus.profiles.{name}] section)",
                            names.join(", ")
                        ),
                    );
                }
                if !m.readable.is_empty() {
                    out.push(
                        &at.key("readable"),
                        "`readable` belongs to the register map; with `profile` it is the profile's",
                    );
                }
            }
            (None, false) => check_map(&at, &m.readable, &m.points, &mut out),
            (None, true) => out.push(
                &at,
                "has no register map: set `profile = \"monitor-box\"` (or another profile) or list `points`",
            ),
        }
    }
    out.0
}

struct Settings {
    interval: Option<HumanDuration>,
    timeout: Option<HumanDuration>,
    retries: Option<u32>,
    max_gap: Option<u16>,
    quarantine_after: Option<u32>,
    quarantine_every: Option<u32>,
}

fn check_settings(at: &At, s: &Settings, out: &mut Out) {
    if let Some(d) = s.interval {
        if d.0 < Duration::from_millis(10) {
            out.push(
                &at.key("interval"),
                format!("{d} is too short; use at least 10ms"),
            );
        }
    }
    if let Some(d) = s.timeout {
        if d.0 < Duration::from_millis(1) {
            out.push(&at.key("timeout"), "must be longer than 0s");
        } else if d.0 > Duration::from_secs(60) {
            out.push(
                &at.key("timeout"),
                format!("{d} is too long; use at most 60s"),
            );
        }
    }
    if let Some(r) = s.retries {
        if r > 10 {
            out.push(
                &at.key("retries"),
                format!("{r} is too many; use at most 10"),
            );
        }
    }
    if let Some(g) = s.max_gap {
        if g > 123 {
            out.push(
                &at.key("max_gap"),
                format!(
                    "{g} is too large; a request reads at most 125 registers, so use at most 123"
                ),
            );
        }
    }
    for (key, v) in [
        ("quarantine_after", s.quarantine_after),
        ("quarantine_every", s.quarantine_every),
    ] {
        if v == Some(0) {
            out.push(&at.key(key), "must be at least 1");
        }
    }
}

fn check_bus(at: &At, bus: &BusConfig, out: &mut Out) {
    if bus.path.as_os_str().is_empty() {
        out.push(
            &at.key("path"),
            "missing required key `path` (the serial device, e.g. \"/dev/ttyS1\" or \"/dev/ttyUSB0\")",
        );
    }
    if !BAUD_RATES.contains(&bus.baud) {
        let list: Vec<String> = BAUD_RATES.iter().map(u32::to_string).collect();
        out.push(
            &at.key("baud"),
            format!(
                "{} is not a serial baud rate; use one of {}",
                bus.baud,
                list.join(", ")
            ),
        );
    }
    if !matches!(bus.data_bits, 7 | 8) {
        out.push(
            &at.key("data_bits"),
            format!("{} data bits: use 8 (Modbus RTU) or 7", bus.data_bits),
        );
    }
    if !matches!(bus.stop_bits, 1 | 2) {
        out.push(
            &at.key("stop_bits"),
            format!("{} stop bits: use 1 or 2", bus.stop_bits),
        );
    }
    check_settings(
        at,
        &Settings {
            interval: bus.interval,
            timeout: bus.timeout,
            retries: bus.retries,
            max_gap: bus.max_gap,
            quarantine_after: bus.quarantine_after,
            quarantine_every: bus.quarantine_every,
        },
        out,
    );
}

/// `host:port`, `[v6]:port`.
fn check_tcp_address(addr: &str) -> Result<(), String> {
    let example = "write it as \"host:port\", e.g. \"192.168.10.21:502\"";
    let Some((host, port)) = addr.trim().rsplit_once(':') else {
        return Err(format!("`{addr}` has no port; {example}"));
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("`{addr}` has no host; {example}"));
    }
    if host.contains(':') && !addr.trim().starts_with('[') {
        return Err(format!(
            "`{addr}`: write an IPv6 address in brackets, e.g. \"[fd00::21]:502\""
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("`{port}` is not a port (1-65535); {example}")),
    }
}

/// Checks one register map: its readable ranges and points.
fn check_map(at: &At, readable: &ReadableRanges, points: &[PointConfig], out: &mut Out) {
    for (table, ranges) in readable {
        for (i, [lo, hi]) in ranges.iter().enumerate() {
            let here = at.key("readable").key(table.as_str()).index(i);
            if *lo > 65535 || *hi > 65535 {
                out.push(&here, format!("[{lo}, {hi}]: addresses are 0-65535"));
            } else if lo > hi {
                out.push(
                    &here,
                    format!("[{lo}, {hi}]: the first address must not be above the last"),
                );
            }
        }
    }
    if points.is_empty() {
        out.push(&at.key("points"), "a register map needs at least one point");
        return;
    }
    let pts = at.key("points");
    // Field -> first point feeding it (non-flag fields take one point).
    let mut fields: BTreeMap<ElevatorField, usize> = BTreeMap::new();
    // (table, register) -> [(point, mask)] of value (non-flag) points.
    let mut occupied: BTreeMap<(RegisterTable, u32), Vec<(usize, u16)>> = BTreeMap::new();
    for (i, p) in points.iter().enumerate() {
        let here = pts.index(i);
        let Some(field) = p.field else {
            out.push(
                &here.key("field"),
                "missing required key `field` (floor, moving, direction, door, door_zone, occupied, mode, fault_code, fault_bits, speed or alarm_button)",
            );
            continue;
        };
        if let Some(&first) = fields.get(&field) {
            if !field.is_flag() {
                out.push(
                    &here.key("field"),
                    format!(
                        "`{}` is already read by points[{first}]; only on/off fields (moving, door_zone, occupied, alarm_button) may have several points, combined with OR",
                        field.as_str()
                    ),
                );
            }
        } else {
            fields.insert(field, i);
        }
        if let Some(v) = &p.value {
            check_fixed(&here, p, field, v, out);
            continue;
        }
        if check_point(&here, p, field, readable, out) {
            let t = p.effective_type();
            let (Some(addr), false) = (p.address, p.table.is_bits() || t.is_flag()) else {
                continue;
            };
            let mask = t.mask(p.bit.unwrap_or(0), 0, 0);
            for reg in addr..addr + t.registers() {
                let slot = occupied.entry((p.table, reg)).or_default();
                if let Some(&(j, _)) = slot.iter().find(|(_, m)| m & mask != 0) {
                    out.push(
                        &here.key("address"),
                        format!(
                            "{} register {reg} is already read as a value by points[{j}] (`{}`); two values cannot share the same bits (check the address)",
                            p.table.as_str(),
                            points[j].field.map_or("?", ElevatorField::as_str)
                        ),
                    );
                    break;
                }
                slot.push((i, mask));
            }
        }
    }
}

/// A point with a fixed `value`: nothing else to say about it.
fn check_fixed(at: &At, p: &PointConfig, field: ElevatorField, v: &Literal, out: &mut Out) {
    if let Err(e) = parse_target(field, v) {
        out.push(&at.key("value"), e);
    }
    let set: Vec<&str> = [
        ("address", p.address.is_some()),
        ("type", p.kind.is_some()),
        ("bit", p.bit.is_some()),
        ("up_bit", p.up_bit.is_some()),
        ("down_bit", p.down_bit.is_some()),
        ("order", p.order.is_some()),
        ("scale", p.scale.is_some()),
        ("offset", p.offset.is_some()),
        ("values", !p.values.is_empty()),
        ("default", p.default.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, on)| on.then_some(k))
    .collect();
    if let Some(first) = set.first() {
        out.push(
            &at.key(first),
            format!(
                "a point with a fixed `value` reads no register; remove {}",
                set.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
}

/// Checks a register point; true when its location is sound (for the overlap pass).
fn check_point(
    at: &At,
    p: &PointConfig,
    field: ElevatorField,
    readable: &ReadableRanges,
    out: &mut Out,
) -> bool {
    let t = p.effective_type();
    let tname = t.as_str();
    let mut sound = true;
    let Some(addr) = p.address else {
        out.push(
            &at.key("address"),
            "missing required key `address` (0-65535; or a fixed `value`)",
        );
        return false;
    };
    if addr > 65535 {
        out.push(
            &at.key("address"),
            format!("address {addr} is out of range; addresses are 0-65535"),
        );
        sound = false;
    } else if addr + t.registers() - 1 > 65535 {
        out.push(
            &at.key("address"),
            format!("a value of type {tname} needs registers {addr} and {}, beyond the last address 65535", addr + 1),
        );
        sound = false;
    }
    if p.table.is_bits() && t != PointType::Bool {
        out.push(
            &at.key("type"),
            format!(
                "a {} holds one bit: use type = \"bool\" (not \"{tname}\")",
                p.table.as_str()
            ),
        );
        return false;
    }

    // Type-specific keys.
    let bit_ok = |b: Option<u32>, key: &str, out: &mut Out| -> bool {
        match b {
            None => {
                out.push(
                    &at.key(key),
                    format!("type = \"{tname}\" needs `{key}` (0-15)"),
                );
                false
            }
            Some(b) if b > 15 => {
                out.push(
                    &at.key(key),
                    format!(
                        "bit {b} does not exist; a register has bits 0 (least significant) to 15"
                    ),
                );
                false
            }
            Some(_) => true,
        }
    };
    match t {
        PointType::Bit => sound &= bit_ok(p.bit, "bit", out),
        PointType::UpDown => {
            let up = bit_ok(p.up_bit, "up_bit", out);
            let down = bit_ok(p.down_bit, "down_bit", out);
            if up && down && p.up_bit == p.down_bit {
                out.push(&at.key("down_bit"), "must differ from `up_bit`");
            }
            sound &= up && down;
        }
        _ => {}
    }
    if t != PointType::Bit && p.bit.is_some() {
        out.push(
            &at.key("bit"),
            format!("`bit` applies only to type = \"bit\" (this point is \"{tname}\")"),
        );
    }
    if t != PointType::UpDown {
        for (key, v) in [("up_bit", p.up_bit), ("down_bit", p.down_bit)] {
            if v.is_some() {
                out.push(
                    &at.key(key),
                    format!(
                        "`{key}` applies only to type = \"up_down\" (this point is \"{tname}\")"
                    ),
                );
            }
        }
    }
    if p.order.is_some() && !t.is_32bit() {
        out.push(
            &at.key("order"),
            format!("`order` applies only to 32-bit types (u32, i32, f32), not \"{tname}\""),
        );
    }

    // Type against field.
    let fname = field.as_str();
    match (field, t) {
        (ElevatorField::Direction, PointType::UpDown) => {}
        (_, PointType::UpDown) => out.push(
            &at.key("type"),
            format!("type = \"up_down\" gives a direction; use it for field = \"direction\", not `{fname}`"),
        ),
        (ElevatorField::FaultBits, PointType::U16 | PointType::U32 | PointType::U8High | PointType::U8Low) => {}
        (ElevatorField::FaultBits, _) => out.push(
            &at.key("type"),
            format!("a fault bitmap is read as u16, u32, u8_high or u8_low, not \"{tname}\""),
        ),
        (ElevatorField::Floor | ElevatorField::Speed, _) => {}
        (_, PointType::F32) => out.push(
            &at.key("type"),
            format!("type = \"f32\" applies to floor and speed, not `{fname}`"),
        ),
        _ => {}
    }
    let needs_values = match field {
        ElevatorField::Mode => true,
        ElevatorField::Direction => t != PointType::UpDown,
        ElevatorField::Door => !t.is_flag(),
        _ => false,
    };
    if needs_values && p.values.is_empty() {
        let hint = match field {
            ElevatorField::Mode => "e.g. values = { \"0\" = \"normal\", \"1\" = \"inspection\" }, default = \"other\"",
            ElevatorField::Direction => "e.g. values = { \"1\" = \"up\", \"2\" = \"down\" }, default = \"none\" (or type = \"up_down\" with up_bit and down_bit)",
            _ => "e.g. values = { \"0\" = \"closed\", \"1\" = \"open\", \"2\" = \"opening\", \"3\" = \"closing\" } (or type = \"bit\": set = open)",
        };
        out.push(
            &at.key("values"),
            format!("`{fname}` read as \"{tname}\" needs a `values` table: {hint}"),
        );
    }
    if field == ElevatorField::FaultBits || t == PointType::UpDown || t == PointType::F32 {
        for (key, on) in [
            ("values", !p.values.is_empty()),
            ("default", p.default.is_some()),
        ] {
            if on {
                out.push(
                    &at.key(key),
                    format!("`{key}` does not apply to `{fname}` read as \"{tname}\""),
                );
            }
        }
    } else {
        let mut seen: BTreeMap<i64, &str> = BTreeMap::new();
        for (k, v) in &p.values {
            let here = at.key("values").key(k);
            match parse_raw_key(k) {
                None => out.push(
                    &here,
                    format!("`{k}` is not a raw value; write a whole number in quotes, decimal (\"12\", \"-1\") or hex (\"0x1A\")"),
                ),
                Some(n) => {
                    if t.is_flag() && !(0..=1).contains(&n) {
                        out.push(&here, format!("a {tname} reads 0 or 1, never {k}"));
                    }
                    if let Some(other) = seen.insert(n, k) {
                        out.push(&here, format!("`{k}` is the same raw value as `{other}`"));
                    }
                }
            }
            if let Err(e) = parse_target(field, v) {
                out.push(&here, e);
            }
        }
        if let Some(d) = &p.default {
            if p.values.is_empty() {
                out.push(
                    &at.key("default"),
                    "`default` applies to raw values not in `values`; there is no `values` table",
                );
            } else if let Err(e) = parse_target(field, d) {
                out.push(&at.key("default"), e);
            }
        }
    }
    for (key, v) in [("scale", p.scale), ("offset", p.offset)] {
        let Some(v) = v else { continue };
        if !field.is_scalable() {
            out.push(
                &at.key(key),
                format!("`{key}` applies to floor and speed, not `{fname}`"),
            );
        } else if !v.is_finite() || (key == "scale" && v == 0.0) {
            out.push(&at.key(key), format!("{v} is not a usable {key}"));
        } else if !p.values.is_empty() {
            out.push(
                &at.key(key),
                format!("`{key}` does not apply when `values` translates the raw value"),
            );
        }
    }
    if p.invert && !(t == PointType::Bool || t == PointType::Bit) {
        out.push(
            &at.key("invert"),
            format!("`invert` applies to type = \"bool\" or \"bit\", not \"{tname}\""),
        );
    }

    // Readable ranges.
    if sound {
        if let Some(ranges) = readable.get(&p.table) {
            let last = addr + t.registers() - 1;
            let inside = merged_ranges(ranges)
                .iter()
                .any(|&(lo, hi)| lo <= addr && last <= hi);
            if !inside {
                let list: Vec<String> = ranges.iter().map(|[a, b]| format!("{a}-{b}")).collect();
                let what = if last > addr {
                    format!("registers {addr}-{last}")
                } else {
                    format!("address {addr}")
                };
                out.push(
                    &at.key("address"),
                    format!(
                        "{what} is outside this map's readable {} ranges ({})",
                        p.table.as_str(),
                        list.join(", ")
                    ),
                );
            }
        }
    }
    sound
}

/// Readable ranges as sorted, disjoint, non-adjacent inclusive pairs.
pub fn merged_ranges(ranges: &[[u32; 2]]) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = ranges
        .iter()
        .filter(|[a, b]| a <= b && *b <= 65535)
        .map(|[a, b]| (*a, *b))
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profile_parses_and_passes_check() {
        let p = builtin_profile("monitor-box").expect("parses");
        assert_eq!(p.points.len(), 9);
        let mut out = Out(Vec::new());
        check_map(
            &At(vec![Seg::Key("p".into())]),
            &p.readable,
            &p.points,
            &mut out,
        );
        assert!(out.0.is_empty(), "{:?}", out.0);
    }

    #[test]
    fn raw_keys() {
        assert_eq!(parse_raw_key("12"), Some(12));
        assert_eq!(parse_raw_key("-1"), Some(-1));
        assert_eq!(parse_raw_key("0x1A"), Some(26));
        for bad in ["", "-", "0x", "1.5", "+3", "x1", "0xZ"] {
            assert_eq!(parse_raw_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn ranges_merge() {
        assert_eq!(
            merged_ranges(&[[16, 18], [0, 12], [5, 6], [13, 13]]),
            [(0, 13), (16, 18)]
        );
    }

    #[test]
    fn tcp_addresses() {
        assert!(check_tcp_address("192.168.1.2:502").is_ok());
        assert!(check_tcp_address("box-3.local:1502").is_ok());
        assert!(check_tcp_address("[fd00::1]:502").is_ok());
        for bad in ["192.168.1.2", ":502", "host:0", "host:70000", "fd00::1:502"] {
            assert!(check_tcp_address(bad).is_err(), "{bad}");
        }
    }
}
