//! What the engine persists across restarts, as one small record per
//! subject keyed by stable ids (resident id, household, device id), so that
//! a new roster or configuration can take the state over.
//!
//! The engine marks what changed; at a commit point the caller takes the
//! changed records ([`Engine::take_changes`]) and writes them in the same
//! batch as the alert transitions they caused.

use super::access::{DayCount, HouseholdDays, StrangerState};
use super::alerts::{AlertKey, OpenAlert, Rule, SubjectRef};
use super::elevator::{ElevatorState, FaultTrack};
use super::timers::{Deadline, TimerKey};
use super::{Engine, HealthCondition, StateKey};
use crate::alert::{Location, Severity, Subject, SubjectKind};
use crate::event::{CarDoor, Direction, DoorState, ElevatorMode, ElevatorSample, TravelDirection};
use crate::time::Ts;
use serde::{Deserialize, Serialize};

/// A persisted record: key and value bytes.
pub type StateRecord = (Vec<u8>, Vec<u8>);

/// A change to write at the next commit: `None` deletes the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

const RESIDENT: u8 = b'r';
const HOUSEHOLD: u8 = b'h';
const STRANGER: u8 = b's';
const DEVICE: u8 = b'd';
const ELEVATOR: u8 = b'e';
const ALERT: u8 = b'a';
const META: u8 = b'm';

#[derive(Serialize, Deserialize, Default)]
struct ResidentRecord {
    last_seen: Option<Ts>,
    last_dir: Direction,
    known_since: Option<Ts>,
    away_until: Option<Ts>,
    cooldown_until: Option<Ts>,
}

#[derive(Serialize, Deserialize)]
struct HouseholdRecord {
    /// (local day, granted accesses, credentials used)
    days: Vec<(i32, u32, Vec<String>)>,
}

#[derive(Serialize, Deserialize)]
struct StrangerRecord {
    streak_start: i32,
    last_day: i32,
    since: Ts,
    last_seen: Ts,
    last_device: Option<String>,
    display: Option<String>,
    cooldown_until: Option<Ts>,
}

#[derive(Serialize, Deserialize)]
struct DeviceRecord {
    door: Option<DoorState>,
    open_since: Option<Ts>,
    denied: Vec<Ts>,
}

/// An elevator's merged state (all but the speed) and the since-times and
/// deadlines of its rules. Not kept: the door-open-moving sample count and
/// the contents of the usage windows (seconds long; they start empty).
#[derive(Serialize, Deserialize, Default, PartialEq)]
struct ElevatorRecord {
    floor: Option<i32>,
    moving: Option<bool>,
    direction: Option<TravelDirection>,
    door: Option<CarDoor>,
    door_zone: Option<bool>,
    occupied: Option<bool>,
    mode: Option<ElevatorMode>,
    fault_code: Option<u32>,
    fault_bits: Option<u32>,
    alarm_button: Option<bool>,
    trapped_since: Option<Ts>,
    outside_since: Option<Ts>,
    mode_since: Option<Ts>,
    /// (fault key, since, absent since)
    faults: Vec<(u64, Ts, Option<Ts>)>,
    door_cycles_end: Option<Ts>,
    overspeed_end: Option<Ts>,
}

impl ElevatorRecord {
    fn of(s: &ElevatorState) -> Self {
        let l = &s.last;
        ElevatorRecord {
            floor: l.floor,
            moving: l.moving,
            direction: l.direction,
            door: l.door,
            door_zone: l.door_zone,
            occupied: l.occupied,
            mode: l.mode,
            fault_code: l.fault_code,
            fault_bits: l.fault_bits,
            alarm_button: l.alarm_button,
            trapped_since: s.trapped_since,
            outside_since: s.outside_since,
            mode_since: s.mode_since,
            faults: s
                .faults
                .iter()
                .map(|f| (f.key, f.since, f.absent_since))
                .collect(),
            door_cycles_end: s.door_cycles_end,
            overspeed_end: s.overspeed_end,
        }
    }

