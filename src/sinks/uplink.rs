//! The platform uplink: alert transitions from the durable outbox to the
//! platform broker over TLS, QoS 1; deleted only after the broker's PUBACK.
//!
//! rumqttc's `publish()` returns before the broker acknowledges and gives no
//! packet id; the event loop later reports `Outgoing::Publish(pkid)` and
//! `PubAck(pkid)`. Two tasks share the work:
//!
//! - the poll task only polls the event loop (never awaits the client) and
//!   forwards every event to the driver;
//! - the driver is the only task that sends requests. It sends one request
//!   at a time and waits for the event loop to report it (stop-and-wait on
//!   the hand-over, not on the broker: up to `inflight` publishes still wait
//!   for PUBACKs), so it knows which packet id belongs to which outbox entry.
//!
//! Reconnects: the session is clean, so rumqttc drops whatever was queued
//! when the connection failed. After each ConnAck the driver first sends the
//! SUBSCRIBE for commands (which must be renewed on every ConnAck anyway)
//! and trusts no `Outgoing::Publish` until that SUBSCRIBE has gone out:
//! anything reported before it is a leftover of the old connection. It then
//! sends the outbox again from its oldest entry. A leftover can therefore
//! cause a duplicate, never a lost alert; duplicates carry the same
//! `alert_id` and `revision`, which the platform de-duplicates.

use crate::config::{Config, PlatformConfig};
use crate::metrics::Metrics;
use crate::sources::mqtt::{base_options, Backoff};
use crate::store::Store;
use crate::tls;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, LastWill, Outgoing, Packet, QoS};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// A command from the platform (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ack { alert_id: String, by: String },
    Away { resident_id: String, until: String },
}

/// Parses a command payload; the error says what is wrong with it.
pub fn parse_command(payload: &[u8]) -> Result<Command, String> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let field = |k: &str| -> Result<String, String> {
        v.get(k)
            .and_then(|x| x.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("missing string field `{k}`"))
    };
    match v.get("command").and_then(|c| c.as_str()) {
        Some("ack") => Ok(Command::Ack {
            alert_id: field("alert_id")?,
            by: field("by").unwrap_or_else(|_| "platform".into()),
        }),
        Some("away") => Ok(Command::Away {
            resident_id: field("resident_id")?,
            until: field("until")?,
        }),
        Some(other) => Err(format!("unknown command `{other}` (expected ack or away)")),
        None => Err("missing string field `command`".into()),
    }
}

/// Topics and status payloads of one compound.
#[derive(Debug, Clone)]
pub struct Topics {
    pub alerts: String,
    pub status: String,
    pub commands: String,
    pub online: Vec<u8>,
    pub offline: Vec<u8>,
}

impl Topics {
    pub fn new(config: &Config, platform: &PlatformConfig, started_at: &str) -> Topics {
        let status = |state: &str| {
            serde_json::json!({
                "state": state,
                "compound": config.compound,
                "version": env!("CARGO_PKG_VERSION"),
                "started_at": started_at,
            })
            .to_string()
            .into_bytes()
        };
        Topics {
            alerts: config.topic(&platform.alerts_topic),
            status: config.topic(&platform.status_topic),
            commands: config.topic(&platform.commands_topic),
            online: status("online"),
            offline: status("offline"),
        }
    }
}

/// Client and event loop of the platform connection (not yet connected).
pub fn connect(
    config: &Config,
    platform: &PlatformConfig,
    topics: &Topics,
) -> Result<(AsyncClient, EventLoop), tls::TlsError> {
    let mut o = base_options(
        config.client_id(&platform.client_id),
        &platform.host,
        platform.port,
        platform.keep_alive.0,
        &platform.username,
        &platform.password,
        if platform.plaintext {
            None
        } else {
            platform.tls.as_ref()
        },
    )?;
    o.set_clean_session(true);
    o.set_inflight(platform.inflight.max(1));
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    o.set_last_will(LastWill::new(
        &topics.status,
        topics.offline.clone(),
        QoS::AtLeastOnce,
        true,
    ));
    Ok(AsyncClient::new(o, 16))
}

