//! The evaluation protocol's preprocessing: robust global scaling.
//!
//! Each feature is centred on its median and divided by its median absolute
//! deviation (raw MAD, no 1.4826 consistency factor), then clipped to
//! `±clip` (the protocol uses 50). Features whose MAD is zero carry no robust
//! signal and are dropped; the indices of the kept columns are returned so a
//! caller can keep feature names in step.

use anyhow::{bail, Result};
use ndarray::{Array2, Axis};

/// Result of [`robust_scale`].
#[derive(Debug, Clone)]
pub struct Scaled {
    /// Scaled values of the kept features (`n x kept.len()`).
    pub values: Array2<f64>,
    /// Column indices (into the input) of the kept features.
    pub kept: Vec<usize>,
}

use crate::method::preprocess::median_inplace as median;

/// Robust global scaling: `(x - median) / MAD`, clipped to `±clip`, zero-MAD
/// features dropped. Errors on empty or non-finite input, naming the cell.
pub fn robust_scale(x: &Array2<f64>, clip: f64) -> Result<Scaled> {
    let (n, d) = x.dim();
    if n == 0 || d == 0 {
        bail!("robust_scale: empty matrix ({n} rows x {d} columns)");
    }
    if let Some(((r, c), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        bail!("robust_scale: non-finite value {v} at row {r}, feature column {c}");
    }
    let mut kept = Vec::new();
    let mut cols = Vec::new();
    for (j, col) in x.axis_iter(Axis(1)).enumerate() {
        let mut v = col.to_vec();
        let med = median(&mut v);
        let mut dev: Vec<f64> = col.iter().map(|a| (a - med).abs()).collect();
        let mad = median(&mut dev);
        if mad > 0.0 {
            kept.push(j);
            cols.push(col.mapv(|a| ((a - med) / mad).clamp(-clip, clip)));
        }
    }
    let mut values = Array2::zeros((n, kept.len()));
    for (j, c) in cols.into_iter().enumerate() {
        values.column_mut(j).assign(&c);
    }
    Ok(Scaled { values, kept })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn scales_clips_and_drops_zero_mad() {
        let x = array![
            [1.0, 5.0, 0.0],
            [2.0, 5.0, 0.0],
            [3.0, 5.0, 0.0],
            [1000.0, 5.0, 1.0]
        ];
        let s = robust_scale(&x, 50.0).unwrap();
        assert_eq!(s.kept, vec![0]);
        // median 2.5, |dev| = 1.5,0.5,0.5,997.5 -> MAD 1.0
        assert_eq!(s.values.column(0).to_vec(), vec![-1.5, -0.5, 0.5, 50.0]);
    }

    #[test]
    fn rejects_nan_with_position() {
        let x = array![[1.0, f64::NAN]];
        let err = robust_scale(&x, 50.0).unwrap_err().to_string();
        assert!(err.contains("row 0") && err.contains("column 1"), "{err}");
    }
}
