//! Kafka mode of `balans serve`: plates in from a topic, corrected plates,
//! QC records and rejections out to three topics, at-least-once.
//!
//! The pipeline per plate is the directory mode's (see [`super::dir`]) with a
//! broker at both ends:
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
//!    `snapshot_every` plates);
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
//! parallel inside): a [`BaseConsumer`] and a [`BaseProducer`] whose delivery
//! callback counts failures. Signals set a flag checked between messages.

pub mod chunks;
pub mod offsets;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext, PurgeConfig};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use self::chunks::{Added, Assembler, Chunk};
use self::offsets::OffsetTracker;
use self::wire::*;
use crate::config::{Config, KafkaConfig};
use crate::method::model::Model;
use crate::serve::plate::{self, RejectReason, Rejection};
use crate::serve::state::StateDir;

/// Bytes kept free in each produced message for the key and headers.
const HEADER_ROOM: usize = 16 * 1024;

/// Counts of what the daemon did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Plates corrected and incorporated.
    pub corrected: usize,
    /// Plates re-published (already incorporated).
    pub replayed: usize,
    /// Input messages dead-lettered.
    pub rejected: usize,
}

/// How one input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Corrected and incorporated.
    Corrected,
    /// Re-published from the stored state.
    Replayed,
    /// Dead-lettered, with the kind of rejection.
    Rejected(RejectReason),
}

/// Per-stage durations of one plate (telemetry hook).
#[derive(Debug, Clone, Default)]
pub struct StageTimes {
    /// Payload decode and table checks.
    pub decode: Duration,
    /// Correction (model).
    pub correct: Duration,
    /// Write-ahead log append + fsync.
    pub wal: Duration,
    /// Encode + produce + wait for the broker's acknowledgements.
    pub publish: Duration,
    /// Apply to the model (+ snapshot when due).
    pub apply: Duration,
    /// Offset commit.
    pub commit: Duration,
    /// From the (last chunk's) consumption to the commit.
    pub total: Duration,
}

