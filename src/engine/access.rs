//! Door-access rules: `elderly_inactivity`, `not_returned`, `group_rental`,
//! `card_sharing`, `repeat_stranger`, `denied_burst`, `door_held_open`,
//! `door_forced`, and `device_offline` for heartbeat devices.

use super::alerts::{AlertKey, Raise, Rule, SubjectRef};
use super::timers::{Deadline, TimerKey};
use super::{Engine, StateKey};
use crate::alert::{Subject, SubjectKind};
use crate::config::DeviceKind;
use crate::event::{Access, Direction, DoorState};
use crate::time::{format_duration, Millis, OptTs, Ts};
use serde_json::json;
use std::collections::VecDeque;

/// Unregistered credentials tracked at once; sightings of further ones are
/// counted but not remembered, so a flood of random codes cannot exhaust memory.
pub const MAX_STRANGERS: usize = 100_000;

/// What the engine keeps per roster resident: one for every resident, so
/// it is kept small (88 bytes; compact optional times, an exact-size slice).
#[derive(Debug, Clone, Default)]
pub struct ResidentState {
    pub last_seen: OptTs,
    pub last_dir: Direction,
    /// When the gateway first knew this watched resident.
    pub known_since: OptTs,
    pub away_until: OptTs,
    /// `card_sharing` cooldown.
    pub cooldown_until: OptTs,
    pub inactivity: Deadline,
    pub not_returned: Deadline,
    /// `card_sharing`: per credential (slot in the household), the last
    /// granted non-`out` access at a compound gate within the window:
    /// (slot, device, time).
    pub last_gates: Box<[(u16, u32, Ts)]>,
}

// Kept per roster resident: a regression here costs ~1 MB at 10,000 residents.
const _: () = assert!(std::mem::size_of::<ResidentState>() <= 88);

impl ResidentState {
    pub fn new(away_until: Option<Ts>) -> Self {
        ResidentState {
            away_until: away_until.into(),
            ..Default::default()
        }
    }

    pub fn shift(&mut self, delta: Millis) {
        self.last_seen.shift(delta);
        self.known_since.shift(delta);
        self.cooldown_until.shift(delta);
        for (_, _, t) in self.last_gates.iter_mut() {
            *t += delta;
        }
        self.inactivity.shift(delta);
        self.not_returned.shift(delta);
    }
}

/// Granted accesses of one household on one local day (16 bytes: a
/// compound keeps `window_days` of these for every household).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayCount {
    pub day: i32,
    pub count: u32,
    /// Credential slots (see `HouseholdEntry::credentials`) used that day.
    pub slots: SlotSet,
}

/// A set of a household's credential slots, one bit each. Slots from 63 up
/// share the last bit, so a household that used 64 or more different
/// credentials counts as 64 (`max_credentials` is at most 63, so the rule
/// still holds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotSet(u64);

impl SlotSet {
    pub fn insert(&mut self, slot: u16) {
        self.0 |= 1 << slot.min(63);
    }

    pub fn union(self, other: SlotSet) -> SlotSet {
        SlotSet(self.0 | other.0)
    }

    pub fn len(self) -> u32 {
        self.0.count_ones()
    }

    pub fn iter(self) -> impl Iterator<Item = u16> {
        (0..64u16).filter(move |&b| self.0 >> b & 1 == 1)
    }
}

impl FromIterator<u16> for SlotSet {
    fn from_iter<I: IntoIterator<Item = u16>>(slots: I) -> Self {
        let mut set = SlotSet::default();
        for s in slots {
            set.insert(s);
        }
        set
    }
}

/// Day counts of one household, only for the days inside the window.
#[derive(Debug, Clone, Default)]
pub struct HouseholdDays {
    pub days: VecDeque<DayCount>,
    pub active: bool,
}

#[derive(Debug, Clone)]
pub struct StrangerState {
    pub streak_start: i32,
    pub last_day: i32,
    /// First sighting of the current streak.
    pub since: Ts,
    pub last_seen: Ts,
    pub last_device: Option<u32>,
    /// The raw credential, kept only when pseudonymisation is off.
    pub display: Option<Box<str>>,
    pub cooldown_until: OptTs,
    pub last_gate: Option<(u32, Ts)>,
    pub forget: Deadline,
}

