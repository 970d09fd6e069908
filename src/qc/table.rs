//! QC of an offline fit, as data: the per-plate QC table of
//! `balans correct --qc` and the before/after figures of its summary.
//!
//! The daemon judges each plate as it arrives (see [`crate::qc::assess`]);
//! an offline fit sees all plates at once, so [`plate_qc`] recomputes the
//! daemon's per-plate figures from the fit (neighbour space before and
//! after correction, the plates' control gains) and judges the plates in
//! order of first appearance. [`qc_record_batch`] lays the rows out as an
//! Arrow table (one row per plate) for the table writers; the command line
//! only writes it.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use arrow_array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use ndarray::{Array2, ArrayView2};

use crate::method::fit::{Correction, Dataset};
use crate::method::params::Params;
use crate::method::preprocess::{clipped, dense_ids};
use crate::qc::mixing::{figure_rows, global_robust_scale_rows, mixing_figures_of, MixingFigures};
use crate::qc::{PlateQcRow, QcConfig};

/// Per-plate QC rows of the fit `fit` of `data` with `params`, judged with
/// `cfg` (see [`crate::qc::offline_plate_qc`] for the figures). Without a
/// plate column each batch is one plate, as in the fit.
pub fn plate_qc(
    fit: &Correction,
    data: &Dataset<'_>,
    params: &Params,
    cfg: &QcConfig,
) -> Result<Vec<PlateQcRow>> {
    let plates = data.plate.unwrap_or(data.batch);
    let n = data.batch.len();
    anyhow::ensure!(
        fit.z_before.nrows() == n && fit.y_after.nrows() == n,
        "the per-plate QC needs the fit's z_before and y_after (Keep)"
    );
    let y_before = fit.pca.transform_f32(clipped(&fit.z_before).view());
    let kind = params.index_kind();
    // The fit's plate ids are dense_ids of the same labels.
    let (plate_ids, plate_names) = dense_ids(plates);
    let gains = fit
        .normalizer
        .plate_control_gains(data.x, &plate_ids, data.controls);
    let gain_of: HashMap<&str, Option<f64>> = plate_names
        .iter()
        .map(String::as_str)
        .zip(gains.iter().copied())
        .collect();
    crate::qc::offline_plate_qc(
        y_before.view(),
        fit.y_after.view(),
        data.batch,
        plates,
        data.controls,
        &|p| gain_of.get(p).copied().flatten(),
        params.k,
        kind,
        cfg,
    )
}

/// The per-plate QC rows as one Arrow table: `plate`, `batch`, `rows`,
/// `controls`, `mixing_before`, `mixing_after`,
/// `cross_batch_distance_before`, `cross_batch_distance_after`,
/// `mean_offset`, `control_dispersion`, `control_gain` (non-finite or
/// missing figures are nulls), `history`, `outlier` and `outlier_reasons`
/// (`;`-separated).
pub fn qc_record_batch(rows: &[PlateQcRow]) -> Result<RecordBatch> {
    let f = |name: &str, t: DataType, nullable: bool| Field::new(name, t, nullable);
    let schema = Schema::new(vec![
        f("plate", DataType::Utf8, false),
        f("batch", DataType::Utf8, false),
        f("rows", DataType::UInt64, false),
        f("controls", DataType::UInt64, false),
        f("mixing_before", DataType::Float64, true),
        f("mixing_after", DataType::Float64, true),
        f("cross_batch_distance_before", DataType::Float64, true),
        f("cross_batch_distance_after", DataType::Float64, true),
        f("mean_offset", DataType::Float64, true),
        f("control_dispersion", DataType::Float64, true),
        f("control_gain", DataType::Float64, true),
        f("history", DataType::UInt64, false),
        f("outlier", DataType::Boolean, false),
        f("outlier_reasons", DataType::Utf8, false),
    ]);
    let opt = |v: f64| v.is_finite().then_some(v);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.plate.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.batch.as_str()),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.rows as u64),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.controls as u64),
        )),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| opt(r.mixing_before)),
        )),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| opt(r.mixing_after)),
        )),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| opt(r.cross_batch_distance_before)),
        )),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| opt(r.cross_batch_distance_after)),
        )),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| opt(r.mean_offset)),
        )),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| r.control_dispersion.and_then(opt)),
        )),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| r.control_gain.and_then(opt)),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.verdict.history as u64),
        )),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(r.verdict.outlier)),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| {
            r.verdict
                .reasons
                .iter()
                .map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(";")
        }))),
    ];
    Ok(RecordBatch::try_new(Arc::new(schema), cols)?)
}