    fn into_state(self) -> ElevatorState {
        ElevatorState {
            last: ElevatorSample {
                floor: self.floor,
                moving: self.moving,
                direction: self.direction,
                door: self.door,
                door_zone: self.door_zone,
                occupied: self.occupied,
                mode: self.mode,
                fault_code: self.fault_code,
                speed: None,
                alarm_button: self.alarm_button,
                fault_bits: self.fault_bits,
            },
            trapped_since: self.trapped_since,
            outside_since: self.outside_since,
            mode_since: self.mode_since,
            faults: self
                .faults
                .into_iter()
                .take(super::elevator::MAX_FAULTS)
                .map(|(key, since, absent_since)| FaultTrack {
                    key,
                    since,
                    absent_since,
                    deadline: Deadline::default(),
                })
                .collect(),
            door_cycles_end: self.door_cycles_end,
            overspeed_end: self.overspeed_end,
            ..ElevatorState::default()
        }
    }
}

#[derive(Serialize, Deserialize)]
struct AlertRecord {
    id: String,
    revision: u32,
    rule: String,
    severity: Severity,
    subject_kind: SubjectKind,
    subject_id: String,
    /// For credential subjects: the keyed hash (the id may be a pseudonym).
    credential_hash: Option<(u64, u64)>,
    /// Fault key (see `engine::parse_fault_key`) or condition of the
    /// subject. Was a `u32`: postcard writes both as the same varint.
    fault_code: Option<u64>,
    location: LocationRecord,
    since: Ts,
    raised_at: Ts,
    acked_by: Option<String>,
    escalation_due: Option<Ts>,
    /// JSON text (the record format is not self-describing).
    evidence: String,
}

/// building, unit, room, grid, device (the record format has no optional fields).
type LocationRecord = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

#[derive(Serialize, Deserialize)]
struct MetaRecord {
    now: Ts,
    next_evaluation_day: Option<i32>,
}

fn key(prefix: u8, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 2);
    k.push(prefix);
    k.push(0);
    k.extend_from_slice(id);
    k
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

fn split_hash(h: u128) -> (u64, u64) {
    ((h >> 64) as u64, h as u64)
}

fn join_hash((a, b): (u64, u64)) -> u128 {
    ((a as u128) << 64) | b as u128
}

impl Engine {
    /// The records changed since the last call, for the next commit.
    pub fn take_changes(&mut self) -> Vec<StateChange> {
        let keys: Vec<StateKey> = self.changed.drain().collect();
        let mut out: Vec<StateChange> = keys.into_iter().map(|k| self.record(k)).collect();
        out.append(&mut self.orphans);
        out
    }

    /// Every record, as a full snapshot (to hand state to a reloaded engine).
    pub fn snapshot(&self) -> Vec<StateRecord> {
        let mut keys = vec![StateKey::Meta];
        keys.extend((0..self.residents.len() as u32).map(StateKey::Resident));
        keys.extend(
            self.active_households
                .iter()
                .map(|&h| StateKey::Household(h)),
        );
        keys.extend(self.strangers.keys().map(|&h| StateKey::Stranger(h)));
        keys.extend((0..self.devices.len() as u32).map(StateKey::Device));
        let mut elevators: Vec<u32> = self.elevators.keys().copied().collect();
        elevators.sort_unstable();
        keys.extend(elevators.into_iter().map(StateKey::Elevator));
        keys.extend(self.alerts.keys().map(|&k| StateKey::Alert(k)));
        keys.into_iter()
            .filter_map(|k| {
                let c = self.record(k);
                c.value.map(|v| (c.key, v))
            })
            .collect()
    }