impl StrangerState {
    pub fn shift(&mut self, delta: Millis) {
        self.since += delta;
        self.last_seen += delta;
        self.cooldown_until.shift(delta);
        self.last_gate = self.last_gate.map(|(d, t)| (d, t + delta));
        self.forget.shift(delta);
    }
}

#[derive(Debug, Clone, Default)]
pub struct DeviceState {
    pub door: Option<DoorState>,
    pub open_since: Option<Ts>,
    pub held: Deadline,
    pub denied: VecDeque<Ts>,
    pub denied_quiet: Deadline,
    pub last_seen: Option<Ts>,
    pub offline: Deadline,
}

impl DeviceState {
    pub fn shift(&mut self, delta: Millis) {
        self.open_since = self.open_since.map(|t| t + delta);
        self.last_seen = self.last_seen.map(|t| t + delta);
        for t in self.denied.iter_mut() {
            *t += delta;
        }
        self.held.shift(delta);
        self.denied_quiet.shift(delta);
        self.offline.shift(delta);
    }
}

/// Who `card_sharing` is about.
#[derive(Clone, Copy)]
enum Holder {
    /// A resident, and the slot of the credential used.
    Resident(u32, u16),
    Stranger(u128),
}

impl Engine {
    pub(super) fn on_access(&mut self, ts: Ts, device: Option<u32>, a: &Access<'_>) {
        if let Some(c) = self.dir.credential(a.credential.as_ref()) {
            let r = c.resident;
            if a.granted {
                if self.dir.residents[r as usize].watch {
                    self.resident_activity(r, ts, a.direction);
                }
                self.count_household(c.household, c.slot, ts);
            }
            self.card_sharing(ts, device, a, Holder::Resident(r, c.slot));
        } else {
            let h = self.credential_hash(&a.credential);
            if self.stranger_seen(h, ts, device, &a.credential) {
                self.card_sharing(ts, device, a, Holder::Stranger(h));
            }
        }
        if !a.granted {
            if let Some(d) = device {
                self.denied(ts, d);
            }
        }
    }

    fn resident_activity(&mut self, r: u32, ts: Ts, direction: Direction) {
        let s = &mut self.residents[r as usize];
        s.last_seen = ts.into();
        s.last_dir = direction;
        for rule in [Rule::ElderlyInactivity, Rule::NotReturned] {
            self.clear(&AlertKey::new(rule, SubjectRef::Resident(r)), ts, &[]);
        }
        self.rearm_watch(r);
        self.dirty(StateKey::Resident(r));
    }

    fn inactivity_after(&self, r: u32) -> Millis {
        self.dir.residents[r as usize]
            .inactivity_after
            .get()
            .unwrap_or_else(|| self.config.rules.elderly_inactivity.after.millis())
    }

    /// Sets the inactivity and not-returned deadlines of a watched resident
    /// from its state: counted from the last granted access (or from when we
    /// first knew the resident), or from the end of an absence if later.
    pub(super) fn rearm_watch(&mut self, r: u32) {
        let inactivity_after = self.inactivity_after(r);
        let not_returned_after = self.config.rules.not_returned.after.millis();
        let inactivity_open = self.is_open(&AlertKey::new(
            Rule::ElderlyInactivity,
            SubjectRef::Resident(r),
        ));
        let not_returned_open =
            self.is_open(&AlertKey::new(Rule::NotReturned, SubjectRef::Resident(r)));
        let s = &mut self.residents[r as usize];
        let Some(base) = s.last_seen.get().or(s.known_since.get()) else {
            return;
        };
        let base = base.max(s.away_until.get().unwrap_or(i64::MIN));
        let out = s.last_dir == Direction::Out;
        if !out && !inactivity_open {
            self.timers
                .arm(&mut s.inactivity, base + inactivity_after, || {
                    TimerKey::Inactivity(r)
                });
        } else {
            s.inactivity.disarm();
        }
        if out && !not_returned_open {
            self.timers
                .arm(&mut s.not_returned, base + not_returned_after, || {
                    TimerKey::NotReturned(r)
                });
        } else {
            s.not_returned.disarm();
        }
    }

