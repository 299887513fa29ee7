//! Wall-clock steps on a board without RTC.
//!
//! The engine runs on wall-clock time (alerts carry real times, days are
//! calendar days), but a gateway without RTC boots with a stale clock that
//! NTP later steps, possibly by hours. [`ClockWatch`] compares how far the
//! wall clock moved with how far the monotonic clock moved; a difference
//! beyond the threshold is a step, and the engine re-bases every deadline by
//! it instead of firing (or postponing) a wave of them.

use crate::alert::AlertTransition;
use crate::engine::Engine;
use crate::time::{Millis, Ts};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time, injected so that tests can step it.
pub trait Clock {
    /// Wall-clock time, ms since the Unix epoch.
    fn wall(&self) -> Ts;
    /// Monotonic time since some fixed point.
    fn monotonic(&self) -> Duration;
}

/// The operating system's clocks.
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn wall(&self) -> Ts {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as Ts)
            .unwrap_or(0)
    }
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// Real time sped up `speed` times from the moment it is created (the demo).
pub struct AcceleratedClock {
    start_wall: Ts,
    origin: Instant,
    speed: f64,
}

impl AcceleratedClock {
    pub fn new(start_wall: Ts, speed: f64) -> Self {
        AcceleratedClock {
            start_wall,
            origin: Instant::now(),
            speed: speed.max(1.0),
        }
    }
}

impl Clock for AcceleratedClock {
    fn wall(&self) -> Ts {
        self.start_wall + (self.origin.elapsed().as_secs_f64() * self.speed * 1000.0) as Ts
    }
    fn monotonic(&self) -> Duration {
        self.origin.elapsed().mul_f64(self.speed)
    }
}

/// A clock the caller sets: for tests and simulations.
#[derive(Debug, Clone, Copy, Default)]
pub struct ManualClock {
    pub wall: Ts,
    pub monotonic: Duration,
}

impl ManualClock {
    /// Both clocks move forward by `d` (time passing normally).
    pub fn pass(&mut self, d: Duration) {
        self.wall += d.as_millis() as Ts;
        self.monotonic += d;
    }
    /// Only the wall clock moves (NTP stepping it).
    pub fn step(&mut self, delta: Millis) {
        self.wall += delta;
    }
}

impl Clock for ManualClock {
    fn wall(&self) -> Ts {
        self.wall
    }
    fn monotonic(&self) -> Duration {
        self.monotonic
    }
}

/// Detects wall-clock steps between observations.
#[derive(Debug, Clone)]
pub struct ClockWatch {
    threshold: Millis,
    last: Option<(Ts, Duration)>,
}

impl ClockWatch {
    pub fn new(threshold: Millis) -> Self {
        ClockWatch {
            threshold,
            last: None,
        }
    }

    /// Records an observation; returns the step if the wall clock moved more
    /// than `threshold` away from what the monotonic clock says elapsed.
    pub fn observe(&mut self, wall: Ts, monotonic: Duration) -> Option<Millis> {
        let step = self.last.map(|(w0, m0)| {
            let elapsed = monotonic.saturating_sub(m0).as_millis() as Millis;
            wall - (w0 + elapsed)
        });
        self.last = Some((wall, monotonic));
        step.filter(|s| s.abs() > self.threshold)
    }

    /// Brings `engine` to the clock's current time, re-basing it first if the
    /// wall clock stepped since the last call.
    pub fn advance<C: Clock + ?Sized>(
        &mut self,
        engine: &mut Engine,
        clock: &C,
        out: &mut Vec<AlertTransition>,
    ) {
        let wall = clock.wall();
        if let Some(step) = self.observe(wall, clock.monotonic()) {
            engine.rebase(step);
        }
        engine.advance_to(wall, out);
    }
}

/// At start-up: the persisted engine clock is ahead of the wall clock by more
/// than `threshold`, so the clock went back while we were down (a board
/// without RTC booting with a stale time). Returns the step to re-base by.
pub fn step_since_last_run(
    persisted_now: Option<Ts>,
    wall: Ts,
    threshold: Millis,
) -> Option<Millis> {
    let last = persisted_now?;
    (last - wall > threshold).then_some(wall - last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_progress_is_not_a_step() {
        let mut w = ClockWatch::new(60_000);
        let mut c = ManualClock {
            wall: 1_000_000,
            monotonic: Duration::ZERO,
        };
        assert_eq!(w.observe(c.wall, c.monotonic), None);
        c.pass(Duration::from_secs(3600));
        assert_eq!(w.observe(c.wall, c.monotonic), None);
        c.pass(Duration::from_secs(1));
        c.step(30_000); // within threshold: ordinary slew
        assert_eq!(w.observe(c.wall, c.monotonic), None);
    }

    #[test]
    fn steps_both_ways_are_detected_once() {
        let mut w = ClockWatch::new(60_000);
        let mut c = ManualClock::default();
        w.observe(c.wall, c.monotonic);
        c.pass(Duration::from_secs(10));
        c.step(10 * 3_600_000);
        assert_eq!(w.observe(c.wall, c.monotonic), Some(10 * 3_600_000));
        c.pass(Duration::from_secs(10));
        assert_eq!(w.observe(c.wall, c.monotonic), None);
        c.step(-2 * 3_600_000);
        assert_eq!(w.observe(c.wall, c.monotonic), Some(-2 * 3_600_000));
    }

    #[test]
    fn backwards_clock_across_restart() {
        assert_eq!(
            step_since_last_run(Some(10_000_000), 1_000, 60_000),
            Some(1_000 - 10_000_000)
        );
        assert_eq!(step_since_last_run(Some(1_000), 5_000_000, 60_000), None);
        assert_eq!(step_since_last_run(None, 5, 60_000), None);
    }
}
