//! pycytominer conventions over an Arrow table.
//!
//! `Metadata_*` columns are annotations and pass through untouched; every
//! other numeric column (integers or floats) is a *feature*, unless an
//! `--exclude` regex names it. This module picks the features, copies them
//! into an `n x d` matrix (applying the non-finite policy), reads label
//! columns as strings, and writes corrected values back in each column's
//! original type. Every error names the source file, the column and, for
//! values, the 1-based data row (the CSV line number minus the header), and
//! is classified as a [`LoadError`] (see [`crate::io::error`]).
//!
//! Most callers load a whole table with [`crate::io::dataset`], which
//! composes these steps. The `anyhow` forms ([`feature_columns`],
//! [`feature_matrix`], [`text_column`], [`control_mask`]) are for callers
//! that do not classify failures; their messages are those of the typed
//! forms.

use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, Float32Array, Float64Array, PrimitiveArray, RecordBatch};
use arrow_schema::{DataType, Schema, SchemaRef};
use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::io::error::LoadError;
use crate::io::table::{ColumnSource, METADATA_PREFIX};
use crate::method::preprocess::median_inplace;

/// The feature columns of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureColumns {
    /// Column positions in the table.
    pub indices: Vec<usize>,
    /// Column names.
    pub names: Vec<String>,
}

/// What to do with null, NaN or infinite feature values.
///
/// Also the `[correct] non_finite` configuration key (`BALANS_CORRECT__NON_FINITE`),
/// spelled `"error"`, `"impute"` or `"drop-features"`; `balans correct`'s
/// `--impute` and `--drop-features` flags set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NonFinitePolicy {
    /// Refuse the table, naming the column and row (default).
    #[default]
    Error,
    /// Replace with the column's median of finite values.
    Impute,
    /// Remove the feature columns that have any non-finite value.
    DropFeatures,
}

/// Features as a dense matrix.
#[derive(Debug, Clone)]
pub struct FeatureMatrix {
    /// n x d values.
    pub values: Array2<f64>,
    /// The columns kept (after `DropFeatures`).
    pub columns: FeatureColumns,
    /// Columns removed by `DropFeatures`.
    pub dropped: Vec<String>,
    /// Values replaced by `Impute`.
    pub imputed: usize,
}

fn is_numeric(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float32
            | DataType::Float64
    )
}

/// Numeric non-`Metadata_` columns not matched by `exclude`, in table order.
/// A [`LoadErrorKind::Schema`](crate::io::error::LoadErrorKind::Schema)
/// error when there is none.
pub fn select_features(
    batch: &RecordBatch,
    exclude: Option<&regex::Regex>,
    source: &str,
) -> Result<FeatureColumns, LoadError> {
    let mut indices = Vec::new();
    let mut names = Vec::new();
    for (i, f) in batch.schema().fields().iter().enumerate() {
        let name = f.name();
        if name.starts_with(METADATA_PREFIX) || !is_numeric(f.data_type()) {
            continue;
        }
        if exclude.is_some_and(|r| r.is_match(name)) {
            continue;
        }
        indices.push(i);
        names.push(name.clone());
    }
    if indices.is_empty() {
        return Err(LoadError::schema(format!(
            "{source}: no feature columns (numeric columns whose name does not start with {METADATA_PREFIX}{})",
            if exclude.is_some() { " and not matched by --exclude" } else { "" }
        )));
    }
    Ok(FeatureColumns { indices, names })
}

/// Non-`Metadata_` columns that are not numeric: they pass through
/// uncorrected (a table of text annotations without the prefix, or a
/// feature read as text); the loader warns about them.
pub(crate) fn text_non_metadata(batch: &RecordBatch) -> Vec<String> {
    batch
        .schema()
        .fields()
        .iter()
        .filter(|f| !f.name().starts_with(METADATA_PREFIX) && !is_numeric(f.data_type()))
        .map(|f| f.name().clone())
        .collect()
}

