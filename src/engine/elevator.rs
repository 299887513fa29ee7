//! Elevator rules (SPEC §4, `elevator_*`). The engine routes elevator
//! samples here; the rules are built together with Modbus polling and
//! elevator telemetry, and until then elevator samples only prove the device
//! alive (`device_offline`).

use super::Engine;
use crate::event::ElevatorSample;
use crate::time::Ts;

impl Engine {
    pub(super) fn on_elevator(&mut self, _ts: Ts, _device: u32, _sample: &ElevatorSample) {}
}
