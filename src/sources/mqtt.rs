//! The compound's local broker: door controllers and elevator boxes publish
//! here.
//!
//! A persistent session (fixed client id, clean session off) with manual
//! acknowledgement: the poll task forwards each message into a bounded
//! queue, and the engine acknowledges it only after its effects are
//! committed. A crash before that leaves the message unacknowledged, and the
//! broker redelivers it. When the queue is full the poll task waits, the
//! socket stops being read, and the broker holds the rest (backpressure, not
//! memory growth).

use crate::config::{Config, LocalMqttConfig};
use crate::metrics::Metrics;
use crate::tls;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode, Transport,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// What the poll task hands to the engine, in order.
#[derive(Debug)]
pub enum Ingest {
    /// A (re)connection: the broker is about to redeliver what it has not
    /// seen acknowledged.
    Connected,
    Message(Publish),
}

/// Jittered exponential backoff for reconnects.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9)
            ^ u64::from(std::process::id());
        Backoff {
            min,
            max,
            current: min,
            seed: seed | 1,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// The next delay: the current step, randomised to 50-100% (full jitter
    /// would allow near-zero waits; a thundering herd of gateways after a
    /// platform outage is what this avoids), then doubled up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        let d = self.current.mul_f64(frac);
        self.current = (self.current * 2).min(self.max);
        d
    }
}

/// Shared client options of both MQTT connections.
pub fn base_options(
    client_id: String,
    host: &str,
    port: u16,
    keep_alive: Duration,
    username: &Option<String>,
    password: &Option<String>,
    tls: Option<&crate::config::TlsConfig>,
) -> Result<MqttOptions, tls::TlsError> {
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(keep_alive.max(Duration::from_secs(5)));
    if let Some(user) = username {
        o.set_credentials(user.clone(), password.clone().unwrap_or_default());
    }
    if let Some(t) = tls {
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls::client_config(t)?),
        ));
    }
    Ok(o)
}

/// Options of the local connection: persistent session, manual acks.
pub fn local_options(
    config: &Config,
    local: &LocalMqttConfig,
) -> Result<MqttOptions, tls::TlsError> {
    let mut o = base_options(
        config.client_id(&local.client_id),
        &local.host,
        local.port,
        local.keep_alive.0,
        &local.username,
        &local.password,
        local.tls.as_ref(),
    )?;
    o.set_clean_session(false);
    o.set_manual_acks(true);
    // A packet over rumqttc's limit fails the whole connection, and the
    // broker would redeliver it forever; so rumqttc's limit is far above
    // `max_payload`, which is enforced per message (rejected and acked).
    // Brokers should cap message size too (mosquitto: message_size_limit).
    o.set_max_packet_size(local.max_payload.saturating_mul(16).max(1 << 20), 64 * 1024);
    Ok(o)
}

/// Connects (lazily) to the local broker. Returns the client (for acks) and
/// the event loop to hand to [`poll`].
pub fn connect(
    config: &Config,
    local: &LocalMqttConfig,
) -> Result<(AsyncClient, EventLoop), tls::TlsError> {
    let options = local_options(config, local)?;
    // The request channel (rumqttc sizes it from this argument, not from
    // MqttOptions): acks are queued by the engine without waiting; room for
    // every message that can be between the broker and a commit.
    let cap = local.queue.saturating_mul(2).max(1024);
    Ok(AsyncClient::new(options, cap))
}

/// Drives the local connection: forwards received messages to `tx` (waiting
/// when it is full), resubscribes on every ConnAck, reconnects with jittered
/// backoff. Once `stop` turns true it forwards nothing more but keeps
/// polling, so that acknowledgements queued by the final commit reach the
/// broker, until the client's DISCONNECT has gone out.
pub async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    subscriptions: Vec<(String, u8)>,
    tx: mpsc::Sender<Ingest>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let filters: Vec<SubscribeFilter> = subscriptions
        .iter()
        .map(|(topic, qos)| {
            let qos = if *qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            SubscribeFilter::new(topic.clone(), qos)
        })
        .collect();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut failures: u64 = 0;
    loop {
        let event = eventloop.poll().await;
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                metrics.set_local_mqtt_connected(true);
                metrics.local_mqtt_connect();
                backoff.reset();
                failures = 0;
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the local broker"
                );
                if !*stop.borrow() && tx.send(Ingest::Connected).await.is_err() {
                    break;
                }
                // Subscriptions are not restored by rumqttc: subscribe on every ConnAck.
                if !filters.is_empty() {
                    if let Err(e) = client.try_subscribe_many(filters.clone()) {
                        tracing::error!(error = %e, "cannot queue subscriptions");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                for (code, (topic, _)) in ack.return_codes.iter().zip(&subscriptions) {
                    if matches!(code, SubscribeReasonCode::Failure) {
                        tracing::error!(%topic, "the local broker refused the subscription");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if *stop.borrow() {
                    // Shutting down: leave it unacknowledged; the broker redelivers it.
                    continue;
                }
                metrics.received("mqtt");
                if tx.send(Ingest::Message(p)).await.is_err() {
                    break;
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(_) if *stop.borrow() => break,
            Err(e) => {
                metrics.set_local_mqtt_connected(false);
                metrics.local_mqtt_error();
                failures += 1;
                let delay = backoff.next_delay();
                // Log the first failure and then every tenth: a broker down
                // for a day should not fill the journal.
                if failures == 1 || failures % 10 == 0 {
                    tracing::warn!(error = %tls::describe_connection_error(&e), failures, retry_in = ?delay,
                        "local broker connection failed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    metrics.set_local_mqtt_connected(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[3] >= Duration::from_millis(400) && d[3] <= Duration::from_millis(800));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(2)));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