/// Column values as f64 with nulls as NaN.
fn column_f64(col: &ArrayRef) -> Option<Vec<f64>> {
    fn conv<T: arrow_array::ArrowPrimitiveType>(
        a: &PrimitiveArray<T>,
        f: impl Fn(T::Native) -> f64,
    ) -> Vec<f64> {
        (0..a.len())
            .map(|i| {
                if a.is_null(i) {
                    f64::NAN
                } else {
                    f(a.value(i))
                }
            })
            .collect()
    }
    Some(match col.data_type() {
        DataType::Float64 => conv(col.as_primitive::<Float64Type>(), |v| v),
        DataType::Float32 => conv(col.as_primitive::<Float32Type>(), |v| v as f64),
        DataType::Int64 => conv(col.as_primitive::<Int64Type>(), |v| v as f64),
        DataType::Int32 => conv(col.as_primitive::<Int32Type>(), |v| v as f64),
        DataType::Int16 => conv(col.as_primitive::<Int16Type>(), |v| v as f64),
        DataType::Int8 => conv(col.as_primitive::<Int8Type>(), |v| v as f64),
        DataType::UInt64 => conv(col.as_primitive::<UInt64Type>(), |v| v as f64),
        DataType::UInt32 => conv(col.as_primitive::<UInt32Type>(), |v| v as f64),
        DataType::UInt16 => conv(col.as_primitive::<UInt16Type>(), |v| v as f64),
        DataType::UInt8 => conv(col.as_primitive::<UInt8Type>(), |v| v as f64),
        _ => return None,
    })
}