/// One finished input, for telemetry.
#[derive(Debug, Clone)]
pub struct PlateEvent {
    /// Plate id (the key, or the chunk header).
    pub plate: String,
    /// Batch (empty when rejected before it was known).
    pub batch: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset (first chunk's).
    pub offset: i64,
    /// Rows.
    pub rows: usize,
    /// How it ended.
    pub outcome: Outcome,
    /// Model version of the output (empty when rejected).
    pub version: String,
    /// Stage durations.
    pub stages: StageTimes,
    /// The core's split of the correction (sampling / correction / QC),
    /// absent for replays and rejections.
    pub timings: Option<crate::method::model::PlateTimings>,
    /// QC figures and the outlier verdict, absent for replays and rejections.
    pub qc: Option<(crate::qc::PlateQc, crate::qc::OutlierVerdict)>,
}

/// Per-plate hooks of the Kafka loop. The Prometheus
/// [`crate::serve::telemetry::Telemetry`] implements them (that is how the Kafka
/// mode's metrics are fed); the stream bench implements them to time
/// plates. The default does nothing.
pub trait PlateHooks: Send {
    /// A plate (or rejected input) is finished and its offset committable.
    fn plate(&self, _event: &PlateEvent) {}
    /// Consumer lag of a partition: high watermark minus committed position.
    /// (tansu's high watermark is the base offset of its last batch + 1, so
    /// lag is approximate against tansu; exact against real Kafka.)
    fn lag(&self, _topic: &str, _partition: i32, _lag: i64) {}
    /// The model changed (a plate was applied, or it was restored).
    fn model_changed(&self, _model: &Model) {}
    /// Whether the broker answered the last offset commit.
    fn broker_reachable(&self, _ok: bool) {}
    /// One offset commit: its duration and whether it succeeded.
    fn commit(&self, _seconds: f64, _ok: bool) {}
    /// One snapshot (checkpoint): its duration and whether it succeeded.
    fn checkpoint(&self, _seconds: f64, _ok: bool) {}
}

/// The daemon's Prometheus telemetry ([`crate::serve::telemetry`]) fed from the
/// Kafka loop's hooks.
impl PlateHooks for crate::serve::telemetry::Telemetry {
    fn plate(&self, e: &PlateEvent) {
        use crate::serve::telemetry::Stage;
        let s = &e.stages;
        self.plate_consumed();
        self.rows_consumed(e.rows);
        match e.outcome {
            Outcome::Rejected(kind) => self.plate_dead_lettered(kind, e.rows),
            Outcome::Corrected | Outcome::Replayed => {
                self.plate_published(
                    e.rows,
                    e.outcome == Outcome::Replayed,
                    s.total.as_secs_f64(),
                );
                self.stage(Stage::Decode, s.decode.as_secs_f64());
                match &e.timings {
                    Some(t) => {
                        self.stage(Stage::Sampling, t.sampling);
                        self.stage(Stage::Correction, t.correction);
                        self.stage(Stage::Qc, t.qc);
                        self.landmarks(t.landmarks);
                    }
                    None => self.stage(Stage::Correction, s.correct.as_secs_f64()),
                }
                if let Some((qc, verdict)) = &e.qc {
                    self.plate_qc(qc, verdict);
                }
                self.stage(Stage::Wal, s.wal.as_secs_f64());
                self.stage(Stage::Produce, s.publish.as_secs_f64());
                self.stage(Stage::IndexUpdate, s.apply.as_secs_f64());
            }
        }
    }
    fn lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag(topic, partition, lag);
    }
    fn model_changed(&self, model: &Model) {
        crate::serve::telemetry::Telemetry::model(self, model);
    }
    fn broker_reachable(&self, ok: bool) {
        self.set_broker_reachable(ok);
    }
    fn commit(&self, seconds: f64, ok: bool) {
        crate::serve::telemetry::Telemetry::commit(self, seconds, ok);
    }
    fn checkpoint(&self, seconds: f64, ok: bool) {
        crate::serve::telemetry::Telemetry::checkpoint(self, seconds, ok);
    }
}

/// No hooks.
pub struct NoHooks;
impl PlateHooks for NoHooks {}

/// Consumer context: forwards librdkafka logs to `tracing` and records
/// rebalances so the loop can drop bookkeeping of revoked partitions.
struct ConsumerCtx {
    revoked: Mutex<Vec<i32>>,
    rebalanced: AtomicBool,
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
struct DeliveryCtx {
    failed: AtomicUsize,
    last_error: Mutex<Option<String>>,
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

/// One message to produce.
struct Out {
    topic: String,
    key: String,
    payload: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

/// The plate input being processed (one message or a reassembled set).
struct Input {
    plate_key: String,
    partition: i32,
    offsets: Vec<i64>,
    bytes: Vec<u8>,
    headers: HashMap<String, String>,
    consumed: Instant,
}

impl Input {
    fn first_offset(&self) -> i64 {
        self.offsets.first().copied().unwrap_or(-1)
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

fn header_map(m: &OwnedMessage) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(h) = m.headers() {
        for i in 0..h.count() {
            if let Some(hd) = h.try_get(i) {
                let v = hd
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                out.entry(hd.key.to_string()).or_insert(v);
            }
        }
    }
    out
}

/// The Kafka daemon.
pub struct KafkaServer {
    cfg: Config,
    state: StateDir,
    model: Option<Model>,
    consumer: BaseConsumer<ConsumerCtx>,
    producer: BaseProducer<DeliveryCtx>,
    tracker: OffsetTracker,
    chunks: Assembler,
    hooks: Box<dyn PlateHooks>,
    report: RunReport,
    last_lag: Instant,
}

impl KafkaServer {
    /// Restore (or warm-start) the model, connect and subscribe.
    pub fn open(cfg: Config) -> Result<KafkaServer> {
        let (state, model) = super::dir::open_state(&cfg)?;
        Self::from_parts(cfg, state, model)
    }

