//! Operations telemetry: the Prometheus metric families of `balans serve`,
//! the readiness flags, and the HTTP listener serving `/metrics`,
//! `/healthz` and `/readyz`.
//!
//! A [`Telemetry`] is a cheap clonable handle whose methods record the
//! points of a plate's life: consumed, each stage timed, published or
//! dead-lettered, acknowledged; checkpoints; the model's shape; the
//! source's backlog ([`Telemetry::consumer_lag`]); readiness. Every family
//! and its labels are listed in `docs/operations.md`.
//!
//! The pipeline ([`crate::serve::pipeline`]) does not call these methods
//! itself, in either mode: it reports to a
//! [`crate::serve::hooks::PlateHooks`], which `Telemetry` implements (in
//! [`crate::serve::hooks`]). The algorithm core does not report at all: it
//! returns timings ([`crate::method::model::PlateTimings`]) and the
//! pipeline passes them on. The HTTP listener is in [`http`].

mod http;

pub use http::{HttpLimits, HttpServer};

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::method::model::Model;
use crate::qc::{OutlierReason, OutlierVerdict};
use crate::serve::outcome::RejectReason;

/// Pipeline stages timed by `balans_stage_duration_seconds{stage}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading and checking the plate (bytes -> table -> feature matrix).
    Decode,
    /// Affinity-row sampling against the batch indices.
    Sampling,
    /// Offsets and the map back to features.
    Correction,
    /// Per-plate QC figures and the outlier verdict.
    Qc,
    /// Building the output table.
    Encode,
    /// Appending the plate's state change to the write-ahead log (fsync).
    Wal,
    /// Writing the outputs (directory mode: outbox files, fsync, rename).
    Write,
    /// Producing the outputs to the broker until acknowledged (Kafka mode).
    Produce,
    /// Adding the plate's rows to its batch index (applying the change).
    IndexUpdate,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 9] = [
        Stage::Decode,
        Stage::Sampling,
        Stage::Correction,
        Stage::Qc,
        Stage::Encode,
        Stage::Wal,
        Stage::Write,
        Stage::Produce,
        Stage::IndexUpdate,
    ];

    /// The `stage` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Sampling => "sampling",
            Stage::Correction => "correction",
            Stage::Qc => "qc",
            Stage::Encode => "encode",
            Stage::Wal => "wal",
            Stage::Write => "write",
            Stage::Produce => "produce",
            Stage::IndexUpdate => "index_update",
        }
    }
}

/// The readiness conditions behind `/readyz`.
#[derive(Debug, Default)]
struct Readiness {
    state_restored: AtomicBool,
    consuming: AtomicBool,
    /// 0 = no broker (directory mode), 1 = reachable, 2 = unreachable.
    broker: AtomicU8,
}

/// Histogram buckets (seconds) of per-plate latencies: 5 ms .. 5 min.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Buckets (seconds) of stage, commit and checkpoint durations: 0.1 ms .. 2 min.
const STAGE_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
];
/// Buckets of the mixing ratio (0 = not mixed, 1 = mixed).
/// Buckets of the per-plate drift between generations (median cosine distance).
const DRIFT_BUCKETS: &[f64] = &[0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0];
const MIXING_BUCKETS: &[f64] = &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0];

struct Inner {
    registry: Registry,
    ready: Readiness,
    plates_consumed: IntCounter,
    rows_consumed: IntCounter,
    plates_published: IntCounterVec,
    rows_published: IntCounter,
    plates_dead_lettered: IntCounterVec,
    rows_dead_lettered: IntCounterVec,
    latency: Histogram,
    stage: HistogramVec,
    consumer_lag: IntGaugeVec,
    indexed_rows: IntGaugeVec,
    model_rows: IntGauge,
    model_plates: IntGauge,
    model_batches: IntGauge,
    model_generation: IntGauge,
    next_generation: IntGauge,
    next_plates: IntGauge,
    generation_drift_last: GaugeVec,
    generation_drift: Histogram,
    landmarks: IntCounter,
    model_coverage: GaugeVec,
    commit: Histogram,
    commit_failures: IntCounter,
    checkpoint: Histogram,
    checkpoint_failures: IntCounter,
    last_checkpoint: Gauge,
    last_publish: Gauge,
    qc_outlier_plates: IntCounter,
    qc_outlier_reasons: IntCounterVec,
    qc_extreme_plates: IntCounter,
    qc_last: GaugeVec,
    qc_mixing: HistogramVec,
    ready_gauge: IntGauge,
}

