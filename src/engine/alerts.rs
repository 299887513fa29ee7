//! The alert lifecycle shared by every rule: raise once per (rule, subject),
//! escalate while neither acknowledged nor cleared, clear; one-shots with a
//! cooldown kept by the rule.

use super::timers::{Deadline, TimerKey};
use super::{Engine, StateKey};
use crate::alert::{ulid, AlertTransition, Location, Severity, Subject, TransitionState};
use crate::config::RulesConfig;
use crate::time::{Millis, Ts};
use serde::{Deserialize, Serialize};
use siphasher::sip128::Hasher128;
use std::hash::Hasher;

/// Every rule of SPEC §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    ElderlyInactivity,
    NotReturned,
    GroupRental,
    CardSharing,
    RepeatStranger,
    DeniedBurst,
    DoorHeldOpen,
    DoorForced,
    ElevatorTrapped,
    ElevatorDoorOpenMoving,
    ElevatorOvertravel,
    ElevatorStoppedOutsideZone,
    ElevatorFault,
    ElevatorOutOfService,
    ElevatorAbnormalUsage,
    DeviceOffline,
    GatewayHealth,
}

impl Rule {
    pub const ALL: [Rule; 17] = [
        Rule::ElderlyInactivity,
        Rule::NotReturned,
        Rule::GroupRental,
        Rule::CardSharing,
        Rule::RepeatStranger,
        Rule::DeniedBurst,
        Rule::DoorHeldOpen,
        Rule::DoorForced,
        Rule::ElevatorTrapped,
        Rule::ElevatorDoorOpenMoving,
        Rule::ElevatorOvertravel,
        Rule::ElevatorStoppedOutsideZone,
        Rule::ElevatorFault,
        Rule::ElevatorOutOfService,
        Rule::ElevatorAbnormalUsage,
        Rule::DeviceOffline,
        Rule::GatewayHealth,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::ElderlyInactivity => "elderly_inactivity",
            Rule::NotReturned => "not_returned",
            Rule::GroupRental => "group_rental",
            Rule::CardSharing => "card_sharing",
            Rule::RepeatStranger => "repeat_stranger",
            Rule::DeniedBurst => "denied_burst",
            Rule::DoorHeldOpen => "door_held_open",
            Rule::DoorForced => "door_forced",
            Rule::ElevatorTrapped => "elevator_trapped",
            Rule::ElevatorDoorOpenMoving => "elevator_door_open_moving",
            Rule::ElevatorOvertravel => "elevator_overtravel",
            Rule::ElevatorStoppedOutsideZone => "elevator_stopped_outside_zone",
            Rule::ElevatorFault => "elevator_fault",
            Rule::ElevatorOutOfService => "elevator_out_of_service",
            Rule::ElevatorAbnormalUsage => "elevator_abnormal_usage",
            Rule::DeviceOffline => "device_offline",
            Rule::GatewayHealth => "gateway_health",
        }
    }

    pub fn parse(s: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// `(enabled, severity, escalate_after)` from the rule's table.
    pub fn settings(self, rules: &RulesConfig) -> (bool, Severity, Option<Millis>) {
        macro_rules! s {
            ($t:expr) => {
                (
                    $t.enabled,
                    $t.severity,
                    $t.escalate_after.map(|d| d.millis()),
                )
            };
        }
        match self {
            Rule::ElderlyInactivity => s!(rules.elderly_inactivity),
            Rule::NotReturned => s!(rules.not_returned),
            Rule::GroupRental => s!(rules.group_rental),
            Rule::CardSharing => s!(rules.card_sharing),
            Rule::RepeatStranger => s!(rules.repeat_stranger),
            Rule::DeniedBurst => s!(rules.denied_burst),
            Rule::DoorHeldOpen => s!(rules.door_held_open),
            Rule::DoorForced => s!(rules.door_forced),
            Rule::ElevatorTrapped => s!(rules.elevator_trapped),
            Rule::ElevatorDoorOpenMoving => s!(rules.elevator_door_open_moving),
            Rule::ElevatorOvertravel => s!(rules.elevator_overtravel),
            Rule::ElevatorStoppedOutsideZone => s!(rules.elevator_stopped_outside_zone),
            Rule::ElevatorFault => s!(rules.elevator_fault),
            Rule::ElevatorOutOfService => s!(rules.elevator_out_of_service),
            Rule::ElevatorAbnormalUsage => s!(rules.elevator_abnormal_usage),
            Rule::DeviceOffline => s!(rules.device_offline),
            Rule::GatewayHealth => s!(rules.gateway_health),
        }
    }
}

