//! Sources: where events come from, decoded into canonical [`crate::event::Event`]s.
//!
//! - [`mapping`]: vendor payload decoding (generic JSON mappings and presets).
//! - [`mqtt`]: the local broker, with acknowledgement after commit.

pub mod mapping;
pub mod modbus;
pub mod mqtt;