    fn record(&self, k: StateKey) -> StateChange {
        let (key_bytes, value) = match k {
            StateKey::Meta => (
                key(META, b"meta"),
                Some(encode(&MetaRecord {
                    now: self.now,
                    next_evaluation_day: self.next_evaluation_day,
                })),
            ),
            StateKey::Resident(r) => {
                let s = &self.residents[r as usize];
                let rec = ResidentRecord {
                    last_seen: s.last_seen.get(),
                    last_dir: s.last_dir,
                    known_since: s.known_since.get(),
                    away_until: s.away_until.get(),
                    cooldown_until: s.cooldown_until.get(),
                };
                let empty = rec.last_seen.is_none()
                    && rec.known_since.is_none()
                    && rec.cooldown_until.is_none()
                    && rec.away_until == self.dir.residents[r as usize].away_until.get();
                (
                    key(RESIDENT, self.dir.resident_id(r).as_bytes()),
                    (!empty).then(|| encode(&rec)),
                )
            }
            StateKey::Household(h) => {
                let hd = &self.households[h as usize];
                let days: Vec<(i32, u32, Vec<String>)> = hd
                    .days
                    .iter()
                    .map(|d| {
                        let creds = d
                            .slots
                            .iter()
                            .filter_map(|s| self.dir.household_credential(h, s).map(str::to_string))
                            .collect();
                        (d.day, d.count, creds)
                    })
                    .collect();
                (
                    key(HOUSEHOLD, self.dir.household_key(h).as_bytes()),
                    (!days.is_empty()).then(|| encode(&HouseholdRecord { days })),
                )
            }
            StateKey::Stranger(h) => (
                key(STRANGER, &h.to_be_bytes()),
                self.strangers.get(&h).map(|s| {
                    encode(&StrangerRecord {
                        streak_start: s.streak_start,
                        last_day: s.last_day,
                        since: s.since,
                        last_seen: s.last_seen,
                        last_device: s
                            .last_device
                            .map(|d| self.dir.devices[d as usize].id.to_string()),
                        display: s.display.as_deref().map(str::to_string),
                        cooldown_until: s.cooldown_until.get(),
                    })
                }),
            ),
            StateKey::Device(d) => {
                let s = &self.devices[d as usize];
                let rec = DeviceRecord {
                    door: s.door,
                    open_since: s.open_since,
                    denied: s.denied.iter().copied().collect(),
                };
                let empty = rec.door.is_none() && rec.denied.is_empty();
                (
                    key(DEVICE, self.dir.devices[d as usize].id.as_bytes()),
                    (!empty).then(|| encode(&rec)),
                )
            }
            StateKey::Elevator(d) => {
                let rec = self
                    .elevators
                    .get(&d)
                    .map(ElevatorRecord::of)
                    .filter(|r| *r != ElevatorRecord::default());
                (
                    key(ELEVATOR, self.dir.devices[d as usize].id.as_bytes()),
                    rec.map(|r| encode(&r)),
                )
            }
            StateKey::Alert(k) => (
                self.alert_record_key(&k),
                self.alerts
                    .get(&k)
                    .map(|a| encode(&self.alert_record(&k, a))),
            ),
        };
        StateChange {
            key: key_bytes,
            value,
        }
    }

    fn alert_record_key(&self, k: &AlertKey) -> Vec<u8> {
        let subject = match k.subject {
            SubjectRef::Resident(r) => format!("resident\0{}", self.dir.resident_id(r)),
            SubjectRef::Household(h) => {
                format!("household\0{}", self.dir.household_key(h))
            }
            SubjectRef::Credential(h) => format!("credential\0{h:032x}"),
            SubjectRef::Device(d) => format!("device\0{}", self.dir.devices[d as usize].id),
            SubjectRef::DeviceCode(d, c) => {
                format!("device\0{}\0{c}", self.dir.devices[d as usize].id)
            }
            SubjectRef::Gateway(g) => format!("gateway\0{g}"),
        };
        key(ALERT, format!("{}\0{subject}", k.rule.as_str()).as_bytes())
    }

    fn alert_record(&self, k: &AlertKey, a: &OpenAlert) -> AlertRecord {
        let l = &a.location;
        AlertRecord {
            id: a.id.clone(),
            revision: a.revision,
            rule: k.rule.as_str().to_string(),
            severity: a.severity,
            subject_kind: a.subject.kind,
            subject_id: match k.subject {
                SubjectRef::Device(d) | SubjectRef::DeviceCode(d, _) => {
                    self.dir.devices[d as usize].id.to_string()
                }
                SubjectRef::Gateway(g) => g.to_string(),
                _ => a.subject.id.clone(),
            },
            credential_hash: match k.subject {
                SubjectRef::Credential(h) => Some(split_hash(h)),
                _ => None,
            },
            fault_code: match k.subject {
                SubjectRef::DeviceCode(_, c) => Some(c),
                _ => None,
            },
            location: (
                l.building.clone(),
                l.unit.clone(),
                l.room.clone(),
                l.grid.clone(),
                l.device.clone(),
            ),
            since: a.since,
            raised_at: a.raised_at,
            acked_by: a.acked_by.clone(),
            escalation_due: a.escalation.due(),
            evidence: a.evidence.to_string(),
        }
    }

