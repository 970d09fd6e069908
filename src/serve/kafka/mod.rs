//! Kafka mode of `balans serve`: plates in from a topic, corrected plates,
//! QC records and rejections out to three topics, at-least-once.
//!
//! The per-plate sequence is the shared [`Pipeline`]'s; this module is the
//! mode's two ends, [`source::KafkaSource`] (consumer, chunk reassembly,
//! offset commits) and [`sink::KafkaSink`] (producer), plus the librdkafka
//! set-up ([`client`]), the wire format ([`wire`]), chunking ([`chunks`])
//! and commit bookkeeping ([`offsets`]); [`reread`] reads the plates topic
//! again for `balans realign`. Per plate:
//!
//! 1. **consume** a message from `plates_topic` (or all chunks of a chunked
//!    plate, [`self::chunks`]); its offset is now *open*;
//! 2. **decode** the payload ([`self::wire`]) and check the table
//!    ([`super::plate::decode`], shared with the directory mode);
//! 3. **correct** it against the model, or re-derive the output of a plate
//!    already incorporated with the same content (a replay), or reject a
//!    plate id reused with different content ([`super::plate::correct`]);
//! 4. append the plate's state change to the **write-ahead log** (fsync);
//! 5. **publish** the aligned plate (key = plate id, chunked when larger than
//!    `max_message_bytes`) and its QC record, and wait until the broker has
//!    acknowledged every message (acks=all; failures are retried);
//! 6. **apply** the change to the in-memory model (snapshot every
//!    `snapshot_every` plates; a failed snapshot is counted and retried);
//! 7. mark the offsets done and **commit** the lowest still-open offset per
//!    partition ([`self::offsets`]).
//!
//! A rejected plate goes to `dlq_topic` with its original bytes and a
//! `balans-dlq-reason` header; its offset is committed once the broker has
//! acknowledged the dead letter. A crash at any point leaves the input
//! offset uncommitted, so the plate is redelivered: if its delta reached the
//! log, the restored model recognises it (same id and content hash) and
//! re-publishes identical output under the same key and model version, which
//! consumers deduplicate. No Kafka transactions are used.
//!
//! The loop is synchronous (one plate at a time; correction is CPU-bound and
//! parallel inside): a `BaseConsumer` and a `BaseProducer` whose delivery
//! callback counts failures. Signals set a flag checked between messages.

pub mod chunks;
mod client;
pub mod offsets;
pub mod reread;
pub(crate) mod sink;
pub(crate) mod source;
pub mod wire;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;

use self::sink::KafkaSink;
use self::source::KafkaSource;
use crate::config::Config;
use crate::method::model::Model;
use crate::serve::hooks::{NoHooks, PlateHooks};
use crate::serve::model_state;
use crate::serve::outcome::RunReport;
use crate::serve::pipeline::Pipeline;

/// The Kafka daemon: the pipeline between a consumer and a producer.
pub struct KafkaServer {
    pipeline: Pipeline,
    source: KafkaSource,
    sink: KafkaSink,
}

impl KafkaServer {
    /// Restore (or warm-start) the model, connect and subscribe.
    pub fn open(cfg: Config) -> Result<KafkaServer> {
        KafkaServer::open_with(cfg, Box::new(NoHooks))
    }

    /// [`KafkaServer::open`] reporting to `hooks` (e.g. the Prometheus
    /// telemetry; told "state restored" once the model is there).
    pub fn open_with(cfg: Config, hooks: Box<dyn PlateHooks>) -> Result<KafkaServer> {
        let (source, sink) = connect(&cfg)?;
        let pipeline = Pipeline::open(cfg, hooks)?;
        Ok(KafkaServer {
            pipeline,
            source,
            sink,
        })
    }

    /// Like [`KafkaServer::open`] with a model built by the caller (the
    /// bench warm-starts this way). The state directory must hold no
    /// snapshot; one of `model` is written.
    pub fn with_model(cfg: Config, model: Model) -> Result<KafkaServer> {
        let (source, sink) = connect(&cfg)?;
        let state = model_state::seed_state(&cfg, &model)?;
        let pipeline = Pipeline::with_state(cfg, state, Some(model), Box::new(NoHooks));
        Ok(KafkaServer {
            pipeline,
            source,
            sink,
        })
    }

    /// Report to `hooks` from now on (the stream bench times plates so).
    pub fn set_hooks(&mut self, hooks: Box<dyn PlateHooks>) {
        self.pipeline.set_hooks(hooks);
    }

    /// The model, once it exists.
    pub fn model(&self) -> Option<&Model> {
        self.pipeline.model()
    }

    /// Consume until `stop` is set. Finishes (or cleanly abandons, without
    /// committing) the plate in flight, commits what is durable, writes a
    /// snapshot.
    pub fn run(&mut self, stop: Arc<AtomicBool>) -> Result<RunReport> {
        self.pipeline.run(&mut self.source, &mut self.sink, &stop)
    }

    /// Write a snapshot if the log has records.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.pipeline.checkpoint()
    }
}

fn connect(cfg: &Config) -> Result<(KafkaSource, KafkaSink)> {
    let k = &cfg.kafka;
    let source = KafkaSource::open(k)?;
    let sink = KafkaSink::open(k)?;
    tracing::info!(
        brokers = %k.brokers,
        group = %k.group_id,
        input = %k.plates_topic,
        aligned = %k.aligned_topic,
        qc = %k.qc_topic,
        dlq = %k.dlq_topic,
        "balans serve (kafka mode)"
    );
    Ok((source, sink))
}
