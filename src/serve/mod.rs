//! `balans serve`: the streaming correction daemon.
//!
//! The pipeline is source -> decode -> correct -> encode -> sink, with the
//! acknowledgement flowing back: an input is acknowledged (its file moved to
//! `done/`) only after the plate's state change is in the write-ahead log
//! and its outputs are durable. This module has the embedded directory mode
//! ([`dir`]) and the Kafka mode ([`kafka`], with its pure helpers [`wire`],
//! [`chunks`] and [`offsets`]); the plate logic shared by every source is in
//! [`plate`].

pub mod chunks;
pub mod dir;
pub mod kafka;
pub mod offsets;
pub mod plate;
pub mod wire;