/// Quick mixing figures of a fit on its non-control rows: before (the
/// features under one global robust scaling) and after (the corrected
/// standardised values). `labels` adds the label-agreement figures. Each is
/// `None` when there are too few rows to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct BeforeAfter {
    /// Before correction.
    pub before: Option<MixingFigures>,
    /// After correction.
    pub after: Option<MixingFigures>,
}

/// [`BeforeAfter`] figures of the fit `fit` of `data`; `seed` picks the
/// subsample of large tables.
pub fn before_after(
    fit: &Correction,
    data: &Dataset<'_>,
    labels: Option<&[String]>,
    seed: u64,
) -> BeforeAfter {
    let before = before_rows(data.x, data.controls, seed);
    before_after_of(fit, before.as_ref(), data.batch, labels, seed)
}

/// What [`before_after`] reads of the input features: the judged rows
/// (non-controls, at most 4000, seeded) and their values under one global
/// robust scaling (medians and MADs over all rows), every feature. Taken
/// before a fit that consumes the features
/// ([`crate::method::fit::correct_owned`]).
#[derive(Debug, Clone)]
pub struct BeforeRows {
    rows: Vec<usize>,
    scaled: Array2<f64>,
}

/// [`BeforeRows`] of the features `x` (`controls` are not judged); `None`
/// when there are too few rows to judge.
pub fn before_rows(x: ArrayView2<f64>, controls: Option<&[bool]>, seed: u64) -> Option<BeforeRows> {
    let keep: Vec<bool> = match controls {
        Some(m) => m.iter().map(|c| !c).collect(),
        None => vec![true; x.nrows()],
    };
    let rows = figure_rows(&keep, seed)?;
    let all: Vec<usize> = (0..x.ncols()).collect();
    let scaled = global_robust_scale_rows(x, &all, &rows);
    Some(BeforeRows { rows, scaled })
}

/// [`before_after`] from the [`BeforeRows`] taken before the fit.
pub fn before_after_of(
    fit: &Correction,
    before: Option<&BeforeRows>,
    batch: &[String],
    labels: Option<&[String]>,
    seed: u64,
) -> BeforeAfter {
    let (batch_ids, _) = dense_ids(batch);
    let labels = labels.map(|l| dense_ids(l).0);
    // Only the judged rows are scaled / clipped (the medians and MADs of
    // the "before" scaling are still over all rows): the same figures as
    // `mixing_figures` on the whole scaled tables, without two n x d
    // copies. The scaling is per column, so scaling every column and then
    // taking the corrected ones gives the same values.
    let Some(BeforeRows { rows, scaled }) = before else {
        return BeforeAfter {
            before: None,
            after: None,
        };
    };
    if fit.z_after.nrows() != batch.len()
        || rows.iter().any(|&r| r >= batch.len())
        || fit.varying.iter().any(|&f| f >= scaled.ncols())
    {
        return BeforeAfter {
            before: None,
            after: None,
        };
    }
    let scaled = scaled.select(ndarray::Axis(1), &fit.varying);
    let before = mixing_figures_of(scaled.view(), rows, &batch_ids, labels.as_deref(), seed);
    let after_clipped = clipped(&fit.z_after.select(ndarray::Axis(0), rows));
    let after = mixing_figures_of(
        after_clipped.view(),
        rows,
        &batch_ids,
        labels.as_deref(),
        seed,
    );
    BeforeAfter { before, after }
}