    pub(super) fn inactivity_due(&mut self, r: u32, due: Ts) {
        let s = &self.residents[r as usize];
        let since = s.last_seen.get().or(s.known_since.get()).unwrap_or(due);
        let (subject, location) = self.resident_subject(r);
        let evidence = json!({
            "last_seen": s.last_seen.get().map(|t| self.fmt(t)),
            "threshold": format_duration(self.inactivity_after(r)),
            "away_until": s.away_until.get().filter(|&t| t > since).map(|t| self.fmt(t)),
        });
        self.raise(Raise {
            key: AlertKey::new(Rule::ElderlyInactivity, SubjectRef::Resident(r)),
            subject,
            location,
            severity: None,
            since,
            at: due,
            evidence,
        });
    }

    pub(super) fn not_returned_due(&mut self, r: u32, due: Ts) {
        let s = &self.residents[r as usize];
        let since = s.last_seen.get().unwrap_or(due);
        let (subject, location) = self.resident_subject(r);
        let evidence = json!({
            "last_seen": s.last_seen.get().map(|t| self.fmt(t)),
            "last_direction": "out",
            "threshold": format_duration(self.config.rules.not_returned.after.millis()),
        });
        self.raise(Raise {
            key: AlertKey::new(Rule::NotReturned, SubjectRef::Resident(r)),
            subject,
            location,
            severity: None,
            since,
            at: due,
            evidence,
        });
    }

    fn count_household(&mut self, h: u32, slot: u16, ts: Ts) {
        let window = self.config.rules.group_rental.window_days.max(1) as i32;
        let day = self.calendar.day_of(ts);
        let hd = &mut self.households[h as usize];
        match hd.days.back_mut() {
            Some(last) if last.day == day => {
                last.count += 1;
                last.slots.insert(slot);
            }
            Some(last) if last.day > day => {} // late event for a closed day: ignored
            _ => hd.days.push_back(DayCount {
                day,
                count: 1,
                slots: [slot].into_iter().collect(),
            }),
        }
        while hd.days.front().is_some_and(|d| d.day < day - window) {
            hd.days.pop_front();
        }
        if !hd.active {
            hd.active = true;
            self.active_households.push(h);
        }
        self.dirty(StateKey::Household(h));
    }

    /// Local midnight: the day-based rules look back over complete days.
    pub(super) fn midnight_due(&mut self, due: Ts) {
        let day = self.calendar.day_of(due);
        self.evaluate_group_rental(day, due);
        self.next_evaluation_day = Some(day + 1);
        let next = self.calendar.midnight(day + 1);
        self.timers
            .arm(&mut self.midnight, next, || TimerKey::Midnight);
        self.dirty(StateKey::Meta);
    }

    fn evaluate_group_rental(&mut self, today: i32, at: Ts) {
        let p = self.config.rules.group_rental.clone();
        let first = today - p.window_days as i32;
        let active = std::mem::take(&mut self.active_households);
        let mut still_active = Vec::with_capacity(active.len());
        for h in active {
            let days = &mut self.households[h as usize].days;
            while days.front().is_some_and(|d| d.day < first) {
                days.pop_front();
            }
            let hd = &self.households[h as usize];
            let in_window = || hd.days.iter().filter(|d| d.day < today);
            let over: Vec<&DayCount> = in_window().filter(|d| d.count > p.max_daily).collect();
            let slots = in_window().fold(SlotSet::default(), |all, d| all.union(d.slots));
            let holds = over.len() as u32 >= p.min_days || slots.len() > p.max_credentials;
            let since_day = over
                .first()
                .copied()
                .or(in_window().next())
                .map(|d| d.day)
                .unwrap_or(first);
            let daily: serde_json::Map<String, serde_json::Value> = in_window()
                .map(|d| (self.calendar_date(d.day), d.count.into()))
                .collect();
            let days_over = over.len();
            let empty = hd.days.is_empty();
            let key = AlertKey::new(Rule::GroupRental, SubjectRef::Household(h));
            if holds {
                let evidence = json!({
                    "window_days": p.window_days,
                    "days_over": days_over,
                    "max_daily": p.max_daily,
                    "min_days": p.min_days,
                    "distinct_credentials": slots.len(),
                    "max_credentials": p.max_credentials,
                    "daily": daily,
                });
                let raise = Raise {
                    key,
                    subject: Subject {
                        kind: SubjectKind::Household,
                        id: self.dir.household_key(h).to_string(),
                    },
                    location: self.dir.household_location(h),
                    severity: None,
                    since: self.calendar.midnight(since_day),
                    at,
                    evidence,
                };
                self.raise(raise);
            } else {
                self.clear(&key, at, &[]);
            }
            if empty && !self.is_open(&key) {
                self.households[h as usize].active = false;
            } else {
                still_active.push(h);
            }
            self.dirty(StateKey::Household(h));
        }
        still_active.append(&mut self.active_households);
        self.active_households = still_active;
    }

