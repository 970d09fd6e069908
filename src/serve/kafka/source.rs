//! The Kafka source: plates in from `plates_topic`, acknowledged by
//! committing offsets.
//!
//! Each message received opens its offset in the [`OffsetTracker`]. A
//! message with chunk headers is held by the [`Assembler`] until its set is
//! complete (then the set is one input, carrying all its offsets); a bad or
//! timed-out set, or a plate over `max_plate_bytes`, is handed to the
//! pipeline as rejected. Acknowledging an input marks its offsets done and
//! commits, per partition, the lowest offset still open — so an open
//! chunked plate holds back the commit of later offsets, and a crash never
//! skips it. Rebalances drop the bookkeeping of revoked partitions (the
//! broker redelivers from the committed position).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow_array::RecordBatch;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::chunks::{self, Added, Assembler, Chunk};
use super::client::{self, ConsumerCtx};
use super::offsets::OffsetTracker;
use super::wire::{
    self, H_CHUNK_COUNT, H_CHUNK_INDEX, H_CONTENT_TYPE, H_PLATE_ID, H_SCHEMA_VERSION,
};
use crate::config::{CorrectConfig, KafkaConfig};
use crate::serve::hooks::PlateHooks;
use crate::serve::outcome::{Outcome, RejectReason, Rejection};
use crate::serve::pipeline::{Input, Next, Source};
use crate::serve::plate::DecodedPlate;

/// One plate input: a message, or a reassembled chunk set.
pub struct KafkaInput {
    /// The message key (the plate id).
    pub plate_key: String,
    /// Source partition.
    pub partition: i32,
    /// Offsets it covers (one, or every chunk's).
    pub offsets: Vec<i64>,
    /// The payload (reassembled for a chunk set).
    pub bytes: Vec<u8>,
    /// Headers (the first value of each name).
    pub headers: HashMap<String, String>,
    /// When its (last) message was consumed.
    pub consumed: Instant,
    /// `topic/partition@first offset`.
    pub source: String,
}