/// What an alert is about, in the engine's own indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectRef {
    Resident(u32),
    Household(u32),
    /// Keyed hash of an unregistered credential.
    Credential(u128),
    Device(u32),
    /// An elevator and one of its fault keys (`elevator_fault`: a
    /// `fault_code`, or `FAULT_BIT + n` for bit n of `fault_bits`), or one
    /// of the conditions of a rule that keeps them apart
    /// (`elevator_abnormal_usage`). The wire subject is the elevator.
    DeviceCode(u32, u64),
    Gateway(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlertKey {
    pub rule: Rule,
    pub subject: SubjectRef,
}

impl AlertKey {
    pub fn new(rule: Rule, subject: SubjectRef) -> Self {
        AlertKey { rule, subject }
    }
}

/// An alert that is raised and not yet cleared.
#[derive(Debug, Clone)]
pub struct OpenAlert {
    pub id: String,
    pub revision: u32,
    pub severity: Severity,
    pub subject: Subject,
    pub location: Location,
    pub since: Ts,
    pub raised_at: Ts,
    pub acked_by: Option<String>,
    pub escalation: Deadline,
    pub evidence: serde_json::Value,
}

/// A rule's request to raise.
pub struct Raise {
    pub key: AlertKey,
    pub subject: Subject,
    pub location: Location,
    /// `None`: the rule's configured severity.
    pub severity: Option<Severity>,
    pub since: Ts,
    pub at: Ts,
    pub evidence: serde_json::Value,
}

impl Engine {
    pub(crate) fn is_open(&self, key: &AlertKey) -> bool {
        self.alerts.contains_key(key)
    }

    /// Raises unless an alert for the same rule and subject is open.
    pub(crate) fn raise(&mut self, mut r: Raise) -> bool {
        drop_nulls(&mut r.evidence);
        let (enabled, default_severity, escalate_after) = r.key.rule.settings(&self.config.rules);
        if !enabled || self.alerts.contains_key(&r.key) {
            return false;
        }
        let severity = r.severity.unwrap_or(default_severity);
        let id = self.alert_id(&r.key, &r.subject, r.since, r.at);
        let mut alert = OpenAlert {
            id,
            revision: 1,
            severity,
            subject: r.subject,
            location: r.location,
            since: r.since,
            raised_at: r.at,
            acked_by: None,
            escalation: Deadline::default(),
            evidence: r.evidence,
        };
        self.emit(r.key.rule, &alert, TransitionState::Raised, r.at);
        if let Some(every) = escalate_after {
            if severity < Severity::Critical {
                let key = r.key;
                self.timers.arm(&mut alert.escalation, r.at + every, || {
                    TimerKey::Escalate(key)
                });
            }
        }
        self.alerts_by_id.insert(alert.id.clone(), r.key);
        self.alerts.insert(r.key, Box::new(alert));
        self.dirty(StateKey::Alert(r.key));
        true
    }

    /// A one-shot alert (`card_sharing`): raised and never cleared or tracked.
    pub(crate) fn raise_once(&mut self, mut r: Raise) -> bool {
        drop_nulls(&mut r.evidence);
        let (enabled, default_severity, _) = r.key.rule.settings(&self.config.rules);
        if !enabled {
            return false;
        }
        let alert = OpenAlert {
            id: self.alert_id(&r.key, &r.subject, r.since, r.at),
            revision: 1,
            severity: r.severity.unwrap_or(default_severity),
            subject: r.subject,
            location: r.location,
            since: r.since,
            raised_at: r.at,
            acked_by: None,
            escalation: Deadline::default(),
            evidence: r.evidence,
        };
        self.emit(r.key.rule, &alert, TransitionState::Raised, r.at);
        true
    }

    /// Clears an open alert; `extra` fields are added to its evidence.
    pub(crate) fn clear(
        &mut self,
        key: &AlertKey,
        at: Ts,
        extra: &[(&str, serde_json::Value)],
    ) -> bool {
        let Some(mut alert) = self.alerts.remove(key) else {
            return false;
        };
        self.alerts_by_id.remove(&alert.id);
        alert.revision += 1;
        if let serde_json::Value::Object(m) = &mut alert.evidence {
            for (k, v) in extra {
                m.insert((*k).to_string(), v.clone());
            }
        }
        self.emit(key.rule, &alert, TransitionState::Cleared, at);
        self.dirty(StateKey::Alert(*key));
        true
    }

    pub(crate) fn escalate(&mut self, key: &AlertKey, at: Ts) {
        let (_, _, every) = key.rule.settings(&self.config.rules);
        let Some(mut alert) = self.alerts.remove(key) else {
            return;
        };
        if alert.acked_by.is_none() && alert.severity < Severity::Critical {
            alert.severity = alert.severity.escalated();
            alert.revision += 1;
            self.emit(key.rule, &alert, TransitionState::Escalated, at);
            if let (Some(every), true) = (every, alert.severity < Severity::Critical) {
                let k = *key;
                self.timers
                    .arm(&mut alert.escalation, at + every, || TimerKey::Escalate(k));
            }
            self.dirty(StateKey::Alert(*key));
        }
        self.alerts.insert(*key, alert);
    }

    /// Raises an open alert's severity to `severity` at once (a condition
    /// got worse, e.g. an elevator in inspection mode switched to fire
    /// mode), as an `escalated` transition with `extra` merged into its
    /// evidence. Nothing happens if it is not open or already that severe.
    pub(crate) fn raise_severity(
        &mut self,
        key: &AlertKey,
        severity: Severity,
        at: Ts,
        extra: &[(&str, serde_json::Value)],
    ) -> bool {
        let Some(mut alert) = self.alerts.remove(key) else {
            return false;
        };
        let raised = severity > alert.severity;
        if raised {
            alert.severity = severity;
            alert.revision += 1;
            if let serde_json::Value::Object(m) = &mut alert.evidence {
                for (k, v) in extra {
                    m.insert((*k).to_string(), v.clone());
                }
            }
            if alert.severity == Severity::Critical {
                alert.escalation.disarm();
            }
            self.emit(key.rule, &alert, TransitionState::Escalated, at);
            self.dirty(StateKey::Alert(*key));
        }
        self.alerts.insert(*key, alert);
        raised
    }

    /// The platform acknowledged an alert: stop escalating it. Returns false
    /// for an unknown (or already cleared) alert id.
    pub fn acknowledge(&mut self, alert_id: &str, by: &str) -> bool {
        let Some(key) = self.alerts_by_id.get(alert_id).copied() else {
            return false;
        };
        if let Some(alert) = self.alerts.get_mut(&key) {
            alert.acked_by = Some(by.to_string());
            alert.escalation.disarm();
            self.dirty(StateKey::Alert(key));
        }
        true
    }

    /// Alert ids are ULIDs whose random part is a keyed hash of the alert's
    /// identity: the same alert re-derived after a crash gets the same id.
    fn alert_id(&self, key: &AlertKey, subject: &Subject, since: Ts, at: Ts) -> String {
        let mut h = self.hasher(b"alert-id");
        h.write(self.config.compound.as_bytes());
        h.write(key.rule.as_str().as_bytes());
        h.write(subject.kind.as_str().as_bytes());
        h.write(subject.id.as_bytes());
        // Several alerts of one rule may share the wire subject (one per
        // fault code): keep their ids apart. Other subjects hash as before.
        if let SubjectRef::DeviceCode(_, code) = key.subject {
            h.write_u64(code);
        }
        h.write_i64(since);
        h.write_i64(at);
        ulid(at, h.finish128().as_u128())
    }

    pub(super) fn emit(&mut self, rule: Rule, alert: &OpenAlert, state: TransitionState, at: Ts) {
        let mut t = AlertTransition {
            alert_id: alert.id.clone(),
            revision: alert.revision,
            state,
            rule: rule.as_str().to_string(),
            severity: alert.severity,
            compound: self.config.compound.clone(),
            subject: alert.subject.clone(),
            location: alert.location.clone(),
            at: self.calendar.format(at),
            since: self.calendar.format(alert.since),
            evidence: alert.evidence.clone(),
            message: String::new(),
        };
        t.message = crate::message::render(self.config.language, &t);
        self.stats.transitions += 1;
        self.out.push(t);
    }
}

/// Evidence carries only what is known.
fn drop_nulls(v: &mut serde_json::Value) {
    if let serde_json::Value::Object(m) = v {
        m.retain(|_, v| !v.is_null());
    }
}
