//! The per-plate pipeline, written once for every source.
//!
//! A mode of `balans serve` is a [`Source`] (where plates come from and how
//! they are acknowledged) and a [`Sink`] (where corrected plates, QC records
//! and dead letters go). The directory mode is inbox files -> outbox files
//! ([`super::dir`]); the Kafka mode is a consumer -> the aligned, QC and DLQ
//! topics ([`super::kafka`]). The [`Pipeline`] drives them and owns every
//! guarantee, in this order, for each input:
//!
//! 1. **decode** the input into a table (the source's format rules,
//!    [`Input::table`]) and check it as a plate ([`plate::decode`]);
//! 2. **correct** it against the model, or re-derive a replay, or reject a
//!    reused plate id ([`plate::correct`]; pure, the model is not changed);
//! 3. append the state change to the **write-ahead log** (fsync);
//! 4. **publish** the outputs until durable ([`Sink::publish`]);
//! 5. **apply** the change to the in-memory model; **snapshot** every
//!    `snapshot_every` plates — a failed snapshot is logged, counted
//!    (`balans_checkpoint_failures_total`) and retried at the next plate:
//!    the log still holds every plate since the last good one;
//! 6. **acknowledge** the input ([`Source::acknowledge`]) — only now, with
//!    the state change logged and the outputs durable;
//! 7. **report**: one [`PlateEvent`] to the [`PlateHooks`] (the Prometheus
//!    telemetry), the QC verdict, one `plate published` log line.
//!
//! A rejected input ([`PlateError::Rejected`]) goes to the sink's
//! dead-letter destination with its reason and is then acknowledged; an
//! infrastructure failure ([`PlateError::Fatal`]) stops the loop with the
//! input unacknowledged. A crash anywhere leaves the input unacknowledged
//! (redone, or recognised as a replay and re-published identically) or
//! acknowledged with everything durable: no plate is lost and none is
//! incorporated twice.
//!
//! The shape follows Vector's sources and sinks with end-to-end
//! acknowledgements: the sink makes the output durable, then the
//! acknowledgement flows back to the source.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow_array::RecordBatch;

use crate::config::{Config, CorrectConfig};
use crate::method::model::Model;
use crate::serve::hooks::{NoHooks, PlateEvent, PlateHooks, StageTimes};
use crate::serve::model_state;
use crate::serve::outcome::{Outcome, PlateError, RejectReason, Rejection, RunReport};
use crate::serve::plate::{self, Corrected, DecodedPlate};
use crate::serve::state::StateDir;
use crate::serve::telemetry::Stage;

/// One input as a source hands it over: a file, a message, a reassembled
/// chunk set. Knows its own format rules.
pub trait Input {
    /// Where it came from, for messages and logs (a path, `topic/partition@offset`).
    fn source(&self) -> &str;
    /// The plate id the source names, when it names one (Kafka: the key).
    fn key(&self) -> &str {
        ""
    }
    /// When it was taken from the source (the latency's start).
    fn consumed(&self) -> Instant;
    /// The raw bytes (their hash identifies the plate's content).
    fn bytes(&self) -> &[u8];
    /// Decode into a table.
    fn table(&self) -> Result<RecordBatch, Rejection>;
    /// The plate id when the table has no single-valued plate column.
    fn fallback_id(&self) -> String;
    /// Source-specific checks of the decoded plate (Kafka: key = plate column).
    fn check(&self, _plate: &DecodedPlate, _cfg: &CorrectConfig) -> Result<(), Rejection> {
        Ok(())
    }
}

/// What a source has next.
pub enum Next<I> {
    /// A plate input.
    Plate(I),
    /// An input the source itself rejects (Kafka: oversized, bad chunks).
    Rejected(I, Rejection),
    /// Nothing now (the source has waited up to its poll interval).
    Idle,
    /// Nothing more, ever (directory mode with `--once`).
    Exhausted,
}

