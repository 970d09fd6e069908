//! The one loader from a profile table to what the method needs.
//!
//! Every consumer of a table — `balans correct`, `balans evaluate`, the
//! daemon's reference table and each streamed plate — needs the same five
//! things out of it: the feature matrix, the batch labels, the plate labels
//! (when there is a plate column), the control rows (when a selector is
//! given) and sometimes a biological label. [`ProfileTable::from_table`]
//! reads them in one place, with one set of messages, so a table accepted
//! offline is accepted by the daemon and is refused with the same words.
//!
//! # What is read, in which order
//!
//! A [`LoadSpec`] says which columns to read; [`ProfileTable::load`] reads a
//! file, [`ProfileTable::from_table`] an already decoded table (a message).
//! The checks run in this order, and the first failure is returned:
//!
//! 1. the table has rows ([`Empty`](super::error::LoadErrorKind::Empty));
//! 2. the batch column exists and has no null
//!    ([`Schema`](super::error::LoadErrorKind::Schema));
//! 3. the plate column, *if the table has it*: no null (`Schema`). A table
//!    without it loads with [`ProfileTable::plate`] `None`; the caller
//!    decides what that means (`balans correct` warns and normalises per
//!    batch, the daemon names the plate after its file or message);
//! 4. the label column, if asked for (`Schema`);
//! 5. the feature columns (numeric, not `Metadata_*`, not excluded; at
//!    least one — `Schema`) and their values under the non-finite policy
//!    ([`NonFinite`](super::error::LoadErrorKind::NonFinite), naming column
//!    and data row) and the magnitude bound `max_abs_value`
//!    ([`OutOfRange`](super::error::LoadErrorKind::OutOfRange));
//! 6. the control rows: the selector's column exists (`Schema`) and, for a
//!    whole table ([`Scope::Table`]), at least one row matches it (`Schema`;
//!    a typo in the value would otherwise silently turn the controls off).
//!
//! Errors are [`LoadError`]s: a
//! [`LoadErrorKind`](super::error::LoadErrorKind) for the daemon's
//! dead-letter reason and a message naming the source, the column and the
//! row. A file that cannot be read at all is
//! [`Unreadable`](super::error::LoadErrorKind::Unreadable).
//!
//! # Plates
//!
//! A streamed plate is one table of one batch and one plate id:
//! [`ProfileTable::single_batch`] and [`ProfileTable::single_plate`] check
//! that; [`LoadSpec::for_plate`] is the spec the daemon reads a plate with
//! ([`Scope::Plate`]: non-finite values always refused, a plate may hold no
//! control, an empty one is called an "empty plate").
//!
//! # Two versions of the same rows
//!
//! `balans evaluate` scores a corrected table against its uncorrected
//! baseline, and `evaluate drift` two versions of the same rows:
//! [`ProfileTable::features_like`] reads another table's features in this
//! table's column order.

use std::path::Path;

use arrow_array::{ArrayRef, RecordBatch};
use ndarray::{Array2, ArrayView2};
use regex::Regex;

use crate::io::error::LoadError;
use crate::io::layout::CorrectConfig;
use crate::io::profile::{
    self, ControlSelector, FeatureColumns, NonFinitePolicy, TableShell, ValueRules,
    DEFAULT_MAX_ABS_VALUE,
};
use crate::io::table;
use crate::method::fit::Dataset;

/// What a loaded table is; it decides two rules of [`ProfileTable::from_table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// A whole experiment (or a reference table): a control selector must
    /// match at least one row.
    #[default]
    Table,
    /// One streamed plate: it may hold no control row, and messages call it
    /// a plate.
    Plate,
}

/// Which columns to read from a table, and how.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Batch label column; required.
    pub batch_col: String,
    /// Plate label column, read when the table has it (`None`: never read).
    pub plate_col: Option<String>,
    /// Negative-control selector `COLUMN=VALUE`.
    pub control: Option<ControlSelector>,
    /// A whole table or one plate.
    pub scope: Scope,
    /// Numeric columns matching this regex are not features (they pass
    /// through uncorrected).
    pub exclude: Option<Regex>,
    /// What to do with null, NaN and infinite feature values.
    pub non_finite: NonFinitePolicy,
    /// Biological label column, read (and required) when set.
    pub label_col: Option<String>,
    /// Largest accepted feature magnitude (`[correct] max_abs_value`).
    pub max_abs_value: f64,
}

