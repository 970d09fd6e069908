//! The Kafka sink: corrected plates to `aligned_topic`, QC records to
//! `qc_topic`, dead letters to `dlq_topic`.
//!
//! Every output is keyed by the plate id and carries the model version and
//! its source's position in headers ([`super::wire`]). A payload larger than
//! `max_message_bytes` leaves as numbered chunks. An output set counts as
//! durable only when the broker has acknowledged every message (`acks=all`);
//! a failed set is purged and produced again with backoff — at-least-once,
//! consumers deduplicate by key + model version.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, PurgeConfig};

use super::chunks;
use super::client::{self, DeliveryCtx, HEADER_ROOM};
use super::source::KafkaInput;
use super::wire::*;
use crate::config::KafkaConfig;
use crate::serve::outcome::Rejection;
use crate::serve::pipeline::{Delivery, Sink, Started};
use crate::serve::plate::{Corrected, DecodedPlate};
use crate::serve::telemetry::Stage;

/// One message to produce.
struct Out {
    topic: String,
    key: String,
    payload: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

/// The producer side of the Kafka mode.
pub struct KafkaSink {
    k: KafkaConfig,
    producer: BaseProducer<DeliveryCtx>,
    /// The output set [`Sink::start_publish`] produced and
    /// [`Sink::finish_publish`] waits for (resent on failure), with the
    /// error of producing it, if any.
    pending: Option<(Vec<Out>, Option<String>)>,
}

impl KafkaSink {
    /// Create the producer.
    pub fn open(k: &KafkaConfig) -> Result<KafkaSink> {
        Ok(KafkaSink {
            k: k.clone(),
            producer: client::producer(k)?,
            pending: None,
        })
    }

    /// Produce messages and wait until the broker acknowledged all of them;
    /// on failure retry the whole set (at-least-once: consumers deduplicate
    /// by key + model version). [`Delivery::Abandoned`] when stopping before success.
    fn send_all(&self, outs: &[Out], stop: &AtomicBool) -> Result<Delivery> {
        let send_error = self.produce(outs);
        self.await_delivery(outs, send_error, stop)
    }