/// Where plates come from, and where their acknowledgement goes back to.
pub trait Source {
    /// The inputs it hands over.
    type Input: Input;
    /// The next input. May block up to the source's poll interval; reports
    /// backlog and its own acknowledgement traffic to `hooks`.
    fn next(&mut self, stop: &AtomicBool, hooks: &dyn PlateHooks) -> Result<Next<Self::Input>>;
    /// The input is done: its outputs (or its dead letter) are durable and
    /// its state change is logged. An error stops the daemon.
    fn acknowledge(
        &mut self,
        input: &Self::Input,
        outcome: Outcome,
        hooks: &dyn PlateHooks,
    ) -> Result<()>;
    /// The loop is stopping: flush acknowledgements.
    fn close(&mut self, _hooks: &dyn PlateHooks) -> Result<()> {
        Ok(())
    }
}

/// Whether a sink's outputs became durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Durable (written and synced; acknowledged by the broker).
    Durable,
    /// Abandoned because the daemon is stopping: the input stays
    /// unacknowledged and is redone on restart.
    Abandoned,
}

/// Where corrected plates, QC records and dead letters go.
pub trait Sink {
    /// The inputs it takes (the source's).
    type Input;
    /// The stage label its publishing time is reported under.
    const STAGE: Stage;
    /// Make the corrected plate and its QC record durable.
    fn publish(
        &mut self,
        input: &Self::Input,
        plate: &DecodedPlate,
        out: &Corrected,
        stop: &AtomicBool,
    ) -> Result<Delivery>;
    /// Make the rejected input and its reason (`<kind>: <message>`) durable
    /// at the dead-letter destination.
    fn dead_letter(
        &mut self,
        input: &Self::Input,
        rejection: &Rejection,
        stop: &AtomicBool,
    ) -> Result<Delivery>;
}

/// The two ends of a run and its stop flag, handed down the per-plate steps.
struct Ends<'a, So, Si> {
    source: &'a mut So,
    sink: &'a mut Si,
    stop: &'a AtomicBool,
}

/// The model, its durable state, and the per-plate sequence.
pub struct Pipeline {
    cfg: Config,
    state: StateDir,
    model: Option<Model>,
    hooks: Box<dyn PlateHooks>,
    report: RunReport,
}

impl Pipeline {
    /// Open the state (restore, warm-start or empty; see
    /// [`model_state::open_state`]) and report it restored to `hooks`.
    pub fn open(cfg: Config, hooks: Box<dyn PlateHooks>) -> Result<Pipeline> {
        let (state, model) = model_state::open_state(&cfg)?;
        Ok(Pipeline::with_state(cfg, state, model, hooks))
    }

    /// A pipeline on an opened state.
    pub fn with_state(
        cfg: Config,
        state: StateDir,
        model: Option<Model>,
        hooks: Box<dyn PlateHooks>,
    ) -> Pipeline {
        let mut p = Pipeline {
            cfg,
            state,
            model,
            hooks: Box::new(NoHooks),
            report: RunReport::default(),
        };
        p.set_hooks(hooks);
        p
    }