    fn calendar_date(&self, day: i32) -> String {
        let ts = self.calendar.midnight(day);
        let s = self.calendar.format(ts);
        s.get(..10).unwrap_or(&s).to_string()
    }

    /// Records a sighting of an unregistered credential; false if it cannot
    /// be tracked (too many strangers at once).
    fn stranger_seen(&mut self, h: u128, ts: Ts, device: Option<u32>, credential: &str) -> bool {
        let p = &self.config.rules.repeat_stranger;
        let (days, forget_after) = (p.days.max(1) as i32, p.forget_after.millis());
        let day = self.calendar.day_of(ts);
        let keep_raw = !self.config.privacy.pseudonymize;
        if !self.strangers.contains_key(&h) {
            if self.strangers.len() >= MAX_STRANGERS {
                self.stats.strangers_untracked += 1;
                return false;
            }
            self.strangers.insert(
                h,
                StrangerState {
                    streak_start: day,
                    last_day: day,
                    since: ts,
                    last_seen: ts,
                    last_device: device,
                    display: keep_raw.then(|| credential.into()),
                    cooldown_until: OptTs::NONE,
                    last_gate: None,
                    forget: Deadline::default(),
                },
            );
        }
        let Some(s) = self.strangers.get_mut(&h) else {
            return false;
        };
        if day == s.last_day + 1 {
            s.last_day = day;
        } else if day > s.last_day + 1 {
            s.streak_start = day;
            s.last_day = day;
            s.since = ts;
        }
        s.last_seen = ts;
        if device.is_some() {
            s.last_device = device;
        }
        self.timers.arm(&mut s.forget, ts + forget_after, || {
            TimerKey::StrangerForget(h)
        });
        let streak = s.last_day - s.streak_start + 1;
        let since = s.since;
        let last_device = s.last_device;
        self.dirty(StateKey::Stranger(h));
        let key = AlertKey::new(Rule::RepeatStranger, SubjectRef::Credential(h));
        if streak >= days && !self.is_open(&key) {
            let (subject, location, device_name) = self.stranger_subject(h, last_device);
            let evidence = json!({
                "days": streak,
                "first_seen": self.fmt(since),
                "device_name": device_name,
                "forget_after": format_duration(forget_after),
            });
            self.raise(Raise {
                key,
                subject,
                location,
                severity: None,
                since,
                at: ts,
                evidence,
            });
        }
        true
    }

    fn stranger_subject(
        &self,
        h: u128,
        device: Option<u32>,
    ) -> (Subject, crate::alert::Location, Option<String>) {
        let id = match self.strangers.get(&h).and_then(|s| s.display.as_deref()) {
            Some(raw) => raw.to_string(),
            None => Self::pseudonym(h),
        };
        let (location, name) = match device {
            Some(d) => (self.dir.device_location(d), Some(self.dir.device_name(d))),
            None => (Default::default(), None),
        };
        (
            Subject {
                kind: SubjectKind::Credential,
                id,
            },
            location,
            name,
        )
    }

    pub(super) fn stranger_forgotten(&mut self, h: u128, due: Ts) {
        self.clear(
            &AlertKey::new(Rule::RepeatStranger, SubjectRef::Credential(h)),
            due,
            &[],
        );
        self.strangers.remove(&h);
        self.dirty(StateKey::Stranger(h));
    }

