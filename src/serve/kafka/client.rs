//! The librdkafka side of the Kafka mode: client configuration (the
//! daemon's settings, then the `[kafka.properties]` passthrough), and the
//! client contexts that forward librdkafka's logs to `tracing`, record
//! rebalances (consumer) and count delivery failures (producer).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, ProducerContext};
use rdkafka::ClientContext;

use crate::config::KafkaConfig;

/// Bytes kept free in each produced message for the key and headers.
pub(super) const HEADER_ROOM: usize = 16 * 1024;

/// Consumer context: forwards librdkafka logs to `tracing` and records
/// rebalances so the loop can drop bookkeeping of revoked partitions.
pub(super) struct ConsumerCtx {
    pub(super) revoked: Mutex<Vec<i32>>,
    pub(super) rebalanced: AtomicBool,
}

fn forward_log(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{msg}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{msg}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{msg}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{msg}"),
    }
}

impl ClientContext for ConsumerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        forward_log(level, fac, msg);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, "consumer: {reason}");
    }
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Revoke(tpl) => {
                let mut v = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
                v.extend(tpl.elements().iter().map(|e| e.partition()));
                tracing::info!(partitions = ?v, "partitions revoked");
            }
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(partitions = ?parts, "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
        self.rebalanced.store(true, Ordering::SeqCst);
    }
}

/// Producer context: counts delivery failures of the current batch.
pub(super) struct DeliveryCtx {
    pub(super) failed: AtomicUsize,
    pub(super) last_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        forward_log(level, fac, msg);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, "producer: {reason}");
    }
}

impl ProducerContext for DeliveryCtx {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = r {
            self.failed.fetch_add(1, Ordering::SeqCst);
            let msg = format!("delivery to {} failed: {e}", m.topic());
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
        }
    }
}

/// Build the librdkafka configuration: the daemon's settings, then the
/// `[kafka.properties]` passthrough (which wins).
fn client_config(k: &KafkaConfig, own: &[(&str, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    for (key, v) in own {
        c.set(*key, v);
    }
    for (key, v) in &k.properties {
        c.set(key, v);
    }
    c
}

/// The consumer: manual offset commits (the pipeline commits what is
/// durable), earliest reset, fetch limits sized for `max_message_bytes`,
/// the broker's fetch wait bounded by `poll_ms`.
pub(super) fn consumer(k: &KafkaConfig) -> Result<BaseConsumer<ConsumerCtx>> {
    consumer_config(k)
        .create_with_context(ConsumerCtx {
            revoked: Mutex::new(Vec::new()),
            rebalanced: AtomicBool::new(false),
        })
        .context("cannot create the Kafka consumer (check [kafka] and [kafka.properties])")
}

/// The consumer's librdkafka configuration (see [`consumer`]).
fn consumer_config(k: &KafkaConfig) -> ClientConfig {
    let fetch = (k.max_message_bytes + HEADER_ROOM).max(52_428_800);
    client_config(
        k,
        &[
            ("group.id", k.group_id.clone()),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("auto.offset.reset", "earliest".into()),
            ("fetch.max.bytes", fetch.to_string()),
            (
                "max.partition.fetch.bytes",
                (k.max_message_bytes + HEADER_ROOM)
                    .max(1_048_576)
                    .to_string(),
            ),
            ("receive.message.max.bytes", (fetch + 1024).to_string()),
            // A broker may hold a fetch with no new data for its whole wait
            // even when data arrives meanwhile (tansu does): with
            // librdkafka's 500 ms a plate then waited 250 ms on average
            // before the daemon saw it. `poll_ms` bounds that wait.
            ("fetch.wait.max.ms", k.poll_ms.clamp(1, 300_000).to_string()),
        ],
    )
}

/// The producer: `acks=all`, not idempotent (see below), bounded delivery time.
pub(super) fn producer(k: &KafkaConfig) -> Result<BaseProducer<DeliveryCtx>> {
    client_config(
        k,
        &[
            ("acks", "all".into()),
            // Not idempotent: a broker that loses its state (tansu with
            // memory storage, a recreated cluster) makes an idempotent
            // producer fail fatally; duplicates from retries are already
            // tolerated (at-least-once, deduplicated by key + version).
            ("enable.idempotence", "false".into()),
            (
                "message.max.bytes",
                (k.max_message_bytes + HEADER_ROOM).to_string(),
            ),
            ("message.timeout.ms", k.delivery_timeout_ms.to_string()),
            ("linger.ms", "1".into()),
        ],
    )
    .create_with_context(DeliveryCtx {
        failed: AtomicUsize::new(0),
        last_error: Mutex::new(None),
    })
    .context("cannot create the Kafka producer (check [kafka] and [kafka.properties])")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_brokers_fetch_wait_is_bounded_by_poll_ms_unless_passed_through() {
        let mut k = KafkaConfig::default();
        assert_eq!(
            consumer_config(&k).get("fetch.wait.max.ms"),
            Some(k.poll_ms.to_string().as_str())
        );
        k.poll_ms = 20;
        assert_eq!(consumer_config(&k).get("fetch.wait.max.ms"), Some("20"));
        k.poll_ms = 0;
        assert_eq!(consumer_config(&k).get("fetch.wait.max.ms"), Some("1"));
        k.properties
            .insert("fetch.wait.max.ms".into(), "250".into());
        assert_eq!(consumer_config(&k).get("fetch.wait.max.ms"), Some("250"));
        assert_eq!(consumer_config(&k).get("enable.auto.commit"), Some("false"));
    }
}
