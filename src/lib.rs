//! balans — BALANS batch correction for Cell Painting morphological profiles.
//!
//! The crate is a library core with a thin command-line front end
//! (`src/main.rs`). The algorithm modules are plain functions over `ndarray`
//! data, parallel with rayon and free of I/O; the table and profile modules
//! read and write profile tables.

pub mod metrics;
pub mod params;