    /// Report to `hooks` from now on (told the current model at once).
    pub fn set_hooks(&mut self, hooks: Box<dyn PlateHooks>) {
        hooks.restored(self.model.as_ref());
        self.hooks = hooks;
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The model, once it exists.
    pub fn model(&self) -> Option<&Model> {
        self.model.as_ref()
    }

    /// What was done so far.
    pub fn report(&self) -> &RunReport {
        &self.report
    }

    /// Take inputs from `source` until `stop` is set (or the source is
    /// exhausted); then let the source flush its acknowledgements and write
    /// a snapshot.
    pub fn run<So, Si>(
        &mut self,
        source: &mut So,
        sink: &mut Si,
        stop: &AtomicBool,
    ) -> Result<RunReport>
    where
        So: Source,
        Si: Sink<Input = So::Input>,
    {
        self.hooks.consuming(true);
        let r = self.pump(source, sink, stop);
        self.hooks.consuming(false);
        r?;
        source.close(&*self.hooks)?;
        self.checkpoint()?;
        Ok(self.report.clone())
    }

    fn pump<So, Si>(&mut self, source: &mut So, sink: &mut Si, stop: &AtomicBool) -> Result<()>
    where
        So: Source,
        Si: Sink<Input = So::Input>,
    {
        let mut ends = Ends { source, sink, stop };
        while !stop.load(Ordering::SeqCst) {
            match ends.source.next(stop, &*self.hooks)? {
                Next::Plate(input) => {
                    self.hooks.consumed();
                    self.process(input, &mut ends)?
                }
                Next::Rejected(input, r) => {
                    self.hooks.consumed();
                    self.reject(input, r, 0, &mut ends)?
                }
                Next::Idle => {}
                Next::Exhausted => break,
            }
        }
        Ok(())
    }

    /// One input, start to end. `Err` only when the daemon must stop.
    fn process<So, Si>(&mut self, input: So::Input, ends: &mut Ends<'_, So, Si>) -> Result<()>
    where
        So: Source,
        Si: Sink<Input = So::Input>,
    {
        let mut st = StageTimes::default();
        let mut rows = 0;
        match self.correct(&input, &mut st, &mut rows) {
            Ok((decoded, out)) => self.deliver(input, decoded, out, st, ends),
            Err(PlateError::Rejected(r)) => self.reject(input, r, rows, ends),
            Err(PlateError::Fatal(e)) => Err(e),
        }
    }

    /// Steps 1-2: decode, check, bootstrap the model if none, correct.
    /// `rows` is set as soon as the input is a table.
    fn correct<I: Input>(
        &mut self,
        input: &I,
        st: &mut StageTimes,
        rows: &mut usize,
    ) -> Result<(DecodedPlate, Corrected), PlateError> {
        let source = input.source();
        let t = Instant::now();
        let table = input.table()?;
        *rows = table.num_rows();
        let c = &self.cfg.correct;
        let decoded = plate::decode(table, input.bytes(), &input.fallback_id(), c, source)?;
        input.check(&decoded, c)?;
        st.decode = t.elapsed();
        if self.model.is_none() {
            let m = Model::bootstrap(
                decoded.x.view(),
                decoded.controls.as_deref(),
                decoded.columns.names.clone(),
                &self.cfg.method,
            )
            .map_err(|e| {
                Rejection::new(
                    RejectReason::Model,
                    format!("{source}: cannot start a model from this plate: {e:#}"),
                )
            })?;
            self.model = Some(m);
        }
        let model = self.model.as_ref().context("internal: no model")?;
        let t = Instant::now();
        let out = plate::correct(model, &decoded, &self.cfg.qc).map_err(|e| match e {
            PlateError::Rejected(r) => PlateError::Rejected(r.at(source)),
            PlateError::Fatal(e) => {
                PlateError::Fatal(e.context(format!("{source}: cannot encode the corrected plate")))
            }
        })?;
        st.correct = t.elapsed();
        st.encode = Duration::from_secs_f64(out.encode_seconds.max(0.0));
        Ok((decoded, out))
    }

    /// Steps 3-7 for a corrected (or replayed) plate.
    fn deliver<So, Si>(
        &mut self,
        input: So::Input,
        decoded: DecodedPlate,
        out: Corrected,
        mut st: StageTimes,
        ends: &mut Ends<'_, So, Si>,
    ) -> Result<()>
    where
        So: Source,
        Si: Sink<Input = So::Input>,
    {
        let t = Instant::now();
        if let Some(delta) = &out.delta {
            self.state.append(self.model.as_ref(), delta)?;
        }
        st.wal = t.elapsed();
        let t = Instant::now();
        if ends.sink.publish(&input, &decoded, &out, ends.stop)? == Delivery::Abandoned {
            tracing::info!(plate = %decoded.plate, source = input.source(), "stopping: plate in flight abandoned (redone on restart)");
            return Ok(());
        }
        st.publish = t.elapsed();
        let t = Instant::now();
        if let (Some(delta), Some(model)) = (&out.delta, self.model.as_mut()) {
            model.apply(delta)?;
            self.hooks.model_changed(model);
        }
        st.apply = t.elapsed();
        self.snapshot_if_due();
        let outcome = if out.qc.replay {
            Outcome::Replayed
        } else {
            Outcome::Corrected
        };
        let t = Instant::now();
        ends.source.acknowledge(&input, outcome, &*self.hooks)?;
        st.commit = t.elapsed();
        st.total = input.consumed().elapsed();
        self.report.count(outcome);
        let rows = decoded.x.nrows();
        let reasons: Vec<&str> = out
            .qc
            .outlier
            .as_ref()
            .map(|v| v.reasons.iter().map(|r| r.as_str()).collect())
            .unwrap_or_default();
        let outlier = !reasons.is_empty();
        if outlier {
            tracing::warn!(
                plate = %decoded.plate,
                batch = %decoded.batch,
                reasons = %reasons.join(","),
                "QC outlier plate"
            );
        }
        tracing::info!(
            plate = %decoded.plate,
            batch = %decoded.batch,
            rows,
            source = input.source(),
            version = %out.qc.model_version,
            replay = out.qc.replay,
            outlier,
            decode_s = st.decode.as_secs_f64(),
            correct_s = st.correct.as_secs_f64(),
            wal_s = st.wal.as_secs_f64(),
            publish_s = st.publish.as_secs_f64(),
            apply_s = st.apply.as_secs_f64(),
            commit_s = st.commit.as_secs_f64(),
            latency_s = st.total.as_secs_f64(),
            "plate published"
        );
        self.hooks.plate(&PlateEvent {
            plate: decoded.plate,
            batch: decoded.batch,
            source: input.source().to_string(),
            rows,
            outcome,
            version: out.qc.model_version.clone(),
            stages: st,
            publish_stage: Si::STAGE,
            timings: (!out.qc.replay).then_some(out.timings),
            qc: match (out.qc.qc, out.qc.outlier) {
                (Some(q), Some(v)) => Some((q, v)),
                _ => None,
            },
        });
        Ok(())
    }

    /// A rejected input: dead letter, acknowledge, report. `rows` = 0 when
    /// it was not a readable table.
    fn reject<So, Si>(
        &mut self,
        input: So::Input,
        rejection: Rejection,
        rows: usize,
        ends: &mut Ends<'_, So, Si>,
    ) -> Result<()>
    where
        So: Source,
        Si: Sink<Input = So::Input>,
    {
        tracing::warn!(
            source = input.source(),
            plate = input.key(),
            reason = %rejection.reason,
            detail = %rejection.message,
            rows,
            "plate rejected to dlq"
        );
        let t = Instant::now();
        if ends.sink.dead_letter(&input, &rejection, ends.stop)? == Delivery::Abandoned {
            return Ok(()); // stopping: unacknowledged, redone on restart
        }
        let publish = t.elapsed();
        let outcome = Outcome::Rejected(rejection.reason);
        let t = Instant::now();
        ends.source.acknowledge(&input, outcome, &*self.hooks)?;
        self.report.count(outcome);
        self.hooks.plate(&PlateEvent {
            plate: input.key().to_string(),
            batch: String::new(),
            source: input.source().to_string(),
            rows,
            outcome,
            version: String::new(),
            stages: StageTimes {
                publish,
                commit: t.elapsed(),
                total: input.consumed().elapsed(),
                ..StageTimes::default()
            },
            publish_stage: Si::STAGE,
            timings: None,
            qc: None,
        });
        Ok(())
    }

    /// The periodic snapshot. Not fatal when it fails: the write-ahead log
    /// still holds every plate since the last good snapshot, so nothing is
    /// lost; it is counted and retried at the next plate (the count of
    /// logged plates stays at or above `snapshot_every`).
    fn snapshot_if_due(&mut self) {
        if self.state.since_snapshot() < self.cfg.serve.snapshot_every.max(1) {
            return;
        }
        if let Err(e) = self.snapshot() {
            tracing::error!(
                error = %format!("{e:#}"),
                logged_plates = self.state.since_snapshot(),
                "checkpoint failed; the write-ahead log keeps the state (retried at the next plate)"
            );
        }
    }

    /// Write a snapshot, timed and reported.
    fn snapshot(&mut self) -> Result<()> {
        let Some(m) = &self.model else {
            return Ok(());
        };
        let t = Instant::now();
        let r = self.state.snapshot(m);
        let seconds = t.elapsed().as_secs_f64();
        self.hooks.checkpoint(seconds, r.is_ok());
        if r.is_ok() {
            self.hooks.model_checkpointed(m);
            tracing::info!(
                rows = m.len(),
                plates = m.meta().plates.len(),
                seconds,
                "checkpoint written"
            );
        }
        r
    }

    /// Write a snapshot now if the log has records (on shutdown). Unlike
    /// the periodic one, a failure here is returned.
    pub fn checkpoint(&mut self) -> Result<()> {
        if self.model.is_some() && self.state.since_snapshot() > 0 {
            self.snapshot()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