/// What the driver is waiting for the event loop to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Nothing,
    /// The commands SUBSCRIBE sent after a ConnAck.
    Marker,
    /// A publish: an outbox entry, or `None` for the status message.
    Publish(Option<u64>),
}

struct Driver {
    client: AsyncClient,
    store: Store,
    metrics: Arc<Metrics>,
    topics: Topics,
    max_inflight: usize,
    commands: mpsc::Sender<Command>,
    plaintext_warning: bool,
    connected: bool,
    synced: bool,
    awaiting: Awaiting,
    /// Packet id -> outbox entry, for publishes not yet acknowledged.
    inflight: HashMap<u16, Option<u64>>,
    /// Last outbox entry handed to the event loop on this connection.
    cursor: u64,
    failures: u64,
}

/// Runs the uplink until `stop` turns true; then publishes the offline
/// status (best effort, bounded wait) and disconnects.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    eventloop: EventLoop,
    client: AsyncClient,
    store: Store,
    outbox_changed: Arc<Notify>,
    commands: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
    topics: Topics,
    platform: &PlatformConfig,
    mut stop: watch::Receiver<bool>,
) {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let poller = tokio::spawn(poll(eventloop, events_tx));
    let mut d = Driver {
        client,
        store,
        metrics,
        topics,
        max_inflight: platform.inflight.max(1) as usize,
        commands,
        plaintext_warning: platform.plaintext,
        connected: false,
        synced: false,
        awaiting: Awaiting::Nothing,
        inflight: HashMap::new(),
        cursor: 0,
        failures: 0,
    };
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            ev = events.recv() => match ev {
                Some(Ok(ev)) => d.on_event(ev),
                Some(Err(e)) => d.on_error(&e),
                None => break,
            },
            _ = outbox_changed.notified() => {}
        }
        d.feed();
    }
    d.shutdown(&mut events).await;
    poller.abort();
}

