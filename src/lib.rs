//! balans — BALANS batch correction for Cell Painting morphological profiles.
//!
//! A library core with a thin command-line front end (`src/main.rs`,
//! `src/cli/`). The crate is laid out the way the data flows:
//!
//! ```text
//!            io/ ──────────────► method/ ─────────────► io/
//!   (read a profile table:    (the BALANS fit, or    (write the same table
//!    features, batches,        the incremental        with corrected
//!    plates, controls)         model for plates)      features)
//!                                   │
//!                                   ▼
//!                                 qc/  per-plate QC figures and outlier verdicts
//!
//!   serve/   the daemon: source -> decode -> correct -> encode -> sink,
//!            one pipeline for the directory and the Kafka mode, with the
//!            write-ahead state and the Prometheus telemetry
//!   metrics/ the field's batch-correction metrics (`balans evaluate`)
//! ```
//!
//! - [`io`] — table formats (Parquet, CSV, Arrow IPC) and the one dataset
//!   loader ([`io::dataset::ProfileTable`]) used by `correct`, `evaluate`
//!   and `serve`; its errors name the file, column and row.
//! - [`method`] — the BALANS core: normalisation, the neighbour space,
//!   per-batch nearest-neighbour indices, batch-aware scales and kernel,
//!   coverage-prioritised sampling, alignment; the offline fit
//!   ([`method::fit::correct`]) and the incremental model
//!   ([`method::model::Model`]). Plain functions over `ndarray` data,
//!   parallel with rayon; no I/O, no async, and no import from any module
//!   below it in this list.
//! - [`linalg`] — the dense linear algebra every numeric module shares
//!   (eigensolvers, SVD, orthonormalisation, covariance).
//! - [`qc`] — per-plate QC figures (one definition for the daemon and
//!   `balans correct --qc`) and outlier verdicts against a batch's history;
//!   [`qc::correct_plate`] is the daemon's step from a plate to its
//!   correction and figures.
//! - [`metrics`] — the evaluator: the Arevalo et al. 2024 metric set,
//!   cross-batch mAP, NSC/NSCB, drift, and the HTML report.
//! - [`serve`] — the daemon ([`serve::pipeline`]), its sources and sinks
//!   ([`serve::dir`], [`serve::kafka`]), state ([`serve::state`]) and
//!   telemetry ([`serve::telemetry`]); saved models ([`serve::saved`]:
//!   [`save_model`], [`load_model`], [`apply_model`] and the
//!   [`Provenance`] every output carries).
//! - [`synth`] — synthetic tables with known biology and batch effects.
//! - [`config`] — the TOML configuration with environment overrides.
//!
//! The import graph between these folders is acyclic: `linalg` <- `method`
//! <- `io`, `qc`, `metrics` <- `config` <- `serve`; `synth` stands alone.
//!
//! The most used items are re-exported at the root. A fit on a synthetic
//! table with known batch effects:
//!
//! ```
//! use balans::synth::{generate, SynthSpec, CONTROL_LABEL};
//! use balans::{correct, Dataset, NoProgress, Params};
//!
//! let table = generate(&SynthSpec { rows: 600, batches: 3, features: 20, ..SynthSpec::default() })?;
//! let controls: Vec<bool> = table.label.iter().map(|l| l == CONTROL_LABEL).collect();
//! let data = Dataset {
//!     x: table.features.view(),
//!     batch: &table.batch,
//!     plate: Some(&table.plate),
//!     controls: Some(&controls),
//! };
//! let fit = correct(&data, &Params::default(), &NoProgress)?;
//! assert_eq!(fit.corrected.dim(), table.features.dim());
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod config;
pub mod io;
pub mod linalg;
pub mod method;
pub mod metrics;
pub mod qc;
pub mod serve;
pub mod synth;

pub use config::Config;
pub use io::dataset::{LoadSpec, ProfileTable};
pub use io::error::{LoadError, LoadErrorKind};
pub use method::fit::{correct, Correction, Dataset, NoProgress, Progress, Summary};
pub use method::model::Model;
pub use method::params::Params;
pub use metrics::{evaluate, EvalInput, EvalOptions, Report};
pub use serve::saved::{apply_model, load_model, save_model, Applied, ApplyOptions, Provenance};
