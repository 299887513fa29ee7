//! Elevator rules (SPEC §4, `elevator_*`), and `device_offline` for polled
//! (Modbus) devices.
//!
//! Each elevator keeps its merged state: the last known value of every field
//! of its samples (SPEC §2: a missing field keeps its last known value), and
//! every rule looks at that merged state, so a sparse sample counts as a
//! sample of the whole car. A field never reported is taken as: `mode`
//! normal, `occupied` and `alarm_button` false, `door_zone` inside the zone,
//! `fault_code` and `fault_bits` 0; `floor`, `moving`, `door` and `speed`
//! unknown (a condition that needs them does not hold).
//!
//! | rule | raise | clear |
//! |---|---|---|
//! | trapped | normal mode, stopped, door closed, occupied for `in_zone_after` / `out_of_zone_after` (zone of the latest sample), or a press of the alarm button (false → true) | the car starts moving or the door opens (a change, not a level) |
//! | door_open_moving | `samples` consecutive samples moving with the door known and not `closed` | a sample stopped in the door zone |
//! | overtravel | floor above `highest_floor` or below `lowest_floor` (each checked only if configured) | floor in range and in the door zone |
//! | stopped_outside_zone | stopped, outside the zone, not occupied, for `after` (any mode) | a sample in the door zone |
//! | fault | per fault key: `fault_code` non-zero, or bit N of `fault_bits` set, continuously for `debounce` | the key absent for `clear_after` |
//! | out_of_service | inspection / out_of_service for `after` (time in either counts); fire / earthquake at once | mode normal |
//! | abnormal_usage | `door_cycles` door cycles (closed → not closed → closed) within `window` while stopped; or `overspeed_samples` samples with \|speed\| above `overspeed_ratio` × `rated_speed` within `window` | the condition absent for `quiet` |
//!
//! Memory per elevator is bounded: the two windows hold at most
//! `door_cycles` / `overspeed_samples` times, the fault list at most
//! [`MAX_FAULTS`] keys. Work per sample is constant.

use super::alerts::{AlertKey, Raise, Rule, SubjectRef};
use super::timers::{Deadline, ElevatorTimer, TimerKey};
use super::{Engine, StateKey};
use crate::alert::{AlertTransition, Severity};
use crate::config::Language;
use crate::event::{CarDoor, ElevatorMode, ElevatorSample, TravelDirection};
use crate::time::{format_duration, Millis, Ts};
use serde_json::{json, Value};
use std::collections::VecDeque;

/// Fault keys of `fault_bits`: bit n is `FAULT_BIT + n`, above every
/// `fault_code` (a `u32`), so the two never collide.
pub const FAULT_BIT: u64 = 1 << 32;

/// Fault keys tracked per elevator (active or waiting for `clear_after`);
/// at most 33 can be active at once (one code and 32 bits). Further keys
/// are ignored until one is forgotten.
pub const MAX_FAULTS: usize = 64;

/// Internal subjects of the two `elevator_abnormal_usage` conditions (same
/// wire subject, separate alerts).
const USAGE_DOOR_CYCLES: u64 = 0;
const USAGE_OVERSPEED: u64 = 1;

/// A key of an elevator's fault table: a code in decimal (`"12"`) or hex
/// (`"0x1A"`), at most `u32::MAX` like `fault_code`; or a bit of
/// `fault_bits`, `"bit0"` to `"bit31"`, which maps to `FAULT_BIT + n`.
pub fn parse_fault_key(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(n) = s
        .get(..3)
        .filter(|p| p.eq_ignore_ascii_case("bit"))
        .map(|_| &s[3..])
    {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = n.parse().ok()?;
        return (n < 32).then_some(FAULT_BIT + n);
    }
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).ok()?
        }
        Some(_) => return None,
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok()?,
        None => return None,
    };
    (v <= u32::MAX as u64).then_some(v)
}

/// A fault key's bit number, for keys of `fault_bits`.
fn fault_bit(key: u64) -> Option<u32> {
    (key >= FAULT_BIT).then(|| (key - FAULT_BIT) as u32)
}

/// One fault key of one elevator: active (debouncing or raised), or raised
/// and absent (waiting for `clear_after`).
#[derive(Debug, Clone)]
pub struct FaultTrack {
    pub key: u64,
    /// First sample of the key in its current run.
    pub since: Ts,
    /// When it went absent (only while its alert is open).
    pub absent_since: Option<Ts>,
    /// Debounce while present and not raised; `clear_after` while absent.
    pub deadline: Deadline,
}

/// One elevator's merged state and rule state.
#[derive(Debug, Clone, Default)]
pub struct ElevatorState {
    /// The last known value of every field.
    pub last: ElevatorSample,
    /// `elevator_trapped`: since when the stationary condition holds.
    pub trapped_since: Option<Ts>,
    pub trapped: Deadline,
    /// `elevator_door_open_moving`: consecutive samples, and the first one.
    pub open_moving: u32,
    pub open_moving_since: Ts,
    /// `elevator_stopped_outside_zone`.
    pub outside_since: Option<Ts>,
    pub outside: Deadline,
    /// `elevator_out_of_service`: since when in inspection / out_of_service.
    pub mode_since: Option<Ts>,
    pub out_of_service: Deadline,
    /// `elevator_fault`.
    pub faults: Vec<FaultTrack>,
    /// `elevator_abnormal_usage`: the door left `closed` since it was last
    /// closed (a cycle in progress).
    pub door_opened: bool,
    /// Completion times of the latest door cycles (at most `door_cycles`).
    pub door_cycles: VecDeque<Ts>,
    /// When the door-cycle condition stops (stopped) holding.
    pub door_cycles_end: Option<Ts>,
    pub door_cycles_quiet: Deadline,
    /// Times of the latest overspeed samples (at most `overspeed_samples`).
    pub overspeed: VecDeque<Ts>,
    pub overspeed_end: Option<Ts>,
    pub overspeed_quiet: Deadline,
}

