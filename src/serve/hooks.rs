//! What the pipeline reports, and to whom.
//!
//! The pipeline ([`super::pipeline`]) and the sources report through one
//! trait, [`PlateHooks`]: one [`PlateEvent`] per finished input (with its
//! stage durations, QC figures and outcome), the model after it changed,
//! checkpoints, acknowledgements, the source's backlog, readiness. The
//! daemon's Prometheus [`Telemetry`] implements it (below): that is the only
//! way metrics are fed, in both modes. The stream bench implements it to
//! time plates. Every method has an empty default.

use std::time::Duration;

use crate::method::model::{Model, PlateTimings};
use crate::qc::OutlierVerdict;
use crate::qc::PlateQc;
use crate::serve::generations::GenerationDrift;
use crate::serve::outcome::Outcome;
use crate::serve::telemetry::{Stage, Telemetry};

/// Per-stage durations of one plate.
#[derive(Debug, Clone, Default)]
pub struct StageTimes {
    /// Payload decode and table checks.
    pub decode: Duration,
    /// Correction (the model), or re-derivation of a replay; includes encode.
    pub correct: Duration,
    /// Building the output table (part of `correct`).
    pub encode: Duration,
    /// Write-ahead log append + fsync (zero for replays).
    pub wal: Duration,
    /// Publishing the outputs until durable (outbox files; Kafka: produce
    /// until the broker acknowledged).
    pub publish: Duration,
    /// Applying the change to the model (the index update; the snapshot,
    /// when due, is timed by [`PlateHooks::checkpoint`]).
    pub apply: Duration,
    /// Acknowledging the input (move to done/; Kafka: offset commit).
    pub commit: Duration,
    /// From consumption (the last chunk's) to the acknowledgement.
    pub total: Duration,
}

/// One finished input.
#[derive(Debug, Clone)]
pub struct PlateEvent {
    /// Plate id (empty when rejected before it was known; Kafka: the key).
    pub plate: String,
    /// Batch (empty when rejected before it was known).
    pub batch: String,
    /// Where it came from: a file path, `topic/partition@offset`.
    pub source: String,
    /// Rows (0 when the input was not a readable table).
    pub rows: usize,
    /// How it ended.
    pub outcome: Outcome,
    /// Model version of the output (empty when rejected).
    pub version: String,
    /// Stage durations.
    pub stages: StageTimes,
    /// The stage label of [`StageTimes::publish`] (`write` or `produce`).
    pub publish_stage: Stage,
    /// The core's split of the correction (sampling / correction / QC),
    /// absent for replays and rejections.
    pub timings: Option<PlateTimings>,
    /// QC figures and the outlier verdict, absent for replays and rejections.
    pub qc: Option<(PlateQc, OutlierVerdict)>,
}

/// Per-plate hooks of the pipeline. The default does nothing.
pub trait PlateHooks: Send {
    /// The source handed over an input (a file picked up, a message or a
    /// reassembled chunk set): counted before any work on it.
    fn consumed(&self) {}
    /// An input is finished: published or dead-lettered, and acknowledged.
    fn plate(&self, _event: &PlateEvent) {}
    /// The source's backlog: Kafka, high watermark minus committed position
    /// per partition (tansu's high watermark is the base offset of its last
    /// batch + 1, so approximate against tansu); directory mode, plate files
    /// waiting in the inbox (`topic` "inbox", partition 0).
    fn lag(&self, _topic: &str, _partition: i32, _lag: i64) {}
    /// The state is restored (or warm-started, or empty): plates can be
    /// taken. Called once when the hooks are installed.
    fn restored(&self, _model: Option<&Model>) {}
    /// The model changed (a plate was applied). Cheap: O(batches).
    fn model_changed(&self, _model: &Model) {}
    /// A snapshot was written: the model's coverage (O(rows), so only here
    /// and at restore).
    fn model_checkpointed(&self, _model: &Model) {}
    /// Whether the source is being consumed (readiness).
    fn consuming(&self, _on: bool) {}
    /// Whether the broker answered the last offset commit (Kafka mode).
    fn broker_reachable(&self, _ok: bool) {}
    /// One acknowledgement (move to done/, offset commit): its duration and
    /// whether it succeeded.
    fn commit(&self, _seconds: f64, _ok: bool) {}
    /// One snapshot (checkpoint): its duration and whether it succeeded.
    fn checkpoint(&self, _seconds: f64, _ok: bool) {}
    /// A new generation is under evaluation (`balans realign`), or none
    /// is any more (`None`: promoted).
    fn next_generation(&self, _model: Option<&Model>) {}
    /// A plate's drift between the live generation's output and the new
    /// generation's (`next`: the new generation after the plate).
    fn generation_drift(&self, _next: &Model, _drift: &GenerationDrift) {}
}

/// No hooks.
pub struct NoHooks;
impl PlateHooks for NoHooks {}

/// The daemon's Prometheus families fed from the pipeline's hooks.
impl PlateHooks for Telemetry {
    fn plate(&self, e: &PlateEvent) {
        let s = &e.stages;
        self.rows_consumed(e.rows);
        match e.outcome {
            Outcome::Rejected(kind) => self.plate_dead_lettered(kind, e.rows),
            Outcome::Corrected | Outcome::Replayed => {
                // Replays time only decode, encode and write/produce: the
                // core, the log and the index did not run.
                self.stage(Stage::Decode, s.decode.as_secs_f64());
                if let Some(t) = &e.timings {
                    self.stage(Stage::Sampling, t.sampling);
                    self.stage(Stage::Correction, t.correction);
                    self.stage(Stage::Qc, t.qc);
                    self.landmarks(t.landmarks);
                    self.stage(Stage::Wal, s.wal.as_secs_f64());
                    self.stage(Stage::IndexUpdate, s.apply.as_secs_f64());
                }
                self.stage(Stage::Encode, s.encode.as_secs_f64());
                self.stage(e.publish_stage, s.publish.as_secs_f64());
                if let Some((qc, verdict)) = &e.qc {
                    self.plate_qc(qc, verdict);
                }
                self.plate_published(
                    e.rows,
                    e.outcome == Outcome::Replayed,
                    s.total.as_secs_f64(),
                );
            }
        }
    }
    fn consumed(&self) {
        self.plate_consumed();
    }
    fn lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag(topic, partition, lag);
    }
    fn restored(&self, model: Option<&Model>) {
        if let Some(m) = model {
            Telemetry::model(self, m);
            self.model_coverage(m);
        }
        self.set_state_restored(true);
    }
    fn model_changed(&self, model: &Model) {
        Telemetry::model(self, model);
    }
    fn model_checkpointed(&self, model: &Model) {
        self.model_coverage(model);
    }
    fn consuming(&self, on: bool) {
        self.set_consuming(on);
    }
    fn broker_reachable(&self, ok: bool) {
        self.set_broker_reachable(ok);
    }
    fn commit(&self, seconds: f64, ok: bool) {
        Telemetry::commit(self, seconds, ok);
    }
    fn checkpoint(&self, seconds: f64, ok: bool) {
        Telemetry::checkpoint(self, seconds, ok);
    }
    fn next_generation(&self, model: Option<&Model>) {
        Telemetry::next_generation(self, model);
    }
    fn generation_drift(&self, next: &Model, drift: &GenerationDrift) {
        Telemetry::generation_drift(self, next, drift);
    }
}