/// The columns of `other` named `names`, in that order: the features of a
/// second version of a table (a baseline, a later run) lined up with the
/// first one's. A [`Schema`](crate::io::error::LoadErrorKind::Schema) error
/// names the first missing column.
pub fn columns_like(
    other: &RecordBatch,
    names: &[String],
    source: &str,
) -> Result<FeatureColumns, LoadError> {
    let schema = other.schema();
    let indices = names
        .iter()
        .map(|name| {
            schema
                .column_with_name(name)
                .map(|(i, _)| i)
                .ok_or_else(|| {
                    LoadError::schema(format!("{source}: missing feature column '{name}'"))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FeatureColumns {
        indices,
        names: names.to_vec(),
    })
}

/// The message of an empty table.
pub(crate) fn no_rows(source: &str) -> LoadError {
    LoadError::empty(format!("{source}: the table has no rows"))
}

/// Copy the features `cols` into an n x d matrix, applying `policy`.
///
/// Errors: [`Empty`](crate::io::error::LoadErrorKind::Empty) for a table
/// without rows; [`NonFinite`](crate::io::error::LoadErrorKind::NonFinite)
/// for a value `policy` refuses (naming column, data row and value), a
/// column with nothing to impute from, or no column left after dropping;
/// [`Schema`](crate::io::error::LoadErrorKind::Schema) for a column that is
/// not numeric.
pub fn extract_features(
    batch: &RecordBatch,
    cols: FeatureColumns,
    policy: NonFinitePolicy,
    source: &str,
) -> Result<FeatureMatrix, LoadError> {
    let rules = ValueRules {
        non_finite: policy,
        ..ValueRules::default()
    };
    extract_features_with(batch, cols, &rules, source)
}

/// The default of [`ValueRules::max_abs_value`] (`[correct]
/// max_abs_value`): 1e12. Raw CellProfiler features reach about 1e8
/// (integrated intensities, areas in pixels), normalised ones are O(1-100);
/// 1e12 leaves four orders of magnitude of margin above the largest real
/// feature while still refusing the values that only a damaged file or a
/// unit error produces (a single 1e300 moved other rows by 8.6 SD).
pub const DEFAULT_MAX_ABS_VALUE: f64 = 1e12;

/// What feature values are accepted: the non-finite policy and a magnitude
/// bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueRules {
    /// Null, NaN and infinite values.
    pub non_finite: NonFinitePolicy,
    /// A finite value whose magnitude exceeds this is refused
    /// ([`OutOfRange`](crate::io::error::LoadErrorKind::OutOfRange)); `inf`
    /// turns the check off.
    pub max_abs_value: f64,
    /// Whether messages may suggest `balans correct`'s flags (`--impute`,
    /// `--max-abs-value`): not for the daemon, which has none of them.
    pub flag_hints: bool,
}

impl Default for ValueRules {
    fn default() -> Self {
        ValueRules {
            non_finite: NonFinitePolicy::Error,
            max_abs_value: DEFAULT_MAX_ABS_VALUE,
            flag_hints: true,
        }
    }
}

/// [`extract_features`] under `rules`: also refuses, naming column, data
/// row and value, a finite value above [`ValueRules::max_abs_value`].
pub fn extract_features_with(
    batch: &RecordBatch,
    cols: FeatureColumns,
    rules: &ValueRules,
    source: &str,
) -> Result<FeatureMatrix, LoadError> {
    let column = |ci: usize| Ok(batch.column(ci).clone());
    extract_features_from(batch.num_rows(), &column, cols, rules, source)
}

/// [`extract_features_with`] of a table of `n` rows whose column `ci` is
/// `column(ci)`, asked for once per feature column and dropped once
/// copied: a reader can hand out columns one at a time (a Parquet file by
/// column projection), so the feature values are held once, in the matrix.
pub fn extract_features_from(
    n: usize,
    column: &(dyn Fn(usize) -> Result<ArrayRef, LoadError> + Sync),
    cols: FeatureColumns,
    rules: &ValueRules,
    source: &str,
) -> Result<FeatureMatrix, LoadError> {
    if n == 0 {
        return Err(no_rows(source));
    }
    // Each column is converted, checked and written straight into its
    // column of the matrix, in parallel: no second full copy of the
    // features besides the Arrow table. Outcomes are then read in column
    // order, so the first refused column is the one reported, as in a
    // sequential pass.
    let mut values = Array2::<f64>::zeros((n, cols.indices.len()));
    let outcomes: Vec<Result<Column, LoadError>> = values
        .axis_iter_mut(Axis(1))
        .into_par_iter()
        .zip(cols.indices.par_iter().zip(cols.names.par_iter()))
        .map(|(mut out, (&ci, name))| {
            let col = column(ci)?;
            if col.len() != n {
                return Err(LoadError::unreadable(&anyhow::anyhow!(
                    "{source}: column '{name}' has {} rows, the table {n}",
                    col.len()
                )));
            }
            let v = checked_column(&col, name, rules, source)?;
            drop(col);
            if let Column::Kept { .. } = v.0 {
                for (o, x) in out.iter_mut().zip(&v.1) {
                    *o = *x;
                }
            }
            Ok(v.0)
        })
        .collect();
    let mut kept = FeatureColumns {
        indices: Vec::new(),
        names: Vec::new(),
    };
    let mut keep_at = Vec::new();
    let mut dropped = Vec::new();
    let mut imputed = 0usize;
    for (j, outcome) in outcomes.into_iter().enumerate() {
        match outcome? {
            Column::Kept { imputed: i } => {
                imputed += i;
                keep_at.push(j);
                kept.indices.push(cols.indices[j]);
                kept.names.push(cols.names[j].clone());
            }
            Column::Dropped => dropped.push(cols.names[j].clone()),
        }
    }
    if kept.indices.is_empty() {
        return Err(LoadError::non_finite(format!(
            "{source}: every feature column has non-finite values (all dropped)"
        )));
    }
    if keep_at.len() < values.ncols() {
        values = values.select(Axis(1), &keep_at);
    }
    Ok(FeatureMatrix {
        values,
        columns: kept,
        dropped,
        imputed,
    })
}

/// What became of one feature column.
enum Column {
    /// Kept, with this many values imputed.
    Kept { imputed: usize },
    /// Removed under [`NonFinitePolicy::DropFeatures`].
    Dropped,
}

/// One feature column as f64 values under `rules`: non-finite values
/// refused, imputed or the column dropped; out-of-range values refused.
fn checked_column(
    col: &ArrayRef,
    name: &str,
    rules: &ValueRules,
    source: &str,
) -> Result<(Column, Vec<f64>), LoadError> {
    let mut v = column_f64(col)
        .ok_or_else(|| LoadError::schema(format!("{source}: column '{name}' is not numeric")))?;
    let n = v.len();
    let mut imputed = 0;
    let bad: Vec<usize> = (0..n).filter(|&r| !v[r].is_finite()).collect();
    if !bad.is_empty() {
        match rules.non_finite {
            NonFinitePolicy::Error => {
                return Err(LoadError::non_finite(format!(
                    "{source}: column '{name}', data row {}: value is {} ({} non-finite value(s) in this column){}",
                    bad[0] + 1,
                    describe(col, bad[0], v[bad[0]]),
                    bad.len(),
                    if rules.flag_hints {
                        "; use --impute or --drop-features to proceed"
                    } else {
                        ""
                    }
                )))
            }
            NonFinitePolicy::DropFeatures => return Ok((Column::Dropped, Vec::new())),
            NonFinitePolicy::Impute => {
                let mut finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
                if finite.is_empty() {
                    return Err(LoadError::non_finite(format!(
                        "{source}: column '{name}' has no finite value to impute from"
                    )));
                }
                let med = median_inplace(&mut finite);
                for &r in &bad {
                    v[r] = med;
                }
                imputed = bad.len();
            }
        }
    }
    let big: Vec<usize> = (0..n)
        .filter(|&r| v[r].abs() > rules.max_abs_value)
        .collect();
    if let Some(&r) = big.first() {
        return Err(LoadError::out_of_range(format!(
            "{source}: column '{name}', data row {}: value {} is beyond the bound of \
             {:e} in magnitude ({} such value(s) in this column); check the input, or raise \
             {}[correct] max_abs_value",
            r + 1,
            v[r],
            rules.max_abs_value,
            big.len(),
            if rules.flag_hints {
                "--max-abs-value / "
            } else {
                ""
            }
        )));
    }
    Ok((Column::Kept { imputed }, v))
}

fn describe(col: &ArrayRef, row: usize, v: f64) -> String {
    if col.is_null(row) {
        "null (empty)".to_string()
    } else {
        format!("{v}")
    }
}

/// A column rendered as strings (any type), e.g. batch or plate labels.
/// [`Schema`](crate::io::error::LoadErrorKind::Schema) errors: no such
/// column (the message lists the metadata columns present), or a null value
/// (naming the data row).
pub fn text_column(
    batch: &RecordBatch,
    name: &str,
    source: &str,
) -> Result<Vec<String>, LoadError> {
    let schema = batch.schema();
    let Some((idx, _)) = schema.column_with_name(name) else {
        let meta: Vec<&str> = schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .filter(|n| n.starts_with(METADATA_PREFIX))
            .collect();
        return Err(LoadError::schema(format!(
            "{source}: no column '{name}' (metadata columns present: {})",
            if meta.is_empty() {
                "none".to_string()
            } else {
                meta.join(", ")
            }
        )));
    };
    let col = batch.column(idx);
    let opts = arrow_cast::display::FormatOptions::default();
    let fmt = arrow_cast::display::ArrayFormatter::try_new(col.as_ref(), &opts).map_err(|e| {
        LoadError::schema(format!(
            "{source}: cannot render column '{name}' as text: {e}"
        ))
    })?;
    (0..col.len())
        .map(|r| {
            if col.is_null(r) {
                return Err(LoadError::schema(format!(
                    "{source}: column '{name}', data row {}: value is empty (null)",
                    r + 1
                )));
            }
            Ok(fmt.value(r).to_string())
        })
        .collect()
}

/// Write corrected values back: same schema (minus `drop`), same order, each
/// feature column in its original type. Integer columns are rounded and
/// *saturated*: a corrected value outside the type's range (below 0 in an
/// unsigned column, say) becomes the nearest value the type can hold, never
/// a null, and the number of such values is logged as a warning per column.
pub fn replace_features(
    batch: &RecordBatch,
    columns: &FeatureColumns,
    values: ArrayView2<f64>,
    drop: &[String],
) -> Result<RecordBatch> {
    let shell = TableShell::new(batch, columns, drop);
    let out = shell.with_values(values.reborrow())?.batch();
    out
}

/// What a corrected table keeps of the table as read, without the feature
/// values (they are in the feature matrix): the output schema (the
/// input's, without the dropped features) and every pass-through column.
/// [`TableShell::with_values`] gives the corrected table column by column
/// ([`CorrectedColumns`]).
#[derive(Debug, Clone)]
pub struct TableShell {
    schema: SchemaRef,
    columns: Vec<ShellColumn>,
    features: usize,
    rows: usize,
}

#[derive(Debug, Clone)]
enum ShellColumn {
    /// A column that passes through.
    Rest(ArrayRef),
    /// Feature `j` (column j of the values).
    Feature(usize),
}

impl TableShell {
    /// The shell of `batch`, whose features are `columns`, without the
    /// features named in `drop`.
    pub fn new(batch: &RecordBatch, columns: &FeatureColumns, drop: &[String]) -> TableShell {
        let schema = batch.schema();
        let rest = |i: usize, _: &str| Some(batch.column(i).clone());
        TableShell::from_parts(&schema, batch.num_rows(), columns, drop, &rest)
    }

    /// The shell of a table of `rows` rows with `schema`, whose features
    /// are `columns` (positions in `schema`), without the features named
    /// in `drop`; `rest(position, name)` gives each other column. A column
    /// `rest` does not give is written as nulls (never the case for a table
    /// the loader read).
    pub fn from_parts(
        schema: &SchemaRef,
        rows: usize,
        columns: &FeatureColumns,
        drop: &[String],
        rest: &dyn Fn(usize, &str) -> Option<ArrayRef>,
    ) -> TableShell {
        let kept: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| !drop.iter().any(|d| d == schema.field(i).name()))
            .collect();
        let out = kept
            .iter()
            .map(|&i| match columns.indices.iter().position(|&c| c == i) {
                Some(j) => ShellColumn::Feature(j),
                None => {
                    let f = schema.field(i);
                    ShellColumn::Rest(
                        rest(i, f.name())
                            .unwrap_or_else(|| arrow_array::new_null_array(f.data_type(), rows)),
                    )
                }
            })
            .collect();
        let fields: Vec<_> = kept.iter().map(|&i| schema.fields()[i].clone()).collect();
        TableShell {
            schema: Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
            columns: out,
            features: columns.indices.len(),
            rows,
        }
    }

    /// The corrected table with `values` (`rows x features`, in the
    /// feature order of [`FeatureColumns`]) over the features.
    pub fn with_values<'a>(&'a self, values: ArrayView2<'a, f64>) -> Result<CorrectedColumns<'a>> {
        anyhow::ensure!(
            values.nrows() == self.rows && values.ncols() == self.features,
            "corrected values are {} x {}, expected {} x {}",
            values.nrows(),
            values.ncols(),
            self.rows,
            self.features
        );
        Ok(CorrectedColumns {
            shell: self,
            values,
        })
    }
}

/// A corrected table ([`TableShell::with_values`]) for the table writers:
/// each feature column is converted to its original type only when it is
/// asked for ([`ColumnSource`]), so a Parquet write never holds the whole
/// output table.
pub struct CorrectedColumns<'a> {
    shell: &'a TableShell,
    values: ArrayView2<'a, f64>,
}

