//! The rule engine: a deterministic core with no I/O and no wall clock.
//!
//! Inputs are canonical events, clock advances and platform commands; the
//! output is alert transitions. Time comes only from the caller: replay
//! passes event timestamps, the daemon its (jump-corrected) wall clock.
//!
//! - [`timers`]: deadlines and the queue that fires them at their exact time.
//! - [`alerts`]: the lifecycle every rule shares (raise, escalate, clear, one-shot).
//! - [`access`]: door-access rules; [`elevator`]: elevator rules.
//! - [`state`]: what is persisted across restarts, and change tracking for group commit.

mod access;
mod alerts;
mod directory;
mod elevator;
mod state;
mod timers;

pub use alerts::{AlertKey, Rule, SubjectRef};
pub use elevator::{parse_fault_key, FAULT_BIT};
pub use state::{StateChange, StateRecord};
pub use timers::Deadline;

use crate::alert::{AlertTransition, Location, Subject, SubjectKind};
use crate::config::{Config, DeviceKind};
use crate::event::{Event, EventBody};
use crate::roster::Roster;
use crate::time::{Calendar, Millis, Ts};
use access::{DeviceState, HouseholdDays, ResidentState, StrangerState};
use alerts::OpenAlert;
use directory::Directory;
pub use directory::RosterIndex;
use elevator::{ElevatorState, PollFailures};
use rustc_hash::{FxHashMap, FxHashSet};
use siphasher::sip128::{Hasher128, SipHasher13};
use std::hash::Hasher;
use std::sync::Arc;
use timers::{TimerKey, TimerQueue};

/// Counters the engine keeps for metrics and replay summaries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub events: u64,
    pub undeclared_device_events: u64,
    /// Events whose timestamp was before the engine's clock (processed at the clock's time).
    pub late_events: u64,
    pub transitions: u64,
    pub clock_jumps: u64,
    /// Sightings of unregistered credentials not tracked because too many are.
    pub strangers_untracked: u64,
}

/// Which persisted record changed since the last commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum StateKey {
    Resident(u32),
    Household(u32),
    Stranger(u128),
    Device(u32),
    Elevator(u32),
    Alert(AlertKey),
    Meta,
}

/// One gateway condition watched by `gateway_health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthCondition {
    OutboxFull = 0,
    DiskFull = 1,
    ClockUnsynchronised = 2,
    StoreRecovered = 3,
}

impl HealthCondition {
    pub const ALL: [HealthCondition; 4] = [
        HealthCondition::OutboxFull,
        HealthCondition::DiskFull,
        HealthCondition::ClockUnsynchronised,
        HealthCondition::StoreRecovered,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            HealthCondition::OutboxFull => "outbox_full",
            HealthCondition::DiskFull => "disk_full",
            HealthCondition::ClockUnsynchronised => "clock_unsynchronised",
            HealthCondition::StoreRecovered => "store_recovered",
        }
    }
    fn from_index(i: u8) -> Option<Self> {
        Self::ALL.get(i as usize).copied()
    }
}

pub struct Engine {
    config: Arc<Config>,
    dir: Directory,
    calendar: Calendar,
    hash_key: (u64, u64),
    /// The engine's clock: the latest time it was advanced to.
    now: Ts,
    started: bool,
    timers: TimerQueue,
    residents: Vec<ResidentState>,
    households: Vec<HouseholdDays>,
    active_households: Vec<u32>,
    strangers: FxHashMap<u128, StrangerState>,
    devices: Vec<DeviceState>,
    /// Merged state and rule state of every device that sent elevator samples.
    elevators: FxHashMap<u32, ElevatorState>,
    /// Polled devices with failed polls (not persisted).
    polls: FxHashMap<u32, PollFailures>,
    /// Boxed: an open alert is about 300 bytes, and the table keeps up to
    /// twice as many slots as alerts.
    alerts: FxHashMap<AlertKey, Box<OpenAlert>>,
    alerts_by_id: FxHashMap<String, AlertKey>,
    midnight: Deadline,
    /// First local day not yet evaluated by the midnight rules.
    next_evaluation_day: Option<i32>,
    track_changes: bool,
    changed: FxHashSet<StateKey>,
    /// Deletions of records whose subject is gone, for the next commit.
    orphans: Vec<StateChange>,
    orphan_alerts: Vec<(Rule, OpenAlert)>,
    out: Vec<AlertTransition>,
    stats: EngineStats,
}