impl LoadSpec {
    /// Read `batch_col` and the features of a whole table only: no plate,
    /// control or label column, non-finite values refused.
    pub fn new(batch_col: impl Into<String>) -> LoadSpec {
        LoadSpec {
            batch_col: batch_col.into(),
            plate_col: None,
            control: None,
            scope: Scope::Table,
            exclude: None,
            non_finite: NonFinitePolicy::Error,
            label_col: None,
            max_abs_value: DEFAULT_MAX_ABS_VALUE,
        }
    }

    /// The spec of a whole table ([`Scope::Table`]) from the `[correct]`
    /// configuration (after the command-line flags): every key is honoured.
    /// Errors
    /// ([`Schema`](super::error::LoadErrorKind::Schema)) name the flag and
    /// the config key: no batch column, an invalid `exclude` regex or
    /// `control` selector.
    pub fn from_config(cfg: &CorrectConfig) -> Result<LoadSpec, LoadError> {
        let Some(batch_col) = cfg.batch_col.as_deref() else {
            return Err(LoadError::schema(
                "no batch column: pass --batch-col (or set [correct] batch_col / BALANS_CORRECT__BATCH_COL)",
            ));
        };
        let exclude = cfg
            .exclude
            .as_deref()
            .map(|p| exclude_regex(p, "--exclude ([correct] exclude)"))
            .transpose()?;
        let control = cfg
            .control
            .as_deref()
            .map(|s| {
                ControlSelector::parse(s)
                    .map_err(|e| LoadError::schema(format!("--control ([correct] control): {e}")))
            })
            .transpose()?;
        Ok(LoadSpec {
            batch_col: batch_col.to_string(),
            plate_col: Some(cfg.plate_col.clone()),
            control,
            scope: Scope::Table,
            exclude,
            non_finite: cfg.non_finite,
            label_col: cfg.label_col.clone(),
            max_abs_value: cfg.max_abs_value,
        })
    }

    /// The spec of one streamed plate: [`LoadSpec::from_config`] except that
    /// non-finite values are always refused (the model's features are fixed,
    /// so a plate can neither drop nor invent any) and a plate without
    /// control rows is accepted ([`Scope::Plate`]); the label column is not
    /// read.
    pub fn for_plate(cfg: &CorrectConfig) -> Result<LoadSpec, LoadError> {
        Ok(LoadSpec {
            scope: Scope::Plate,
            non_finite: NonFinitePolicy::Error,
            label_col: None,
            ..LoadSpec::from_config(cfg)?
        })
    }
}

/// Compile an exclude regex; the error names `what` (the flag or key it
/// came from).
pub fn exclude_regex(pattern: &str, what: &str) -> Result<Regex, LoadError> {
    Regex::new(pattern)
        .map_err(|e| LoadError::schema(format!("{what} is not a valid regular expression: {e}")))
}

/// A loaded table: the table itself (for writing the corrected values back)
/// and everything the method and the metrics read from it.
#[derive(Debug, Clone)]
pub struct ProfileTable {
    /// Where the table came from (file path or message), as named in errors.
    pub source: String,
    /// The table as read.
    pub table: RecordBatch,
    /// The feature columns kept (after the non-finite policy), table order.
    pub columns: FeatureColumns,
    /// Feature values, `rows x columns`.
    pub x: Array2<f64>,
    /// Batch label of every row.
    pub batch: Vec<String>,
    /// Plate label of every row; `None` when the table has no plate column
    /// (or [`LoadSpec::plate_col`] is `None`).
    pub plate: Option<Vec<String>>,
    /// Control rows; `None` without a selector.
    pub controls: Option<Vec<bool>>,
    /// Biological label of every row, when [`LoadSpec::label_col`] is set.
    pub labels: Option<Vec<String>>,
    /// Feature columns removed by [`NonFinitePolicy::DropFeatures`].
    pub dropped: Vec<String>,
    /// Values replaced by [`NonFinitePolicy::Impute`].
    pub imputed: usize,
    /// Name of the plate column looked for (for messages).
    plate_col: String,
}

impl ProfileTable {
    /// Read the file at `path` (format by extension) and load it with
    /// `spec`. A file that cannot be read is
    /// [`Unreadable`](super::error::LoadErrorKind::Unreadable).
    pub fn load(path: &Path, spec: &LoadSpec) -> Result<ProfileTable, LoadError> {
        tracing::info!(input = %path.display(), "reading table");
        let table = table::read_table(path).map_err(|e| {
            if table::is_layout_error(&e) {
                LoadError::schema(format!("{e:#}"))
            } else {
                LoadError::unreadable(&e)
            }
        })?;
        ProfileTable::from_table(table, spec, &path.display().to_string())
    }