    fn card_sharing(&mut self, ts: Ts, device: Option<u32>, a: &Access<'_>, holder: Holder) {
        let p = &self.config.rules.card_sharing;
        let (window, cooldown) = (p.window.millis(), p.cooldown.millis());
        let out = a.granted && a.direction == Direction::Out;
        let gate = device.filter(|&d| a.granted && !out && self.dir.devices[d as usize].perimeter);
        // The same credential's previous gate access (none after an `out` of
        // the holder), replaced by this one.
        let previous = match holder {
            Holder::Resident(r, slot) => {
                let gates = &mut self.residents[r as usize].last_gates;
                if out {
                    *gates = Box::default();
                }
                gate.and_then(|g| {
                    let previous = gates.iter().find(|e| e.0 == slot).map(|&(_, d, t)| (d, t));
                    let mut kept: Vec<_> = gates
                        .iter()
                        .copied()
                        .filter(|&(s, _, t)| s != slot && ts - t <= window)
                        .collect();
                    kept.push((slot, g, ts));
                    *gates = kept.into_boxed_slice();
                    previous
                })
            }
            Holder::Stranger(h) => {
                let Some(s) = self.strangers.get_mut(&h) else {
                    return;
                };
                if out {
                    s.last_gate = None;
                }
                gate.and_then(|g| s.last_gate.replace((g, ts)))
            }
        };
        let mut hit: Option<(Ts, serde_json::Value)> = None;
        if let Some(reason) = a.reason.as_deref().filter(|r| {
            r.eq_ignore_ascii_case("antipassback") || r.eq_ignore_ascii_case("tailgating")
        }) {
            hit = Some((ts, json!({ "reason": reason.to_ascii_lowercase() })));
        }
        if let (Some(g), Some((first, first_at))) = (gate, previous) {
            if first != g && ts - first_at <= window && hit.is_none() {
                hit = Some((
                    first_at,
                    json!({
                        "reason": "two_gates",
                        "first_device": self.dir.devices[first as usize].id.as_ref(),
                        "first_at": self.calendar.format(first_at),
                        "window": format_duration(window),
                    }),
                ));
            }
        }
        let Some((since, mut evidence)) = hit else {
            return;
        };
        let cooldown_until = match holder {
            Holder::Resident(r, _) => &mut self.residents[r as usize].cooldown_until,
            Holder::Stranger(h) => match self.strangers.get_mut(&h) {
                Some(s) => &mut s.cooldown_until,
                None => return,
            },
        };
        if cooldown_until.get().is_some_and(|until| ts < until) {
            return;
        }
        *cooldown_until = (ts + cooldown).into();
        let (subject_ref, subject, mut location, state_key) = match holder {
            Holder::Resident(r, _) => {
                let (s, l) = self.resident_subject(r);
                (SubjectRef::Resident(r), s, l, StateKey::Resident(r))
            }
            Holder::Stranger(h) => {
                let (s, l, _) = self.stranger_subject(h, device);
                (SubjectRef::Credential(h), s, l, StateKey::Stranger(h))
            }
        };
        self.dirty(state_key);
        if let Some(d) = device {
            location.device = Some(self.dir.devices[d as usize].id.to_string());
            if let serde_json::Value::Object(m) = &mut evidence {
                m.insert("device_name".into(), self.dir.device_name(d).into());
            }
        }
        if let (Holder::Resident(..), serde_json::Value::Object(m)) = (holder, &mut evidence) {
            m.insert("credential".into(), a.credential.as_ref().into());
        }
        self.raise_once(Raise {
            key: AlertKey::new(Rule::CardSharing, subject_ref),
            subject,
            location,
            severity: None,
            since,
            at: ts,
            evidence,
        });
    }

    fn denied(&mut self, ts: Ts, d: u32) {
        let p = &self.config.rules.denied_burst;
        let (count, window, quiet) = (p.count.max(1) as usize, p.window.millis(), p.quiet.millis());
        let key = AlertKey::new(Rule::DeniedBurst, SubjectRef::Device(d));
        let open = self.is_open(&key);
        let s = &mut self.devices[d as usize];
        s.denied.push_back(ts);
        while s.denied.len() > count {
            s.denied.pop_front();
        }
        let first = s.denied.front().copied().unwrap_or(ts);
        let burst = s.denied.len() == count && ts - first <= window;
        if open || burst {
            self.timers
                .arm(&mut s.denied_quiet, ts + quiet, || TimerKey::DeniedQuiet(d));
        }
        self.dirty(StateKey::Device(d));
        if burst && !open {
            let (subject, location) = self.device_subject(d);
            let evidence = json!({
                "count": count,
                "window": format_duration(window),
                "first_at": self.fmt(first),
                "device_name": self.dir.device_name(d),
                "quiet": format_duration(quiet),
            });
            self.raise(Raise {
                key,
                subject,
                location,
                severity: None,
                since: first,
                at: ts,
                evidence,
            });
        }
    }