    /// Loads persisted records into a fresh engine, before [`Engine::start`].
    /// Records whose subject no longer exists are dropped (their alerts are
    /// cleared at start). Returns how many records could not be decoded.
    pub fn restore<I: IntoIterator<Item = StateRecord>>(&mut self, records: I) -> usize {
        let mut bad = 0;
        for (k, v) in records {
            if k.len() < 2 || k[1] != 0 {
                bad += 1;
                continue;
            }
            let id = &k[2..];
            let ok = match k[0] {
                META => self.restore_meta(&v),
                RESIDENT => self.restore_resident(id, &v),
                HOUSEHOLD => self.restore_household(id, &v),
                STRANGER => self.restore_stranger(id, &v),
                DEVICE => self.restore_device(id, &v),
                ELEVATOR => self.restore_elevator(id, &v),
                ALERT => self.restore_alert(&k, &v),
                _ => false,
            };
            if !ok {
                bad += 1;
            }
        }
        bad
    }

    fn restore_meta(&mut self, v: &[u8]) -> bool {
        let Ok(m) = postcard::from_bytes::<MetaRecord>(v) else {
            return false;
        };
        self.now = m.now;
        self.next_evaluation_day = m.next_evaluation_day;
        true
    }

    fn restore_resident(&mut self, id: &[u8], v: &[u8]) -> bool {
        let Ok(rec) = postcard::from_bytes::<ResidentRecord>(v) else {
            return false;
        };
        let Some(r) = std::str::from_utf8(id)
            .ok()
            .and_then(|id| self.dir.resident(id))
        else {
            return true; // left the roster
        };
        let roster_away = self.dir.residents[r as usize].away_until;
        let s = &mut self.residents[r as usize];
        s.last_seen = rec.last_seen.into();
        s.last_dir = rec.last_dir;
        s.known_since = rec.known_since.into();
        s.cooldown_until = rec.cooldown_until.into();
        // The later of the roster's absence and the last `away` command.
        s.away_until = rec.away_until.max(roster_away.get()).into();
        true
    }

    fn restore_household(&mut self, id: &[u8], v: &[u8]) -> bool {
        let Ok(rec) = postcard::from_bytes::<HouseholdRecord>(v) else {
            return false;
        };
        let Some(h) = std::str::from_utf8(id)
            .ok()
            .and_then(|id| self.dir.household(id))
        else {
            return true;
        };
        let mut days = HouseholdDays::default();
        for (day, count, creds) in rec.days {
            let slots = creds
                .iter()
                .filter_map(|c| self.dir.credential(c))
                .filter(|c| c.household == h)
                .map(|c| c.slot)
                .collect();
            days.days.push_back(DayCount { day, count, slots });
        }
        if !days.days.is_empty() {
            days.active = true;
            self.active_households.push(h);
        }
        self.households[h as usize] = days;
        true
    }

    fn restore_stranger(&mut self, id: &[u8], v: &[u8]) -> bool {
        let (Ok(rec), Ok(hash)) = (
            postcard::from_bytes::<StrangerRecord>(v),
            <[u8; 16]>::try_from(id),
        ) else {
            return false;
        };
        let h = u128::from_be_bytes(hash);
        let last_device = rec
            .last_device
            .and_then(|d| self.dir.device_by_id.get(d.as_str()).copied());
        let forget_after = self.config.rules.repeat_stranger.forget_after.millis();
        let mut s = StrangerState {
            streak_start: rec.streak_start,
            last_day: rec.last_day,
            since: rec.since,
            last_seen: rec.last_seen,
            last_device,
            display: rec.display.map(Into::into),
            cooldown_until: rec.cooldown_until.into(),
            last_gate: None,
            forget: Deadline::default(),
        };
        self.timers
            .arm(&mut s.forget, rec.last_seen + forget_after, || {
                TimerKey::StrangerForget(h)
            });
        self.strangers.insert(h, s);
        true
    }