impl ElevatorState {
    pub fn shift(&mut self, delta: Millis) {
        for t in [
            &mut self.trapped_since,
            &mut self.outside_since,
            &mut self.mode_since,
            &mut self.door_cycles_end,
            &mut self.overspeed_end,
        ] {
            *t = t.map(|v| v + delta);
        }
        self.open_moving_since += delta;
        for f in self.faults.iter_mut() {
            f.since += delta;
            f.absent_since = f.absent_since.map(|t| t + delta);
            f.deadline.shift(delta);
        }
        for t in self.door_cycles.iter_mut().chain(self.overspeed.iter_mut()) {
            *t += delta;
        }
        for d in [
            &mut self.trapped,
            &mut self.outside,
            &mut self.out_of_service,
            &mut self.door_cycles_quiet,
            &mut self.overspeed_quiet,
        ] {
            d.shift(delta);
        }
    }

    fn merge(&mut self, s: &ElevatorSample) {
        macro_rules! keep {
            ($($f:ident),*) => { $( if s.$f.is_some() { self.last.$f = s.$f; } )* };
        }
        keep!(
            floor,
            moving,
            direction,
            door,
            door_zone,
            occupied,
            mode,
            fault_code,
            speed,
            alarm_button,
            fault_bits
        );
    }
}

/// Consecutive failed polls of a polled device (not persisted: the count
/// restarts at 0 after a restart; an open `device_offline` stays open).
#[derive(Debug, Clone, Copy)]
pub struct PollFailures {
    pub count: u32,
    /// The first failure of the run.
    pub since: Ts,
}

// What the merged state means for the rules.
fn moving(m: &ElevatorSample) -> bool {
    m.moving == Some(true)
}
fn stopped(m: &ElevatorSample) -> bool {
    m.moving == Some(false)
}
fn closed(m: &ElevatorSample) -> bool {
    m.door == Some(CarDoor::Closed)
}
fn not_closed(m: &ElevatorSample) -> bool {
    m.door.is_some_and(|d| d != CarDoor::Closed)
}
fn in_zone(m: &ElevatorSample) -> bool {
    m.door_zone != Some(false)
}
fn occupied(m: &ElevatorSample) -> bool {
    m.occupied == Some(true)
}
fn mode_normal(m: &ElevatorSample) -> bool {
    m.mode.is_none_or(|x| x == ElevatorMode::Normal)
}
fn trapped_condition(m: &ElevatorSample) -> bool {
    mode_normal(m) && stopped(m) && closed(m) && occupied(m)
}
fn outside_condition(m: &ElevatorSample) -> bool {
    stopped(m) && m.door_zone == Some(false) && !occupied(m)
}
fn out_of_service_mode(mode: Option<ElevatorMode>) -> bool {
    matches!(
        mode,
        Some(ElevatorMode::Inspection | ElevatorMode::OutOfService)
    )
}
/// What is worth persisting changed (everything but the speed).
fn persisted_changed(a: &ElevatorSample, b: &ElevatorSample) -> bool {
    ElevatorSample { speed: None, ..*a } != ElevatorSample { speed: None, ..*b }
}

pub fn mode_str(m: ElevatorMode) -> &'static str {
    match m {
        ElevatorMode::Normal => "normal",
        ElevatorMode::Inspection => "inspection",
        ElevatorMode::OutOfService => "out_of_service",
        ElevatorMode::Fire => "fire",
        ElevatorMode::Earthquake => "earthquake",
        ElevatorMode::PowerBackup => "power_backup",
        ElevatorMode::Other => "other",
    }
}

fn door_str(d: CarDoor) -> &'static str {
    match d {
        CarDoor::Open => "open",
        CarDoor::Closed => "closed",
        CarDoor::Opening => "opening",
        CarDoor::Closing => "closing",
    }
}

fn direction_str(d: TravelDirection) -> &'static str {
    match d {
        TravelDirection::Up => "up",
        TravelDirection::Down => "down",
        TravelDirection::None => "none",
    }
}

impl Engine {
    pub(super) fn on_elevator(&mut self, ts: Ts, d: u32, sample: &ElevatorSample) {
        let s = self.elevators.entry(d).or_default();
        let prev = s.last;
        s.merge(sample);
        let now = s.last;
        self.trapped_sample(ts, d, &prev, &now);
        self.open_moving_sample(ts, d, &now);
        self.overtravel_sample(ts, d, &now);
        self.outside_sample(ts, d, &now);
        self.fault_sample(ts, d, &prev, &now);
        self.mode_sample(ts, d, &prev, &now);
        self.usage_sample(ts, d, &prev, &now);
        // Since-times change only with the fields they derive from; the
        // usage rule marks its own changes. Speed alone writes nothing.
        if persisted_changed(&prev, &now) {
            self.dirty(StateKey::Elevator(d));
        }
    }

    /// Raises an elevator alert: the elevator's subject and location, and
    /// `device_name` (plus `floor`, when known) in the evidence.
    fn elevator_raise(
        &mut self,
        d: u32,
        key: AlertKey,
        severity: Option<Severity>,
        since: Ts,
        at: Ts,
        mut evidence: Value,
    ) -> bool {
        if let Value::Object(m) = &mut evidence {
            m.insert("device_name".into(), self.dir.device_name(d).into());
            if !m.contains_key("floor") {
                if let Some(f) = self.elevators.get(&d).and_then(|s| s.last.floor) {
                    m.insert("floor".into(), f.into());
                }
            }
        }
        let (subject, location) = self.device_subject(d);
        self.raise(Raise {
            key,
            subject,
            location,
            severity,
            since,
            at,
            evidence,
        })
    }

    fn elevator_clear(&mut self, d: u32, rule: Rule, at: Ts) -> bool {
        self.clear(&AlertKey::new(rule, SubjectRef::Device(d)), at, &[])
    }

    fn trapped_after(&self, m: &ElevatorSample) -> Millis {
        let p = &self.config.rules.elevator_trapped;
        if in_zone(m) {
            p.in_zone_after.millis()
        } else {
            p.out_of_zone_after.millis()
        }
    }

    // ---- elevator_trapped ----------------------------------------------

