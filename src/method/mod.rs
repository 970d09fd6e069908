//! The BALANS method: plain functions and types over `ndarray` data,
//! parallel with rayon, free of I/O and async.
//!
//! - [`fit`] — the offline fit of a whole table ([`fit::correct`]);
//! - [`model`] — the incremental model the daemon corrects plates against;
//! - [`params`] — the method's parameters (`[method]` in the config);
//! - [`preprocess`] — robust normalisation, per-batch control gains;
//! - [`pca`] — the neighbour space (PCA, optionally whitened on controls);
//! - [`index`] — per-batch nearest-neighbour indices (usearch HNSW or exact);
//! - [`scales`] — batch-aware local scales (distance to the k-th neighbour);
//! - [`kernel`] — the symmetric batch-aware Gaussian kernel;
//! - [`sampling`] — coverage-prioritised adaptive sampling of affinity rows;
//! - [`align`] — per-row offsets from the sampled affinity rows;
//! - [`blocked`] — blocked exact k-NN (GEMM) for small base sets;
//! - [`rows`] — row sources over the neighbour-space coordinates;
//! - [`rowmap`] — hash maps keyed by row ids (a fast, non-keyed hasher).

pub(crate) mod align;
pub(crate) mod blocked;
pub mod fit;
pub mod index;
pub(crate) mod kernel;
pub mod model;
pub(crate) mod mutual;
pub mod params;
pub mod pca;
pub mod preprocess;
pub mod rowmap;
pub mod rows;
pub mod sampling;
pub mod scales;