    fn restore_device(&mut self, id: &[u8], v: &[u8]) -> bool {
        let Ok(rec) = postcard::from_bytes::<DeviceRecord>(v) else {
            return false;
        };
        let Some(&d) = std::str::from_utf8(id)
            .ok()
            .and_then(|id| self.dir.device_by_id.get(id))
        else {
            return true;
        };
        let s = &mut self.devices[d as usize];
        s.door = rec.door;
        s.open_since = rec.open_since;
        s.denied = rec.denied.into();
        true
    }

    fn restore_elevator(&mut self, id: &[u8], v: &[u8]) -> bool {
        let Ok(rec) = postcard::from_bytes::<ElevatorRecord>(v) else {
            return false;
        };
        let Some(&d) = std::str::from_utf8(id)
            .ok()
            .and_then(|id| self.dir.device_by_id.get(id))
        else {
            // No longer configured: drop the record at the next commit.
            self.orphans.push(StateChange {
                key: key(ELEVATOR, id),
                value: None,
            });
            return true;
        };
        self.elevators.insert(d, rec.into_state());
        true
    }

    fn restore_alert(&mut self, raw_key: &[u8], v: &[u8]) -> bool {
        let Ok(rec) = postcard::from_bytes::<AlertRecord>(v) else {
            return false;
        };
        let Some(rule) = Rule::parse(&rec.rule) else {
            return false;
        };
        let subject = match rec.subject_kind {
            SubjectKind::Resident => self.dir.resident(&rec.subject_id).map(SubjectRef::Resident),
            SubjectKind::Household => self
                .dir
                .household(&rec.subject_id)
                .map(SubjectRef::Household),
            SubjectKind::Credential => rec
                .credential_hash
                .map(|h| SubjectRef::Credential(join_hash(h))),
            SubjectKind::Device | SubjectKind::Elevator => self
                .dir
                .device_by_id
                .get(rec.subject_id.as_str())
                .map(|&d| match rec.fault_code {
                    Some(c) => SubjectRef::DeviceCode(d, c),
                    None => SubjectRef::Device(d),
                }),
            SubjectKind::Gateway => rec
                .subject_id
                .parse::<u8>()
                .ok()
                .and_then(HealthCondition::from_index)
                .map(|c| SubjectRef::Gateway(c as u8)),
        };
        let (building, unit, room, grid, device) = rec.location;
        let alert = OpenAlert {
            id: rec.id,
            revision: rec.revision,
            severity: rec.severity,
            subject: Subject {
                kind: rec.subject_kind,
                id: match rec.subject_kind {
                    SubjectKind::Gateway => rec
                        .subject_id
                        .parse::<u8>()
                        .ok()
                        .and_then(HealthCondition::from_index)
                        .map(|c| c.as_str().to_string())
                        .unwrap_or_default(),
                    _ => rec.subject_id,
                },
            },
            location: Location {
                building,
                unit,
                room,
                grid,
                device,
            },
            since: rec.since,
            raised_at: rec.raised_at,
            acked_by: rec.acked_by,
            // Queued for real at start.
            escalation: rec
                .escalation_due
                .map(Deadline::pending)
                .unwrap_or_default(),
            evidence: serde_json::from_str(&rec.evidence).unwrap_or(serde_json::Value::Null),
        };
        match subject {
            Some(s) => {
                let key = AlertKey::new(rule, s);
                self.alerts_by_id.insert(alert.id.clone(), key);
                self.alerts.insert(key, Box::new(alert));
            }
            None => {
                // The subject left the roster or configuration: clear it at start.
                self.orphans.push(StateChange {
                    key: raw_key.to_vec(),
                    value: None,
                });
                self.orphan_alerts.push((rule, alert));
            }
        }
        true
    }

    /// Clears alerts whose subject is gone (called from start).
    pub(super) fn clear_orphans(&mut self, now: Ts) {
        for (rule, mut alert) in std::mem::take(&mut self.orphan_alerts) {
            alert.revision += 1;
            if let serde_json::Value::Object(m) = &mut alert.evidence {
                m.insert("cleared_by".into(), "roster".into());
            }
            self.emit(rule, &alert, crate::alert::TransitionState::Cleared, now);
        }
    }
}