    fn trapped_sample(&mut self, ts: Ts, d: u32, prev: &ElevatorSample, now: &ElevatorSample) {
        let key = AlertKey::new(Rule::ElevatorTrapped, SubjectRef::Device(d));
        // Released: the car starts moving or the door opens.
        let started = moving(now) && !moving(prev);
        let opened = not_closed(now) && !not_closed(prev);
        if started || opened {
            self.clear(&key, ts, &[]);
        }
        let pressed = now.alarm_button == Some(true) && prev.alarm_button != Some(true);
        let condition = trapped_condition(now);
        let after = self.trapped_after(now);
        let enabled = self.config.rules.elevator_trapped.enabled;
        let open = self.is_open(&key);
        let Some(s) = self.elevators.get_mut(&d) else {
            return;
        };
        if condition {
            s.trapped_since.get_or_insert(ts);
        } else {
            s.trapped_since = None;
        }
        let since = s.trapped_since;
        if pressed {
            s.trapped.disarm();
            let evidence = json!({
                "trigger": "alarm_button",
                "door": now.door.map(door_str),
                "door_zone": now.door_zone,
            });
            self.elevator_raise(
                d,
                AlertKey::new(Rule::ElevatorTrapped, SubjectRef::Device(d)),
                None,
                since.unwrap_or(ts),
                ts,
                evidence,
            );
            return;
        }
        match since {
            Some(since) if !open && enabled => {
                let due = since + after;
                if due <= ts {
                    // The zone changed to one with a shorter threshold.
                    s.trapped.disarm();
                    self.trapped_due(d, ts);
                } else {
                    self.timers.arm(&mut s.trapped, due, || {
                        TimerKey::Elevator(d, ElevatorTimer::Trapped)
                    });
                }
            }
            _ => s.trapped.disarm(),
        }
    }

    fn trapped_due(&mut self, d: u32, at: Ts) {
        let Some(s) = self.elevators.get(&d) else {
            return;
        };
        let (Some(since), m) = (s.trapped_since, s.last) else {
            return;
        };
        let evidence = json!({
            "trigger": "stopped",
            "door_zone": in_zone(&m),
            "threshold": format_duration(self.trapped_after(&m)),
        });
        self.elevator_raise(
            d,
            AlertKey::new(Rule::ElevatorTrapped, SubjectRef::Device(d)),
            None,
            since,
            at,
            evidence,
        );
    }

    // ---- elevator_door_open_moving ---------------------------------------

    fn open_moving_sample(&mut self, ts: Ts, d: u32, now: &ElevatorSample) {
        let samples = self.config.rules.elevator_door_open_moving.samples.max(1);
        let Some(s) = self.elevators.get_mut(&d) else {
            return;
        };
        if moving(now) && not_closed(now) {
            if s.open_moving == 0 {
                s.open_moving_since = ts;
            }
            s.open_moving = s.open_moving.saturating_add(1);
            if s.open_moving >= samples {
                let since = s.open_moving_since;
                let key = AlertKey::new(Rule::ElevatorDoorOpenMoving, SubjectRef::Device(d));
                if !self.is_open(&key) {
                    let evidence = json!({
                        "door": now.door.map(door_str),
                        "direction": now.direction.map(direction_str),
                        "samples": samples,
                    });
                    self.elevator_raise(
                        d,
                        AlertKey::new(Rule::ElevatorDoorOpenMoving, SubjectRef::Device(d)),
                        None,
                        since,
                        ts,
                        evidence,
                    );
                }
            }
        } else {
            s.open_moving = 0;
            if stopped(now) && in_zone(now) {
                self.elevator_clear(d, Rule::ElevatorDoorOpenMoving, ts);
            }
        }
    }

    // ---- elevator_overtravel ---------------------------------------------

    fn overtravel_sample(&mut self, ts: Ts, d: u32, now: &ElevatorSample) {
        let Some(spec) = self.dir.devices[d as usize].elevator.as_deref() else {
            return;
        };
        let (lo, hi) = (spec.lowest_floor, spec.highest_floor);
        let Some(floor) = now.floor else {
            return;
        };
        if lo.is_none() && hi.is_none() {
            return;
        }
        let out = hi.is_some_and(|h| floor > h) || lo.is_some_and(|l| floor < l);
        let key = AlertKey::new(Rule::ElevatorOvertravel, SubjectRef::Device(d));
        if out {
            if !self.is_open(&key) {
                let evidence = json!({
                    "floor": floor,
                    "lowest_floor": lo,
                    "highest_floor": hi,
                    "direction": now.direction.map(direction_str),
                });
                self.elevator_raise(
                    d,
                    AlertKey::new(Rule::ElevatorOvertravel, SubjectRef::Device(d)),
                    None,
                    ts,
                    ts,
                    evidence,
                );
            }
        } else if in_zone(now) {
            self.clear(&key, ts, &[]);
        }
    }

    // ---- elevator_stopped_outside_zone -------------------------------------

    fn outside_sample(&mut self, ts: Ts, d: u32, now: &ElevatorSample) {
        let p = &self.config.rules.elevator_stopped_outside_zone;
        let (after, enabled) = (p.after.millis(), p.enabled);
        if now.door_zone == Some(true) {
            self.elevator_clear(d, Rule::ElevatorStoppedOutsideZone, ts);
        }
        let open = self.is_open(&AlertKey::new(
            Rule::ElevatorStoppedOutsideZone,
            SubjectRef::Device(d),
        ));
        let Some(s) = self.elevators.get_mut(&d) else {
            return;
        };
        if !outside_condition(now) {
            s.outside_since = None;
            s.outside.disarm();
            return;
        }
        let since = *s.outside_since.get_or_insert(ts);
        if !open && enabled {
            let due = since + after;
            if due <= ts {
                s.outside.disarm();
                self.outside_due(d, ts);
            } else {
                self.timers.arm(&mut s.outside, due, || {
                    TimerKey::Elevator(d, ElevatorTimer::OutsideZone)
                });
            }
        }
    }

    fn outside_due(&mut self, d: u32, at: Ts) {
        let Some(since) = self.elevators.get(&d).and_then(|s| s.outside_since) else {
            return;
        };
        let after = self
            .config
            .rules
            .elevator_stopped_outside_zone
            .after
            .millis();
        let evidence = json!({ "threshold": format_duration(after) });
        self.elevator_raise(
            d,
            AlertKey::new(Rule::ElevatorStoppedOutsideZone, SubjectRef::Device(d)),
            None,
            since,
            at,
            evidence,
        );
    }

    // ---- elevator_fault ----------------------------------------------------