    /// Load a decoded table; `source` names it in errors. See the
    /// [module docs](self) for the checks and their order.
    pub fn from_table(
        table: RecordBatch,
        spec: &LoadSpec,
        source: &str,
    ) -> Result<ProfileTable, LoadError> {
        let column = |ci: usize| Ok(table.column(ci).clone());
        let mut t =
            ProfileTable::assemble(&table, &table, table.num_rows(), &column, spec, source)?;
        t.table = table;
        Ok(t)
    }

    /// [`ProfileTable::load`] for a run that writes its corrected table
    /// through a [`TableShell`] (`balans correct`): the table comes back
    /// with its feature columns released ([`Self::release_features`]),
    /// with the shell. A Parquet file's feature columns are read a column
    /// at a time straight into the matrix (column projection), so the
    /// feature values are never held twice (at 1M rows x 50 f64 features,
    /// 400 MB); other formats, and a Parquet file whose batch, plate,
    /// label or control column is itself a feature, are read whole first.
    pub fn load_lean(
        path: &Path,
        spec: &LoadSpec,
    ) -> Result<(ProfileTable, TableShell), LoadError> {
        let whole = || -> Result<(ProfileTable, TableShell), LoadError> {
            let mut t = ProfileTable::load(path, spec)?;
            let shell = t.release_features();
            Ok((t, shell))
        };
        if !matches!(table::Format::from_path(path), Ok(table::Format::Parquet)) {
            return whole();
        }
        let classify = |e: anyhow::Error| {
            if table::is_layout_error(&e) {
                LoadError::schema(format!("{e:#}"))
            } else {
                LoadError::unreadable(&e)
            }
        };
        let source = path.display().to_string();
        let file = table::ParquetColumns::open(path).map_err(classify)?;
        let schema = file.schema();
        let empty = RecordBatch::new_empty(schema.clone());
        let features = profile::select_features(&empty, spec.exclude.as_ref(), &source)?;
        let named = [
            Some(spec.batch_col.as_str()),
            spec.plate_col.as_deref(),
            spec.label_col.as_deref(),
            spec.control.as_ref().map(|c| c.column.as_str()),
        ];
        if features
            .names
            .iter()
            .any(|f| named.contains(&Some(f.as_str())))
        {
            return whole();
        }
        tracing::info!(input = %path.display(), "reading table (feature columns one at a time)");
        let rest_at: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !features.indices.contains(i))
            .collect();
        let rest = file.read(&rest_at).map_err(classify)?;
        let column = |ci: usize| -> Result<ArrayRef, LoadError> {
            let b = file.read(&[ci]).map_err(|e| LoadError::unreadable(&e))?;
            Ok(b.column(0).clone())
        };
        let mut t = ProfileTable::assemble(&rest, &empty, file.rows(), &column, spec, &source)?;
        t.table = empty;
        let shell =
            TableShell::from_parts(&schema, t.rows(), &t.columns, &t.dropped, &|_, name| {
                rest.column_by_name(name).cloned()
            });
        Ok((t, shell))
    }

    /// The checks and extraction of [`ProfileTable::from_table`]: labels
    /// and controls read by name from `table` (at least the non-feature
    /// columns), the features chosen from the schema of `shape` (the whole
    /// table, or an empty batch of its schema) and handed out by `column`
    /// (positions in that schema). The result's `table` is an empty batch
    /// of `table`'s schema; the caller sets it.
    fn assemble(
        table: &RecordBatch,
        shape: &RecordBatch,
        rows: usize,
        column: &(dyn Fn(usize) -> Result<ArrayRef, LoadError> + Sync),
        spec: &LoadSpec,
        source: &str,
    ) -> Result<ProfileTable, LoadError> {
        if rows == 0 {
            return Err(match spec.scope {
                Scope::Table => profile::no_rows(source),
                Scope::Plate => LoadError::empty(format!("{source}: empty plate (no rows)")),
            });
        }
        let batch = profile::text_column(table, &spec.batch_col, source)?;
        let plate = match spec.plate_col.as_deref() {
            Some(col) => optional_text_column(table, col, source)?,
            None => None,
        };
        let labels = spec
            .label_col
            .as_deref()
            .map(|col| profile::text_column(table, col, source))
            .transpose()?;
        let columns = profile::select_features(shape, spec.exclude.as_ref(), source)?;
        let text = profile::text_non_metadata(shape);
        if spec.scope == Scope::Table && !text.is_empty() {
            tracing::warn!(
                source,
                count = text.len(),
                columns = %text.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                "non-numeric columns without the Metadata_ prefix pass through uncorrected"
            );
        }
        let rules = ValueRules {
            non_finite: spec.non_finite,
            max_abs_value: spec.max_abs_value,
            // The daemon has no --impute / --max-abs-value flags to suggest.
            flag_hints: spec.scope == Scope::Table,
        };
        let fm = profile::extract_features_from(rows, column, columns, &rules, source)?;
        if !fm.dropped.is_empty() {
            tracing::warn!(
                source,
                count = fm.dropped.len(),
                "dropping features with non-finite values"
            );
        }
        let controls = match &spec.control {
            Some(sel) => {
                let mask = profile::control_rows(table, sel, source)?;
                if spec.scope == Scope::Table && !mask.iter().any(|&c| c) {
                    return Err(LoadError::schema(format!(
                        "{source}: no row has {}={} (the --control selector); check the column and value",
                        sel.column, sel.value
                    )));
                }
                Some(mask)
            }
            None => None,
        };
        Ok(ProfileTable {
            source: source.to_string(),
            table: RecordBatch::new_empty(table.schema()),
            columns: fm.columns,
            x: fm.values,
            batch,
            plate,
            controls,
            labels,
            dropped: fm.dropped,
            imputed: fm.imputed,
            plate_col: spec.plate_col.clone().unwrap_or_default(),
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.x.nrows()
    }

    /// The method's view of the table.
    pub fn dataset(&self) -> Dataset<'_> {
        Dataset {
            x: self.x.view(),
            batch: &self.batch,
            plate: self.plate.as_deref(),
            controls: self.controls.as_deref(),
        }
    }

    /// Another column as text; a
    /// [`Schema`](super::error::LoadErrorKind::Schema) error when it is
    /// missing or has a null.
    pub fn column(&self, name: &str) -> Result<Vec<String>, LoadError> {
        profile::text_column(&self.table, name, &self.source)
    }

    /// Another column as text when the table has it (nulls are still errors).
    pub fn optional_column(&self, name: &str) -> Result<Option<Vec<String>>, LoadError> {
        optional_text_column(&self.table, name, &self.source)
    }

    /// The features of `other` (another version of the same rows, named
    /// `source`) in this table's column order, non-finite values refused.
    /// Row counts are not compared: that is the caller's rule to state.
    pub fn features_like(
        &self,
        other: &RecordBatch,
        source: &str,
    ) -> Result<Array2<f64>, LoadError> {
        let columns = profile::columns_like(other, &self.columns.names, source)?;
        Ok(profile::extract_features(other, columns, NonFinitePolicy::Error, source)?.values)
    }

    /// The batch of a table that must hold a single one (a streamed plate);
    /// a [`Schema`](super::error::LoadErrorKind::Schema) error naming two
    /// batches otherwise.
    pub fn single_batch(&self) -> Result<&str, LoadError> {
        single(&self.batch).map_err(|(a, b)| {
            LoadError::schema(format!(
                "{}: plate rows span several batches ({a}, {b}); one plate = one batch",
                self.source
            ))
        })
    }

    /// The plate id of a table that must hold a single plate: `None` without
    /// a plate column (the caller names the plate), a
    /// [`Schema`](super::error::LoadErrorKind::Schema) error when the column
    /// has several values.
    pub fn single_plate(&self) -> Result<Option<&str>, LoadError> {
        let Some(plate) = &self.plate else {
            return Ok(None);
        };
        single(plate).map(Some).map_err(|_| {
            LoadError::schema(format!(
                "{}: column {} has several values; one message/file = one plate",
                self.source, self.plate_col
            ))
        })
    }

    /// Release the feature columns of the table as read (their values are
    /// in [`Self::x`]; at 1M rows x 50 f64 features they are 400 MB) and
    /// return what the corrected table keeps of it ([`TableShell`]). After
    /// this [`Self::table`] is empty (its schema only), so
    /// [`Self::corrected_table`] and the column readers no longer apply.
    pub fn release_features(&mut self) -> TableShell {
        let shell = TableShell::new(&self.table, &self.columns, &self.dropped);
        self.table = RecordBatch::new_empty(self.table.schema());
        shell
    }

    /// The table with `corrected` (`rows x columns`, in [`Self::columns`]
    /// order) written over the features, each in its original type, and the
    /// dropped features removed.
    pub fn corrected_table(&self, corrected: ArrayView2<f64>) -> anyhow::Result<RecordBatch> {
        profile::replace_features(&self.table, &self.columns, corrected, &self.dropped)
    }
}