/// The telemetry handle (clone freely).
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> Result<C> {
    r.register(Box::new(c.clone()))
        .context("registering a metric family")?;
    Ok(c)
}

fn hist(name: &str, help: &str, buckets: &[f64]) -> Result<Histogram> {
    Ok(Histogram::with_opts(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
    )?)
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Telemetry {
    /// Register every family (all label values of the fixed label sets are
    /// pre-created at zero so `rate()` works from the first scrape).
    pub fn new() -> Result<Telemetry> {
        let r = Registry::new();
        let build = reg(
            &r,
            IntGaugeVec::new(
                Opts::new("balans_build_info", "Build information (value 1)."),
                &["version"],
            )?,
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let inner = Inner {
            plates_consumed: reg(
                &r,
                IntCounter::new(
                    "balans_plates_consumed_total",
                    "Plates taken from the source (files picked up, messages reassembled).",
                )?,
            )?,
            rows_consumed: reg(
                &r,
                IntCounter::new(
                    "balans_rows_consumed_total",
                    "Rows of the plates consumed (readable plates only).",
                )?,
            )?,
            plates_published: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "balans_plates_published_total",
                        "Plates whose outputs were published; replay=true for re-publications of an incorporated plate.",
                    ),
                    &["replay"],
                )?,
            )?,
            rows_published: reg(
                &r,
                IntCounter::new("balans_rows_published_total", "Rows published.")?,
            )?,
            plates_dead_lettered: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "balans_plates_dead_lettered_total",
                        "Plates sent to the dead-letter destination, by reason.",
                    ),
                    &["reason"],
                )?,
            )?,
            rows_dead_lettered: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "balans_rows_dead_lettered_total",
                        "Rows of dead-lettered plates (when the plate was readable), by reason.",
                    ),
                    &["reason"],
                )?,
            )?,
            latency: reg(
                &r,
                hist(
                    "balans_plate_latency_seconds",
                    "Consume-to-publish latency of a plate (picked up -> outputs durable/acknowledged).",
                    LATENCY_BUCKETS,
                )?,
            )?,
            stage: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "balans_stage_duration_seconds",
                        "Seconds per plate spent in each pipeline stage.",
                    )
                    .buckets(STAGE_BUCKETS.to_vec()),
                    &["stage"],
                )?,
            )?,
            consumer_lag: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "balans_consumer_lag",
                        "Plates waiting in the source: per topic/partition (Kafka: high watermark - position; directory mode: topic=\"inbox\", partition=\"0\", plate files in the inbox).",
                    ),
                    &["topic", "partition"],
                )?,
            )?,
            indexed_rows: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("balans_indexed_rows", "Rows in each batch's neighbour index."),
                    &["batch"],
                )?,
            )?,
            model_rows: reg(
                &r,
                IntGauge::new("balans_model_rows", "Rows incorporated in the model.")?,
            )?,
            model_plates: reg(
                &r,
                IntGauge::new(
                    "balans_model_plates",
                    "Plates incorporated in the model (the model version is g<generation>.p<plates>).",
                )?,
            )?,
            model_batches: reg(
                &r,
                IntGauge::new("balans_model_batches", "Batches known to the model.")?,
            )?,
            model_generation: reg(
                &r,
                IntGauge::new(
                    "balans_model_generation",
                    "Model generation (bumped by a realignment; the model version is g<generation>.p<plates>).",
                )?,
            )?,
            next_generation: reg(
                &r,
                IntGauge::new(
                    "balans_next_generation",
                    "Generation under evaluation beside the live one (`balans realign`); 0 = none.",
                )?,
            )?,
            next_plates: reg(
                &r,
                IntGauge::new(
                    "balans_next_generation_plates",
                    "Plates incorporated in the generation under evaluation (0 = none).",
                )?,
            )?,
            generation_drift_last: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "balans_generation_drift_last_plate",
                        "Drift between the live and the new generation's output of the last plate: drift (median cosine distance of treated rows), mean_shift (mean row distance, input units), max_abs_difference; NaN when not available.",
                    ),
                    &["figure"],
                )?,
            )?,
            generation_drift: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "balans_generation_drift",
                        "Per-plate drift (median cosine distance of treated rows) between the live and the new generation's outputs.",
                    )
                    .buckets(DRIFT_BUCKETS.to_vec()),
                )?,
            )?,
            landmarks: reg(
                &r,
                IntCounter::new(
                    "balans_landmarks_total",
                    "Landmark rows sampled (affinity rows computed) while correcting plates.",
                )?,
            )?,
            model_coverage: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "balans_model_coverage",
                        "Coverage over the model's rows (updated at start-up and each checkpoint).",
                    ),
                    &["quantile"],
                )?,
            )?,
            commit: reg(
                &r,
                hist(
                    "balans_commit_duration_seconds",
                    "Seconds to acknowledge a plate's input (directory mode: move to done/; Kafka: offset commit).",
                    STAGE_BUCKETS,
                )?,
            )?,
            commit_failures: reg(
                &r,
                IntCounter::new(
                    "balans_commit_failures_total",
                    "Failed acknowledgements / offset commits.",
                )?,
            )?,
            checkpoint: reg(
                &r,
                hist(
                    "balans_checkpoint_duration_seconds",
                    "Seconds to write a state snapshot.",
                    STAGE_BUCKETS,
                )?,
            )?,
            checkpoint_failures: reg(
                &r,
                IntCounter::new(
                    "balans_checkpoint_failures_total",
                    "Failed state snapshots.",
                )?,
            )?,
            last_checkpoint: reg(
                &r,
                Gauge::new(
                    "balans_last_checkpoint_timestamp_seconds",
                    "Unix time of the last successful snapshot (0 = none since start).",
                )?,
            )?,
            last_publish: reg(
                &r,
                Gauge::new(
                    "balans_last_publish_timestamp_seconds",
                    "Unix time of the last plate published (0 = none since start).",
                )?,
            )?,
            qc_outlier_plates: reg(
                &r,
                IntCounter::new(
                    "balans_qc_outlier_plates_total",
                    "Plates flagged as outliers against their batch's QC history.",
                )?,
            )?,
            qc_outlier_reasons: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "balans_qc_outlier_reasons_total",
                        "Outlier flags by reason (a plate can have several).",
                    ),
                    &["reason"],
                )?,
            )?,
            qc_extreme_plates: reg(
                &r,
                IntCounter::new(
                    "balans_qc_extreme_plates_total",
                    "Plates holding values beyond [qc] extreme_z robust SDs of their median \
                     (corrected as usual; the QC record's extreme_cells counts them).",
                )?,
            )?,
            qc_last: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "balans_qc_last_plate",
                        "QC figures of the last corrected plate (NaN when not available).",
                    ),
                    &["figure"],
                )?,
            )?,
            qc_mixing: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "balans_qc_mixing",
                        "Batch mixing of each plate's rows among the model's rows (1 = mixed), before and after correction.",
                    )
                    .buckets(MIXING_BUCKETS.to_vec()),
                    &["correction"],
                )?,
            )?,
            ready_gauge: reg(
                &r,
                IntGauge::new("balans_ready", "1 when /readyz answers 200.")?,
            )?,
            ready: Readiness::default(),
            registry: r,
        };
        for v in ["false", "true"] {
            inner.plates_published.with_label_values(&[v]);
        }
        for reason in RejectReason::ALL {
            inner
                .plates_dead_lettered
                .with_label_values(&[reason.as_str()]);
            inner
                .rows_dead_lettered
                .with_label_values(&[reason.as_str()]);
        }
        for s in Stage::ALL {
            inner.stage.with_label_values(&[s.as_str()]);
        }
        for reason in OutlierReason::ALL {
            inner
                .qc_outlier_reasons
                .with_label_values(&[reason.as_str()]);
        }
        for c in ["before", "after"] {
            inner.qc_mixing.with_label_values(&[c]);
        }
        for f in ["drift", "mean_shift", "max_abs_difference"] {
            inner
                .generation_drift_last
                .with_label_values(&[f])
                .set(f64::NAN);
        }
        for q in ["min", "median"] {
            inner.model_coverage.with_label_values(&[q]).set(f64::NAN);
        }
        Ok(Telemetry {
            inner: Arc::new(inner),
        })
    }

    /// The registry (to add families of a source).
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.inner.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// A plate was taken from the source (`rows` = 0 when unknown yet).
    pub fn plate_consumed(&self) {
        self.inner.plates_consumed.inc();
    }

    /// Rows of a consumed plate, once read.
    pub fn rows_consumed(&self, rows: usize) {
        self.inner.rows_consumed.inc_by(rows as u64);
    }

    /// A plate's outputs were published; `latency` = seconds since consumed.
    pub fn plate_published(&self, rows: usize, replay: bool, latency: f64) {
        let i = &self.inner;
        i.plates_published
            .with_label_values(&[if replay { "true" } else { "false" }])
            .inc();
        i.rows_published.inc_by(rows as u64);
        i.latency.observe(latency);
        i.last_publish.set(now_seconds());
    }

    /// A plate went to the dead-letter destination (`rows` = 0 when unknown).
    pub fn plate_dead_lettered(&self, reason: RejectReason, rows: usize) {
        let i = &self.inner;
        i.plates_dead_lettered
            .with_label_values(&[reason.as_str()])
            .inc();
        i.rows_dead_lettered
            .with_label_values(&[reason.as_str()])
            .inc_by(rows as u64);
    }

    /// Seconds spent in a stage for one plate.
    pub fn stage(&self, stage: Stage, seconds: f64) {
        self.inner
            .stage
            .with_label_values(&[stage.as_str()])
            .observe(seconds);
    }

    /// Landmark rows sampled for a plate.
    pub fn landmarks(&self, n: usize) {
        self.inner.landmarks.inc_by(n as u64);
    }

    /// The source's backlog for a topic/partition.
    pub fn consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.inner
            .consumer_lag
            .with_label_values(&[topic, partition.to_string().as_str()])
            .set(lag);
    }

    /// An acknowledgement / offset commit: its duration and outcome.
    pub fn commit(&self, seconds: f64, ok: bool) {
        self.inner.commit.observe(seconds);
        if !ok {
            self.inner.commit_failures.inc();
        }
    }

    /// A snapshot: its duration and outcome.
    pub fn checkpoint(&self, seconds: f64, ok: bool) {
        let i = &self.inner;
        i.checkpoint.observe(seconds);
        if ok {
            i.last_checkpoint.set(now_seconds());
        } else {
            i.checkpoint_failures.inc();
        }
    }

    /// The model's shape after a plate (cost: O(batches)).
    pub fn model(&self, m: &Model) {
        let i = &self.inner;
        for (b, n) in m.indexed_rows() {
            i.indexed_rows.with_label_values(&[&b]).set(n as i64);
        }
        i.model_rows.set(m.len() as i64);
        i.model_plates.set(m.meta().plates.len() as i64);
        i.model_batches.set(m.meta().batches.len() as i64);
        i.model_generation.set(m.meta().generation as i64);
    }

    /// The generation under evaluation (`None`: none, or promoted).
    pub fn next_generation(&self, m: Option<&Model>) {
        let i = &self.inner;
        i.next_generation
            .set(m.map_or(0, |m| m.meta().generation as i64));
        i.next_plates
            .set(m.map_or(0, |m| m.meta().plates.len() as i64));
        if m.is_none() {
            for f in ["drift", "mean_shift", "max_abs_difference"] {
                i.generation_drift_last
                    .with_label_values(&[f])
                    .set(f64::NAN);
            }
        }
    }

    /// A plate's drift between the two generations.
    pub fn generation_drift(&self, next: &Model, d: &crate::serve::generations::GenerationDrift) {
        let i = &self.inner;
        i.next_plates.set(next.meta().plates.len() as i64);
        i.generation_drift_last
            .with_label_values(&["drift"])
            .set(d.drift.unwrap_or(f64::NAN));
        i.generation_drift_last
            .with_label_values(&["mean_shift"])
            .set(d.mean_shift);
        i.generation_drift_last
            .with_label_values(&["max_abs_difference"])
            .set(d.max_abs_difference);
        if let Some(v) = d.drift {
            i.generation_drift.observe(v);
        }
    }

    /// Coverage distribution over the model's rows (cost: O(rows log rows);
    /// called at start-up and on checkpoints, not per plate).
    pub fn model_coverage(&self, m: &Model) {
        let (min, med) = crate::qc::figures::coverage_figures(m.rows_coverage());
        self.inner
            .model_coverage
            .with_label_values(&["min"])
            .set(min);
        self.inner
            .model_coverage
            .with_label_values(&["median"])
            .set(med);
    }

    /// A corrected plate's QC figures and verdict.
    pub fn plate_qc(&self, qc: &crate::qc::PlateQc, verdict: &OutlierVerdict) {
        let i = &self.inner;
        let figures: [(&str, f64); 10] = [
            ("mean_offset", qc.mean_offset),
            ("mixing_before", qc.mixing_before),
            ("mixing_after", qc.mixing_after),
            (
                "cross_batch_distance_before",
                qc.cross_batch_distance_before,
            ),
            ("cross_batch_distance_after", qc.cross_batch_distance_after),
            (
                "control_dispersion",
                qc.control_dispersion.unwrap_or(f64::NAN),
            ),
            ("control_gain", qc.control_gain.unwrap_or(f64::NAN)),
            ("coverage_min", qc.coverage_min),
            ("coverage_median", qc.coverage_median),
            ("outlier", if verdict.outlier { 1.0 } else { 0.0 }),
        ];
        for (name, v) in figures {
            i.qc_last.with_label_values(&[name]).set(v);
        }
        if qc.mixing_before.is_finite() {
            i.qc_mixing
                .with_label_values(&["before"])
                .observe(qc.mixing_before);
        }
        if qc.mixing_after.is_finite() {
            i.qc_mixing
                .with_label_values(&["after"])
                .observe(qc.mixing_after);
        }
        if verdict.extreme_values {
            i.qc_extreme_plates.inc();
        }
        if verdict.outlier {
            i.qc_outlier_plates.inc();
            for r in &verdict.reasons {
                i.qc_outlier_reasons.with_label_values(&[r.as_str()]).inc();
            }
        }
    }

    /// The state is restored (or warm-started): the model can take plates.
    pub fn set_state_restored(&self, v: bool) {
        self.inner.ready.state_restored.store(v, Ordering::SeqCst);
        self.update_ready();
    }

    /// The source is being consumed (set false when the loop stops).
    pub fn set_consuming(&self, v: bool) {
        self.inner.ready.consuming.store(v, Ordering::SeqCst);
        self.update_ready();
    }

    /// Broker reachability (Kafka mode only; the directory mode never
    /// calls it, so it does not gate readiness there).
    pub fn set_broker_reachable(&self, v: bool) {
        self.inner
            .ready
            .broker
            .store(if v { 1 } else { 2 }, Ordering::SeqCst);
        self.update_ready();
    }

    /// Ready = state restored, consuming, and the broker (if any) reachable.
    pub fn is_ready(&self) -> bool {
        let r = &self.inner.ready;
        r.state_restored.load(Ordering::SeqCst)
            && r.consuming.load(Ordering::SeqCst)
            && r.broker.load(Ordering::SeqCst) != 2
    }

    fn update_ready(&self) {
        self.inner.ready_gauge.set(self.is_ready() as i64);
    }
}