    /// Like [`KafkaServer::open`] with a model built by the caller (the
    /// bench warm-starts this way). The state directory must hold no
    /// snapshot; one of `model` is written.
    pub fn with_model(cfg: Config, model: Model) -> Result<KafkaServer> {
        let snap = cfg.serve.state_dir.join("snapshot").join("meta.json");
        anyhow::ensure!(
            !snap.exists(),
            "state directory {} already holds a model",
            cfg.serve.state_dir.display()
        );
        let mut state = StateDir::open(&cfg.serve.state_dir)?;
        state.snapshot(&model)?;
        Self::from_parts(cfg, state, Some(model))
    }

    fn from_parts(cfg: Config, state: StateDir, model: Option<Model>) -> Result<KafkaServer> {
        let k = &cfg.kafka;
        anyhow::ensure!(!k.brokers.is_empty(), "[kafka] brokers is empty");
        let fetch = (k.max_message_bytes + HEADER_ROOM).max(52_428_800);
        let consumer: BaseConsumer<ConsumerCtx> = client_config(
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
            ],
        )
        .create_with_context(ConsumerCtx {
            revoked: Mutex::new(Vec::new()),
            rebalanced: AtomicBool::new(false),
        })
        .context("cannot create the Kafka consumer (check [kafka] and [kafka.properties])")?;
        let producer: BaseProducer<DeliveryCtx> = client_config(
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
        .context("cannot create the Kafka producer (check [kafka] and [kafka.properties])")?;
        consumer
            .subscribe(&[&k.plates_topic])
            .with_context(|| format!("cannot subscribe to {}", k.plates_topic))?;
        tracing::info!(
            brokers = %k.brokers,
            group = %k.group_id,
            input = %k.plates_topic,
            aligned = %k.aligned_topic,
            qc = %k.qc_topic,
            dlq = %k.dlq_topic,
            "balans serve (kafka mode)"
        );
        Ok(KafkaServer {
            chunks: Assembler::new(k.max_plate_bytes),
            cfg,
            state,
            model,
            consumer,
            producer,
            tracker: OffsetTracker::new(),
            hooks: Box::new(NoHooks),
            report: RunReport::default(),
            last_lag: Instant::now(),
        })
    }

    /// Install the per-plate hooks (e.g. the Prometheus telemetry).
    pub fn set_hooks(&mut self, t: Box<dyn PlateHooks>) {
        if let Some(m) = &self.model {
            t.model_changed(m);
        }
        self.hooks = t;
    }

    /// The model, once it exists.
    pub fn model(&self) -> Option<&Model> {
        self.model.as_ref()
    }

    /// Consume until `stop` is set. Finishes (or cleanly abandons, without
    /// committing) the plate in flight, commits what is durable, writes a
    /// snapshot.
    pub fn run(&mut self, stop: Arc<AtomicBool>) -> Result<RunReport> {
        let poll = Duration::from_millis(self.cfg.kafka.poll_ms.max(1));
        while !stop.load(Ordering::SeqCst) {
            self.handle_rebalance();
            let msg = match self.consumer.poll(poll) {
                None => None,
                Some(Ok(m)) => Some(m.detach()),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error (retrying)");
                    std::thread::sleep(poll);
                    None
                }
            };
            if let Some(m) = msg {
                self.handle(m, &stop)?;
            }
            self.expire_chunks(&stop)?;
            self.commit();
            self.report_lag();
        }
        self.commit();
        self.checkpoint()?;
        Ok(self.report.clone())
    }

    /// Write a snapshot if the log has records.
    pub fn checkpoint(&mut self) -> Result<()> {
        if let Some(m) = &self.model {
            if self.state.since_snapshot() > 0 {
                let tc = Instant::now();
                let r = self.state.snapshot(m);
                self.hooks.checkpoint(tc.elapsed().as_secs_f64(), r.is_ok());
                r?;
            }
        }
        Ok(())
    }

