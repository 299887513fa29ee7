//! Deadlines and the queue that fires them.
//!
//! Each subject that can time out owns a [`Deadline`]; the [`TimerQueue`]
//! holds at most a few heap entries per deadline. Most deadlines only move
//! later (every access pushes an inactivity deadline back), so re-arming to a
//! later time touches nothing but the `Deadline` itself: when the stale heap
//! entry comes up, the engine sees the real due time is later and re-queues
//! it once. Arming earlier pushes a new entry. Either way work per event is
//! O(1) amortised and the heap holds O(subjects) entries.

use super::AlertKey;
use crate::time::{Millis, OptTs, Ts};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// When something is due, and the earliest queue entry standing for it.
/// Every resident, device and stranger owns some: 16 bytes, not 32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deadline {
    due: OptTs,
    queued: OptTs,
}

impl Deadline {
    /// Due at `due` but not yet queued (restored from the store; armed at start).
    pub fn pending(due: Ts) -> Self {
        Deadline {
            due: due.into(),
            queued: OptTs::NONE,
        }
    }

    pub fn due(&self) -> Option<Ts> {
        self.due.get()
    }

    pub fn is_armed(&self) -> bool {
        self.due.is_some()
    }

    pub fn disarm(&mut self) {
        self.due = OptTs::NONE;
    }

    pub(crate) fn shift(&mut self, delta: Millis) {
        self.due.shift(delta);
        self.queued.shift(delta);
    }
}

/// What a queue entry stands for; the engine maps it back to the deadline.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TimerKey {
    Inactivity(u32),
    NotReturned(u32),
    Escalate(AlertKey),
    Midnight,
    DoorHeld(u32),
    DeniedQuiet(u32),
    Offline(u32),
    StrangerForget(u128),
    /// One of an elevator's deadlines (device index).
    Elevator(u32, ElevatorTimer),
}

/// The deadlines an elevator owns (see `engine::elevator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElevatorTimer {
    /// `elevator_trapped`: stopped, closed and occupied for long enough.
    Trapped,
    /// `elevator_stopped_outside_zone`.
    OutsideZone,
    /// `elevator_out_of_service`: inspection / out of service for `after`.
    OutOfService,
    /// `elevator_fault`: debounce or `clear_after` of one fault key.
    Fault(u64),
    /// `elevator_abnormal_usage`: `quiet` after the door-cycle condition.
    DoorCyclesQuiet,
    /// `elevator_abnormal_usage`: `quiet` after the overspeed condition.
    OverspeedQuiet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    at: Ts,
    seq: u64,
    key: TimerKey,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Min-heap of (time, insertion order, key): ties fire in the order armed,
/// so a replay is deterministic.
#[derive(Debug, Default)]
pub struct TimerQueue {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

impl TimerQueue {
    /// Sets `deadline` due at `at`, queueing an entry only if none that early exists.
    pub fn arm(&mut self, deadline: &mut Deadline, at: Ts, key: impl FnOnce() -> TimerKey) {
        deadline.due = at.into();
        if deadline.queued.get().is_none_or(|q| at < q) {
            deadline.queued = at.into();
            self.push(at, key());
        }
    }

    fn push(&mut self, at: Ts, key: TimerKey) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            key,
        }));
    }

    /// The earliest queued entry's time (it may turn out stale).
    pub fn peek(&self) -> Option<Ts> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Removes the earliest entry if it is due at or before `now`.
    pub fn pop_due(&mut self, now: Ts) -> Option<(Ts, TimerKey)> {
        if self.peek()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| (e.at, e.key))
    }

    /// Called with a popped entry and the deadline it stands for. Returns the
    /// due time if the deadline has really come (and disarms it); re-queues
    /// it if it moved later; ignores it if it was disarmed.
    pub fn settle(&mut self, popped_at: Ts, deadline: &mut Deadline, key: TimerKey) -> Option<Ts> {
        if deadline.queued.get() == Some(popped_at) {
            deadline.queued = OptTs::NONE;
        }
        match deadline.due.get() {
            Some(due) if due <= popped_at => {
                deadline.due = OptTs::NONE;
                Some(due)
            }
            Some(due) => {
                if deadline.queued.get().is_none_or(|q| due < q) {
                    deadline.queued = due.into();
                    self.push(due, key);
                }
                None
            }
            None => None,
        }
    }

    /// Moves every queued entry by `delta` (a wall-clock step).
    pub fn shift(&mut self, delta: Millis) {
        let entries = std::mem::take(&mut self.heap).into_vec();
        self.heap = entries
            .into_iter()
            .map(|Reverse(mut e)| {
                e.at += delta;
                Reverse(e)
            })
            .collect();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut TimerQueue, d: &mut Deadline, now: Ts) -> Vec<Ts> {
        let mut fired = vec![];
        while let Some((at, key)) = q.pop_due(now) {
            if let Some(due) = q.settle(at, d, key) {
                fired.push(due);
            }
        }
        fired
    }

    #[test]
    fn later_rearm_costs_no_entry_and_fires_once_at_the_real_deadline() {
        let mut q = TimerQueue::default();
        let mut d = Deadline::default();
        q.arm(&mut d, 100, || TimerKey::Midnight);
        for t in [150, 200, 250] {
            q.arm(&mut d, t, || TimerKey::Midnight);
        }
        assert_eq!(q.len(), 1);
        assert_eq!(drain(&mut q, &mut d, 249), Vec::<Ts>::new());
        assert_eq!(drain(&mut q, &mut d, 250), vec![250]);
        assert!(!d.is_armed());
        assert!(q.is_empty());
    }

    #[test]
    fn earlier_rearm_fires_early_and_stale_entry_is_ignored() {
        let mut q = TimerQueue::default();
        let mut d = Deadline::default();
        q.arm(&mut d, 500, || TimerKey::Midnight);
        q.arm(&mut d, 100, || TimerKey::Midnight);
        assert_eq!(drain(&mut q, &mut d, 1000), vec![100]);
        assert!(q.is_empty());
    }

    #[test]
    fn disarmed_deadline_never_fires() {
        let mut q = TimerQueue::default();
        let mut d = Deadline::default();
        q.arm(&mut d, 100, || TimerKey::Midnight);
        d.disarm();
        assert!(drain(&mut q, &mut d, 1000).is_empty());
    }

    #[test]
    fn shift_moves_deadlines_and_entries_together() {
        let mut q = TimerQueue::default();
        let mut d = Deadline::default();
        q.arm(&mut d, 100, || TimerKey::Midnight);
        q.shift(1000);
        d.shift(1000);
        assert!(drain(&mut q, &mut d, 1099).is_empty());
        assert_eq!(drain(&mut q, &mut d, 1100), vec![1100]);
    }
}