    fn fault_sample(&mut self, ts: Ts, d: u32, prev: &ElevatorSample, now: &ElevatorSample) {
        if now.fault_code == prev.fault_code && now.fault_bits == prev.fault_bits {
            return; // present keys stay present, absent ones absent
        }
        let p = &self.config.rules.elevator_fault;
        let (debounce, clear_after) = (p.debounce.millis(), p.clear_after.millis());
        let code = now.fault_code.unwrap_or(0) as u64;
        let bits = now.fault_bits.unwrap_or(0);
        let active = |key: u64| match fault_bit(key) {
            Some(b) => bits & (1 << b) != 0,
            None => key != 0 && key == code,
        };
        let Some(s) = self.elevators.get_mut(&d) else {
            return;
        };
        let mut due_now: Vec<u64> = Vec::new();
        let mut i = 0;
        while i < s.faults.len() {
            let f = &mut s.faults[i];
            let open = self.alerts.contains_key(&AlertKey::new(
                Rule::ElevatorFault,
                SubjectRef::DeviceCode(d, f.key),
            ));
            match (active(f.key), open) {
                (true, true) => {
                    // Back before `clear_after`: the alert stays as it is.
                    f.absent_since = None;
                    f.deadline.disarm();
                }
                (true, false) => {}
                (false, false) => {
                    // Gone within the debounce: forgotten.
                    s.faults.swap_remove(i);
                    continue;
                }
                (false, true) => {
                    if f.absent_since.is_none() {
                        f.absent_since = Some(ts);
                        let key = TimerKey::Elevator(d, ElevatorTimer::Fault(f.key));
                        self.timers.arm(&mut f.deadline, ts + clear_after, || key);
                    }
                }
            }
            i += 1;
        }
        let new_keys = (code != 0).then_some(code).into_iter().chain(
            (0..32u64)
                .filter(|b| bits & (1 << b) != 0)
                .map(|b| FAULT_BIT + b),
        );
        for key in new_keys {
            if s.faults.iter().any(|f| f.key == key) || s.faults.len() >= MAX_FAULTS {
                continue;
            }
            let mut f = FaultTrack {
                key,
                since: ts,
                absent_since: None,
                deadline: Deadline::default(),
            };
            if debounce <= 0 {
                due_now.push(key);
            } else {
                self.timers.arm(&mut f.deadline, ts + debounce, || {
                    TimerKey::Elevator(d, ElevatorTimer::Fault(key))
                });
            }
            s.faults.push(f);
        }
        for key in due_now {
            self.fault_due(d, key, ts);
        }
    }

    /// A fault key's deadline: the end of its debounce (raise) or of its
    /// `clear_after` (clear).
    fn fault_due(&mut self, d: u32, key: u64, at: Ts) {
        let Some(s) = self.elevators.get_mut(&d) else {
            return;
        };
        let Some(i) = s.faults.iter().position(|f| f.key == key) else {
            return;
        };
        let alert = AlertKey::new(Rule::ElevatorFault, SubjectRef::DeviceCode(d, key));
        if s.faults[i].absent_since.is_some() {
            s.faults.swap_remove(i);
            self.clear(&alert, at, &[]);
            self.dirty(StateKey::Elevator(d));
            return;
        }
        let since = s.faults[i].since;
        let table = self.dir.devices[d as usize]
            .elevator
            .as_deref()
            .and_then(|e| e.fault(key));
        let zh = self.config.language == Language::ZhCn;
        let text = match (table, fault_bit(key)) {
            (Some((_, text)), _) => text.to_string(),
            (None, Some(b)) if zh => format!("故障位 {b}"),
            (None, Some(b)) => format!("fault bit {b}"),
            (None, None) if zh => format!("故障代码 {key}"),
            (None, None) => format!("fault code {key}"),
        };
        let code: Value = match fault_bit(key) {
            Some(b) => format!("bit{b}").into(),
            None => key.into(),
        };
        let evidence = json!({
            "fault_code": code,
            "fault_bit": fault_bit(key),
            "fault_text": text,
            "debounce": format_duration(self.config.rules.elevator_fault.debounce.millis()),
        });
        let severity = table.and_then(|(s, _)| s);
        self.elevator_raise(
            d,
            AlertKey::new(Rule::ElevatorFault, SubjectRef::DeviceCode(d, key)),
            severity,
            since,
            at,
            evidence,
        );
        self.dirty(StateKey::Elevator(d));
    }

    // ---- elevator_out_of_service ---------------------------------------------

    fn mode_sample(&mut self, ts: Ts, d: u32, prev: &ElevatorSample, now: &ElevatorSample) {
        if now.mode == prev.mode {
            return;
        }
        let p = &self.config.rules.elevator_out_of_service;
        let (after, emergency, enabled) = (p.after.millis(), p.emergency_severity, p.enabled);
        let key = AlertKey::new(Rule::ElevatorOutOfService, SubjectRef::Device(d));
        let open = self.is_open(&key);
        let Some(s) = self.elevators.get_mut(&d) else {
            return;
        };
        match now.mode {
            Some(ElevatorMode::Inspection | ElevatorMode::OutOfService) => {
                // Time in either mode counts.
                let since = match (out_of_service_mode(prev.mode), s.mode_since) {
                    (true, Some(t)) => t,
                    _ => ts,
                };
                s.mode_since = Some(since);
                if !open && enabled {
                    self.timers.arm(&mut s.out_of_service, since + after, || {
                        TimerKey::Elevator(d, ElevatorTimer::OutOfService)
                    });
                }
            }
            Some(m @ (ElevatorMode::Fire | ElevatorMode::Earthquake)) => {
                s.mode_since = None;
                s.out_of_service.disarm();
                if open {
                    // Already out of service (inspection): now an emergency.
                    self.raise_severity(&key, emergency, ts, &[("mode", mode_str(m).into())]);
                } else {
                    let evidence = json!({ "mode": mode_str(m) });
                    self.elevator_raise(
                        d,
                        AlertKey::new(Rule::ElevatorOutOfService, SubjectRef::Device(d)),
                        Some(emergency),
                        ts,
                        ts,
                        evidence,
                    );
                }
            }
            Some(ElevatorMode::Normal) => {
                s.mode_since = None;
                s.out_of_service.disarm();
                self.clear(&key, ts, &[]);
            }
            // power_backup, other: neither raise nor clear; time in them
            // does not count towards `after`.
            Some(ElevatorMode::PowerBackup | ElevatorMode::Other) | None => {
                s.mode_since = None;
                s.out_of_service.disarm();
            }
        }
    }

