//! Not-same-compound (NSC) and not-same-compound-or-batch (NSCB) MoA
//! classification accuracy (Ljosa et al. 2013).
//!
//! Each treatment (compound at a concentration) is summarised by the
//! per-feature median of its wells. Every treatment is then classified by its
//! nearest other treatment under cosine similarity: for NSC the neighbour
//! must be a different compound, for NSCB additionally share no batch with
//! the query (batches of a treatment = the batches of its wells). The score
//! is the share of queries whose neighbour has the same mechanism of action;
//! queries without an admissible neighbour are not counted. Ties go to the
//! lower treatment index (sorted treatment names).

use super::labels::Codes;
use anyhow::{bail, Result};
use ndarray::{Array1, Array2};

/// NSC / NSCB accuracies.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct NscResult {
    /// NSC accuracy, `None` if no treatment had an admissible neighbour.
    pub nsc: Option<f64>,
    /// NSCB accuracy, `None` if no treatment had an admissible neighbour.
    pub nscb: Option<f64>,
    /// Treatments scored for NSC.
    pub n_nsc: usize,
    /// Treatments scored for NSCB.
    pub n_nscb: usize,
}

use crate::method::preprocess::median_inplace as median;

/// Compute NSC and NSCB. All label slices describe the rows of `x`.
pub fn nsc(
    x: &Array2<f64>,
    treatment: &Codes,
    compound: &Codes,
    moa: &Codes,
    batch: &Codes,
) -> Result<NscResult> {
    let n = x.nrows();
    for (name, c) in [
        ("treatment", treatment),
        ("compound", compound),
        ("MoA", moa),
        ("batch", batch),
    ] {
        if c.codes.len() != n {
            bail!("NSC: {name} has {} values for {n} rows", c.codes.len());
        }
    }
    let members = treatment.members();
    let t = members.len();
    let d = x.ncols();
    let mut profiles = Array2::zeros((t, d));
    let mut t_compound = vec![0; t];
    let mut t_moa = vec![0; t];
    let mut t_batches: Vec<Vec<usize>> = vec![Vec::new(); t];
    for (ti, rows) in members.iter().enumerate() {
        let first = rows[0];
        t_compound[ti] = compound.codes[first];
        t_moa[ti] = moa.codes[first];
        for &r in rows {
            if compound.codes[r] != t_compound[ti] || moa.codes[r] != t_moa[ti] {
                bail!(
                    "NSC: treatment '{}' mixes compounds or MoAs (row {r})",
                    treatment.levels[ti]
                );
            }
            t_batches[ti].push(batch.codes[r]);
        }
        t_batches[ti].sort_unstable();
        t_batches[ti].dedup();
        for j in 0..d {
            let mut v: Vec<f64> = rows.iter().map(|&r| x[[r, j]]).collect();
            profiles[[ti, j]] = median(&mut v);
        }
    }
    let norms: Array1<f64> = profiles
        .rows()
        .into_iter()
        .map(|r| r.dot(&r).sqrt())
        .collect();
    let sim = |a: usize, b: usize| {
        let den = norms[a] * norms[b];
        if den == 0.0 {
            0.0
        } else {
            profiles.row(a).dot(&profiles.row(b)) / den
        }
    };
    let disjoint = |a: &[usize], b: &[usize]| !a.iter().any(|v| b.contains(v));
    let score = |need_other_batch: bool| {
        let mut hits = 0;
        let mut total = 0;
        for q in 0..t {
            let mut best: Option<(f64, usize)> = None;
            for c in 0..t {
                if c == q || t_compound[c] == t_compound[q] {
                    continue;
                }
                if need_other_batch && !disjoint(&t_batches[q], &t_batches[c]) {
                    continue;
                }
                let s = sim(q, c);
                if best.is_none_or(|(bs, _)| s > bs) {
                    best = Some((s, c));
                }
            }
            if let Some((_, c)) = best {
                total += 1;
                if t_moa[c] == t_moa[q] {
                    hits += 1;
                }
            }
        }
        (
            if total > 0 {
                Some(hits as f64 / total as f64)
            } else {
                None
            },
            total,
        )
    };
    let (nsc, n_nsc) = score(false);
    let (nscb, n_nscb) = score(true);
    Ok(NscResult {
        nsc,
        nscb,
        n_nsc,
        n_nscb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn hand_built_case() {
        // Treatments t1,t2 (MoA m1, compounds a,b) point the same way; t3 (m2) orthogonal.
        // t1 and t2 in batch 1, t3 and t4 (m2, compound d) in batch 2.
        let x = array![[1.0, 0.0], [1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 1.0]];
        let tr = Codes::new(&["t1", "t1", "t2", "t3", "t4"]);
        let cp = Codes::new(&["a", "a", "b", "c", "d"]);
        let moa = Codes::new(&["m1", "m1", "m1", "m2", "m2"]);
        let b = Codes::new(&["1", "1", "1", "2", "2"]);
        let r = nsc(&x, &tr, &cp, &moa, &b).unwrap();
        assert_eq!(r.nsc, Some(1.0));
        assert_eq!(r.n_nsc, 4);
        // NSCB: every admissible neighbour is in the other batch and has the other MoA.
        assert_eq!(r.nscb, Some(0.0));
        // Mixed compounds inside a treatment are rejected.
        let bad = Codes::new(&["t1", "t1", "t1", "t3", "t4"]);
        assert!(nsc(&x, &bad, &cp, &moa, &b).is_err());
    }
}
