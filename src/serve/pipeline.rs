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
//! 4. **apply** the change to the in-memory model (it is logged: a crash
//!    from here on restores it, and the unacknowledged input comes back as
//!    a replay, re-published identically);
//! 5. **publish** the outputs until durable ([`Sink::start_publish`],
//!    [`Sink::finish_publish`]);
//! 6. **acknowledge** the input ([`Source::acknowledge`]) — only now, with
//!    the state change logged and the outputs durable;
//! 7. **report**: one [`PlateEvent`] to the [`PlateHooks`] (the Prometheus
//!    telemetry), the QC verdict, one `plate published` log line;
//! 8. **snapshot** every `snapshot_every` plates (a checkpoint: it writes
//!    the rows added since the last one) — after the acknowledgement, so
//!    the plate's latency does not include it (with a plate in flight,
//!    below, it is written while the next plate is being corrected); a
//!    failed snapshot is logged, counted
//!    (`balans_checkpoint_failures_total`) and retried at the next plate:
//!    the log still holds every plate since the last good one.
//!
//! A rejected input ([`PlateError::Rejected`]) goes to the sink's
//! dead-letter destination with its reason and is then acknowledged; an
//! infrastructure failure ([`PlateError::Fatal`]) stops the loop with the
//! input unacknowledged. A crash anywhere leaves the input unacknowledged
//! (redone, or recognised as a replay and re-published identically) or
//! acknowledged with everything durable: no plate is lost and none is
//! incorporated twice.
//!
//! **One plate in flight.** A sink that can wait for durability apart from
//! producing (Kafka: the broker's acknowledgements) returns
//! [`Started::Pending`] from [`Sink::start_publish`]. The pipeline then
//! takes the next input if the source has one ready
//! ([`Source::next_ready`], no waiting) and corrects it on a second thread
//! against the model that already holds the plate in flight, while this
//! thread waits for the plate's outputs and acknowledges it (steps 5-7).
//! Nothing else is published meanwhile, so outputs leave in input order
//! and at most one plate's outputs are unacknowledged. With no input ready
//! it waits for the plate in flight first, so a plate's latency never
//! includes the next one's correction.
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
use crate::serve::generations::{self, NextGeneration};
use crate::serve::hooks::{NoHooks, PlateEvent, PlateHooks, StageTimes};
use crate::serve::model_state;
use crate::serve::outcome::{Outcome, PlateError, RejectReason, Rejection, RunReport};
use crate::serve::plate::{self, Corrected, DecodedPlate};
use crate::serve::state::StateDir;
use crate::serve::telemetry::Stage;

/// One input as a source hands it over: a file, a message, a reassembled
/// chunk set. Knows its own format rules.
pub trait Input: Sync {
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
    /// The next input if one is ready now, without waiting: asked while a
    /// plate's outputs are in flight (see the module doc). Default: none
    /// (the pipeline then waits for the plate in flight, then [`Source::next`]).
    fn next_ready(
        &mut self,
        _stop: &AtomicBool,
        _hooks: &dyn PlateHooks,
    ) -> Result<Next<Self::Input>> {
        Ok(Next::Idle)
    }
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

/// What [`Sink::start_publish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// Published already (durable or abandoned).
    Done(Delivery),
    /// Sent; [`Sink::finish_publish`] waits until it is durable.
    Pending,
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
    /// Begin making the corrected plate and its QC record durable without
    /// waiting ([`Started::Pending`]; then [`Sink::finish_publish`] is the
    /// next call on this sink). Default: [`Sink::publish`] at once.
    fn start_publish(
        &mut self,
        input: &Self::Input,
        plate: &DecodedPlate,
        out: &Corrected,
        stop: &AtomicBool,
    ) -> Result<Started> {
        self.publish(input, plate, out, stop).map(Started::Done)
    }
    /// Wait until what [`Sink::start_publish`] left pending is durable.
    /// Default: nothing is ever pending.
    fn finish_publish(&mut self, _stop: &AtomicBool) -> Result<Delivery> {
        Ok(Delivery::Durable)
    }
    /// Make the new generation's output of the plate durable, beside the
    /// live one's (`balans realign`). Default: like [`Sink::publish`] (the
    /// Kafka topics: the `balans-model-version` header tells the
    /// generations apart).
    fn publish_next(
        &mut self,
        input: &Self::Input,
        plate: &DecodedPlate,
        out: &Corrected,
        stop: &AtomicBool,
    ) -> Result<Delivery> {
        self.publish(input, plate, out, stop)
    }
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
    /// The generation under evaluation (`balans realign`), corrected beside
    /// the live one until promoted.
    next: Option<NextGeneration>,
    /// A new generation that could not be opened (logged once; retried at
    /// the next start).
    next_failed: bool,
    hooks: Box<dyn PlateHooks>,
    report: RunReport,
}