/// `values[0]` when every value equals it, else the first two that differ.
/// `values` is non-empty (loaded tables have rows).
fn single(values: &[String]) -> Result<&str, (&str, &str)> {
    let Some(first) = values.first() else {
        return Ok("");
    };
    match values.iter().find(|v| *v != first) {
        Some(other) => Err((first, other)),
        None => Ok(first),
    }
}

/// `name` as text when `table` has such a column.
fn optional_text_column(
    table: &RecordBatch,
    name: &str,
    source: &str,
) -> Result<Option<Vec<String>>, LoadError> {
    if table.schema().column_with_name(name).is_some() {
        profile::text_column(table, name, source).map(Some)
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Float64Array, Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;
    use crate::io::error::LoadErrorKind;

    /// Batch, plate, label, two features (one with a NaN in data row 3)
    /// and an excluded location column.
    fn table() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("Metadata_Batch", DataType::Utf8, true),
            Field::new("Metadata_Plate", DataType::Utf8, true),
            Field::new("Metadata_MoA", DataType::Utf8, true),
            Field::new("Cells_A", DataType::Float64, true),
            Field::new("Cells_Location_X", DataType::Float64, true),
            Field::new("Nuclei_B", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["b1", "b1", "b2", "b2"])),
                Arc::new(StringArray::from(vec!["p1", "p1", "p2", "p2"])),
                Arc::new(StringArray::from(vec!["DMSO", "X", "DMSO", "Y"])),
                Arc::new(Float64Array::from(vec![1.0, 2.0, f64::NAN, 4.0])),
                Arc::new(Float64Array::from(vec![5.0, 6.0, 7.0, 8.0])),
                Arc::new(Int64Array::from(vec![10, 20, 30, 40])),
            ],
        )
        .unwrap()
    }

    fn spec() -> LoadSpec {
        LoadSpec {
            plate_col: Some("Metadata_Plate".into()),
            control: Some(ControlSelector::parse("Metadata_MoA=DMSO").unwrap()),
            exclude: Some(Regex::new("_Location_").unwrap()),
            non_finite: NonFinitePolicy::Impute,
            label_col: Some("Metadata_MoA".into()),
            ..LoadSpec::new("Metadata_Batch")
        }
    }

    fn config() -> CorrectConfig {
        CorrectConfig {
            batch_col: Some("Metadata_Batch".into()),
            control: Some("Metadata_MoA=DMSO".into()),
            exclude: Some("_Location_".into()),
            ..CorrectConfig::default()
        }
    }

    /// The error of loading `t` with `spec` as `t.csv`.
    fn fails(t: RecordBatch, spec: &LoadSpec) -> LoadError {
        ProfileTable::from_table(t, spec, "t.csv").unwrap_err()
    }

    fn assert_names(e: &LoadError, kind: LoadErrorKind, needles: &[&str]) {
        assert_eq!(e.kind(), kind, "{e}");
        for n in needles {
            assert!(e.message().contains(n), "{n:?} not in {e}");
        }
        assert_eq!(e.to_string(), e.message());
    }

    #[test]
    fn loads_everything_the_spec_names() {
        let t = ProfileTable::from_table(table(), &spec(), "t.csv").unwrap();
        assert_eq!(t.source, "t.csv");
        assert_eq!(t.rows(), 4);
        assert_eq!(t.columns.names, vec!["Cells_A", "Nuclei_B"]);
        assert_eq!(t.columns.indices, vec![3, 5]);
        assert_eq!(t.x[[2, 0]], 2.0, "NaN imputed with the median of 1, 2, 4");
        assert_eq!(t.x[[3, 1]], 40.0);
        assert_eq!(t.imputed, 1);
        assert!(t.dropped.is_empty());
        assert_eq!(t.batch, vec!["b1", "b1", "b2", "b2"]);
        assert_eq!(t.plate.as_deref().unwrap(), ["p1", "p1", "p2", "p2"]);
        assert_eq!(t.labels.as_deref().unwrap(), ["DMSO", "X", "DMSO", "Y"]);
        assert_eq!(t.controls, Some(vec![true, false, true, false]));
        let d = t.dataset();
        assert_eq!(d.x.dim(), (4, 2));
        assert_eq!(d.plate.map(<[String]>::len), Some(4));
        assert_eq!(
            d.controls.map(|c| c.iter().filter(|&&c| c).count()),
            Some(2)
        );
        // The corrected table keeps the layout; dropping removes the column.
        let out = t.corrected_table(t.x.view()).unwrap();
        assert_eq!(out.schema(), table().schema());
        let dropped = ProfileTable::from_table(
            table(),
            &LoadSpec {
                non_finite: NonFinitePolicy::DropFeatures,
                ..spec()
            },
            "t.csv",
        )
        .unwrap();
        assert_eq!(dropped.dropped, vec!["Cells_A"]);
        assert_eq!(dropped.columns.names, vec!["Nuclei_B"]);
        let out = dropped.corrected_table(dropped.x.view()).unwrap();
        assert!(out.schema().column_with_name("Cells_A").is_none());
    }

    #[test]
    fn non_finite_value_names_file_column_and_row() {
        let s = LoadSpec {
            non_finite: NonFinitePolicy::Error,
            ..spec()
        };
        let e = fails(table(), &s);
        assert_names(
            &e,
            LoadErrorKind::NonFinite,
            &["t.csv", "Cells_A", "data row 3", "--impute"],
        );
    }

    #[test]
    fn missing_or_null_batch_column_is_a_schema_error() {
        let e = fails(table(), &LoadSpec::new("Metadata_Week"));
        assert_names(
            &e,
            LoadErrorKind::Schema,
            &["t.csv", "Metadata_Week", "Metadata_Plate"],
        );
        let t = table();
        let mut cols = t.columns().to_vec();
        cols[0] = Arc::new(StringArray::from(vec![Some("b1"), None, Some("b2"), None]));
        let t = RecordBatch::try_new(t.schema(), cols).unwrap();
        let e = fails(t, &spec());
        assert_names(
            &e,
            LoadErrorKind::Schema,
            &["t.csv", "Metadata_Batch", "data row 2", "null"],
        );
    }

    #[test]
    fn empty_table_and_no_features() {
        let e = fails(table().slice(0, 0), &spec());
        assert_names(&e, LoadErrorKind::Empty, &["t.csv", "no rows"]);
        let plate = LoadSpec {
            scope: Scope::Plate,
            ..spec()
        };
        let e = fails(table().slice(0, 0), &plate);
        assert_names(&e, LoadErrorKind::Empty, &["t.csv", "empty plate"]);
        let only_meta = table().project(&[0, 1, 2]).unwrap();
        let e = fails(only_meta, &LoadSpec::new("Metadata_Batch"));
        assert_names(&e, LoadErrorKind::Schema, &["t.csv", "no feature columns"]);
        let e = fails(
            table().project(&[0, 4]).unwrap(),
            &LoadSpec {
                exclude: Some(Regex::new("_Location_").unwrap()),
                ..LoadSpec::new("Metadata_Batch")
            },
        );
        assert_names(
            &e,
            LoadErrorKind::Schema,
            &["no feature columns", "--exclude"],
        );
    }

    #[test]
    fn controls_required_or_not() {
        let none_match = LoadSpec {
            control: Some(ControlSelector::parse("Metadata_MoA=dmso").unwrap()),
            ..spec()
        };
        let e = fails(table(), &none_match);
        assert_names(
            &e,
            LoadErrorKind::Schema,
            &["t.csv", "Metadata_MoA=dmso", "--control"],
        );
        // A plate may hold no control.
        let plate = LoadSpec {
            scope: Scope::Plate,
            ..none_match
        };
        let t = ProfileTable::from_table(table(), &plate, "t.csv").unwrap();
        assert_eq!(t.controls, Some(vec![false; 4]));
        // The selector's column must exist either way.
        let e = fails(
            table(),
            &LoadSpec {
                control: Some(ControlSelector::parse("Metadata_Kind=ctrl").unwrap()),
                ..plate
            },
        );
        assert_names(&e, LoadErrorKind::Schema, &["t.csv", "Metadata_Kind"]);
        // No selector, no controls.
        let bare = LoadSpec {
            non_finite: NonFinitePolicy::Impute,
            ..LoadSpec::new("Metadata_Batch")
        };
        let t = ProfileTable::from_table(table(), &bare, "t").unwrap();
        assert_eq!(t.controls, None);
        assert_eq!(t.labels, None);
    }

    #[test]
    fn plate_column_is_optional() {
        let no_plate = table().project(&[0, 2, 3, 4, 5]).unwrap();
        let t = ProfileTable::from_table(no_plate, &spec(), "t.csv").unwrap();
        assert_eq!(t.plate, None);
        assert!(t.dataset().plate.is_none());
        assert_eq!(t.single_plate().unwrap(), None);
        // Present: read, and nulls are refused.
        let t = table();
        let mut cols = t.columns().to_vec();
        cols[1] = Arc::new(StringArray::from(vec![Some("p1"), Some("p1"), None, None]));
        let e = fails(RecordBatch::try_new(t.schema(), cols).unwrap(), &spec());
        assert_names(&e, LoadErrorKind::Schema, &["Metadata_Plate", "data row 3"]);
    }

    #[test]
    fn single_batch_and_plate_of_a_streamed_plate() {
        let t = ProfileTable::from_table(table(), &spec(), "m@7").unwrap();
        assert_names(
            &t.single_batch().unwrap_err(),
            LoadErrorKind::Schema,
            &["m@7", "b1", "b2", "one plate = one batch"],
        );
        assert_names(
            &t.single_plate().unwrap_err(),
            LoadErrorKind::Schema,
            &["m@7", "Metadata_Plate", "one message/file = one plate"],
        );
        let one = ProfileTable::from_table(table().slice(0, 2), &spec(), "m@7").unwrap();
        assert_eq!(one.single_batch().unwrap(), "b1");
        assert_eq!(one.single_plate().unwrap(), Some("p1"));
    }

    #[test]
    fn features_like_follows_the_first_tables_column_order() {
        let t = ProfileTable::from_table(table(), &spec(), "t.csv").unwrap();
        // The other version: features swapped, doubled, an extra column.
        let schema = Arc::new(Schema::new(vec![
            Field::new("Nuclei_B", DataType::Float64, false),
            Field::new("Extra", DataType::Float64, false),
            Field::new("Cells_A", DataType::Float64, false),
        ]));
        let other = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from(vec![20.0, 40.0, 60.0, 80.0])),
                Arc::new(Float64Array::from(vec![0.0; 4])),
                Arc::new(Float64Array::from(vec![2.0, 4.0, 6.0, 8.0])),
            ],
        )
        .unwrap();
        let x = t.features_like(&other, "u.parquet").unwrap();
        assert_eq!(x.dim(), (4, 2));
        assert_eq!(x.row(1).to_vec(), vec![4.0, 40.0]);
        let e = t
            .features_like(&other.project(&[0, 1]).unwrap(), "u.parquet")
            .unwrap_err();
        assert_names(&e, LoadErrorKind::Schema, &["u.parquet", "Cells_A"]);
        // The other version's values are refused when not finite.
        let e = t.features_like(&table(), "u.parquet").unwrap_err();
        assert_names(
            &e,
            LoadErrorKind::NonFinite,
            &["u.parquet", "Cells_A", "data row 3"],
        );
    }

    #[test]
    fn optional_and_required_extra_columns() {
        let t = ProfileTable::from_table(table(), &spec(), "t.csv").unwrap();
        assert_eq!(t.optional_column("Metadata_Compound").unwrap(), None);
        assert_eq!(
            t.optional_column("Metadata_Plate").unwrap().unwrap()[2],
            "p2"
        );
        assert_names(
            &t.column("Metadata_Treatment").unwrap_err(),
            LoadErrorKind::Schema,
            &["t.csv", "Metadata_Treatment"],
        );
    }

    #[test]
    fn spec_from_config_names_flag_and_key() {
        let s = LoadSpec::from_config(&config()).unwrap();
        assert_eq!(s.batch_col, "Metadata_Batch");
        assert_eq!(s.plate_col.as_deref(), Some("Metadata_Plate"));
        assert_eq!(s.control.as_ref().unwrap().to_string(), "Metadata_MoA=DMSO");
        assert_eq!(s.scope, Scope::Table);
        assert_eq!(s.non_finite, NonFinitePolicy::Error);
        let p = LoadSpec::for_plate(&CorrectConfig {
            non_finite: NonFinitePolicy::Impute,
            label_col: Some("Metadata_MoA".into()),
            ..config()
        })
        .unwrap();
        assert_eq!(p.scope, Scope::Plate);
        assert_eq!(p.non_finite, NonFinitePolicy::Error);
        assert_eq!(p.label_col, None);

        let e = LoadSpec::from_config(&CorrectConfig::default()).unwrap_err();
        assert_names(
            &e,
            LoadErrorKind::Schema,
            &[
                "--batch-col",
                "[correct] batch_col",
                "BALANS_CORRECT__BATCH_COL",
            ],
        );
        let e = LoadSpec::from_config(&CorrectConfig {
            exclude: Some("(".into()),
            ..config()
        })
        .unwrap_err();
        assert_names(
            &e,
            LoadErrorKind::Schema,
            &["--exclude", "[correct] exclude", "regular expression"],
        );
        let e = LoadSpec::from_config(&CorrectConfig {
            control: Some("DMSO".into()),
            ..config()
        })
        .unwrap_err();
        assert_names(
            &e,
            LoadErrorKind::Schema,
            &["--control", "[correct] control", "\"DMSO\"", "COLUMN=VALUE"],
        );
    }

    #[test]
    fn load_reads_files_and_classifies_unreadable_ones() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("plate.csv");
        std::fs::write(
            &csv,
            "Metadata_Batch,Metadata_Plate,Metadata_MoA,F1,F2\n\
             A,22123,DMSO,1,2\nA,22123,X,2,nan\nB,22124,DMSO,3,4\n",
        )
        .unwrap();
        let t = ProfileTable::load(&csv, &LoadSpec::from_config(&config()).unwrap());
        let e = t.unwrap_err();
        assert_names(
            &e,
            LoadErrorKind::NonFinite,
            &["plate.csv", "F2", "data row 2"],
        );
        let t = ProfileTable::load(
            &csv,
            &LoadSpec {
                non_finite: NonFinitePolicy::DropFeatures,
                ..LoadSpec::from_config(&config()).unwrap()
            },
        )
        .unwrap();
        assert_eq!(t.plate.as_deref().unwrap()[2], "22124");
        assert_eq!(t.columns.names, vec!["F1"]);
        for (name, bytes) in [
            ("missing.parquet", None),
            ("garbage.parquet", Some(&b"not a parquet file"[..])),
            ("plate.txt", Some(&b"a,b\n"[..])),
        ] {
            let p = dir.path().join(name);
            if let Some(b) = bytes {
                std::fs::write(&p, b).unwrap();
            }
            let e = ProfileTable::load(&p, &spec()).unwrap_err();
            assert_names(&e, LoadErrorKind::Unreadable, &[name]);
        }
    }
    #[test]
    fn lean_load_equals_load_then_release() {
        use crate::io::table::ColumnSource;
        // Oracle: `load` + `release_features` (the whole table read). A
        // Parquet file read a feature column at a time gives the same
        // matrix, labels, controls, kept and dropped columns, and the same
        // corrected table (also with a feature dropped under
        // --drop-features, and with the batch column itself a feature,
        // which reads the file whole); errors name the file, the column
        // and the row.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        table::write_table(&path, &table()).unwrap();
        let drop_spec = LoadSpec {
            non_finite: NonFinitePolicy::DropFeatures,
            ..spec()
        };
        let numeric_batch = LoadSpec {
            non_finite: NonFinitePolicy::Impute,
            ..LoadSpec::new("Nuclei_B")
        };
        for spec in [spec(), drop_spec, numeric_batch] {
            let mut want = ProfileTable::load(&path, &spec).unwrap();
            let want_shell = want.release_features();
            let (got, shell) = ProfileTable::load_lean(&path, &spec).unwrap();
            assert_eq!(got.x, want.x);
            assert_eq!(got.batch, want.batch);
            assert_eq!(got.plate, want.plate);
            assert_eq!(got.controls, want.controls);
            assert_eq!(got.labels, want.labels);
            assert_eq!(got.columns, want.columns);
            assert_eq!(got.dropped, want.dropped);
            assert_eq!(got.imputed, want.imputed);
            assert_eq!(got.table.num_rows(), 0, "feature columns released");
            let corrected = got.x.mapv(|v| v * 2.0);
            let a = shell
                .with_values(corrected.view())
                .unwrap()
                .batch()
                .unwrap();
            let b = want_shell
                .with_values(corrected.view())
                .unwrap()
                .batch()
                .unwrap();
            assert_eq!(a, b);
            let whole = table::read_table(&path).unwrap();
            let c =
                profile::replace_features(&whole, &want.columns, corrected.view(), &want.dropped)
                    .unwrap();
            assert_eq!(a, c);
        }
        let strict = LoadSpec {
            non_finite: NonFinitePolicy::Error,
            ..spec()
        };
        let e = ProfileTable::load_lean(&path, &strict).unwrap_err();
        assert_names(
            &e,
            LoadErrorKind::NonFinite,
            &["t.parquet", "Cells_A", "data row 3"],
        );
        let missing = dir.path().join("missing.parquet");
        let e = ProfileTable::load_lean(&missing, &spec()).unwrap_err();
        assert_names(&e, LoadErrorKind::Unreadable, &["missing.parquet"]);
    }
}
