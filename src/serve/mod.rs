//! `balans serve`: the streaming correction daemon.
//!
//! The pipeline is source -> decode -> correct -> encode -> sink, with the
//! acknowledgement flowing back: an input is acknowledged (its file moved to
//! `done/`) only after the plate's state change is in the write-ahead log
//! and its outputs are durable. This module has the embedded directory mode
//! ([`dir`]) and the Kafka mode ([`kafka`]); the plate logic shared by every
//! source is in [`plate`], the write-ahead log and snapshots in [`state`],
//! the Prometheus metrics and HTTP listener in [`telemetry`].

pub mod dir;
pub mod kafka;
pub mod plate;
pub mod state;
pub mod telemetry;
