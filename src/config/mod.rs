//! Configuration: the TOML schema (SPEC §3, §4) and its loader.
//!
//! Every table here is read without `deny_unknown_fields`; the loader instead
//! collects unknown keys with `serde_ignored`, so that `check` can report all
//! of them with their key paths and lines rather than stopping at the first.

mod load;
mod mapping;
pub mod modbus;
mod problem;

pub use load::{load, load_str};
pub use mapping::{FieldSource, FieldSpec, MappingConfig, OneOrMany};
pub use modbus::{DeviceModbusConfig, ModbusConfig};
pub use problem::{Problem, Problems};

use crate::alert::Severity;
use crate::time::HumanDuration;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A validated configuration, with paths resolved against the config file's folder.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where this configuration was read from.
    pub source: PathBuf,
    pub compound: String,
    pub timezone: Tz,
    pub language: Language,
    /// Resident roster (CSV), if any.
    pub roster: Option<PathBuf>,
    pub storage: StorageConfig,
    pub clock: ClockConfig,
    pub privacy: PrivacyConfig,
    pub devices: Vec<DeviceConfig>,
    pub rules: RulesConfig,
    pub local_mqtt: Option<LocalMqttConfig>,
    pub mappings: BTreeMap<String, MappingConfig>,
    pub platform: Option<PlatformConfig>,
    pub outbox: OutboxConfig,
    pub admin: AdminConfig,
    /// Modbus polling: defaults, serial buses, register-map profiles.
    pub modbus: ModbusConfig,
}

/// The file as written, before validation.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct RawConfig {
    pub compound: String,
    #[serde(default = "default_timezone")]
    pub timezone: String,
    #[serde(default)]
    pub language: Language,
    #[serde(default)]
    pub roster: Option<PathBuf>,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub clock: ClockConfig,
    #[serde(default)]
    pub privacy: PrivacyConfig,
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    #[serde(default)]
    pub rules: RulesConfig,
    #[serde(default)]
    pub local_mqtt: Option<LocalMqttConfig>,
    #[serde(default)]
    pub mappings: BTreeMap<String, MappingConfig>,
    #[serde(default)]
    pub platform: Option<PlatformConfig>,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub modbus: ModbusConfig,
}

