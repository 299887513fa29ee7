//! # community-gateway
//!
//! The edge gateway of a residential compound. It reads door-access events
//! and elevator telemetry, applies rules locally and delivers alerts to the
//! community platform without losing any.
//!
//! The crate is laid out as the pipeline it runs:
//!
//! ```text
//!  sources ──► canonical events ──► engine ──► alert transitions ──► store ──► sinks
//!  (MQTT, Modbus,   [`event`]        [`engine`]   [`alert`]            [`store`]   (platform uplink,
//!   replay file)                                                                   replay stdout)
//! ```
//!
//! - [`config`] and [`roster`] load and validate what the property company
//!   writes; every problem is reported with its file, line and key.
//! - [`event`] is the canonical event model of SPEC §2 and its JSON decoder.
//! - [`engine`] is the deterministic rule core: events and clock advances
//!   in, alert transitions out, no I/O and no wall clock. Timers live in a
//!   queue and fire at their exact deadline.
//! - [`store`] keeps rule state and the outbox in sled behind a narrow
//!   interface, written by group commit.
//! - [`replay`] drives the engine on a simulated clock from a file of events.
//! - [`clock`] watches the wall clock for steps and tells the engine to
//!   re-base its deadlines.

pub mod admin;
pub mod alert;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod engine;
pub mod event;
pub mod keys;
pub mod message;
pub mod metrics;
pub mod replay;
pub mod roster;
pub mod sinks;
pub mod sources;
pub mod store;
pub mod systemd;
pub mod time;
pub mod tls;