    fn out_of_service_due(&mut self, d: u32, at: Ts) {
        let Some(s) = self.elevators.get(&d) else {
            return;
        };
        let (Some(since), Some(mode)) = (s.mode_since, s.last.mode) else {
            return;
        };
        if !out_of_service_mode(Some(mode)) {
            return;
        }
        let after = self.config.rules.elevator_out_of_service.after.millis();
        let evidence = json!({ "mode": mode_str(mode), "threshold": format_duration(after) });
        self.elevator_raise(
            d,
            AlertKey::new(Rule::ElevatorOutOfService, SubjectRef::Device(d)),
            None,
            since,
            at,
            evidence,
        );
    }

    // ---- elevator_abnormal_usage -------------------------------------------

    fn usage_sample(&mut self, ts: Ts, d: u32, prev: &ElevatorSample, now: &ElevatorSample) {
        let p = &self.config.rules.elevator_abnormal_usage;
        let cycles = p.door_cycles.max(1) as usize;
        let samples = p.overspeed_samples.max(1) as usize;
        let (window, quiet, ratio) = (p.window.millis(), p.quiet.millis(), p.overspeed_ratio);
        let overspeed_severity = p.overspeed_severity;
        let rated = self.dir.devices[d as usize]
            .elevator
            .as_deref()
            .and_then(|e| e.rated_speed);
        let Some(s) = self.elevators.get_mut(&d) else {
            return;
        };
        let mut raise_cycles = None;
        let mut changed = false;
        if moving(now) {
            // Cycles count within one stop; leaving ends the condition.
            s.door_cycles.clear();
            s.door_opened = false;
            if s.door_cycles_end.is_some_and(|e| e > ts) {
                s.door_cycles_end = Some(ts);
                if s.door_cycles_quiet.is_armed() {
                    self.timers.arm(&mut s.door_cycles_quiet, ts + quiet, || {
                        TimerKey::Elevator(d, ElevatorTimer::DoorCyclesQuiet)
                    });
                }
                changed = true;
            }
        } else if not_closed(now) {
            s.door_opened = true;
        } else if closed(now) && !closed(prev) && s.door_opened {
            s.door_opened = false;
            s.door_cycles.push_back(ts);
            while s.door_cycles.len() > cycles {
                s.door_cycles.pop_front();
            }
            let first = s.door_cycles.front().copied().unwrap_or(ts);
            if s.door_cycles.len() == cycles && ts - first <= window {
                let end = first + window;
                s.door_cycles_end = Some(end);
                self.timers.arm(&mut s.door_cycles_quiet, end + quiet, || {
                    TimerKey::Elevator(d, ElevatorTimer::DoorCyclesQuiet)
                });
                raise_cycles = Some(first);
                changed = true;
            }
        }
        let mut raise_overspeed = None;
        if let (Some(rated), Some(speed)) = (rated, now.speed) {
            let limit = ratio * rated as f64;
            if (speed as f64).abs() > limit {
                s.overspeed.push_back(ts);
                while s.overspeed.len() > samples {
                    s.overspeed.pop_front();
                }
                let first = s.overspeed.front().copied().unwrap_or(ts);
                if s.overspeed.len() == samples && ts - first <= window {
                    let end = first + window;
                    s.overspeed_end = Some(end);
                    self.timers.arm(&mut s.overspeed_quiet, end + quiet, || {
                        TimerKey::Elevator(d, ElevatorTimer::OverspeedQuiet)
                    });
                    raise_overspeed = Some((first, speed, rated, limit));
                    changed = true;
                }
            }
        }
        if changed {
            self.dirty(StateKey::Elevator(d));
        }
        if let Some(first) = raise_cycles {
            let key = AlertKey::new(
                Rule::ElevatorAbnormalUsage,
                SubjectRef::DeviceCode(d, USAGE_DOOR_CYCLES),
            );
            if !self.is_open(&key) {
                let evidence = json!({
                    "condition": "door_cycles",
                    "door_cycles": cycles,
                    "window": format_duration(window),
                    "quiet": format_duration(quiet),
                });
                self.elevator_raise(d, key, None, first, ts, evidence);
            }
        }
        if let Some((first, speed, rated, limit)) = raise_overspeed {
            let key = AlertKey::new(
                Rule::ElevatorAbnormalUsage,
                SubjectRef::DeviceCode(d, USAGE_OVERSPEED),
            );
            if !self.is_open(&key) {
                let round = |v: f64| (v * 1000.0).round() / 1000.0;
                let evidence = json!({
                    "condition": "overspeed",
                    "speed": round(speed as f64),
                    "rated_speed": round(rated as f64),
                    "limit": round(limit),
                    "overspeed_samples": samples,
                    "window": format_duration(window),
                    "quiet": format_duration(quiet),
                });
                self.elevator_raise(d, key, Some(overspeed_severity), first, ts, evidence);
            }
        }
    }

    // ---- timers ------------------------------------------------------------

    /// A popped elevator timer: settles it against its deadline and acts.
    pub(super) fn elevator_fire(&mut self, at: Ts, d: u32, which: ElevatorTimer) {
        let key = TimerKey::Elevator(d, which);
        let Some(s) = self.elevators.get_mut(&d) else {
            return;
        };
        let deadline = match which {
            ElevatorTimer::Trapped => &mut s.trapped,
            ElevatorTimer::OutsideZone => &mut s.outside,
            ElevatorTimer::OutOfService => &mut s.out_of_service,
            ElevatorTimer::DoorCyclesQuiet => &mut s.door_cycles_quiet,
            ElevatorTimer::OverspeedQuiet => &mut s.overspeed_quiet,
            ElevatorTimer::Fault(k) => match s.faults.iter_mut().find(|f| f.key == k) {
                Some(f) => &mut f.deadline,
                None => return,
            },
        };
        let Some(due) = self.timers.settle(at, deadline, key) else {
            return;
        };
        match which {
            ElevatorTimer::Trapped => self.trapped_due(d, due),
            ElevatorTimer::OutsideZone => self.outside_due(d, due),
            ElevatorTimer::OutOfService => self.out_of_service_due(d, due),
            ElevatorTimer::Fault(k) => self.fault_due(d, k, due),
            ElevatorTimer::DoorCyclesQuiet | ElevatorTimer::OverspeedQuiet => {
                let (code, s) = (
                    if which == ElevatorTimer::DoorCyclesQuiet {
                        USAGE_DOOR_CYCLES
                    } else {
                        USAGE_OVERSPEED
                    },
                    self.elevators.get_mut(&d),
                );
                if let Some(s) = s {
                    if code == USAGE_DOOR_CYCLES {
                        s.door_cycles_end = None;
                    } else {
                        s.overspeed_end = None;
                    }
                }
                self.clear(
                    &AlertKey::new(Rule::ElevatorAbnormalUsage, SubjectRef::DeviceCode(d, code)),
                    due,
                    &[],
                );
                self.dirty(StateKey::Elevator(d));
            }
        }
    }