fn default_timezone() -> String {
    "Asia/Shanghai".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum Language {
    #[default]
    #[serde(rename = "zh-CN")]
    ZhCn,
    #[serde(rename = "en")]
    En,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct StorageConfig {
    /// The sled database folder (state and outbox). Relative paths are
    /// resolved against the configuration file's folder; under systemd use
    /// the `StateDirectory`.
    pub path: PathBuf,
    /// sled page cache, bytes. sled's own default is 1 GiB; gateways have little RAM.
    pub cache_bytes: u64,
    /// Longest time a group commit waits to gather more events before it flushes.
    pub commit_interval: HumanDuration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: PathBuf::from("/var/lib/community-gateway/store"),
            cache_bytes: 1024 * 1024,
            commit_interval: HumanDuration(std::time::Duration::from_millis(5)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ClockConfig {
    /// Event timestamps further than this from the gateway's clock are replaced by receive time.
    pub max_skew: HumanDuration,
    /// A difference between wall-clock and monotonic progress larger than this is a clock step.
    pub jump_threshold: HumanDuration,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            max_skew: HumanDuration::secs(300),
            jump_threshold: HumanDuration::secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct PrivacyConfig {
    /// Replace unregistered credentials by a keyed hash in alerts.
    pub pseudonymize: bool,
    /// Secret key of that hash. Without it the key is derived from the compound
    /// id, which keeps pseudonyms stable but lets anyone who knows the id
    /// reverse short card numbers; `check` warns about it.
    pub key: Option<String>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            pseudonymize: true,
            key: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Access,
    Elevator,
    Other,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Access => "access",
            DeviceKind::Elevator => "elevator",
            DeviceKind::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct DeviceConfig {
    pub id: String,
    pub kind: DeviceKind,
    /// Human name used in alert messages (e.g. "12号楼1单元门").
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub building: Option<String>,
    #[serde(default)]
    pub unit: Option<String>,
    /// Grid responsible for this device's alerts; defaults to the grid most
    /// residents of its building belong to.
    #[serde(default)]
    pub grid: Option<String>,
    /// A compound gate (used by `card_sharing`).
    #[serde(default)]
    pub perimeter: bool,
    /// The device sends heartbeats; silence raises `device_offline`.
    #[serde(default)]
    pub heartbeat: bool,
    /// Elevators: lowest and highest served floor.
    #[serde(default)]
    pub lowest_floor: Option<i32>,
    #[serde(default)]
    pub highest_floor: Option<i32>,
    /// Elevators: rated speed in m/s.
    #[serde(default)]
    pub rated_speed: Option<f32>,
    /// Elevators: fault code -> severity and text.
    #[serde(default)]
    pub fault_codes: BTreeMap<String, FaultCodeConfig>,
    /// Other names the device reports itself by (serial number, vendor
    /// device name); events carrying them are attributed to this device.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Elevators: polled over Modbus (TCP or RTU) with a register map.
    #[serde(default)]
    pub modbus: Option<DeviceModbusConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct FaultCodeConfig {
    #[serde(default)]
    pub severity: Option<Severity>,
    pub text: String,
}

/// Declares a rule's parameter table with SPEC §4's defaults. Every rule has
/// `enabled`, `severity` and `escalate_after`; the rest are its thresholds.
macro_rules! rule_params {
    ($(#[$doc:meta])* $name:ident { severity: $sev:expr, escalate_after: $esc:expr $(, $field:ident : $ty:ty = $default:expr)* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
        #[serde(default)]
        pub struct $name {
            pub enabled: bool,
            pub severity: Severity,
            pub escalate_after: Option<HumanDuration>,
            $(pub $field: $ty,)*
        }
        impl Default for $name {
            fn default() -> Self {
                $name { enabled: true, severity: $sev, escalate_after: $esc, $($field: $default,)* }
            }
        }
    };
}

const fn d(secs: u64) -> HumanDuration {
    HumanDuration::secs(secs)
}
const M: u64 = 60;
const H: u64 = 3600;

rule_params!(ElderlyInactivity {
    severity: Severity::Medium,
    escalate_after: Some(d(24 * H)),
    after: HumanDuration = d(24 * H)
});
rule_params!(NotReturned {
    severity: Severity::Medium,
    escalate_after: Some(d(12 * H)),
    after: HumanDuration = d(12 * H)
});
rule_params!(GroupRental {
    severity: Severity::Low,
    escalate_after: None,
    window_days: u32 = 7,
    max_daily: u32 = 20,
    min_days: u32 = 3,
    max_credentials: u32 = 6
});
rule_params!(CardSharing {
    severity: Severity::Medium,
    escalate_after: None,
    window: HumanDuration = d(2 * M),
    cooldown: HumanDuration = d(H)
});
rule_params!(RepeatStranger {
    severity: Severity::Medium,
    escalate_after: None,
    days: u32 = 3,
    forget_after: HumanDuration = d(7 * 24 * H)
});
rule_params!(DeniedBurst {
    severity: Severity::Medium,
    escalate_after: None,
    count: u32 = 5,
    window: HumanDuration = d(2 * M),
    quiet: HumanDuration = d(10 * M)
});
rule_params!(DoorHeldOpen {
    severity: Severity::Medium,
    escalate_after: None,
    after: HumanDuration = d(120)
});
rule_params!(DoorForced {
    severity: Severity::High,
    escalate_after: None
});
rule_params!(ElevatorTrapped {
    severity: Severity::Critical,
    escalate_after: Some(d(5 * M)),
    in_zone_after: HumanDuration = d(90),
    out_of_zone_after: HumanDuration = d(15)
});
rule_params!(ElevatorDoorOpenMoving {
    severity: Severity::Critical,
    escalate_after: None,
    samples: u32 = 2
});
rule_params!(ElevatorOvertravel {
    severity: Severity::Critical,
    escalate_after: None
});
rule_params!(ElevatorStoppedOutsideZone {
    severity: Severity::High,
    escalate_after: None,
    after: HumanDuration = d(15)
});
rule_params!(ElevatorFault {
    severity: Severity::High,
    escalate_after: None,
    debounce: HumanDuration = d(5),
    clear_after: HumanDuration = d(30)
});
rule_params!(ElevatorOutOfService {
    severity: Severity::Medium,
    escalate_after: None,
    after: HumanDuration = d(30 * M),
    emergency_severity: Severity = Severity::High
});
rule_params!(ElevatorAbnormalUsage {
    severity: Severity::Low,
    escalate_after: None,
    door_cycles: u32 = 3,
    window: HumanDuration = d(15),
    overspeed_ratio: f64 = 1.15,
    overspeed_samples: u32 = 6,
    quiet: HumanDuration = d(60),
    overspeed_severity: Severity = Severity::High
});
rule_params!(
    /// `severity` applies to devices that are neither elevators nor access
    /// controllers; those use `elevator_severity` and `access_severity`.
    DeviceOffline { severity: Severity::Low, escalate_after: None,
    after: HumanDuration = d(90), failures: u32 = 5,
    elevator_severity: Severity = Severity::High, access_severity: Severity = Severity::Low });
rule_params!(GatewayHealth {
    severity: Severity::High,
    escalate_after: None,
    outbox_fill: f64 = 0.8,
    disk_free_min: f64 = 0.05
});

/// `[rules.<name>]` tables. A missing table means the rule runs with its defaults.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RulesConfig {
    pub elderly_inactivity: ElderlyInactivity,
    pub not_returned: NotReturned,
    pub group_rental: GroupRental,
    pub card_sharing: CardSharing,
    pub repeat_stranger: RepeatStranger,
    pub denied_burst: DeniedBurst,
    pub door_held_open: DoorHeldOpen,
    pub door_forced: DoorForced,
    pub elevator_trapped: ElevatorTrapped,
    pub elevator_door_open_moving: ElevatorDoorOpenMoving,
    pub elevator_overtravel: ElevatorOvertravel,
    pub elevator_stopped_outside_zone: ElevatorStoppedOutsideZone,
    pub elevator_fault: ElevatorFault,
    pub elevator_out_of_service: ElevatorOutOfService,
    pub elevator_abnormal_usage: ElevatorAbnormalUsage,
    pub device_offline: DeviceOffline,
    pub gateway_health: GatewayHealth,
}

/// Client-side TLS: a private CA and, for mutual TLS, a client certificate.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate chain (mutual TLS); needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Name to verify in the broker's certificate; default: `host`.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// The compound's local broker, where door controllers and elevator boxes publish.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct LocalMqttConfig {
    pub host: String,
    pub port: u16,
    /// Fixed client id of the persistent session; default `community-gateway-<compound>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: HumanDuration,
    pub tls: Option<TlsConfig>,
    /// Payloads larger than this (bytes) are rejected unread.
    pub max_payload: usize,
    /// Messages buffered between ingest and the rule engine; when full, ingest
    /// stops reading and the broker holds the rest (backpressure).
    pub queue: usize,
    pub subscriptions: Vec<SubscriptionConfig>,
}

impl Default for LocalMqttConfig {
    fn default() -> Self {
        LocalMqttConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: None,
            username: None,
            password: None,
            keep_alive: HumanDuration::secs(30),
            tls: None,
            max_payload: 64 * 1024,
            queue: 1024,
            subscriptions: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SubscriptionConfig {
    /// Topic filter (`+` and `#` wildcards).
    pub topic: String,
    /// `canonical`, a built-in preset (`hikvision`, `dahua`, `uhppoted`), or
    /// the name of a `[mappings.<name>]` table.
    #[serde(default = "default_format")]
    pub format: String,
    /// Every message on this subscription comes from this device.
    #[serde(default)]
    pub device: Option<String>,
    /// The device id is this level of the topic (0 = first).
    #[serde(default)]
    pub device_topic_level: Option<usize>,
    /// 0 or 1. QoS 1 is what makes acknowledgement after commit meaningful.
    #[serde(default = "default_qos")]
    pub qos: u8,
}

fn default_format() -> String {
    "canonical".into()
}

fn default_qos() -> u8 {
    1
}

/// The community platform's broker, over TLS.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct PlatformConfig {
    pub host: String,
    pub port: u16,
    /// Default `community-gateway-<compound>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: HumanDuration,
    /// Required unless `plaintext = true`.
    pub tls: Option<TlsConfig>,
    /// Connect without TLS. For tests on one machine only; a warning is
    /// logged at every connect.
    pub plaintext: bool,
    /// `{compound}` is replaced by the compound id.
    pub alerts_topic: String,
    pub status_topic: String,
    pub commands_topic: String,
    /// Alert transitions published and not yet acknowledged at once.
    pub inflight: u16,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            host: String::new(),
            port: 8883,
            client_id: None,
            username: None,
            password: None,
            keep_alive: HumanDuration::secs(30),
            tls: None,
            plaintext: false,
            alerts_topic: "community/{compound}/alerts".into(),
            status_topic: "community/{compound}/gateway/status".into(),
            commands_topic: "community/{compound}/commands".into(),
            inflight: 32,
        }
    }
}

/// Bounds of the store-and-forward outbox.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct OutboxConfig {
    pub max_entries: u64,
    pub max_bytes: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The local HTTP admin endpoint (`/metrics`, `/healthz`, `/readyz`, `/alerts`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// Address to listen on; keep it on localhost.
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl Config {
    /// `{compound}` replaced in a topic template.
    pub fn topic(&self, template: &str) -> String {
        template.replace("{compound}", &self.compound)
    }

    /// The MQTT client id for a connection: configured, or `community-gateway-<compound>`.
    pub fn client_id(&self, configured: &Option<String>) -> String {
        configured
            .clone()
            .unwrap_or_else(|| format!("community-gateway-{}", self.compound))
    }
}