    /// Hand every message to the producer (waiting only while its queue is
    /// full). The error that stopped it, if one did.
    fn produce(&self, outs: &[Out]) -> Option<String> {
        self.producer.context().failed.store(0, Ordering::SeqCst);
        for o in outs {
            let mut headers = OwnedHeaders::new_with_capacity(o.headers.len());
            for (k, v) in &o.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_str()),
                });
            }
            let mut record = BaseRecord::to(&o.topic)
                .key(o.key.as_str())
                .payload(o.payload.as_slice())
                .headers(headers);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((
                        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        r,
                    )) => {
                        self.producer.poll(Duration::from_millis(50));
                        record = r;
                    }
                    Err((e, _)) => return Some(format!("cannot produce to {}: {e}", o.topic)),
                }
            }
        }
        None
    }

    /// Wait until the broker acknowledged every message [`Self::produce`]
    /// handed over; on failure purge and produce the set again, with
    /// backoff, until it is durable or the daemon stops.
    fn await_delivery(
        &self,
        outs: &[Out],
        mut send_error: Option<String>,
        stop: &AtomicBool,
    ) -> Result<Delivery> {
        let timeout = Duration::from_millis(self.k.delivery_timeout_ms + 5_000);
        let mut backoff = Duration::from_millis(200);
        loop {
            let ctx = self.producer.context();
            // Wait for the delivery reports, polling finely: `flush` polls
            // in 100 ms steps, which would add up to 100 ms per plate.
            let deadline = Instant::now() + timeout;
            let flushed = loop {
                self.producer.poll(Duration::from_millis(2));
                if self.producer.in_flight_count() == 0 {
                    break Ok(());
                }
                if Instant::now() > deadline {
                    break Err(format!(
                        "{} messages unacknowledged after {:.0} s",
                        self.producer.in_flight_count(),
                        timeout.as_secs_f64()
                    ));
                }
            };
            let failed = ctx.failed.load(Ordering::SeqCst);
            if send_error.is_none() && flushed.is_ok() && failed == 0 {
                return Ok(Delivery::Durable);
            }
            let why = send_error
                .take()
                .or_else(|| flushed.err())
                .or_else(|| ctx.last_error.lock().ok().and_then(|g| g.clone()))
                .unwrap_or_else(|| "unknown".into());
            tracing::warn!(reason = %why, failed, "outputs not acknowledged; retrying");
            self.producer
                .purge(PurgeConfig::default().queue().inflight());
            let _ = self.producer.flush(Duration::from_secs(1));
            if stop.load(Ordering::SeqCst) {
                return Ok(Delivery::Abandoned);
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
            send_error = self.produce(outs);
        }
    }

    /// The aligned plate (chunked when large) and its QC record, as messages.
    fn outputs(
        &self,
        input: &KafkaInput,
        plate: &DecodedPlate,
        out: &Corrected,
    ) -> Result<Vec<Out>> {
        let k = &self.k;
        let common: Vec<(&'static str, String)> = vec![
            (H_MODEL_VERSION, out.qc.model_version.clone()),
            (H_REPLAY, out.qc.replay.to_string()),
            (H_SOURCE_TOPIC, k.plates_topic.clone()),
            (H_SOURCE_PARTITION, input.partition.to_string()),
            (H_SOURCE_OFFSET, input.first_offset().to_string()),
        ];
        let aligned = crate::io::table::encode_ipc_stream(&out.table)
            .with_context(|| format!("{}: cannot encode the aligned plate", input.source))?;
        let mut h = common.clone();
        h.push((H_CONTENT_TYPE, CT_ARROW_STREAM.into()));
        h.push((H_SCHEMA_VERSION, SCHEMA_VERSION.into()));
        let mut outs = chunked(
            &k.aligned_topic,
            &plate.plate,
            &aligned,
            h,
            k.max_message_bytes,
        );
        let mut h = common;
        h.push((H_CONTENT_TYPE, CT_JSON.into()));
        outs.push(Out {
            topic: k.qc_topic.clone(),
            key: plate.plate.clone(),
            payload: serde_json::to_vec(&out.qc)?,
            headers: h,
        });
        tracing::debug!(plate = %plate.plate, messages = outs.len(), "producing outputs");
        Ok(outs)
    }

    /// Wait for the set [`Sink::start_publish`] left, if any.
    fn finish_pending(&mut self, stop: &AtomicBool) -> Result<Delivery> {
        match self.pending.take() {
            Some((outs, send_error)) => self.await_delivery(&outs, send_error, stop),
            None => Ok(Delivery::Durable),
        }
    }
}

impl Sink for KafkaSink {
    type Input = KafkaInput;
    const STAGE: Stage = Stage::Produce;

    /// The aligned plate (chunked when large) and its QC record.
    fn publish(
        &mut self,
        input: &KafkaInput,
        plate: &DecodedPlate,
        out: &Corrected,
        stop: &AtomicBool,
    ) -> Result<Delivery> {
        if self.finish_pending(stop)? == Delivery::Abandoned {
            return Ok(Delivery::Abandoned);
        }
        let outs = self.outputs(input, plate, out)?;
        self.send_all(&outs, stop)
    }

    /// Produce the aligned plate and its QC record; the broker's
    /// acknowledgements are awaited by [`Sink::finish_publish`], while the
    /// pipeline corrects the next plate.
    fn start_publish(
        &mut self,
        input: &KafkaInput,
        plate: &DecodedPlate,
        out: &Corrected,
        stop: &AtomicBool,
    ) -> Result<Started> {
        if self.finish_pending(stop)? == Delivery::Abandoned {
            return Ok(Started::Done(Delivery::Abandoned));
        }
        let outs = self.outputs(input, plate, out)?;
        let send_error = self.produce(&outs);
        self.pending = Some((outs, send_error));
        Ok(Started::Pending)
    }

    fn finish_publish(&mut self, stop: &AtomicBool) -> Result<Delivery> {
        self.finish_pending(stop)
    }