    pub(super) fn on_door(&mut self, ts: Ts, d: u32, state: DoorState) {
        let after = self.config.rules.door_held_open.after.millis();
        let s = &mut self.devices[d as usize];
        s.door = Some(state);
        if state == DoorState::Closed {
            s.open_since = None;
            s.held.disarm();
            for rule in [Rule::DoorHeldOpen, Rule::DoorForced] {
                self.clear(&AlertKey::new(rule, SubjectRef::Device(d)), ts, &[]);
            }
        } else {
            if s.open_since.is_none() {
                s.open_since = Some(ts);
                self.timers
                    .arm(&mut s.held, ts + after, || TimerKey::DoorHeld(d));
            }
            if state == DoorState::Forced {
                let (subject, location) = self.device_subject(d);
                let evidence = json!({ "device_name": self.dir.device_name(d), "state": "forced" });
                self.raise(Raise {
                    key: AlertKey::new(Rule::DoorForced, SubjectRef::Device(d)),
                    subject,
                    location,
                    severity: None,
                    since: ts,
                    at: ts,
                    evidence,
                });
            }
        }
        self.dirty(StateKey::Device(d));
    }

    pub(super) fn door_held_due(&mut self, d: u32, due: Ts) {
        let Some(since) = self.devices[d as usize].open_since else {
            return;
        };
        let (subject, location) = self.device_subject(d);
        let evidence = json!({
            "opened_at": self.fmt(since),
            "threshold": format_duration(self.config.rules.door_held_open.after.millis()),
            "device_name": self.dir.device_name(d),
        });
        self.raise(Raise {
            key: AlertKey::new(Rule::DoorHeldOpen, SubjectRef::Device(d)),
            subject,
            location,
            severity: None,
            since,
            at: due,
            evidence,
        });
    }

    /// Any event from a device proves it alive.
    pub(super) fn device_seen(&mut self, d: u32, ts: Ts) {
        let e = &self.dir.devices[d as usize];
        if !(e.declared && e.heartbeat) {
            return;
        }
        let after = self.config.rules.device_offline.after.millis();
        let s = &mut self.devices[d as usize];
        s.last_seen = Some(ts);
        self.timers
            .arm(&mut s.offline, ts + after, || TimerKey::Offline(d));
        let key = AlertKey::new(Rule::DeviceOffline, SubjectRef::Device(d));
        self.clear(&key, ts, &[]);
    }

    /// `device_offline`'s severity for the device's kind.
    pub(super) fn offline_severity(&self, d: u32) -> crate::alert::Severity {
        let p = &self.config.rules.device_offline;
        match self.dir.devices[d as usize].kind {
            DeviceKind::Elevator => p.elevator_severity,
            DeviceKind::Access => p.access_severity,
            DeviceKind::Other => p.severity,
        }
    }

    pub(super) fn offline_due(&mut self, d: u32, due: Ts) {
        let severity = self.offline_severity(d);
        let after = self.config.rules.device_offline.after.millis();
        let last_seen = self.devices[d as usize].last_seen;
        let (subject, location) = self.device_subject(d);
        let evidence = json!({
            "last_seen": last_seen.map(|t| self.fmt(t)),
            "threshold": format_duration(after),
            "device_name": self.dir.device_name(d),
        });
        self.raise(Raise {
            key: AlertKey::new(Rule::DeviceOffline, SubjectRef::Device(d)),
            subject,
            location,
            severity: Some(severity),
            since: last_seen.unwrap_or(due - after),
            at: due,
            evidence,
        });
    }