impl KafkaInput {
    /// The first offset (the chunk set's first chunk).
    pub fn first_offset(&self) -> i64 {
        self.offsets.first().copied().unwrap_or(-1)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

impl Input for KafkaInput {
    fn source(&self) -> &str {
        &self.source
    }
    fn key(&self) -> &str {
        &self.plate_key
    }
    fn consumed(&self) -> Instant {
        self.consumed
    }
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// Schema version and content type headers, then the payload.
    fn table(&self) -> Result<RecordBatch, Rejection> {
        wire::check_schema_version(self.header(H_SCHEMA_VERSION))
            .and_then(|_| wire::encoding_of(self.header(H_CONTENT_TYPE)))
            .map_err(|r| r.at(&self.source))
            .and_then(|enc| wire::decode_payload(&self.bytes, enc, &self.source))
    }
    /// The key, else the message's position.
    fn fallback_id(&self) -> String {
        if self.plate_key.is_empty() {
            self.source.clone()
        } else {
            self.plate_key.clone()
        }
    }
    /// A plate column, when present, must agree with the key.
    fn check(&self, d: &DecodedPlate, cfg: &CorrectConfig) -> Result<(), Rejection> {
        if !self.plate_key.is_empty() && d.plate != self.plate_key {
            return Err(Rejection::new(
                RejectReason::Schema,
                format!(
                    "{}: message key {:?} but column {} says plate {:?}",
                    self.source, self.plate_key, cfg.plate_col, d.plate
                ),
            ));
        }
        Ok(())
    }
}

/// A message's headers as strings (the first of a repeated key wins).
pub(super) fn header_map(m: &OwnedMessage) -> HashMap<String, String> {
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

/// The consumer side of the Kafka mode.
pub struct KafkaSource {
    k: KafkaConfig,
    consumer: BaseConsumer<ConsumerCtx>,
    tracker: OffsetTracker,
    chunks: Assembler,
    /// Inputs the source rejected, handed over one per `next`.
    rejected: VecDeque<(KafkaInput, Rejection)>,
    last_lag: Instant,
}

impl KafkaSource {
    /// Connect and subscribe to `plates_topic`.
    pub fn open(k: &KafkaConfig) -> Result<KafkaSource> {
        anyhow::ensure!(!k.brokers.is_empty(), "[kafka] brokers is empty");
        let consumer = client::consumer(k)?;
        consumer
            .subscribe(&[&k.plates_topic])
            .with_context(|| format!("cannot subscribe to {}", k.plates_topic))?;
        Ok(KafkaSource {
            k: k.clone(),
            consumer,
            tracker: OffsetTracker::new(),
            chunks: Assembler::new(k.max_plate_bytes),
            rejected: VecDeque::new(),
            last_lag: Instant::now(),
        })
    }

    fn source(&self, partition: i32, offset: i64) -> String {
        format!("{}/{partition}@{offset}", self.k.plates_topic)
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

    /// One consumed message: a plate, a chunk (held, or completing a set),
    /// or a rejection.
    fn take(&mut self, m: OwnedMessage) -> Option<Next<KafkaInput>> {
        let consumed = Instant::now();
        let (partition, offset) = (m.partition(), m.offset());
        self.tracker.received(partition, offset);
        let input = KafkaInput {
            plate_key: m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            partition,
            offsets: vec![offset],
            bytes: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers: header_map(&m),
            consumed,
            source: self.source(partition, offset),
        };
        if input.headers.contains_key(H_CHUNK_COUNT) || input.headers.contains_key(H_CHUNK_INDEX) {
            return self.chunk(input);
        }
        if input.bytes.len() > self.k.max_plate_bytes {
            let why = format!(
                "{}: oversized plate: {} bytes > max_plate_bytes {}",
                input.source,
                input.bytes.len(),
                self.k.max_plate_bytes
            );
            return Some(Next::Rejected(
                input,
                Rejection::new(RejectReason::Oversized, why),
            ));
        }
        Some(Next::Plate(input))
    }

    fn chunk(&mut self, input: KafkaInput) -> Option<Next<KafkaInput>> {
        let src = &input.source;
        let num = |h: &str| -> std::result::Result<usize, String> {
            let v = input
                .headers
                .get(h)
                .ok_or_else(|| format!("{src}: chunk header {h} missing"))?;
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("{src}: chunk header {h} is not a number: {v:?}"))
        };
        let (index, count) =
            match num(H_CHUNK_INDEX).and_then(|i| num(H_CHUNK_COUNT).map(|c| (i, c))) {
                Ok(x) => x,
                Err(why) => {
                    return Some(Next::Rejected(
                        input,
                        Rejection::new(RejectReason::Oversized, why),
                    ))
                }
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
                None
            }
            Added::Rejected(r) => {
                self.reject_chunks(r, &input.headers);
                None
            }
            Added::Complete(a) => {
                tracing::info!(plate = %a.plate, chunks = count, bytes = a.bytes.len(), partition = a.partition, "chunked plate reassembled");
                let mut headers = input.headers;
                for h in [H_CHUNK_INDEX, H_CHUNK_COUNT, H_PLATE_ID] {
                    headers.remove(h);
                }
                let source = self.source(a.partition, a.offsets.first().copied().unwrap_or(-1));
                Some(Next::Plate(KafkaInput {
                    plate_key: a.plate,
                    partition: a.partition,
                    offsets: a.offsets,
                    bytes: a.bytes,
                    headers,
                    consumed: input.consumed,
                    source,
                }))
            }
        }
    }

    /// Queue every chunk of a bad set as its own rejected input.
    fn reject_chunks(&mut self, r: chunks::Rejected, headers: &HashMap<String, String>) {
        tracing::warn!(reason = %r.reason, chunks = r.chunks.len(), "chunked plate rejected to dlq");
        for c in r.chunks {
            let mut h = headers.clone();
            h.insert(H_PLATE_ID.into(), c.plate.clone());
            h.insert(H_CHUNK_INDEX.into(), c.index.to_string());
            h.insert(H_CHUNK_COUNT.into(), c.count.to_string());
            let input = KafkaInput {
                source: self.source(c.partition, c.offset),
                plate_key: c.plate,
                partition: c.partition,
                offsets: vec![c.offset],
                bytes: c.bytes,
                headers: h,
                consumed: Instant::now(),
            };
            self.rejected.push_back((
                input,
                Rejection::new(RejectReason::Oversized, r.reason.clone()),
            ));
        }
    }

    /// Commit the safe position of every partition that moved.
    fn commit(&mut self, hooks: &dyn PlateHooks) {
        let topic = &self.k.plates_topic;
        for (part, pos) in self.tracker.to_commit() {
            let mut tpl = TopicPartitionList::new();
            if let Err(e) = tpl.add_partition_offset(topic, part, Offset::Offset(pos)) {
                tracing::warn!(error = %e, "cannot build the commit");
                continue;
            }
            let tc = Instant::now();
            let r = self.consumer.commit(&tpl, CommitMode::Sync);
            hooks.commit(tc.elapsed().as_secs_f64(), r.is_ok());
            match r {
                Ok(()) => {
                    self.tracker.committed(part, pos);
                    hooks.broker_reachable(true);
                    tracing::debug!(partition = part, position = pos, "offset committed");
                }
                Err(e) => {
                    hooks.broker_reachable(false);
                    tracing::warn!(partition = part, position = pos, error = %e, "offset commit failed (retried)")
                }
            }
        }
    }

    /// Between plates: commit what is safe (retrying a failed commit),
    /// report the lag when due, and reject chunk sets open too long.
    fn housekeeping(&mut self, hooks: &dyn PlateHooks) {
        self.commit(hooks);
        self.report_lag(hooks);
        let timeout = Duration::from_millis(self.k.chunk_timeout_ms);
        for r in self.chunks.expire(Instant::now(), timeout) {
            self.reject_chunks(r, &HashMap::new());
        }
    }

    /// The housekeeping, then a rejection it queued, else one message
    /// (waiting up to `wait`; after a consumer error, `wait` again).
    fn poll_next(&mut self, hooks: &dyn PlateHooks, wait: Duration) -> Next<KafkaInput> {
        self.housekeeping(hooks);
        if let Some((input, r)) = self.rejected.pop_front() {
            return Next::Rejected(input, r);
        }
        let next = match self.consumer.poll(wait) {
            None => None,
            Some(Ok(m)) => self.take(m.detach()),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error (retrying)");
                std::thread::sleep(wait);
                None
            }
        };
        next.unwrap_or(Next::Idle)
    }

    /// Every 10 s: lag per partition (high watermark - committed position).
    fn report_lag(&mut self, hooks: &dyn PlateHooks) {
        if self.last_lag.elapsed() < Duration::from_secs(10) {
            return;
        }
        self.last_lag = Instant::now();
        let topic = &self.k.plates_topic;
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
                hooks.lag(topic, p, lag);
            }
        }
    }
}