impl Engine {
    /// A fresh engine for `config` and `roster`. Call [`Engine::restore`]
    /// with persisted records (if any), then [`Engine::start`].
    pub fn new(config: Arc<Config>, roster: &Roster) -> Engine {
        let dir = Directory::new(&config, roster);
        Self::with_directory(config, dir)
    }

    /// [`Engine::new`] from a roster indexed row by row.
    pub fn with_roster(config: Arc<Config>, roster: RosterIndex) -> Engine {
        let dir = Directory::with_roster(&config, roster);
        Self::with_directory(config, dir)
    }

    fn with_directory(config: Arc<Config>, dir: Directory) -> Engine {
        let calendar = Calendar::new(config.timezone);
        let hash_key = derive_key(&config);
        let residents = dir
            .residents
            .iter()
            .map(|r| ResidentState::new(r.away_until.get()))
            .collect();
        let households = vec![HouseholdDays::default(); dir.household_count()];
        let devices = vec![DeviceState::default(); dir.devices.len()];
        Engine {
            config,
            dir,
            calendar,
            hash_key,
            now: i64::MIN,
            started: false,
            timers: TimerQueue::default(),
            residents,
            households,
            active_households: Vec::new(),
            strangers: FxHashMap::default(),
            devices,
            elevators: FxHashMap::default(),
            polls: FxHashMap::default(),
            alerts: FxHashMap::default(),
            alerts_by_id: FxHashMap::default(),
            midnight: Deadline::default(),
            next_evaluation_day: None,
            track_changes: false,
            changed: FxHashSet::default(),
            orphans: Vec::new(),
            orphan_alerts: Vec::new(),
            out: Vec::new(),
            stats: EngineStats::default(),
        }
    }