/// A plate's outputs: the live generation's, and the new generation's
/// while one is under evaluation.
struct Outputs {
    live: Corrected,
    next: Option<Corrected>,
}

/// A plate logged and applied whose outputs the sink is making durable
/// ([`Started::Pending`]): acknowledged once they are.
struct InFlight<I> {
    input: I,
    decoded: DecodedPlate,
    out: Corrected,
    st: StageTimes,
}

/// A plate decoded and corrected (or the reason it was not), with the time
/// it took and its row count (0 when it was not a table).
type Correction = (
    Result<(DecodedPlate, Corrected), PlateError>,
    StageTimes,
    usize,
);

impl Pipeline {
    /// Open the state (restore, warm-start or empty; see
    /// [`model_state::open_state`]) and report it restored to `hooks`.
    pub fn open(cfg: Config, hooks: Box<dyn PlateHooks>) -> Result<Pipeline> {
        generations::finish_promotion(&cfg.serve.state_dir)?;
        let (state, model) = model_state::open_state(&cfg)?;
        let next = generations::open_next(&cfg.serve.state_dir)?;
        let mut p = Pipeline::with_state(cfg, state, model, hooks);
        if let Some(n) = &next {
            p.report_meanwhile(&n.model);
            p.hooks.next_generation(Some(&n.model));
        }
        p.next = next;
        Ok(p)
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
            next: None,
            next_failed: false,
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

    /// The generation under evaluation (`balans realign`), if any.
    pub fn next_generation(&self) -> Option<&Model> {
        self.next.as_ref().map(|n| &n.model)
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
        let mut in_flight: Option<InFlight<So::Input>> = None;
        let r = self.pump_inputs(&mut ends, &mut in_flight);
        // Stopping (or failing): the plate in flight is finished when it
        // can be; otherwise it stays unacknowledged and is redone.
        if let Some(f) = in_flight.take() {
            if r.is_ok() {
                self.finish_in_flight(f, &mut ends)?;
            }
        }
        r
    }

    fn pump_inputs<So, Si>(
        &mut self,
        ends: &mut Ends<'_, So, Si>,
        in_flight: &mut Option<InFlight<So::Input>>,
    ) -> Result<()>
    where
        So: Source,
        Si: Sink<Input = So::Input>,
    {
        while !ends.stop.load(Ordering::SeqCst) {
            // A new generation to open or promote waits for no plate in
            // flight (a sustained feed would otherwise always have one).
            if in_flight.is_some() && self.generations_due() {
                if let Some(f) = in_flight.take() {
                    self.finish_in_flight(f, ends)?;
                }
            }
            let next = if in_flight.is_some() {
                ends.source.next_ready(ends.stop, &*self.hooks)?
            } else {
                self.generations_tick()?;
                ends.source.next(ends.stop, &*self.hooks)?
            };
            match next {
                Next::Plate(input) => {
                    self.hooks.consumed();
                    let correction = match in_flight.take() {
                        Some(f) => match self.overlap(f, &input, ends)? {
                            Some(c) => c,
                            // Stopping: the plate in flight was abandoned;
                            // this one is not logged either.
                            None => return Ok(()),
                        },
                        None => self.correct(&input),
                    };
                    *in_flight = self.process(input, correction, ends)?;
                }
                other => {
                    if let Some(f) = in_flight.take() {
                        self.finish_in_flight(f, ends)?;
                    }
                    match other {
                        Next::Rejected(input, r) => {
                            self.hooks.consumed();
                            self.reject(input, r, 0, ends)?
                        }
                        Next::Exhausted => break,
                        Next::Idle | Next::Plate(_) => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Correct `input` on a second thread, against the model that already
    /// holds the plate in flight, while this thread waits for the plate in
    /// flight's outputs and acknowledges it. `None` when the plate in
    /// flight was abandoned (stopping).
    fn overlap<So, Si>(
        &mut self,
        f: InFlight<So::Input>,
        input: &So::Input,
        ends: &mut Ends<'_, So, Si>,
    ) -> Result<Option<Correction>>
    where
        So: Source,
        Si: Sink<Input = So::Input>,
    {
        let (Some(model), None) = (self.model.as_ref(), self.next.as_ref()) else {
            // No model to share (cannot happen with a plate in flight), or a
            // new generation beside it: one thing at a time.
            if !self.finish_in_flight(f, ends)? {
                return Ok(None);
            }
            return Ok(Some(self.correct(input)));
        };
        let cfg = &self.cfg;
        let hooks = &*self.hooks;
        let report = &mut self.report;
        let state = &mut self.state;
        // The plate in flight acknowledged, this thread writes the periodic
        // checkpoint (of the model holding it) while the next plate is
        // still being corrected: both only read the model.
        let finish_then_checkpoint = || {
            let finished = finish(f, ends, hooks, report);
            if matches!(finished, Ok(true)) {
                checkpoint_if_due(cfg, state, model, hooks);
            }
            finished
        };
        let (correction, finished) = std::thread::scope(|s| {
            let worker = std::thread::Builder::new()
                .name("balans-correct".into())
                .spawn_scoped(s, move || correct_with(cfg, model, input));
            match worker {
                Ok(w) => {
                    let finished = finish_then_checkpoint();
                    (w.join().ok(), finished)
                }
                // No thread: finish first, then correct here.
                Err(_) => {
                    let finished = finish_then_checkpoint();
                    (Some(correct_with(cfg, model, input)), finished)
                }
            }
        });
        let acknowledged = finished?;
        let correction =
            correction.context("internal: the thread correcting the next plate panicked")?;
        Ok(acknowledged.then_some(correction))
    }

    /// Wait for the plate in flight and acknowledge it; then the periodic
    /// snapshot. False when it was abandoned (stopping).
    fn finish_in_flight<So, Si>(
        &mut self,
        f: InFlight<So::Input>,
        ends: &mut Ends<'_, So, Si>,
    ) -> Result<bool>
    where
        So: Source,
        Si: Sink<Input = So::Input>,
    {
        let acknowledged = finish(f, ends, &*self.hooks, &mut self.report)?;
        self.snapshot_if_due();
        Ok(acknowledged)
    }

    /// One corrected (or rejected) input onward. `Err` only when the daemon
    /// must stop; `Some` when its outputs are still in flight.
    fn process<So, Si>(
        &mut self,
        input: So::Input,
        (result, st, rows): Correction,
        ends: &mut Ends<'_, So, Si>,
    ) -> Result<Option<InFlight<So::Input>>>
    where
        So: Source,
        Si: Sink<Input = So::Input>,
    {
        match result {
            Ok((decoded, live)) => {
                let out = self.correct_next(&decoded, live)?;
                self.deliver(input, decoded, out, st, ends)
            }
            Err(PlateError::Rejected(r)) => self.reject(input, r, rows, ends).map(|()| None),
            Err(PlateError::Fatal(e)) => Err(e),
        }
    }

    /// Steps 1-2: decode, check, bootstrap the model if none, correct.
    fn correct<I: Input>(&mut self, input: &I) -> Correction {
        let mut st = StageTimes::default();
        let mut rows = 0;
        let r = self.bootstrap_and_correct(input, &mut st, &mut rows);
        (r, st, rows)
    }

    fn bootstrap_and_correct<I: Input>(
        &mut self,
        input: &I,
        st: &mut StageTimes,
        rows: &mut usize,
    ) -> Result<(DecodedPlate, Corrected), PlateError> {
        let decoded = decode(&self.cfg, input, st, rows)?;
        let source = input.source();
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
        correct_decoded(&self.cfg, model, decoded, source, st)
    }

    /// Steps 3-7 for a corrected (or replayed) plate; `Some` when its
    /// outputs are in flight (acknowledged later by [`finish`]).
    fn deliver<So, Si>(
        &mut self,
        input: So::Input,
        decoded: DecodedPlate,
        outputs: Outputs,
        mut st: StageTimes,
        ends: &mut Ends<'_, So, Si>,
    ) -> Result<Option<InFlight<So::Input>>>
    where
        So: Source,
        Si: Sink<Input = So::Input>,
    {
        let Outputs { live: out, next } = outputs;
        let t = Instant::now();
        if let Some(delta) = &out.delta {
            self.state.append(self.model.as_ref(), delta)?;
        }
        if let (Some(n), Some(delta)) = (
            self.next.as_mut(),
            next.as_ref().and_then(|o| o.delta.as_ref()),
        ) {
            n.state
                .append(Some(&n.model), delta)
                .context("the new generation's write-ahead log")?;
        }
        st.wal = t.elapsed();
        let t = Instant::now();
        if let (Some(delta), Some(model)) = (&out.delta, self.model.as_mut()) {
            model.apply(delta)?;
            self.hooks.model_changed(model);
        }
        if let (Some(n), Some(o)) = (self.next.as_mut(), next.as_ref()) {
            if let Some(delta) = &o.delta {
                n.model.apply(delta)?;
            }
            if let Some(d) = &o.qc.generation_drift {
                self.hooks.generation_drift(&n.model, d);
            }
        }
        st.apply = t.elapsed();
        let t = Instant::now();
        let abandoned = |decoded: &DecodedPlate, input: &So::Input| {
            tracing::info!(plate = %decoded.plate, source = input.source(), "stopping: plate in flight abandoned (redone on restart)");
        };
        let started = match &next {
            // Beside a new generation both outputs are published at once.
            Some(_) => Started::Done(ends.sink.publish(&input, &decoded, &out, ends.stop)?),
            None => ends.sink.start_publish(&input, &decoded, &out, ends.stop)?,
        };
        match started {
            Started::Done(Delivery::Abandoned) => {
                abandoned(&decoded, &input);
                return Ok(None);
            }
            Started::Pending => {
                st.publish = t.elapsed();
                return Ok(Some(InFlight {
                    input,
                    decoded,
                    out,
                    st,
                }));
            }
            Started::Done(Delivery::Durable) => {}
        }
        if let Some(o) = &next {
            if ends.sink.publish_next(&input, &decoded, o, ends.stop)? == Delivery::Abandoned {
                abandoned(&decoded, &input);
                return Ok(None);
            }
        }
        st.publish = t.elapsed();
        acknowledged(
            InFlight {
                input,
                decoded,
                out,
                st,
            },
            ends,
            &*self.hooks,
            &mut self.report,
        )?;
        // The checkpoint comes last: the plate is logged, published and
        // acknowledged already, so its latency does not include it (the
        // next plate waits for it).
        self.snapshot_if_due();
        Ok(None)
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
        let every = self.cfg.serve.snapshot_every.max(1);
        if let Some(n) = self.next.as_mut() {
            if n.state.since_snapshot() >= every {
                if let Err(e) = n.state.snapshot(&n.model) {
                    tracing::error!(
                        error = %format!("{e:#}"),
                        generation = n.model.meta().generation,
                        "checkpoint of the new generation failed; its write-ahead log keeps the state (retried at the next plate)"
                    );
                }
            }
        }
        if let Some(m) = &self.model {
            checkpoint_if_due(&self.cfg, &mut self.state, m, &*self.hooks);
        }
    }

    /// Write a snapshot, timed and reported.
    fn snapshot(&mut self) -> Result<()> {
        match &self.model {
            Some(m) => write_checkpoint(&mut self.state, m, &*self.hooks),
            None => Ok(()),
        }
    }

    /// Write a snapshot now if the log has records (on shutdown). Unlike
    /// the periodic one, a failure here is returned.
    pub fn checkpoint(&mut self) -> Result<()> {
        if self.model.is_some() && self.state.since_snapshot() > 0 {
            self.snapshot()?;
        }
        if let Some(n) = self.next.as_mut() {
            if n.state.since_snapshot() > 0 {
                n.state
                    .snapshot(&n.model)
                    .context("checkpoint of the new generation")?;
            }
        }
        Ok(())
    }

    /// Whether [`Pipeline::generations_tick`] has something to do.
    fn generations_due(&self) -> bool {
        let dir = &self.cfg.serve.state_dir;
        match &self.next {
            None => !self.next_failed && generations::has_next(dir),
            Some(_) => generations::promotion_requested(dir),
        }
    }

    /// Between inputs: pick up a new generation `balans realign` installed
    /// while the daemon runs, and promote it when the operator asked for
    /// it (`balans realign --promote`).
    fn generations_tick(&mut self) -> Result<()> {
        let dir = self.cfg.serve.state_dir.clone();
        if self.next.is_none() {
            if self.next_failed || !generations::has_next(&dir) {
                return Ok(());
            }
            match generations::open_next(&dir) {
                Ok(n) => {
                    if let Some(n) = &n {
                        self.report_meanwhile(&n.model);
                        self.hooks.next_generation(Some(&n.model));
                    }
                    self.next = n;
                }
                Err(e) => {
                    self.next_failed = true;
                    tracing::error!(
                        error = %format!("{e:#}"),
                        "cannot open the new generation; the live one carries on alone (retried at the next start)"
                    );
                }
            }
            return Ok(());
        }
        if generations::promotion_requested(&dir) {
            self.promote()?;
        }
        Ok(())
    }

    /// Plates the live generation published after `realign` read it: not in
    /// the new generation (its outputs of them come when they are sent
    /// again).
    fn report_meanwhile(&self, next: &Model) {
        let Some(live) = &self.model else { return };
        let realign: Option<serde_json::Value> = std::fs::read(
            generations::next_dir(&self.cfg.serve.state_dir).join(generations::REALIGN_RECORD),
        )
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
        let read_at = realign
            .as_ref()
            .and_then(|v| v.get("live_plates"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as usize;
        // Published after the read and not corrected by the new generation
        // since (plates before the read outside the window are left out on
        // purpose).
        let mut order: Vec<(u64, &String)> = live
            .meta()
            .plates
            .iter()
            .map(|(k, r)| (r.first_row, k))
            .collect();
        order.sort();
        let meanwhile = order
            .iter()
            .skip(read_at)
            .filter(|(_, k)| !next.meta().plates.contains_key(*k))
            .count();
        if meanwhile > 0 {
            tracing::warn!(
                plates = meanwhile,
                generation = next.meta().generation,
                "plates published by the live generation after `balans realign` read the state are not in the new generation"
            );
        }
    }

    /// Promote the new generation: both checkpointed, the journalled swap
    /// on disk ([`generations::promote`]), the promoted state restored.
    fn promote(&mut self) -> Result<()> {
        self.checkpoint()?;
        let dir = self.cfg.serve.state_dir.clone();
        let live_gen = self.model.as_ref().map_or(0, |m| m.meta().generation);
        let mut retired = format!("retired-g{live_gen}");
        let mut k = 1;
        while dir.join(&retired).exists() {
            k += 1;
            retired = format!("retired-g{live_gen}-{k}");
        }
        self.next = None;
        generations::promote(&dir, &retired)?;
        let (state, model) = model_state::open_state(&self.cfg)?;
        self.state = state;
        self.model = model;
        self.hooks.restored(self.model.as_ref());
        self.hooks.next_generation(None);
        tracing::info!(
            version = %self.model.as_ref().map(Model::version).unwrap_or_default(),
            retired = %retired,
            "promoted: the new generation is live"
        );
        Ok(())
    }

    /// Correct the plate with the new generation too (when one is under
    /// evaluation) and set the drift between the two outputs on both QC
    /// records. A plate the new generation rejects is published by the
    /// live one only (logged).
    fn correct_next(&self, decoded: &DecodedPlate, mut live: Corrected) -> Result<Outputs> {
        let Some(n) = &self.next else {
            return Ok(Outputs { live, next: None });
        };
        let mut next = match plate::correct(&n.model, decoded, &self.cfg.qc) {
            Ok(o) => o,
            Err(PlateError::Rejected(r)) => {
                tracing::warn!(
                    plate = %decoded.plate,
                    reason = %r.reason,
                    detail = %r.message,
                    generation = n.model.meta().generation,
                    "the new generation rejects the plate: published by the live generation only"
                );
                return Ok(Outputs { live, next: None });
            }
            Err(PlateError::Fatal(e)) => return Err(e.context("the new generation")),
        };
        match generations::generation_drift(
            &live.values,
            &next.values,
            decoded.controls.as_deref(),
            &live.qc.model_version,
            &next.qc.model_version,
        ) {
            Ok(d) => {
                live.qc.generation_drift = Some(d.clone());
                next.qc.generation_drift = Some(d);
            }
            Err(e) => {
                tracing::warn!(plate = %decoded.plate, error = %format!("{e:#}"), "no drift between the generations")
            }
        }
        Ok(Outputs {
            live,
            next: Some(next),
        })
    }
}

/// Step 1: decode the input and check it as a plate. `rows` is set as soon
/// as the input is a table.
fn decode<I: Input>(
    cfg: &Config,
    input: &I,
    st: &mut StageTimes,
    rows: &mut usize,
) -> Result<DecodedPlate, PlateError> {
    let t = Instant::now();
    let table = input.table()?;
    *rows = table.num_rows();
    let c = &cfg.correct;
    let decoded = plate::decode(
        table,
        input.bytes(),
        &input.fallback_id(),
        c,
        input.source(),
    )?;
    input.check(&decoded, c)?;
    st.decode = t.elapsed();
    Ok(decoded)
}

/// Step 2 against an existing model: correct, or re-derive a replay, or
/// reject (pure: the model is not changed).
fn correct_decoded(
    cfg: &Config,
    model: &Model,
    decoded: DecodedPlate,
    source: &str,
    st: &mut StageTimes,
) -> Result<(DecodedPlate, Corrected), PlateError> {
    let t = Instant::now();
    let out = plate::correct(model, &decoded, &cfg.qc).map_err(|e| match e {
        PlateError::Rejected(r) => PlateError::Rejected(r.at(source)),
        PlateError::Fatal(e) => {
            PlateError::Fatal(e.context(format!("{source}: cannot encode the corrected plate")))
        }
    })?;
    st.correct = t.elapsed();
    st.encode = Duration::from_secs_f64(out.encode_seconds.max(0.0));
    Ok((decoded, out))
}

/// Steps 1-2 against an existing model (no bootstrap): what the second
/// thread runs while a plate is in flight.
fn correct_with<I: Input>(cfg: &Config, model: &Model, input: &I) -> Correction {
    let mut st = StageTimes::default();
    let mut rows = 0;
    let r = decode(cfg, input, &mut st, &mut rows)
        .and_then(|d| correct_decoded(cfg, model, d, input.source(), &mut st));
    (r, st, rows)
}

/// Steps 5-7 of a plate in flight: wait until its outputs are durable, then
/// [`acknowledged`]. False when abandoned (stopping: unacknowledged, redone
/// on restart).
fn finish<So, Si>(
    mut f: InFlight<So::Input>,
    ends: &mut Ends<'_, So, Si>,
    hooks: &dyn PlateHooks,
    report: &mut RunReport,
) -> Result<bool>
where
    So: Source,
    Si: Sink<Input = So::Input>,
{
    let t = Instant::now();
    if ends.sink.finish_publish(ends.stop)? == Delivery::Abandoned {
        tracing::info!(plate = %f.decoded.plate, source = f.input.source(), "stopping: plate in flight abandoned (redone on restart)");
        return Ok(false);
    }
    f.st.publish += t.elapsed();
    acknowledged(f, ends, hooks, report)?;
    Ok(true)
}

/// Steps 6-7 of a plate whose outputs are durable: acknowledge the input,
/// count it, log it, report it to the hooks.
fn acknowledged<So, Si>(
    f: InFlight<So::Input>,
    ends: &mut Ends<'_, So, Si>,
    hooks: &dyn PlateHooks,
    report: &mut RunReport,
) -> Result<()>
where
    So: Source,
    Si: Sink<Input = So::Input>,
{
    let InFlight {
        input,
        decoded,
        out,
        mut st,
    } = f;
    let outcome = if out.qc.replay {
        Outcome::Replayed
    } else {
        Outcome::Corrected
    };
    let t = Instant::now();
    ends.source.acknowledge(&input, outcome, hooks)?;
    st.commit = t.elapsed();
    st.total = input.consumed().elapsed();
    report.count(outcome);
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
    hooks.plate(&PlateEvent {
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

/// The live generation's periodic checkpoint, when `snapshot_every` plates
/// are logged since the last one. Not fatal when it fails (see
/// [`Pipeline::snapshot_if_due`]).
fn checkpoint_if_due(cfg: &Config, state: &mut StateDir, model: &Model, hooks: &dyn PlateHooks) {
    if state.since_snapshot() < cfg.serve.snapshot_every.max(1) {
        return;
    }
    if let Err(e) = write_checkpoint(state, model, hooks) {
        tracing::error!(
            error = %format!("{e:#}"),
            logged_plates = state.since_snapshot(),
            "checkpoint failed; the write-ahead log keeps the state (retried at the next plate)"
        );
    }
}

/// Write a snapshot of `model`, timed and reported.
fn write_checkpoint(state: &mut StateDir, model: &Model, hooks: &dyn PlateHooks) -> Result<()> {
    let t = Instant::now();
    let r = state.snapshot(model);
    let seconds = t.elapsed().as_secs_f64();
    hooks.checkpoint(seconds, r.is_ok());
    if r.is_ok() {
        hooks.model_checkpointed(model);
        tracing::info!(
            rows = model.len(),
            plates = model.meta().plates.len(),
            seconds,
            "checkpoint written"
        );
    }
    r
}

#[cfg(test)]
mod tests;