    /// The input's original bytes (chunked when large; a single bad chunk
    /// as it was, with its chunk headers) and the reason header.
    fn dead_letter(
        &mut self,
        input: &KafkaInput,
        rejection: &Rejection,
        stop: &AtomicBool,
    ) -> Result<Delivery> {
        if self.finish_pending(stop)? == Delivery::Abandoned {
            return Ok(Delivery::Abandoned);
        }
        let k = &self.k;
        let mut base: Vec<(&'static str, String)> = vec![
            (H_DLQ_REASON, rejection.to_string()),
            (H_SOURCE_TOPIC, k.plates_topic.clone()),
            (H_SOURCE_PARTITION, input.partition.to_string()),
            (H_SOURCE_OFFSET, input.first_offset().to_string()),
        ];
        for h in [H_CONTENT_TYPE, H_SCHEMA_VERSION] {
            if let Some(v) = input.headers.get(h) {
                base.push((h, v.clone()));
            }
        }
        let outs = if input.headers.contains_key(H_CHUNK_COUNT) {
            let mut h = base;
            for name in [H_PLATE_ID, H_CHUNK_INDEX, H_CHUNK_COUNT] {
                if let Some(v) = input.headers.get(name) {
                    h.push((name, v.clone()));
                }
            }
            vec![Out {
                topic: k.dlq_topic.clone(),
                key: input.plate_key.clone(),
                payload: input.bytes.clone(),
                headers: h,
            }]
        } else {
            chunked(
                &k.dlq_topic,
                &input.plate_key,
                &input.bytes,
                base,
                k.max_message_bytes,
            )
        };
        self.send_all(&outs, stop)
    }
}

/// The messages carrying `payload`: one, or numbered chunks (headers
/// plate id / chunk index / chunk count) when it exceeds `max_message_bytes`.
fn chunked(
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: Vec<(&'static str, String)>,
    max_message_bytes: usize,
) -> Vec<Out> {
    let room = max_message_bytes
        .saturating_sub(HEADER_ROOM.min(max_message_bytes / 8))
        .max(1024);
    if payload.len() <= room {
        return vec![Out {
            topic: topic.into(),
            key: key.into(),
            payload: payload.to_vec(),
            headers,
        }];
    }
    let parts = chunks::split(payload, room);
    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let mut h = headers.clone();
            h.push((H_PLATE_ID, key.to_string()));
            h.push((H_CHUNK_INDEX, i.to_string()));
            h.push((H_CHUNK_COUNT, n.to_string()));
            Out {
                topic: topic.into(),
                key: key.into(),
                payload: p.to_vec(),
                headers: h,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::kafka::chunks::{Added, Assembler, Chunk};

    #[test]
    fn small_payloads_are_one_message_large_ones_numbered_chunks() {
        let h = vec![(H_MODEL_VERSION, "g1.p0".to_string())];
        let one = chunked("t", "P1", &[7u8; 100], h.clone(), 10_000);
        assert_eq!(one.len(), 1);
        assert!(one[0].headers.iter().all(|(k, _)| *k != H_CHUNK_COUNT));
        let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let many = chunked("t", "P1", &payload, h, 16_000);
        assert!(many.len() >= 4);
        let mut asm = Assembler::new(usize::MAX);
        let mut whole = None;
        for (i, m) in many.iter().enumerate() {
            assert!(m.payload.len() + HEADER_ROOM.min(16_000 / 8) <= 16_000);
            let get = |k: &str| {
                m.headers
                    .iter()
                    .find(|(h, _)| *h == k)
                    .map(|(_, v)| v.clone())
                    .unwrap()
            };
            assert_eq!(get(H_CHUNK_INDEX), i.to_string());
            assert_eq!(get(H_MODEL_VERSION), "g1.p0");
            let c = Chunk {
                partition: 0,
                offset: i as i64,
                plate: get(H_PLATE_ID),
                index: get(H_CHUNK_INDEX).parse().unwrap(),
                count: get(H_CHUNK_COUNT).parse().unwrap(),
                bytes: m.payload.clone(),
            };
            if let Added::Complete(a) = asm.add(c, Instant::now()) {
                whole = Some(a.bytes);
            }
        }
        assert_eq!(whole.as_deref(), Some(payload.as_slice()));
    }
}