    /// Record which state changed, for [`Engine::take_changes`]. Off by
    /// default (replay persists nothing).
    pub fn track_changes(&mut self, on: bool) {
        self.track_changes = on;
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn now(&self) -> Ts {
        self.now
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    /// When the earliest timer may be due (a live caller sleeps until then).
    /// It can be early (a deadline that moved later), never late.
    pub fn next_deadline(&self) -> Option<Ts> {
        self.timers.peek()
    }

    /// The clock restored from the store, if any (before [`Engine::start`]).
    pub fn restored_clock(&self) -> Option<Ts> {
        (!self.started && self.now != i64::MIN).then_some(self.now)
    }

    /// Open alerts right now.
    pub fn open_alert_count(&self) -> usize {
        self.alerts.len()
    }

    /// Starts the clock at `now`: watched residents with no history are
    /// counted from now, heartbeat devices get their first deadline, the
    /// midnight evaluation is scheduled, and deadlines restored from the
    /// store are armed (those already past fire at their own time on the
    /// next advance).
    pub fn start(&mut self, now: Ts, out: &mut Vec<AlertTransition>) {
        if self.started {
            return;
        }
        self.started = true;
        // A restored clock may be ahead of `now` only if the wall clock went
        // back while we were down; the caller re-bases before starting.
        self.now = self.now.max(now);
        let now = self.now;
        for r in 0..self.residents.len() as u32 {
            if self.dir.residents[r as usize].watch {
                if self.residents[r as usize].known_since.is_none() {
                    self.residents[r as usize].known_since = now.into();
                    self.dirty(StateKey::Resident(r));
                }
                self.rearm_watch(r);
            }
        }
        for d in 0..self.devices.len() as u32 {
            self.arm_restored_device(d, now);
        }
        let mut elevators: Vec<u32> = self.elevators.keys().copied().collect();
        elevators.sort_unstable();
        for d in elevators {
            self.arm_restored_elevator(d, now);
        }
        let keys: Vec<AlertKey> = self.alerts.keys().copied().collect();
        for key in keys {
            // An open device_offline is cleared by the device's next event
            // even when it came from failed polls before the restart.
            if let (Rule::DeviceOffline, SubjectRef::Device(d)) = (key.rule, key.subject) {
                self.polls.entry(d).or_insert(PollFailures {
                    count: 0,
                    since: now,
                });
            }
            if let Some(alert) = self.alerts.get_mut(&key) {
                if let Some(due) = alert.escalation.due() {
                    self.timers
                        .arm(&mut alert.escalation, due, || TimerKey::Escalate(key));
                }
            }
        }
        self.clear_orphans(now);
        let today = self.calendar.day_of(now);
        let next_day = *self.next_evaluation_day.get_or_insert(today + 1);
        let at = self.calendar.midnight(next_day.min(today + 1));
        self.timers
            .arm(&mut self.midnight, at, || TimerKey::Midnight);
        self.dirty(StateKey::Meta);
        out.append(&mut self.out);
    }

    /// Fires every timer due at or before `now`, in deadline order, and moves
    /// the clock to `now` (never backwards).
    pub fn advance_to(&mut self, now: Ts, out: &mut Vec<AlertTransition>) {
        self.advance(now);
        out.append(&mut self.out);
    }

    fn advance(&mut self, now: Ts) {
        while let Some((at, key)) = self.timers.pop_due(now) {
            // Timer-driven transitions happen at their deadline.
            self.now = self.now.max(at);
            self.fire(at, key);
        }
        self.now = self.now.max(now);
    }

    /// Handles one event: first fires timers due at or before its time, then
    /// applies it. An event older than the engine's clock is applied at the
    /// clock's time (and counted).
    pub fn handle(&mut self, ev: &Event<'_>, out: &mut Vec<AlertTransition>) {
        let ts = if ev.ts < self.now {
            self.stats.late_events += 1;
            self.now
        } else {
            ev.ts
        };
        self.advance(ts);
        self.stats.events += 1;
        let kind = match ev.body {
            EventBody::Access(_) | EventBody::Door(_) => DeviceKind::Access,
            EventBody::Elevator(_) => DeviceKind::Elevator,
            EventBody::Heartbeat => DeviceKind::Other,
        };
        let device = self.device_index(&ev.device, kind);
        if let Some(d) = device {
            self.device_seen(d, ts);
            if !self.polls.is_empty() {
                self.poll_succeeded(d, ts);
            }
        }
        match &ev.body {
            EventBody::Access(a) => self.on_access(ts, device, a),
            EventBody::Door(state) => {
                if let Some(d) = device {
                    self.on_door(ts, d, *state)
                }
            }
            EventBody::Elevator(sample) => {
                if let Some(d) = device {
                    self.on_elevator(ts, d, sample)
                }
            }
            EventBody::Heartbeat => {}
        }
        out.append(&mut self.out);
    }

    fn device_index(&mut self, id: &str, kind: DeviceKind) -> Option<u32> {
        if let Some(&d) = self.dir.device_by_id.get(id) {
            if !self.dir.devices[d as usize].declared {
                self.stats.undeclared_device_events += 1;
            }
            return Some(d);
        }
        self.stats.undeclared_device_events += 1;
        let d = self.dir.device(id, kind)?;
        if self.devices.len() <= d as usize {
            self.devices.resize(d as usize + 1, DeviceState::default());
        }
        Some(d)
    }

    fn fire(&mut self, at: Ts, key: TimerKey) {
        match key {
            TimerKey::Inactivity(r) => {
                let Some(d) = self.residents.get_mut(r as usize) else {
                    return;
                };
                if let Some(due) = self.timers.settle(at, &mut d.inactivity, key) {
                    self.inactivity_due(r, due);
                }
            }
            TimerKey::NotReturned(r) => {
                let Some(d) = self.residents.get_mut(r as usize) else {
                    return;
                };
                if let Some(due) = self.timers.settle(at, &mut d.not_returned, key) {
                    self.not_returned_due(r, due);
                }
            }
            TimerKey::Escalate(k) => {
                let Some(alert) = self.alerts.get_mut(&k) else {
                    return;
                };
                if let Some(due) = self.timers.settle(at, &mut alert.escalation, key) {
                    self.escalate(&k, due);
                }
            }
            TimerKey::Midnight => {
                if let Some(due) = self.timers.settle(at, &mut self.midnight, key) {
                    self.midnight_due(due);
                }
            }
            TimerKey::DoorHeld(d) => {
                let Some(s) = self.devices.get_mut(d as usize) else {
                    return;
                };
                if let Some(due) = self.timers.settle(at, &mut s.held, key) {
                    self.door_held_due(d, due);
                }
            }
            TimerKey::DeniedQuiet(d) => {
                let Some(s) = self.devices.get_mut(d as usize) else {
                    return;
                };
                if let Some(due) = self.timers.settle(at, &mut s.denied_quiet, key) {
                    self.clear(
                        &AlertKey::new(Rule::DeniedBurst, SubjectRef::Device(d)),
                        due,
                        &[],
                    );
                }
            }
            TimerKey::Offline(d) => {
                let Some(s) = self.devices.get_mut(d as usize) else {
                    return;
                };
                if let Some(due) = self.timers.settle(at, &mut s.offline, key) {
                    self.offline_due(d, due);
                }
            }
            TimerKey::Elevator(d, which) => self.elevator_fire(at, d, which),
            TimerKey::StrangerForget(h) => {
                let Some(s) = self.strangers.get_mut(&h) else {
                    return;
                };
                if let Some(due) = self.timers.settle(at, &mut s.forget, key) {
                    self.stranger_forgotten(h, due);
                }
            }
        }
    }

    /// The wall clock stepped by `delta` (NTP on a board without RTC): move
    /// every deadline and every remembered time with it, so that the step
    /// itself raises nothing and no deadline is lost.
    pub fn rebase(&mut self, delta: Millis) {
        if delta == 0 {
            return;
        }
        self.stats.clock_jumps += 1;
        tracing::warn!(delta_ms = delta, "wall clock stepped; deadlines re-based");
        self.now = self.now.saturating_add(delta);
        self.timers.shift(delta);
        self.midnight.shift(delta);
        for r in self.residents.iter_mut() {
            r.shift(delta);
        }
        for s in self.strangers.values_mut() {
            s.shift(delta);
        }
        for d in self.devices.iter_mut() {
            d.shift(delta);
        }
        for e in self.elevators.values_mut() {
            e.shift(delta);
        }
        for p in self.polls.values_mut() {
            p.since += delta;
        }
        for a in self.alerts.values_mut() {
            a.escalation.shift(delta);
        }
        // Day-based state keeps its calendar days; the midnight timer is
        // recomputed from the corrected clock.
        let next = self.calendar.next_midnight(self.now);
        self.midnight = Deadline::default();
        self.timers
            .arm(&mut self.midnight, next, || TimerKey::Midnight);
        for r in 0..self.residents.len() as u32 {
            self.dirty(StateKey::Resident(r));
        }
        let elevators: Vec<u32> = self.elevators.keys().copied().collect();
        for d in elevators {
            self.dirty(StateKey::Elevator(d));
        }
        self.dirty(StateKey::Meta);
    }

    /// Sets (or, with a time in the past, ends) a resident's absence. An open
    /// inactivity or not-returned alert is cleared when the absence starts.
    pub fn set_away(
        &mut self,
        resident_id: &str,
        until: Ts,
        out: &mut Vec<AlertTransition>,
    ) -> bool {
        let Some(r) = self.dir.resident(resident_id) else {
            return false;
        };
        self.residents[r as usize].away_until = until.into();
        if until > self.now {
            let now = self.now;
            for rule in [Rule::ElderlyInactivity, Rule::NotReturned] {
                self.clear(
                    &AlertKey::new(rule, SubjectRef::Resident(r)),
                    now,
                    &[("cleared_by", "away".into())],
                );
            }
        }
        if self.dir.residents[r as usize].watch {
            self.rearm_watch(r);
        }
        self.dirty(StateKey::Resident(r));
        out.append(&mut self.out);
        true
    }

    /// Raises or clears `gateway_health` for one condition.
    pub fn set_health(
        &mut self,
        condition: HealthCondition,
        active: bool,
        evidence: serde_json::Value,
        out: &mut Vec<AlertTransition>,
    ) {
        let key = AlertKey::new(Rule::GatewayHealth, SubjectRef::Gateway(condition as u8));
        let now = self.now;
        if active {
            let mut ev = match evidence {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            };
            ev.insert("condition".into(), condition.as_str().into());
            self.raise(alerts::Raise {
                key,
                subject: Subject {
                    kind: SubjectKind::Gateway,
                    id: condition.as_str().to_string(),
                },
                location: Location::default(),
                severity: None,
                since: now,
                at: now,
                evidence: serde_json::Value::Object(ev),
            });
        } else {
            self.clear(&key, now, &[]);
        }
        out.append(&mut self.out);
    }

    /// Open alerts, as their latest transition (for the admin endpoint and CLI).
    pub fn open_alerts(&self) -> Vec<AlertTransition> {
        let mut v: Vec<(&AlertKey, &OpenAlert)> =
            self.alerts.iter().map(|(k, a)| (k, &**a)).collect();
        v.sort_by(|a, b| a.1.raised_at.cmp(&b.1.raised_at).then(a.0.cmp(b.0)));
        v.into_iter()
            .map(|(k, a)| {
                let mut t = AlertTransition {
                    alert_id: a.id.clone(),
                    revision: a.revision,
                    state: if a.revision == 1 {
                        crate::alert::TransitionState::Raised
                    } else {
                        crate::alert::TransitionState::Escalated
                    },
                    rule: k.rule.as_str().to_string(),
                    severity: a.severity,
                    compound: self.config.compound.clone(),
                    subject: a.subject.clone(),
                    location: a.location.clone(),
                    at: self.calendar.format(a.raised_at),
                    since: self.calendar.format(a.since),
                    evidence: a.evidence.clone(),
                    message: String::new(),
                };
                t.message = crate::message::render(self.config.language, &t);
                t
            })
            .collect()
    }

    pub(crate) fn dirty(&mut self, key: StateKey) {
        if self.track_changes {
            self.changed.insert(key);
        }
    }

    /// A keyed SipHash for ids and pseudonyms, separated by `domain`.
    fn hasher(&self, domain: &[u8]) -> SipHasher13 {
        let mut h = SipHasher13::new_with_keys(self.hash_key.0, self.hash_key.1);
        h.write(domain);
        h.write_u8(0);
        h
    }

    /// Keyed hash of an unregistered credential: the key of its state, and
    /// (as `anon-…`) its name in alerts.
    fn credential_hash(&self, credential: &str) -> u128 {
        let mut h = self.hasher(b"credential");
        h.write(credential.as_bytes());
        h.finish128().as_u128()
    }

    fn pseudonym(hash: u128) -> String {
        format!("anon-{:016x}", (hash >> 64) as u64)
    }

    fn resident_subject(&self, r: u32) -> (Subject, Location) {
        (
            Subject {
                kind: SubjectKind::Resident,
                id: self.dir.resident_id(r).to_string(),
            },
            self.dir.resident_location(r),
        )
    }

    fn device_subject(&self, d: u32) -> (Subject, Location) {
        let e = &self.dir.devices[d as usize];
        let kind = if e.kind == DeviceKind::Elevator {
            SubjectKind::Elevator
        } else {
            SubjectKind::Device
        };
        (
            Subject {
                kind,
                id: e.id.to_string(),
            },
            self.dir.device_location(d),
        )
    }

    fn fmt(&self, ts: Ts) -> serde_json::Value {
        self.calendar.format(ts).into()
    }
}

fn derive_key(config: &Config) -> (u64, u64) {
    let secret = config.privacy.key.as_deref().unwrap_or(&config.compound);
    let mut h = SipHasher13::new_with_keys(0x636f_6d6d_756e_6974, 0x792d_6761_7465_7761);
    h.write(b"community-gateway key v1");
    h.write(secret.as_bytes());
    let k = h.finish128();
    (k.h1, k.h2)
}
