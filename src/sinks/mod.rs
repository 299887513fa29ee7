//! Sinks: where alert transitions go.
//!
//! - [`uplink`]: the platform broker over TLS, fed from the durable outbox.

pub mod uplink;
