//! The alert transition (SPEC §5): one JSON object per `raised`, `escalated`
//! or `cleared`, identical on the uplink, in replay output and in the store.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// One level up, never above `critical`.
    pub fn escalated(self) -> Severity {
        match self {
            Severity::Low => Severity::Medium,
            Severity::Medium => Severity::High,
            Severity::High | Severity::Critical => Severity::Critical,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionState {
    Raised,
    Escalated,
    Cleared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    Resident,
    Household,
    Credential,
    Device,
    Elevator,
    Gateway,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Resident => "resident",
            SubjectKind::Household => "household",
            SubjectKind::Credential => "credential",
            SubjectKind::Device => "device",
            SubjectKind::Elevator => "elevator",
            SubjectKind::Gateway => "gateway",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
pub struct Subject {
    pub kind: SubjectKind,
    pub id: String,
}

/// Where the grid worker should go. Fields unknown for a subject are omitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Location {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<String>,
    /// The device concerned, for device-bound alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct AlertTransition {
    pub alert_id: String,
    pub revision: u32,
    pub state: TransitionState,
    pub rule: String,
    pub severity: Severity,
    pub compound: String,
    pub subject: Subject,
    pub location: Location,
    pub at: String,
    pub since: String,
    pub evidence: serde_json::Value,
    pub message: String,
}

impl AlertTransition {
    /// The JSON line, as published and printed.
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A ULID (`01JD0Z5K3W8Q9T7V6R5N4M3B2A`): 48-bit millisecond time and 80 bits
/// that the caller derives (we use a keyed hash of the alert's identity, so
/// that an alert re-raised from redelivered events after a crash gets the
/// same id and the platform de-duplicates it).
pub fn ulid(ms: i64, entropy: u128) -> String {
    let value: u128 =
        ((ms.max(0) as u128 & 0xFFFF_FFFF_FFFF) << 80) | (entropy & ((1u128 << 80) - 1));
    let mut out = [0u8; 26];
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 125 - i * 5;
        *slot = CROCKFORD[((value >> shift) & 0x1F) as usize];
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulid_is_26_crockford_chars_ordered_by_time() {
        let a = ulid(1_793_577_600_000, 42);
        let b = ulid(1_793_577_600_001, 0);
        assert_eq!(a.len(), 26);
        assert!(a.bytes().all(|c| CROCKFORD.contains(&c)));
        assert!(a < b);
        assert!(a.starts_with('0'));
    }

    #[test]
    fn severity_escalates_to_critical_and_stops() {
        assert_eq!(Severity::Low.escalated(), Severity::Medium);
        assert_eq!(Severity::High.escalated(), Severity::Critical);
        assert_eq!(Severity::Critical.escalated(), Severity::Critical);
    }
}
