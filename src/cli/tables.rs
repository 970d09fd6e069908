//! What `balans correct` and `balans apply` share: the input and output
//! flags, the `[correct]` layout flags, and how one input (a file) or many
//! (a folder or a glob) map to outputs.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use balans::config::CorrectConfig;
use balans::io::files::{self, Inputs};
use balans::io::table;

/// Input, output and table-layout flags (`[correct]` keys), shared by
/// `balans correct` and `balans apply`.
#[derive(Args, Debug, Clone, Default)]
pub struct TableArgs {
    /// Input table: .parquet, .csv, .csv.gz, .arrow/.ipc (Arrow IPC file); or a folder of plate tables, or a glob of them ('plates/*.parquet'; quote it), read as one dataset.
    #[arg(long, short)]
    pub input: PathBuf,
    /// Output table (format by extension), written to a temp file and renamed; with a folder or glob as input, the output folder: one file per input, same name.
    #[arg(long, short)]
    pub output: PathBuf,
    /// TOML config file (same keys as config/balans.toml).
    #[arg(long, env = "BALANS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Batch label column (required here or in the config; `apply` takes it from the saved model when not given).
    #[arg(long)]
    pub batch_col: Option<String>,
    /// Plate column for per-plate normalisation [default: Metadata_Plate].
    #[arg(long)]
    pub plate_col: Option<String>,
    /// Negative controls as COLUMN=VALUE, e.g. Metadata_MoA=DMSO.
    #[arg(long)]
    pub control: Option<String>,
    /// Regex of feature columns to pass through uncorrected, e.g. '_Location_|_Center_'.
    #[arg(long)]
    pub exclude: Option<String>,
    /// Refuse the table when a feature value's magnitude exceeds this (a damaged cell or a unit error); `inf` = no check [default: 1e12].
    #[arg(long)]
    pub max_abs_value: Option<f64>,
    /// Write the run summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
}

impl TableArgs {
    /// Write the layout flags given over `c`.
    pub fn apply_to(&self, c: &mut CorrectConfig) -> Result<()> {
        if let Some(v) = &self.batch_col {
            c.batch_col = Some(v.clone());
        }
        if let Some(v) = &self.plate_col {
            c.plate_col = v.clone();
        }
        if let Some(v) = &self.control {
            c.control = Some(v.clone());
        }
        if let Some(v) = &self.exclude {
            c.exclude = Some(v.clone());
        }
        if let Some(v) = self.max_abs_value {
            anyhow::ensure!(
                v > 0.0,
                "--max-abs-value must be positive (inf turns the check off), got {v}"
            );
            c.max_abs_value = v;
        }
        Ok(())
    }

    /// The inputs and, for each, its output, checked before any work
    /// ([`table::prepare_output`], [`files::output_paths`]).
    pub fn plan(&self) -> Result<Plan> {
        match files::expand_inputs(&self.input)? {
            Inputs::One(input) => {
                table::prepare_output(&self.output, &[&input])?;
                Ok(Plan {
                    jobs: vec![(input, self.output.clone())],
                    many: false,
                })
            }
            Inputs::Many(inputs) => {
                let outputs = files::output_paths(&inputs, &self.output)?;
                Ok(Plan {
                    jobs: inputs.into_iter().zip(outputs).collect(),
                    many: true,
                })
            }
        }
    }
}

/// Inputs and their outputs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// (input, output) pairs, in input name order.
    pub jobs: Vec<(PathBuf, PathBuf)>,
    /// A folder or glob (one output per input under an output folder).
    pub many: bool,
}

impl Plan {
    /// The input files.
    pub fn inputs(&self) -> Vec<PathBuf> {
        self.jobs.iter().map(|(i, _)| i.clone()).collect()
    }

    /// Every input and output path (for checking other outputs against).
    pub fn paths(&self) -> Vec<&Path> {
        self.jobs
            .iter()
            .flat_map(|(i, o)| [i.as_path(), o.as_path()])
            .collect()
    }
}
