//! Batch-correction metrics for `balans evaluate`.
//!
//! Pure computations over `ndarray` (no I/O), parallel with rayon. Each file
//! holds one concern:
//!
//! | file | metric(s) | reference |
//! |---|---|---|
//! | [`knn`] | exact blocked k-NN (Euclidean / cosine) | sklearn brute force |
//! | (shared) | PCA: [`crate::method::pca::Pca::fit_exact`]; eigensolvers, SVD: [`crate::linalg`] | numpy |
//! | [`preprocess`] | robust median/MAD scaling, clip ±50 | protocol |
//! | [`silhouette`] | silhouette label, silhouette batch, BRAS | scib-metrics 0.5.10 |
//! | [`lisi`] | iLISI, cLISI | scib-metrics 0.5.10 |
//! | [`kbet`] | kBET per label | scib-metrics 0.5.10 |
//! | [`connectivity`] | graph connectivity | scib-metrics 0.5.10 |
//! | [`pcr`] | PCR batch, PCR comparison | scib-metrics 0.5.10 |
//! | [`cluster`] | k-means, NMI, ARI | scikit-learn |
//! | [`map`] | AP, mAP, p-values, FDR | copairs 0.5.5 |
//! | [`nsc`] | NSC, NSCB | Ljosa et al. 2013 |
//! | [`drift`] | representation drift | cpdrift 1.0.0 |
//! | [`report`] | `Report` + JSON / text / Markdown / HTML | — |
//! | [`plots`] | SVG figures (PCA scatter, metric bars) | — |
//! | [`evaluate`](mod@evaluate) | the protocol end to end | evaluation.md |
//!
//! Agreement with the reference packages is tested in
//! `tests/metrics_reference.rs` against fixtures produced by
//! `scripts/reference_metrics.py`; definitions and tolerances are in
//! `docs/metrics.md`.

pub mod cluster;
pub mod connectivity;
pub mod drift;
pub(crate) mod evaluate;
pub mod kbet;
pub mod knn;
pub(crate) mod labels;
pub mod lisi;
pub mod map;
pub mod nsc;
pub mod pcr;
pub mod plots;
pub mod preprocess;
pub mod report;
pub mod silhouette;
pub mod table;

pub use evaluate::{evaluate, evaluate_full, EvalInput, EvalOptions, Evaluation};
pub use knn::Metric;
pub use labels::Codes;
pub use report::Report;
pub use table::{eval_input, eval_options, evaluate_table, TableEvaluation};