    fn handle_rebalance(&mut self) {
        let ctx = self.consumer.context();
        if !ctx.rebalanced.swap(false, Ordering::SeqCst) {
            return;
        }
        let revoked: Vec<i32> =
            std::mem::take(&mut *ctx.revoked.lock().unwrap_or_else(|e| e.into_inner()));
        for p in revoked {
            self.tracker.forget(p);
            self.chunks.forget_partition(p);
        }
    }

    fn source(&self, partition: i32, offset: i64) -> String {
        format!("{}/{partition}@{offset}", self.cfg.kafka.plates_topic)
    }

    /// One consumed message.
    fn handle(&mut self, m: OwnedMessage, stop: &AtomicBool) -> Result<()> {
        let consumed = Instant::now();
        let (partition, offset) = (m.partition(), m.offset());
        self.tracker.received(partition, offset);
        let headers = header_map(&m);
        let key = m
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let bytes = m.payload().map(<[u8]>::to_vec).unwrap_or_default();
        let input = Input {
            plate_key: key,
            partition,
            offsets: vec![offset],
            bytes,
            headers,
            consumed,
        };
        if input.headers.contains_key(H_CHUNK_COUNT) || input.headers.contains_key(H_CHUNK_INDEX) {
            return self.handle_chunk(input, stop);
        }
        if input.bytes.len() > self.cfg.kafka.max_plate_bytes {
            let reason = format!(
                "{}: oversized plate: {} bytes > max_plate_bytes {}",
                self.source(partition, offset),
                input.bytes.len(),
                self.cfg.kafka.max_plate_bytes
            );
            return self.reject(&input, RejectReason::Oversized, &reason, stop);
        }
        self.process(input, stop)
    }

    fn handle_chunk(&mut self, input: Input, stop: &AtomicBool) -> Result<()> {
        let src = self.source(input.partition, input.first_offset());
        let num = |h: &str| -> std::result::Result<usize, String> {
            let v = input
                .headers
                .get(h)
                .ok_or_else(|| format!("{src}: chunk header {h} missing"))?;
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("{src}: chunk header {h} is not a number: {v:?}"))
        };
        let parsed = num(H_CHUNK_INDEX).and_then(|i| num(H_CHUNK_COUNT).map(|c| (i, c)));
        let (index, count) = match parsed {
            Ok(x) => x,
            Err(reason) => return self.reject(&input, RejectReason::Oversized, &reason, stop),
        };
        let plate = input
            .headers
            .get(H_PLATE_ID)
            .cloned()
            .unwrap_or_else(|| input.plate_key.clone());
        let chunk = Chunk {
            partition: input.partition,
            offset: input.first_offset(),
            plate: plate.clone(),
            index,
            count,
            bytes: input.bytes.clone(),
        };
        match self.chunks.add(chunk, Instant::now()) {
            Added::Pending | Added::Duplicate => {
                tracing::debug!(%plate, index, count, partition = input.partition, offset = input.first_offset(), "chunk held");
                Ok(())
            }
            Added::Rejected(r) => self.reject_chunks(r, &input.headers, stop),
            Added::Complete(a) => {
                tracing::info!(plate = %a.plate, chunks = count, bytes = a.bytes.len(), partition = a.partition, "chunked plate reassembled");
                let mut headers = input.headers;
                for h in [H_CHUNK_INDEX, H_CHUNK_COUNT, H_PLATE_ID] {
                    headers.remove(h);
                }
                self.process(
                    Input {
                        plate_key: a.plate,
                        partition: a.partition,
                        offsets: a.offsets,
                        bytes: a.bytes,
                        headers,
                        consumed: input.consumed,
                    },
                    stop,
                )
            }
        }
    }

    fn expire_chunks(&mut self, stop: &AtomicBool) -> Result<()> {
        let timeout = Duration::from_millis(self.cfg.kafka.chunk_timeout_ms);
        for r in self.chunks.expire(Instant::now(), timeout) {
            self.reject_chunks(r, &HashMap::new(), stop)?;
        }
        Ok(())
    }