    /// After start or restore: re-arm a device's deadlines from its state.
    pub(super) fn arm_restored_device(&mut self, d: u32, now: Ts) {
        let e = &self.dir.devices[d as usize];
        let heartbeat = e.declared && e.heartbeat;
        let held_after = self.config.rules.door_held_open.after.millis();
        let offline_after = self.config.rules.device_offline.after.millis();
        let quiet = self.config.rules.denied_burst.quiet.millis();
        let offline_open = self.is_open(&AlertKey::new(Rule::DeviceOffline, SubjectRef::Device(d)));
        let burst_open = self.is_open(&AlertKey::new(Rule::DeniedBurst, SubjectRef::Device(d)));
        let s = &mut self.devices[d as usize];
        if heartbeat && !offline_open {
            // Silence is counted from when we started listening.
            self.timers
                .arm(&mut s.offline, now + offline_after, || TimerKey::Offline(d));
        }
        if let Some(since) = s.open_since {
            self.timers
                .arm(&mut s.held, since + held_after, || TimerKey::DoorHeld(d));
        }
        if burst_open {
            let last = s.denied.back().copied().unwrap_or(now);
            self.timers.arm(&mut s.denied_quiet, last + quiet, || {
                TimerKey::DeniedQuiet(d)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::event::decode;
    use crate::roster::parse;
    use crate::time::{parse_rfc3339, Calendar};
    use std::path::Path;
    use std::sync::Arc;

    fn engine() -> Engine {
        let cfg = load_str(
            "compound = \"c\"\n\
             [[devices]]\nid = \"gate-a\"\nkind = \"access\"\nperimeter = true\n\
             [[devices]]\nid = \"gate-b\"\nkind = \"access\"\nperimeter = true\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let csv = "resident_id,building,credentials\nR-1,1,CARD;FACE\n";
        let roster = parse(
            csv.as_bytes(),
            Path::new("t.csv"),
            &Calendar::new(cfg.timezone),
        )
        .roster;
        let mut e = Engine::new(Arc::new(cfg), &roster);
        e.start(
            parse_rfc3339("2026-11-02T10:00:00+08:00").unwrap(),
            &mut vec![],
        );
        e
    }

    fn access(e: &mut Engine, at: &str, gate: &str, credential: &str) -> Vec<String> {
        let line = format!(
            r#"{{"type":"access","ts":"2026-11-02T{at}+08:00","device":"{gate}","credential":"{credential}","granted":true,"direction":"in"}}"#
        );
        let mut out = vec![];
        e.handle(&decode(&line, None).unwrap(), &mut out);
        out.iter()
            .map(|t| format!("{} {}", t.rule, t.evidence["credential"]))
            .collect()
    }

    #[test]
    fn card_sharing_pairs_gates_per_credential() {
        let mut e = engine();
        // The resident's card and face at two gates: two credentials, no hit.
        assert!(access(&mut e, "10:00:00", "gate-a", "CARD").is_empty());
        assert!(access(&mut e, "10:00:30", "gate-b", "FACE").is_empty());
        // The card at the other gate within the window, after the face: hit.
        assert_eq!(
            access(&mut e, "10:01:00", "gate-b", "CARD"),
            ["card_sharing \"CARD\""]
        );
    }

    #[test]
    fn slot_set_counts_distinct_slots_and_caps_at_64() {
        let day1: SlotSet = [0, 5, 5, 62].into_iter().collect();
        let day2: SlotSet = [5, 63, 64, 1000].into_iter().collect();
        assert_eq!(day1.len(), 3);
        assert_eq!(day2.len(), 2);
        let all = day1.union(day2);
        assert_eq!(all.len(), 4);
        assert_eq!(all.iter().collect::<Vec<_>>(), [0, 5, 62, 63]);
        assert_eq!((0..200).collect::<SlotSet>().len(), 64);
        assert_eq!(std::mem::size_of::<DayCount>(), 16);
    }

    #[test]
    fn card_sharing_gate_memory_keeps_only_the_window() {
        let mut e = engine();
        access(&mut e, "10:00:00", "gate-a", "CARD");
        access(&mut e, "10:00:10", "gate-a", "FACE");
        assert_eq!(e.residents[0].last_gates.len(), 2);
        // 10 minutes later only the credential just used is remembered.
        access(&mut e, "10:10:00", "gate-a", "CARD");
        assert_eq!(
            *e.residents[0].last_gates,
            [(0, 0, parse_rfc3339("2026-11-02T10:10:00+08:00").unwrap())]
        );
    }
}