impl Source for KafkaSource {
    type Input = KafkaInput;

    fn next(&mut self, _stop: &AtomicBool, hooks: &dyn PlateHooks) -> Result<Next<KafkaInput>> {
        if let Some((input, r)) = self.rejected.pop_front() {
            return Ok(Next::Rejected(input, r));
        }
        self.handle_rebalance();
        Ok(self.poll_next(hooks, Duration::from_millis(self.k.poll_ms.max(1))))
    }

    /// A message already consumed, without waiting (see
    /// [`Source::next_ready`]): plates librdkafka has fetched ahead. A
    /// rebalance is handled by [`Source::next`] once the plate in flight is
    /// acknowledged, so nothing is handed over while one is pending.
    fn next_ready(
        &mut self,
        _stop: &AtomicBool,
        hooks: &dyn PlateHooks,
    ) -> Result<Next<KafkaInput>> {
        if let Some((input, r)) = self.rejected.pop_front() {
            return Ok(Next::Rejected(input, r));
        }
        if self.consumer.context().rebalanced.load(Ordering::SeqCst) {
            return Ok(Next::Idle);
        }
        // Under a sustained feed a plate is always ready and `next` is not
        // called: the lag, commit retries and chunk expiry happen here too.
        Ok(self.poll_next(hooks, Duration::ZERO))
    }

    /// Mark the input's offsets done and commit what is now safe. A failed
    /// commit is not fatal: it is retried, and a redelivery is recognised.
    /// An input whose partition a rebalance took away meanwhile is not
    /// committed (the partition's new owner redoes it).
    fn acknowledge(
        &mut self,
        input: &KafkaInput,
        _outcome: Outcome,
        hooks: &dyn PlateHooks,
    ) -> Result<()> {
        self.handle_rebalance();
        if !self.tracker.knows(input.partition) {
            tracing::info!(
                partition = input.partition,
                source = %input.source,
                "partition revoked while the plate was in flight: not committed"
            );
            return Ok(());
        }
        for &o in &input.offsets {
            self.tracker.done(input.partition, o);
        }
        self.commit(hooks);
        Ok(())
    }

    fn close(&mut self, hooks: &dyn PlateHooks) -> Result<()> {
        self.commit(hooks);
        Ok(())
    }
}
