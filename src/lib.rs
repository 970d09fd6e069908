//! balans — BALANS batch correction for Cell Painting morphological profiles.

pub mod config;
pub mod io;
pub mod linalg;
pub mod method;
pub mod metrics;
pub mod qc;
pub mod serve;
pub mod synth;
