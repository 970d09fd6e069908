//! balans — BALANS batch correction for Cell Painting morphological profiles.
//!
//! The crate is a library core with a thin command-line front end
//! (`src/main.rs`). The algorithm modules are plain functions over `ndarray`
//! data, parallel with rayon and free of I/O; the table and profile modules
//! read and write profile tables.

pub mod align;
pub mod balans;
pub mod config;
pub mod index;
pub mod kernel;
pub mod metrics;
pub mod mixing;
pub mod model;
pub mod params;
pub mod pca;
pub mod preprocess;
pub mod profile;
pub mod qc;
pub mod rows;
pub mod sampling;
pub mod scales;
pub mod serve;
pub mod state;
pub mod synth;
pub mod table;
pub mod telemetry;