impl CorrectedColumns<'_> {
    fn make(&self, i: usize, start: usize, len: usize) -> Result<ArrayRef> {
        let Some(col) = self.shell.columns.get(i) else {
            anyhow::bail!("corrected table: no column {i}");
        };
        let j = match col {
            ShellColumn::Rest(a) => return Ok(a.slice(start, len)),
            ShellColumn::Feature(j) => *j,
        };
        let f = self.shell.schema.field(i);
        let v: Vec<f64> = self
            .values
            .slice(ndarray::s![start..start + len, j])
            .to_vec();
        let (arr, clamped) = saturating_array(&v, f.data_type())
            .with_context(|| format!("corrected column '{}'", f.name()))?;
        if clamped > 0 {
            tracing::warn!(
                column = %f.name(),
                r#type = %f.data_type(),
                clamped,
                "corrected values outside the column type's range were clamped to it"
            );
        }
        Ok(arr)
    }
}

impl ColumnSource for CorrectedColumns<'_> {
    fn schema(&self) -> SchemaRef {
        self.shell.schema.clone()
    }
    fn rows(&self) -> usize {
        self.values.nrows()
    }
    fn column(&self, i: usize, start: usize, len: usize) -> Result<ArrayRef> {
        self.make(i, start, len)
    }
    /// Feature columns are converted in parallel (independent columns).
    fn batch(&self) -> Result<RecordBatch> {
        let n = self.values.nrows();
        let arrays: Vec<ArrayRef> = (0..self.shell.columns.len())
            .into_par_iter()
            .map(|i| self.make(i, 0, n))
            .collect::<Result<_>>()?;
        Ok(RecordBatch::try_new(self.shell.schema.clone(), arrays)?)
    }
}