/// The poll task: polls and forwards, never awaits the client. After a
/// failed connection it waits a jittered, growing delay before the next
/// attempt (polling again is what reconnects).
async fn poll(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Result<Event, ConnectionError>>) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    loop {
        let ev = eventloop.poll().await;
        let failed = ev.is_err();
        if matches!(ev, Ok(Event::Incoming(Packet::ConnAck(_)))) {
            backoff.reset();
        }
        if tx.send(ev).is_err() {
            return;
        }
        if failed {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

impl Driver {
    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => {
                self.failures = 0;
                self.connected = true;
                self.synced = false;
                self.inflight.clear();
                self.cursor = 0;
                self.metrics.set_uplink_connected(true);
                self.metrics.uplink_connect();
                if self.plaintext_warning {
                    tracing::warn!("connected to the platform WITHOUT TLS (platform.plaintext = true): alerts travel unencrypted");
                } else {
                    tracing::info!("connected to the platform");
                }
                // The marker: nothing reported before it goes out belongs to this connection.
                match self
                    .client
                    .try_subscribe(&self.topics.commands, QoS::AtLeastOnce)
                {
                    Ok(()) => self.awaiting = Awaiting::Marker,
                    Err(e) => tracing::error!(error = %e, "cannot queue the commands subscription"),
                }
            }
            Event::Outgoing(Outgoing::Subscribe(_)) if self.awaiting == Awaiting::Marker => {
                self.synced = true;
                self.awaiting = Awaiting::Nothing;
                match self.client.try_publish(
                    &self.topics.status,
                    QoS::AtLeastOnce,
                    true,
                    self.topics.online.clone(),
                ) {
                    Ok(()) => self.awaiting = Awaiting::Publish(None),
                    Err(e) => tracing::warn!(error = %e, "cannot queue the status message"),
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid))
            | Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                if let (true, Awaiting::Publish(entry)) = (self.synced, self.awaiting) {
                    self.inflight.insert(pkid, entry);
                    self.awaiting = Awaiting::Nothing;
                    if entry.is_some() {
                        self.metrics.uplink_published();
                    }
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(Some(seq)) = self.inflight.remove(&ack.pkid) {
                    self.metrics.uplink_acked();
                    if let Err(e) = self.store.remove_outbox(&[seq]) {
                        self.metrics.store_error();
                        tracing::error!(error = %e, "cannot remove a delivered entry from the outbox");
                    }
                    let (n, bytes) = self.store.outbox_size();
                    self.metrics.set_outbox(n, bytes);
                }
            }
            Event::Incoming(Packet::Publish(p)) if p.topic == self.topics.commands => {
                match parse_command(&p.payload) {
                    Ok(cmd) => {
                        if self.commands.try_send(cmd).is_err() {
                            self.metrics.command("unknown", "dropped");
                            tracing::warn!("command queue full; command dropped");
                        }
                    }
                    Err(reason) => {
                        self.metrics.command("invalid", "rejected");
                        tracing::warn!(topic = %p.topic, %reason, "rejected a platform command");
                    }
                }
            }
            Event::Incoming(Packet::SubAck(ack))
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) =>
            {
                tracing::error!(topic = %self.topics.commands, "the platform refused the commands subscription");
            }
            _ => {}
        }
    }

    fn on_error(&mut self, e: &ConnectionError) {
        if self.connected {
            tracing::warn!(error = %tls::describe_connection_error(e), "platform connection lost");
        }
        self.connected = false;
        self.synced = false;
        self.awaiting = Awaiting::Nothing;
        self.inflight.clear();
        self.failures += 1;
        self.metrics.set_uplink_connected(false);
        self.metrics.uplink_error();
        if self.failures == 1 || self.failures % 10 == 0 {
            tracing::error!(error = %tls::describe_connection_error(e), failures = self.failures,
                "cannot connect to the platform; alerts stay in the outbox");
        }
    }

    /// Hands the next outbox entry to the event loop, if the connection is
    /// synced, nothing is awaiting hand-over and the window has room.
    fn feed(&mut self) {
        if !self.synced
            || self.awaiting != Awaiting::Nothing
            || self.inflight.len() >= self.max_inflight
        {
            return;
        }
        let next = match self.store.outbox_after(self.cursor, 1) {
            Ok(mut v) => v.pop(),
            Err(e) => {
                self.metrics.store_error();
                tracing::error!(error = %e, "cannot read the outbox");
                None
            }
        };
        let Some(entry) = next else { return };
        match self
            .client
            .try_publish(&self.topics.alerts, QoS::AtLeastOnce, false, entry.payload)
        {
            Ok(()) => {
                self.awaiting = Awaiting::Publish(Some(entry.seq));
                self.cursor = entry.seq;
            }
            Err(e) => tracing::debug!(error = %e, "request queue full; retrying"),
        }
    }

    /// Best effort on the way out: wait briefly for outstanding PUBACKs,
    /// publish the offline status, disconnect.
    async fn shutdown(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    ) {
        if !self.connected {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut offline_sent = false;
        while tokio::time::Instant::now() < deadline {
            if !offline_sent
                && self.awaiting == Awaiting::Nothing
                && self.inflight.values().all(|e| e.is_none())
            {
                offline_sent = self
                    .client
                    .try_publish(
                        &self.topics.status,
                        QoS::AtLeastOnce,
                        true,
                        self.topics.offline.clone(),
                    )
                    .is_ok();
                if offline_sent {
                    self.awaiting = Awaiting::Publish(None);
                }
            }
            if offline_sent && self.awaiting == Awaiting::Nothing && self.inflight.is_empty() {
                break;
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Ok(ev))) => self.on_event(ev),
                _ => break,
            }
        }
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
        self.metrics.set_uplink_connected(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_clear_errors() {
        assert_eq!(
            parse_command(br#"{"command":"ack","alert_id":"01J","by":"w-7"}"#),
            Ok(Command::Ack {
                alert_id: "01J".into(),
                by: "w-7".into()
            })
        );
        assert_eq!(
            parse_command(br#"{"command":"away","resident_id":"R-1","until":"2026-11-10"}"#),
            Ok(Command::Away {
                resident_id: "R-1".into(),
                until: "2026-11-10".into()
            })
        );
        assert!(parse_command(b"nope").unwrap_err().contains("not JSON"));
        assert!(parse_command(br#"{"command":"ack"}"#)
            .unwrap_err()
            .contains("alert_id"));
        assert!(parse_command(br#"{"command":"reboot"}"#)
            .unwrap_err()
            .contains("unknown command"));
    }
}