    /// After restore, at start: re-arms an elevator's deadlines from its
    /// persisted state. Deadlines already past fire at their own time on
    /// the next advance; open alerts are not raised again.
    pub(super) fn arm_restored_elevator(&mut self, d: u32, now: Ts) {
        let Some(trapped_after) = self.elevators.get(&d).map(|s| self.trapped_after(&s.last))
        else {
            return;
        };
        let r = &self.config.rules;
        let outside_after = r.elevator_stopped_outside_zone.after.millis();
        let oos_after = r.elevator_out_of_service.after.millis();
        let debounce = r.elevator_fault.debounce.millis();
        let clear_after = r.elevator_fault.clear_after.millis();
        let quiet = r.elevator_abnormal_usage.quiet.millis();
        let alerts = &self.alerts;
        let open = |rule: Rule, sub: SubjectRef| alerts.contains_key(&AlertKey::new(rule, sub));
        let Some(s) = self.elevators.get_mut(&d) else {
            return;
        };
        let t = |w: ElevatorTimer| move || TimerKey::Elevator(d, w);
        if let Some(since) = s.trapped_since {
            if !open(Rule::ElevatorTrapped, SubjectRef::Device(d)) {
                let due = since + trapped_after;
                self.timers
                    .arm(&mut s.trapped, due, t(ElevatorTimer::Trapped));
            }
        }
        if let Some(since) = s.outside_since {
            if !open(Rule::ElevatorStoppedOutsideZone, SubjectRef::Device(d)) {
                let due = since + outside_after;
                self.timers
                    .arm(&mut s.outside, due, t(ElevatorTimer::OutsideZone));
            }
        }
        if let Some(since) = s.mode_since {
            if !open(Rule::ElevatorOutOfService, SubjectRef::Device(d)) {
                let due = since + oos_after;
                self.timers
                    .arm(&mut s.out_of_service, due, t(ElevatorTimer::OutOfService));
            }
        }
        // An absent key whose alert is no longer open has nothing left to do.
        s.faults.retain(|f| {
            f.absent_since.is_none() || open(Rule::ElevatorFault, SubjectRef::DeviceCode(d, f.key))
        });
        for f in s.faults.iter_mut() {
            let due = match f.absent_since {
                Some(absent) => absent + clear_after,
                None if open(Rule::ElevatorFault, SubjectRef::DeviceCode(d, f.key)) => continue,
                None => f.since + debounce,
            };
            self.timers
                .arm(&mut f.deadline, due, t(ElevatorTimer::Fault(f.key)));
        }
        let usage = |c| open(Rule::ElevatorAbnormalUsage, SubjectRef::DeviceCode(d, c));
        if usage(USAGE_DOOR_CYCLES) {
            let end = s.door_cycles_end.unwrap_or(now);
            self.timers.arm(
                &mut s.door_cycles_quiet,
                end + quiet,
                t(ElevatorTimer::DoorCyclesQuiet),
            );
        }
        if usage(USAGE_OVERSPEED) {
            let end = s.overspeed_end.unwrap_or(now);
            self.timers.arm(
                &mut s.overspeed_quiet,
                end + quiet,
                t(ElevatorTimer::OverspeedQuiet),
            );
        }
    }

    // ---- device_offline for polled devices ---------------------------------

    /// A poll of a polled (Modbus) device failed at `ts`. `failures`
    /// consecutive failures raise `device_offline` (severity by device kind,
    /// as for heartbeat devices); any event from the device (a good poll
    /// arrives as an `elevator` event through [`Engine::handle`]) resets the
    /// count and clears it. The count is not persisted: after a restart it
    /// starts again at 0 (an open alert stays open until the first event).
    /// Unknown device ids are ignored.
    pub fn poll_failed(&mut self, device_id: &str, ts: Ts, out: &mut Vec<AlertTransition>) {
        self.poll_failed_with_reason(device_id, ts, None, out);
    }

    /// [`Engine::poll_failed`], with why the poll failed (`timeout`,
    /// `connection refused`, a Modbus exception…) put in the evidence as
    /// `reason`.
    pub fn poll_failed_with_reason(
        &mut self,
        device_id: &str,
        ts: Ts,
        reason: Option<&str>,
        out: &mut Vec<AlertTransition>,
    ) {
        let ts = ts.max(self.now);
        self.advance(ts);
        if let Some(&d) = self.dir.device_by_id.get(device_id) {
            let threshold = self.config.rules.device_offline.failures.max(1);
            let p = self.polls.entry(d).or_insert(PollFailures {
                count: 0,
                since: ts,
            });
            if p.count == 0 {
                p.since = ts;
            }
            p.count = p.count.saturating_add(1);
            let (count, since) = (p.count, p.since);
            let key = AlertKey::new(Rule::DeviceOffline, SubjectRef::Device(d));
            if count >= threshold && !self.is_open(&key) {
                let severity = self.offline_severity(d);
                let (subject, location) = self.device_subject(d);
                let evidence = json!({
                    "failures": count,
                    "reason": reason,
                    "first_failure": self.fmt(since),
                    "device_name": self.dir.device_name(d),
                });
                self.raise(Raise {
                    key,
                    subject,
                    location,
                    severity: Some(severity),
                    since,
                    at: ts,
                    evidence,
                });
            }
        }
        out.append(&mut self.out);
    }

    /// Any event from a device: its failed polls are over.
    pub(super) fn poll_succeeded(&mut self, d: u32, ts: Ts) {
        if self.polls.remove(&d).is_some() {
            self.clear(
                &AlertKey::new(Rule::DeviceOffline, SubjectRef::Device(d)),
                ts,
                &[],
            );
        }
    }