#[cfg(test)]
mod tests {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, UInt64Type};
    use arrow_array::Array;

    use super::*;
    use crate::method::fit::{correct, NoProgress};
    use crate::qc::{OutlierReason, OutlierVerdict};
    use crate::synth::{generate, SynthSpec, CONTROL_LABEL};

    fn row(plate: &str, mixing_after: f64, reasons: Vec<OutlierReason>) -> PlateQcRow {
        PlateQcRow {
            plate: plate.into(),
            batch: "b1".into(),
            rows: 10,
            controls: 2,
            mixing_before: 0.2,
            mixing_after,
            cross_batch_distance_before: 3.0,
            cross_batch_distance_after: 2.0,
            mean_offset: 1.5,
            control_dispersion: None,
            control_gain: Some(1.1),
            verdict: OutlierVerdict {
                outlier: !reasons.is_empty(),
                reasons,
                history: 5,
                scores: Vec::new(),
                extreme_values: false,
            },
        }
    }

    #[test]
    fn qc_table_layout_nulls_and_reasons() {
        let rows = [
            row("p1", 0.8, Vec::new()),
            row(
                "p2",
                f64::NAN,
                vec![OutlierReason::MeanOffset, OutlierReason::ControlGain],
            ),
        ];
        let t = qc_record_batch(&rows).unwrap();
        assert_eq!(t.num_rows(), 2);
        let names: Vec<&str> = t
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names[..4], ["plate", "batch", "rows", "controls"]);
        assert_eq!(names.len(), 14);
        let col = |n: &str| t.column(t.schema().index_of(n).unwrap()).clone();
        let mixing = col("mixing_after");
        assert_eq!(mixing.as_primitive::<Float64Type>().value(0), 0.8);
        assert!(mixing.is_null(1), "non-finite figures are nulls");
        assert!(col("control_dispersion").is_null(0));
        assert_eq!(col("history").as_primitive::<UInt64Type>().value(1), 5);
        assert!(col("outlier").as_boolean().value(1));
        assert_eq!(
            col("outlier_reasons").as_string::<i32>().value(1),
            "mean_offset;control_gain"
        );
        assert_eq!(qc_record_batch(&[]).unwrap().num_rows(), 0);
    }

    #[test]
    fn plate_qc_of_a_fit_has_one_row_per_plate() {
        let s = generate(&SynthSpec {
            rows: 600,
            batches: 3,
            features: 12,
            groups: 4,
            plates_per_batch: 2,
            controls_fraction: 0.25,
            seed: 5,
            ..SynthSpec::default()
        })
        .unwrap();
        let controls: Vec<bool> = s.label.iter().map(|l| l == CONTROL_LABEL).collect();
        let data = Dataset {
            x: s.features.view(),
            batch: &s.batch,
            plate: Some(&s.plate),
            controls: Some(&controls),
        };
        let params = Params {
            exact: true,
            ..Params::default()
        };
        let fit = correct(&data, &params, &NoProgress).unwrap();
        let rows = plate_qc(&fit, &data, &params, &QcConfig::default()).unwrap();
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[0].plate, s.plate[0], "plates in order of appearance");
        assert_eq!(rows.iter().map(|r| r.rows).sum::<usize>(), 600);
        assert!(rows.iter().all(|r| r.control_gain.is_some()));
        // Without a plate column each batch is one plate.
        let by_batch = Dataset {
            plate: None,
            ..data
        };
        let fit = correct(&by_batch, &params, &NoProgress).unwrap();
        let rows = plate_qc(&fit, &by_batch, &params, &QcConfig::default()).unwrap();
        assert_eq!(rows.len(), 3);
        let figures = before_after(&fit, &by_batch, Some(&s.label), 1);
        let (b, a) = (figures.before.unwrap(), figures.after.unwrap());
        assert!(b.label_agreement.is_some());
        assert!(a.batch_mixing > b.batch_mixing, "{b:?} -> {a:?}");
        // The same figures from rows taken before a fit that consumed the
        // features, with a constant feature (scaled, then not corrected).
        let mut x = s.features.clone();
        x.column_mut(2).fill(1.0);
        let with_constant = Dataset {
            x: x.view(),
            ..by_batch
        };
        let taken = before_rows(x.view(), Some(&controls), 1);
        let fit = crate::method::fit::correct_owned(
            x.clone(),
            &with_constant,
            &params,
            &NoProgress,
            crate::method::fit::Keep::ALL,
        )
        .unwrap();
        assert_eq!(fit.varying.len(), 11);
        assert_eq!(
            before_after_of(&fit, taken.as_ref(), &s.batch, Some(&s.label), 1),
            before_after(&fit, &with_constant, Some(&s.label), 1)
        );
        // Without the fit's z_after the QC says so instead of panicking.
        let lean = crate::method::fit::correct_keeping(
            &with_constant,
            &params,
            &NoProgress,
            crate::method::fit::Keep {
                corrected: false,
                z_before: false,
                y_after: false,
            },
        )
        .unwrap();
        assert!(plate_qc(&lean, &with_constant, &params, &QcConfig::default()).is_err());
    }
}