/// `v` as an array of type `t`, and how many values had to be clamped to
/// its range. Floats are converted as is; integers are rounded, then
/// saturated (Rust's `as` from a float clamps to the target's range).
fn saturating_array(v: &[f64], t: &DataType) -> Result<(ArrayRef, usize)> {
    fn ints<T: arrow_array::ArrowPrimitiveType>(
        v: &[f64],
        min: f64,
        max: f64,
        conv: impl Fn(f64) -> T::Native,
    ) -> (ArrayRef, usize) {
        let clamped = v
            .iter()
            .filter(|x| x.round() < min || x.round() > max)
            .count();
        let arr = PrimitiveArray::<T>::from_iter_values(v.iter().map(|x| conv(x.round())));
        (Arc::new(arr), clamped)
    }
    Ok(match t {
        DataType::Float64 => (Arc::new(Float64Array::from(v.to_vec())), 0),
        DataType::Float32 => (
            Arc::new(Float32Array::from(
                v.iter().map(|x| *x as f32).collect::<Vec<_>>(),
            )),
            0,
        ),
        DataType::Int64 => ints::<Int64Type>(v, i64::MIN as f64, i64::MAX as f64, |x| x as i64),
        DataType::Int32 => ints::<Int32Type>(v, i32::MIN.into(), i32::MAX.into(), |x| x as i32),
        DataType::Int16 => ints::<Int16Type>(v, i16::MIN.into(), i16::MAX.into(), |x| x as i16),
        DataType::Int8 => ints::<Int8Type>(v, i8::MIN.into(), i8::MAX.into(), |x| x as i8),
        DataType::UInt64 => ints::<UInt64Type>(v, 0.0, u64::MAX as f64, |x| x as u64),
        DataType::UInt32 => ints::<UInt32Type>(v, 0.0, u32::MAX.into(), |x| x as u32),
        DataType::UInt16 => ints::<UInt16Type>(v, 0.0, u16::MAX.into(), |x| x as u16),
        DataType::UInt8 => ints::<UInt8Type>(v, 0.0, u8::MAX.into(), |x| x as u8),
        t => anyhow::bail!("cannot write a feature back to type {t}"),
    })
}

