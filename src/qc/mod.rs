//! Quality control: per-plate figures, and outlier verdicts against a
//! batch's history.
//!
//! A plate's QC figures say how much it was corrected and how well it mixes
//! with the other batches before and after. The daemon computes them for
//! every plate it corrects ([`correct_plate`], the daemon's entry point to
//! the method), keeps each plate's outlier figures in the model (so the
//! history survives restarts through the snapshot and the write-ahead log)
//! and asks [`assess`] whether the new plate stands out from the previous
//! plates of its batch. `balans correct --qc` computes the same figures for
//! every plate of an offline fit and applies the same test in plate order
//! ([`offline_plate_qc`]).
//!
//! This module sits above the method core: it imports
//! [`crate::method`], never the other way round. The model stores the
//! figures ([`QcFigures`] is defined with the model's persisted records and
//! re-exported here) but does not compute them.
//!
//! - [`figures`] — the figures' definitions (mixing, cross-batch distance,
//!   mean offset, control dispersion, coverage), shared by both paths;
//! - [`plate`] — the daemon's plate step ([`correct_plate`], [`PlateQc`]);
//! - [`offline`] — the per-plate QC table of an offline fit;
//! - [`outlier`] — the outlier test ([`assess`], `[qc]` configuration);
//! - [`table`] — the offline QC run of a fit and its Arrow table;
//! - [`mixing`] — the quick before/after figures of the `balans correct`
//!   summary (a different, whole-table figure set).

pub mod figures;
pub mod mixing;
pub(crate) mod offline;
pub(crate) mod outlier;
pub(crate) mod plate;
pub mod table;

pub use crate::method::model::QcFigures;
pub use figures::finite;
pub use offline::{offline_plate_qc, PlateQcRow};
pub use outlier::{assess, FigureScore, OutlierReason, OutlierVerdict, QcConfig};
pub use plate::{
    assess_plate, correct_plate, correct_plate_with, extreme_values, plate_mixing, plate_qc,
    ExtremeValues, PlateCorrection, PlateQc,
};
