//! The `[correct]` section of the configuration: how a profile table is
//! laid out (batch, plate, control and label columns, features left out)
//! and what to do with non-finite and out-of-range values. [`crate::io::dataset::LoadSpec`]
//! turns it into a loader specification; `balans correct`, `balans
//! evaluate` and `balans serve` (its reference table and every plate) read
//! tables through that one loader.

use serde::{Deserialize, Serialize};

use crate::io::profile::{NonFinitePolicy, DEFAULT_MAX_ABS_VALUE};

/// Options of `balans correct` (table layout and preprocessing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorrectConfig {
    /// Column holding the batch label (required).
    pub batch_col: Option<String>,
    /// Column holding the plate label (per-plate normalisation).
    pub plate_col: String,
    /// Negative controls, `COLUMN=VALUE`.
    pub control: Option<String>,
    /// Regex of feature columns to pass through uncorrected.
    pub exclude: Option<String>,
    /// Non-finite feature policy.
    pub non_finite: NonFinitePolicy,
    /// Optional biological label column, used only for the summary figures.
    pub label_col: Option<String>,
    /// Largest accepted feature magnitude: a finite value beyond it refuses
    /// the table (`balans correct`) or dead-letters the plate (`serve`,
    /// reason `out_of_range`), naming file, column and row. `inf` turns the
    /// check off. See [`DEFAULT_MAX_ABS_VALUE`] for the choice of 1e12.
    pub max_abs_value: f64,
}

impl Default for CorrectConfig {
    fn default() -> Self {
        CorrectConfig {
            batch_col: None,
            plate_col: "Metadata_Plate".into(),
            control: None,
            exclude: None,
            non_finite: NonFinitePolicy::Error,
            label_col: None,
            max_abs_value: DEFAULT_MAX_ABS_VALUE,
        }
    }
}