/// Negative-control selector `COLUMN=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSelector {
    /// Column.
    pub column: String,
    /// Value marking controls.
    pub value: String,
}

impl ControlSelector {
    /// Parse `COLUMN=VALUE` (the column trimmed, the value kept as given); a
    /// [`Schema`](crate::io::error::LoadErrorKind::Schema) error otherwise.
    pub fn parse(s: &str) -> Result<ControlSelector, LoadError> {
        match s.split_once('=') {
            Some((c, v)) if !c.trim().is_empty() => Ok(ControlSelector {
                column: c.trim().to_string(),
                value: v.to_string(),
            }),
            _ => Err(LoadError::schema(format!(
                "control selector {s:?} is not COLUMN=VALUE (e.g. Metadata_MoA=DMSO)"
            ))),
        }
    }
}

impl std::fmt::Display for ControlSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.column, self.value)
    }
}

impl std::str::FromStr for ControlSelector {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(ControlSelector::parse(s)?)
    }
}

/// Rows whose `sel.column` renders as `sel.value` (nulls never match). A
/// [`Schema`](crate::io::error::LoadErrorKind::Schema) error when the table
/// has no such column; no matching row is *not* an error here (see
/// [`crate::io::dataset::Scope`]).
pub fn control_rows(
    batch: &RecordBatch,
    sel: &ControlSelector,
    source: &str,
) -> Result<Vec<bool>, LoadError> {
    let schema = batch.schema();
    let Some((idx, _)) = schema.column_with_name(&sel.column) else {
        return Err(LoadError::schema(format!(
            "{source}: no column '{}' (from the control selector)",
            sel.column
        )));
    };
    let col = batch.column(idx);
    let opts = arrow_cast::display::FormatOptions::default();
    let fmt = arrow_cast::display::ArrayFormatter::try_new(col.as_ref(), &opts).map_err(|e| {
        LoadError::schema(format!(
            "{source}: cannot render column '{}' as text: {e}",
            sel.column
        ))
    })?;
    Ok((0..col.len())
        .map(|r| !col.is_null(r) && fmt.value(r).to_string() == sel.value)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::Field;

    fn table() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("Metadata_Plate", DataType::Utf8, true),
            Field::new("Cells_A", DataType::Float64, true),
            Field::new("Metadata_Dose", DataType::Float64, true),
            Field::new("Cells_B", DataType::Float32, true),
            Field::new("Nuclei_Count", DataType::Int64, true),
            Field::new("Cells_Location_X", DataType::Float64, true),
            Field::new("Note", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["p1", "p1", "p2"])),
                Arc::new(Float64Array::from(vec![Some(1.0), None, Some(3.0)])),
                Arc::new(Float64Array::from(vec![0.1, 0.2, 0.3])),
                Arc::new(Float32Array::from(vec![1.5f32, 2.5, f32::NAN])),
                Arc::new(Int64Array::from(vec![10, 20, 30])),
                Arc::new(Float64Array::from(vec![5.0, 6.0, 7.0])),
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn features_are_numeric_non_metadata_minus_excluded() {
        let t = table();
        let re = regex::Regex::new("_Location_").unwrap();
        let f = select_features(&t, Some(&re), "t.csv").unwrap();
        assert_eq!(f.names, vec!["Cells_A", "Cells_B", "Nuclei_Count"]);
        assert_eq!(f.indices, vec![1, 3, 4]);
    }

    #[test]
    fn non_finite_policies() {
        let t = table();
        let f = select_features(&t, None, "t.csv").unwrap();
        let e = extract_features(&t, f.clone(), NonFinitePolicy::Error, "t.csv").unwrap_err();
        let msg = format!("{e}");
        assert!(
            msg.contains("t.csv") && msg.contains("Cells_A") && msg.contains("data row 2"),
            "{msg}"
        );
        let m = extract_features(&t, f.clone(), NonFinitePolicy::Impute, "t.csv").unwrap();
        assert_eq!(m.imputed, 2);
        assert_eq!(m.values[[1, 0]], 2.0);
        assert_eq!(m.values[[2, 1]], 2.0);
        let m = extract_features(&t, f, NonFinitePolicy::DropFeatures, "t.csv").unwrap();
        assert_eq!(m.dropped, vec!["Cells_A", "Cells_B"]);
        assert_eq!(m.columns.names, vec!["Nuclei_Count", "Cells_Location_X"]);
    }

    #[test]
    fn replace_keeps_types_order_and_metadata() {
        let t = table();
        let f = select_features(&t, None, "t.csv").unwrap();
        let m = extract_features(&t, f, NonFinitePolicy::Impute, "t.csv").unwrap();
        let mut v = m.values.clone();
        v.mapv_inplace(|x| x + 0.6);
        let out = replace_features(&t, &m.columns, v.view(), &[]).unwrap();
        assert_eq!(out.schema().fields().len(), 7);
        for (a, b) in out.schema().fields().iter().zip(t.schema().fields()) {
            assert_eq!(a.name(), b.name());
            assert_eq!(a.data_type(), b.data_type());
        }
        let counts = out.column(4).as_primitive::<Int64Type>();
        assert_eq!(counts.value(0), 11, "integers rounded");
        assert_eq!(
            out.column(0).as_ref(),
            t.column(0).as_ref(),
            "metadata untouched"
        );
        assert_eq!(out.column(6).as_ref(), t.column(6).as_ref());
        let dropped = replace_features(&t, &m.columns, v.view(), &["Note".to_string()]).unwrap();
        assert_eq!(dropped.num_columns(), 6);
    }

    #[test]
    fn integers_are_saturated_never_null() {
        let v = [-3.4, 0.4, 70000.0, 12.6];
        let (a, clamped) = saturating_array(&v, &DataType::UInt16).unwrap();
        let a = a.as_primitive::<UInt16Type>();
        assert_eq!(a.null_count(), 0);
        assert_eq!(a.values().to_vec(), vec![0, 0, u16::MAX, 13]);
        assert_eq!(clamped, 2);
        let (a, clamped) = saturating_array(&[-1e30, 1e30], &DataType::Int64).unwrap();
        let a = a.as_primitive::<Int64Type>();
        assert_eq!(a.values().to_vec(), vec![i64::MIN, i64::MAX]);
        assert_eq!(clamped, 2);
        let (_, clamped) = saturating_array(&[-1e30], &DataType::Float32).unwrap();
        assert_eq!(clamped, 0);
    }

    #[test]
    fn values_beyond_the_bound_are_out_of_range() {
        let t = table();
        let f = select_features(&t, None, "t.csv").unwrap();
        let rules = ValueRules {
            non_finite: NonFinitePolicy::Impute,
            max_abs_value: 25.0,
            flag_hints: false,
        };
        let e = extract_features_with(&t, f, &rules, "t.csv").unwrap_err();
        assert_eq!(e.kind(), crate::io::error::LoadErrorKind::OutOfRange);
        let msg = e.to_string();
        assert!(
            msg.contains("t.csv") && msg.contains("Nuclei_Count") && msg.contains("data row 3"),
            "{msg}"
        );
        assert!(!msg.contains("--max-abs-value"), "{msg}");
    }

    #[test]
    fn string_columns_and_controls() {
        let t = table();
        assert_eq!(
            text_column(&t, "Metadata_Dose", "t").unwrap(),
            vec!["0.1", "0.2", "0.3"]
        );
        let e = text_column(&t, "Metadata_Batch", "t.parquet").unwrap_err();
        let msg = format!("{e}");
        assert!(
            msg.contains("Metadata_Batch")
                && msg.contains("t.parquet")
                && msg.contains("Metadata_Plate")
        );
        let sel: ControlSelector = "Metadata_Plate=p2".parse().unwrap();
        assert_eq!(
            control_rows(&t, &sel, "t").unwrap(),
            vec![false, false, true]
        );
        assert!("nonsense".parse::<ControlSelector>().is_err());
        assert!(control_rows(&t, &"Metadata_X=1".parse().unwrap(), "t").is_err());
    }

    #[test]
    fn empty_table_is_an_error() {
        let t = table().slice(0, 0);
        let f = select_features(&t, None, "e.csv").unwrap();
        let e = extract_features(&t, f, NonFinitePolicy::Error, "e.csv").unwrap_err();
        assert!(format!("{e}").contains("no rows"));
    }
}