    /// The merged state of an elevator (for the admin endpoint and tests).
    pub fn elevator_state(&self, device_id: &str) -> Option<ElevatorSample> {
        let d = self.dir.device_by_id.get(device_id)?;
        self.elevators.get(d).map(|s| s.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::event::decode;
    use crate::roster::Roster;
    use crate::time::parse_rfc3339;
    use std::path::Path;
    use std::sync::Arc;

    const CONFIG: &str = r#"compound = "c"
[[devices]]
id = "lift-1"
kind = "elevator"
name = "Lift 1"
building = "3"
lowest_floor = 1
highest_floor = 10
rated_speed = 1.0
[devices.fault_codes]
"12" = { text = "Safety circuit open" }
[[devices]]
id = "door-1"
kind = "access"
building = "3"
"#;

    fn t(hms: &str) -> Ts {
        parse_rfc3339(&format!("2026-11-02T{hms}+08:00")).unwrap()
    }

    fn engine() -> Engine {
        engine_with("")
    }

    fn engine_with(rules: &str) -> Engine {
        let cfg = load_str(&format!("{CONFIG}{rules}"), Path::new("t.toml")).unwrap();
        Engine::new(Arc::new(cfg), &Roster::default())
    }

    fn started(at: &str) -> Engine {
        let mut e = engine();
        e.start(t(at), &mut vec![]);
        e
    }

    /// A fresh engine that takes over `old`'s persisted state, started at `at`.
    fn restarted(old: &Engine, at: &str) -> Engine {
        let mut e = engine();
        assert_eq!(e.restore(old.snapshot()), 0);
        e.start(t(at), &mut vec![]);
        e
    }

    fn summary(out: &[AlertTransition]) -> Vec<String> {
        out.iter()
            .map(|t| format!("{} {:?} {}", t.rule, t.state, &t.at[11..19]))
            .collect()
    }

    fn sample(e: &mut Engine, hms: &str, fields: &str) -> Vec<String> {
        let line = format!(
            r#"{{"type":"elevator","ts":"2026-11-02T{hms}+08:00","device":"lift-1",{fields}}}"#
        );
        let mut out = vec![];
        e.handle(&decode(&line, None).unwrap(), &mut out);
        summary(&out)
    }

    fn advance(e: &mut Engine, hms: &str) -> Vec<String> {
        let mut out = vec![];
        e.advance_to(t(hms), &mut out);
        summary(&out)
    }

    fn fail(e: &mut Engine, device: &str, hms: &str) -> Vec<AlertTransition> {
        let mut out = vec![];
        e.poll_failed(device, t(hms), &mut out);
        out
    }

    const STUCK: &str = r#""floor":5,"moving":false,"door":"closed","door_zone":true,"occupied":true,"mode":"normal","fault_code":0,"speed":0.0"#;

    #[test]
    fn fault_keys_parse_codes_and_bits() {
        assert_eq!(parse_fault_key("12"), Some(12));
        assert_eq!(parse_fault_key(" 0x1a "), Some(26));
        assert_eq!(parse_fault_key("bit0"), Some(FAULT_BIT));
        assert_eq!(parse_fault_key("Bit31"), Some(FAULT_BIT + 31));
        assert_eq!(parse_fault_key("4294967295"), Some(u32::MAX as u64));
        for bad in [
            "bit32",
            "bit",
            "bits",
            "bit+1",
            "4294967296",
            "0x1_0",
            "-1",
            "",
        ] {
            assert_eq!(parse_fault_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn failed_polls_raise_at_the_threshold_and_a_good_sample_clears() {
        let mut e = started("08:00:00");
        for s in ["08:00:00", "08:00:01", "08:00:02", "08:00:03"] {
            assert!(fail(&mut e, "lift-1", s).is_empty(), "{s}");
        }
        let mut out = vec![];
        e.poll_failed_with_reason("lift-1", t("08:00:04"), Some("timeout"), &mut out);
        assert_eq!(summary(&out), ["device_offline Raised 08:00:04"]);
        let a = &out[0];
        assert_eq!(a.severity, Severity::High);
        assert_eq!(a.subject.kind, crate::alert::SubjectKind::Elevator);
        assert_eq!(a.since, "2026-11-02T08:00:00+08:00");
        assert_eq!(a.evidence["failures"], 5);
        assert_eq!(a.evidence["reason"], "timeout");
        assert_eq!(a.evidence["device_name"], "Lift 1");
        assert_eq!(a.location.building.as_deref(), Some("3"));
        // Further failures: still one alert.
        assert!(fail(&mut e, "lift-1", "08:00:05").is_empty());
        // The next good poll (an elevator sample) clears and resets the count.
        assert_eq!(
            sample(&mut e, "08:00:06", r#""floor":3"#),
            ["device_offline Cleared 08:00:06"]
        );
        for s in ["08:00:07", "08:00:08", "08:00:09", "08:00:10"] {
            assert!(fail(&mut e, "lift-1", s).is_empty(), "{s}");
        }
        assert_eq!(
            summary(&fail(&mut e, "lift-1", "08:00:11")),
            ["device_offline Raised 08:00:11"]
        );
    }

    #[test]
    fn failed_polls_count_consecutive_failures_only_and_use_kind_severity() {
        let mut e = started("08:00:00");
        for s in ["08:00:00", "08:00:01", "08:00:02", "08:00:03"] {
            assert!(fail(&mut e, "door-1", s).is_empty());
        }
        // A good event in between starts the count again.
        let ok = r#"{"type":"door","ts":"2026-11-02T08:00:04+08:00","device":"door-1","state":"closed"}"#;
        e.handle(&decode(ok, None).unwrap(), &mut vec![]);
        for s in ["08:00:05", "08:00:06", "08:00:07", "08:00:08"] {
            assert!(fail(&mut e, "door-1", s).is_empty(), "{s}");
        }
        let out = fail(&mut e, "door-1", "08:00:09");
        assert_eq!(summary(&out), ["device_offline Raised 08:00:09"]);
        assert_eq!(out[0].severity, Severity::Low);
        assert_eq!(out[0].subject.kind, crate::alert::SubjectKind::Device);
        // Unknown devices are ignored.
        for _ in 0..10 {
            assert!(fail(&mut e, "nope", "08:00:10").is_empty());
        }
    }

    #[test]
    fn failed_poll_count_restarts_after_a_restart_and_the_open_alert_stays_until_an_event() {
        let mut e = started("08:00:00");
        for s in ["08:00:00", "08:00:01", "08:00:02", "08:00:03", "08:00:04"] {
            fail(&mut e, "lift-1", s);
        }
        assert_eq!(e.open_alert_count(), 1);
        let mut e = restarted(&e, "08:01:00");
        assert_eq!(e.open_alert_count(), 1);
        for s in ["08:01:00", "08:01:01", "08:01:02", "08:01:03", "08:01:04"] {
            assert!(fail(&mut e, "lift-1", s).is_empty(), "{s}");
        }
        let line =
            r#"{"type":"elevator","ts":"2026-11-02T08:01:05+08:00","device":"lift-1","floor":1}"#;
        let mut out = vec![];
        e.handle(&decode(line, None).unwrap(), &mut out);
        assert_eq!(summary(&out), ["device_offline Cleared 08:01:05"]);
        assert_eq!(out[0].revision, 2);
    }

    #[test]
    fn restart_keeps_a_pending_out_of_service_deadline() {
        let mut e = started("08:00:00");
        sample(&mut e, "08:00:00", r#""mode":"inspection","moving":false"#);
        advance(&mut e, "08:10:00");
        let mut e = restarted(&e, "08:20:00");
        assert!(advance(&mut e, "08:29:59").is_empty());
        let mut out = vec![];
        e.advance_to(t("08:30:00"), &mut out);
        assert_eq!(summary(&out), ["elevator_out_of_service Raised 08:30:00"]);
        assert_eq!(out[0].since, "2026-11-02T08:00:00+08:00");
        assert_eq!(out[0].evidence["mode"], "inspection");
        // The restored mode is the last known one: normal clears.
        assert_eq!(
            sample(&mut e, "08:31:00", r#""mode":"normal""#),
            ["elevator_out_of_service Cleared 08:31:00"]
        );
    }

    #[test]
    fn restart_neither_reraises_open_alerts_nor_forgets_their_state() {
        let mut e = started("08:00:00");
        sample(&mut e, "08:00:00", STUCK);
        assert!(sample(&mut e, "08:00:10", r#""fault_code":12"#).is_empty());
        assert_eq!(
            advance(&mut e, "08:01:30"),
            [
                "elevator_fault Raised 08:00:15",
                "elevator_trapped Raised 08:01:30"
            ]
        );
        // A fault code going away just before the restart: its clear_after
        // deadline survives.
        assert!(sample(&mut e, "08:01:40", r#""fault_code":0"#).is_empty());
        let mut e = restarted(&e, "08:01:50");
        assert!(sample(&mut e, "08:01:55", STUCK).is_empty());
        assert!(advance(&mut e, "08:02:09").is_empty());
        assert_eq!(
            advance(&mut e, "08:02:10"),
            ["elevator_fault Cleared 08:02:10"]
        );
        // The door was closed before the restart: opening clears.
        assert_eq!(
            sample(&mut e, "08:03:00", r#""door":"opening""#),
            ["elevator_trapped Cleared 08:03:00"]
        );
    }

    #[test]
    fn restart_keeps_a_pending_trapped_deadline() {
        let mut e = started("08:00:00");
        sample(&mut e, "08:00:00", STUCK);
        let mut e = restarted(&e, "08:00:30");
        assert!(advance(&mut e, "08:01:29").is_empty());
        assert_eq!(
            advance(&mut e, "08:01:30"),
            ["elevator_trapped Raised 08:01:30"]
        );
    }

    #[test]
    fn a_clock_step_moves_elevator_deadlines() {
        let mut e = started("08:00:00");
        sample(&mut e, "08:00:00", STUCK);
        e.rebase(crate::time::HOUR);
        assert!(advance(&mut e, "09:01:29").is_empty());
        let mut out = vec![];
        e.advance_to(t("09:01:30"), &mut out);
        assert_eq!(summary(&out), ["elevator_trapped Raised 09:01:30"]);
        assert_eq!(out[0].since, "2026-11-02T09:00:00+08:00");
    }

    #[test]
    fn memory_per_elevator_is_bounded() {
        // Every fault code is raised and then waits an hour to clear.
        let mut e = engine_with("[rules.elevator_fault]\nclear_after = \"1h\"\n");
        e.start(t("08:00:00"), &mut vec![]);
        sample(
            &mut e,
            "08:00:00",
            r#""moving":false,"door":"closed","door_zone":true,"occupied":false"#,
        );
        let base = t("08:00:00");
        let at = |i: i64| {
            let ts = base + i * 1000;
            crate::time::format_in(&e.calendar().zone(), ts)
        };
        let mut lines = vec![];
        for i in 0..400i64 {
            let door = if i % 2 == 0 { "open" } else { "closed" };
            lines.push(format!(
                r#"{{"type":"elevator","ts":"{}","device":"lift-1","door":"{door}","speed":2.0,"fault_code":{}}}"#,
                at(i + 1),
                1000 + i / 6
            ));
        }
        let mut out = vec![];
        for l in &lines {
            e.handle(&decode(l, None).unwrap(), &mut out);
        }
        let s = &e.elevators[&0];
        assert_eq!(s.door_cycles.len(), 3);
        assert_eq!(s.overspeed.len(), 6);
        assert_eq!(s.faults.len(), MAX_FAULTS);
        let faults = out.iter().filter(|t| t.rule == "elevator_fault").count();
        assert_eq!(faults, MAX_FAULTS);
    }

    #[test]
    fn speed_alone_writes_no_state() {
        let mut e = started("08:00:00");
        e.track_changes(true);
        sample(&mut e, "08:00:00", r#""floor":1,"moving":true,"speed":0.5"#);
        let elevator = |c: &Vec<crate::engine::StateChange>| c.iter().any(|c| c.key[0] == b'e');
        assert!(elevator(&e.take_changes()));
        sample(&mut e, "08:00:01", r#""speed":0.9"#);
        sample(&mut e, "08:00:02", r#""speed":1.0,"moving":true"#);
        assert!(!elevator(&e.take_changes()));
        sample(&mut e, "08:00:03", r#""floor":2"#);
        assert!(elevator(&e.take_changes()));
    }
}
