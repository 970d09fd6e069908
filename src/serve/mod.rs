//! `balans serve`: the streaming correction daemon.
//!
//! One pipeline, two modes. [`pipeline`] has the per-plate sequence —
//! decode -> correct -> log -> publish -> apply (snapshot when due) ->
//! acknowledge -> report — written once, with every guarantee and failure
//! policy; a mode is a [`pipeline::Source`] and a [`pipeline::Sink`]:
//!
//! - [`dir`]: the embedded directory mode (inbox files -> outbox files;
//!   acknowledged by moving the file to `done/`);
//! - [`kafka`]: the Kafka mode (plates topic -> aligned/QC/DLQ topics;
//!   acknowledged by committing offsets).
//!
//! Around them: [`plate`] (pure per-plate logic: decode, check, correct),
//! [`outcome`] (how a plate can end: rejections, fatal errors, counts),
//! [`model_state`] (restore or warm-start the model at start-up),
//! [`state`] (the write-ahead log and snapshots), [`generations`] and
//! [`realign`] (a new generation beside the live one, `balans realign`),
//! [`hooks`] (what the
//! pipeline reports, and the Prometheus telemetry fed from it) and
//! [`telemetry`] (the metric families and the HTTP listener).

pub mod dir;
pub mod generations;
pub mod hooks;
#[cfg(feature = "kafka")]
pub mod kafka;
pub(crate) mod model_state;
pub mod outcome;
pub mod pipeline;
pub mod plate;
pub mod realign;
pub mod saved;
pub mod state;
pub mod telemetry;