    /// Dead-letter every chunk of a bad set, one message each.
    fn reject_chunks(
        &mut self,
        r: chunks::Rejected,
        headers: &HashMap<String, String>,
        stop: &AtomicBool,
    ) -> Result<()> {
        tracing::warn!(reason = %r.reason, chunks = r.chunks.len(), "chunked plate rejected to dlq");
        for c in r.chunks {
            let mut h = headers.clone();
            h.insert(H_PLATE_ID.into(), c.plate.clone());
            h.insert(H_CHUNK_INDEX.into(), c.index.to_string());
            h.insert(H_CHUNK_COUNT.into(), c.count.to_string());
            let input = Input {
                plate_key: c.plate,
                partition: c.partition,
                offsets: vec![c.offset],
                bytes: c.bytes,
                headers: h,
                consumed: Instant::now(),
            };
            self.reject(&input, RejectReason::Oversized, &r.reason, stop)?;
        }
        Ok(())
    }

    /// Send an input to the DLQ (original bytes, headers, reason) and, once
    /// acknowledged, release its offsets.
    fn reject(
        &mut self,
        input: &Input,
        kind: RejectReason,
        reason: &str,
        stop: &AtomicBool,
    ) -> Result<()> {
        let k = &self.cfg.kafka;
        tracing::warn!(
            plate = %input.plate_key,
            partition = input.partition,
            offset = input.first_offset(),
            %reason,
            "plate rejected to dlq"
        );
        let t = Instant::now();
        let mut base: Vec<(&'static str, String)> = vec![
            (H_DLQ_REASON, format!("{kind}: {reason}")),
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
            // A single bad chunk: forward it as it was, with its chunk headers.
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
        if !self.publish(&outs, stop)? {
            return Ok(()); // stopping: offsets stay open, redelivered later
        }
        for &o in &input.offsets {
            self.tracker.done(input.partition, o);
        }
        self.report.rejected += 1;
        let publish = t.elapsed();
        let c = Instant::now();
        self.commit();
        self.hooks.plate(&PlateEvent {
            plate: input.plate_key.clone(),
            batch: String::new(),
            partition: input.partition,
            offset: input.first_offset(),
            rows: 0,
            outcome: Outcome::Rejected(kind),
            version: String::new(),
            stages: StageTimes {
                publish,
                commit: c.elapsed(),
                total: input.consumed.elapsed(),
                ..StageTimes::default()
            },
            timings: None,
            qc: None,
        });
        Ok(())
    }

    /// A whole plate payload: decode, correct, log, publish, apply, commit.
    fn process(&mut self, input: Input, stop: &AtomicBool) -> Result<()> {
        let mut st = StageTimes::default();
        let t = Instant::now();
        let source = self.source(input.partition, input.first_offset());
        let decoded =
            wire::check_schema_version(input.headers.get(H_SCHEMA_VERSION).map(String::as_str))
                .and_then(|_| {
                    wire::encoding_of(input.headers.get(H_CONTENT_TYPE).map(String::as_str))
                })
                .map_err(|r| Rejection::new(r.reason, format!("{source}: {}", r.message)))
                .and_then(|enc| wire::decode_payload(&input.bytes, enc, &source))
                .and_then(|table| {
                    let fallback = if input.plate_key.is_empty() {
                        source.clone()
                    } else {
                        input.plate_key.clone()
                    };
                    plate::decode(table, &input.bytes, &fallback, &self.cfg.correct, &source)
                })
                .and_then(|d| {
                    if !input.plate_key.is_empty() && d.plate != input.plate_key {
                        return Err(Rejection::new(
                            RejectReason::Schema,
                            format!(
                                "{source}: message key {:?} but column {} says plate {:?}",
                                input.plate_key, self.cfg.correct.plate_col, d.plate
                            ),
                        ));
                    }
                    Ok(d)
                });
        let decoded = match decoded {
            Ok(d) => d,
            Err(r) => return self.reject(&input, r.reason, &r.message, stop),
        };
        st.decode = t.elapsed();
        if self.model.is_none() {
            match Model::bootstrap(
                decoded.x.view(),
                decoded.controls.as_deref(),
                decoded.columns.names.clone(),
                &self.cfg.method,
            ) {
                Ok(m) => self.model = Some(m),
                Err(e) => {
                    let r = format!("{source}: cannot start a model from this plate: {e:#}");
                    return self.reject(&input, RejectReason::Model, &r, stop);
                }
            }
        }
        let Some(model) = self.model.as_ref() else {
            anyhow::bail!("internal: no model");
        };
        let t = Instant::now();
        let out = match plate::correct(model, &decoded, &self.cfg.qc) {
            Ok(r) => r.with_context(|| format!("{source}: cannot encode the corrected plate"))?,
            Err(r) => {
                let msg = format!("{source}: {}", r.message);
                return self.reject(&input, r.reason, &msg, stop);
            }
        };
        st.correct = t.elapsed();
        let t = Instant::now();
        if let Some(delta) = &out.delta {
            self.state.append(delta)?;
        }
        st.wal = t.elapsed();
        let t = Instant::now();
        let k = &self.cfg.kafka;
        let version = out.qc.model_version.clone();
        let common: Vec<(&'static str, String)> = vec![
            (H_MODEL_VERSION, version.clone()),
            (H_REPLAY, out.qc.replay.to_string()),
            (H_SOURCE_TOPIC, k.plates_topic.clone()),
            (H_SOURCE_PARTITION, input.partition.to_string()),
            (H_SOURCE_OFFSET, input.first_offset().to_string()),
        ];
        let aligned = crate::io::table::encode_ipc_stream(&out.table)
            .with_context(|| format!("{source}: cannot encode the aligned plate"))?;
        let mut h = common.clone();
        h.push((H_CONTENT_TYPE, CT_ARROW_STREAM.into()));
        h.push((H_SCHEMA_VERSION, SCHEMA_VERSION.into()));
        let mut outs = chunked(
            &k.aligned_topic,
            &decoded.plate,
            &aligned,
            h,
            k.max_message_bytes,
        );
        let mut h = common;
        h.push((H_CONTENT_TYPE, CT_JSON.into()));
        outs.push(Out {
            topic: k.qc_topic.clone(),
            key: decoded.plate.clone(),
            payload: serde_json::to_vec(&out.qc)?,
            headers: h,
        });
        let n_out = outs.len();
        if !self.publish(&outs, stop)? {
            tracing::info!(plate = %decoded.plate, "stopping: plate in flight abandoned (redelivered on restart)");
            return Ok(());
        }
        st.publish = t.elapsed();
        let t = Instant::now();
        if let (Some(delta), Some(model)) = (&out.delta, self.model.as_mut()) {
            model.apply(delta)?;
            self.hooks.model_changed(model);
        }
        if let Some(model) = &self.model {
            if self.state.since_snapshot() >= self.cfg.serve.snapshot_every.max(1) {
                let tc = Instant::now();
                let r = self.state.snapshot(model);
                self.hooks.checkpoint(tc.elapsed().as_secs_f64(), r.is_ok());
                r?;
            }
        }
        st.apply = t.elapsed();
        for &o in &input.offsets {
            self.tracker.done(input.partition, o);
        }
        let t = Instant::now();
        self.commit();
        st.commit = t.elapsed();
        st.total = input.consumed.elapsed();
        if out.qc.replay {
            self.report.replayed += 1;
        } else {
            self.report.corrected += 1;
        }
        tracing::info!(
            plate = %decoded.plate,
            batch = %decoded.batch,
            rows = decoded.x.nrows(),
            partition = input.partition,
            offset = input.first_offset(),
            version = %version,
            replay = out.qc.replay,
            messages = n_out,
            decode_s = st.decode.as_secs_f64(),
            correct_s = st.correct.as_secs_f64(),
            wal_s = st.wal.as_secs_f64(),
            publish_s = st.publish.as_secs_f64(),
            apply_s = st.apply.as_secs_f64(),
            total_s = st.total.as_secs_f64(),
            "plate published"
        );
        self.hooks.plate(&PlateEvent {
            plate: decoded.plate.clone(),
            batch: decoded.batch.clone(),
            partition: input.partition,
            offset: input.first_offset(),
            rows: decoded.x.nrows(),
            outcome: if out.qc.replay {
                Outcome::Replayed
            } else {
                Outcome::Corrected
            },
            version,
            stages: st,
            timings: (!out.qc.replay).then_some(out.timings),
            qc: match (&out.qc.qc, &out.qc.outlier) {
                (Some(q), Some(v)) => Some((q.clone(), v.clone())),
                _ => None,
            },
        });
        Ok(())
    }

    /// Produce messages and wait until the broker acknowledged all of them;
    /// on failure retry the whole set (at-least-once: consumers deduplicate
    /// by key + model version). `Ok(false)` when stopping before success.
    fn publish(&self, outs: &[Out], stop: &AtomicBool) -> Result<bool> {
        let timeout = Duration::from_millis(self.cfg.kafka.delivery_timeout_ms + 5_000);
        let mut backoff = Duration::from_millis(200);
        loop {
            let ctx = self.producer.context();
            ctx.failed.store(0, Ordering::SeqCst);
            let mut send_error = None;
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
                            KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull,
                            ),
                            r,
                        )) => {
                            self.producer.poll(Duration::from_millis(50));
                            record = r;
                        }
                        Err((e, _)) => {
                            send_error = Some(format!("cannot produce to {}: {e}", o.topic));
                            break;
                        }
                    }
                }
                if send_error.is_some() {
                    break;
                }
            }
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
                return Ok(true);
            }
            let why = send_error
                .or_else(|| flushed.err())
                .or_else(|| ctx.last_error.lock().ok().and_then(|g| g.clone()))
                .unwrap_or_else(|| "unknown".into());
            tracing::warn!(reason = %why, failed, "outputs not acknowledged; retrying");
            self.producer
                .purge(PurgeConfig::default().queue().inflight());
            let _ = self.producer.flush(Duration::from_secs(1));
            if stop.load(Ordering::SeqCst) {
                return Ok(false);
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Commit the safe position of every partition that moved.
    fn commit(&mut self) {
        let topic = self.cfg.kafka.plates_topic.clone();
        for (part, pos) in self.tracker.to_commit() {
            let mut tpl = TopicPartitionList::new();
            if let Err(e) = tpl.add_partition_offset(&topic, part, Offset::Offset(pos)) {
                tracing::warn!(error = %e, "cannot build the commit");
                continue;
            }
            let tc = Instant::now();
            let r = self.consumer.commit(&tpl, CommitMode::Sync);
            self.hooks.commit(tc.elapsed().as_secs_f64(), r.is_ok());
            match r {
                Ok(()) => {
                    self.tracker.committed(part, pos);
                    self.hooks.broker_reachable(true);
                    tracing::debug!(partition = part, position = pos, "offset committed");
                }
                Err(e) => {
                    self.hooks.broker_reachable(false);
                    tracing::warn!(partition = part, position = pos, error = %e, "offset commit failed (retried)")
                }
            }
        }
    }

    /// Every 10 s: lag per partition (high watermark - committed position).
    fn report_lag(&mut self) {
        if self.last_lag.elapsed() < Duration::from_secs(10) {
            return;
        }
        self.last_lag = Instant::now();
        let topic = &self.cfg.kafka.plates_topic;
        for p in self.tracker.partitions() {
            let Some(committed) = self.tracker.committed_position(p) else {
                continue;
            };
            if let Ok((_, high)) =
                self.consumer
                    .fetch_watermarks(topic, p, Duration::from_millis(500))
            {
                let lag = (high - committed).max(0);
                tracing::debug!(partition = p, lag, "consumer lag");
                self.hooks.lag(topic, p, lag);
            }
        }
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
