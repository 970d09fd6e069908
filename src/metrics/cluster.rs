//! Clustering agreement: seeded k-means++ / Lloyd, NMI and ARI.
//!
//! scib-metrics' `nmi_ari_cluster_labels_kmeans` clusters the embedding with
//! k = number of labels and compares clusters to labels. Its KMeans is JAX
//! code with its own random stream, so the cluster assignments cannot be
//! reproduced bit for bit; ours is deterministic for a given seed (ChaCha8),
//! runs `n_init` restarts and keeps the lowest inertia. NMI (arithmetic
//! normalisation) and ARI follow scikit-learn exactly, including its special
//! cases, and are validated against it on identical assignments.

use anyhow::{bail, Result};
use ndarray::{Array2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// k-means settings.
#[derive(Debug, Clone, Copy)]
pub struct KMeansOptions {
    /// Independent k-means++ restarts; the lowest-inertia run wins.
    pub n_init: usize,
    /// Lloyd iterations per restart.
    pub max_iter: usize,
    /// Stop when the centres move less than `tol x mean feature variance`.
    pub tol: f64,
    /// Seed of the ChaCha8 stream.
    pub seed: u64,
}

impl Default for KMeansOptions {
    fn default() -> Self {
        KMeansOptions {
            n_init: 5,
            max_iter: 300,
            tol: 1e-4,
            seed: 0,
        }
    }
}

fn sqdist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Nearest centre of every row and the squared distance to it, with the
/// cross terms from one GEMM per block of rows.
fn assign(x: &Array2<f64>, centres: &Array2<f64>) -> (Vec<usize>, Vec<f64>) {
    const BLOCK: usize = 4096;
    let csq: Vec<f64> = centres.rows().into_iter().map(|c| c.dot(&c)).collect();
    let n = x.nrows();
    let blocks: Vec<(Vec<usize>, Vec<f64>)> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let r0 = b * BLOCK;
            let r1 = (r0 + BLOCK).min(n);
            let xb = x.slice(ndarray::s![r0..r1, ..]);
            let g = xb.dot(&centres.t());
            let mut labels = Vec::with_capacity(r1 - r0);
            let mut dists = Vec::with_capacity(r1 - r0);
            for (row, grow) in xb.rows().into_iter().zip(g.rows()) {
                let xsq = row.dot(&row);
                let mut best = (0, f64::INFINITY);
                for (c, (&dot, &cs)) in grow.iter().zip(&csq).enumerate() {
                    let d = xsq + cs - 2.0 * dot;
                    if d < best.1 {
                        best = (c, d);
                    }
                }
                labels.push(best.0);
                dists.push(best.1.max(0.0));
            }
            (labels, dists)
        })
        .collect();
    let mut labels = Vec::with_capacity(n);
    let mut dists = Vec::with_capacity(n);
    for (l, d) in blocks {
        labels.extend(l);
        dists.extend(d);
    }
    (labels, dists)
}

fn kmeans_once(
    x: &Array2<f64>,
    k: usize,
    opts: &KMeansOptions,
    rng: &mut ChaCha8Rng,
    tol: f64,
) -> (Vec<usize>, f64) {
    let (n, d) = x.dim();
    // k-means++ seeding.
    let mut centres = Array2::zeros((k, d));
    let first = rng.gen_range(0..n);
    centres.row_mut(0).assign(&x.row(first));
    let first_row = x.row(first).to_vec();
    let mut closest: Vec<f64> = x
        .rows()
        .into_iter()
        .map(|r| sqdist(&r.to_vec(), &first_row))
        .collect();
    for c in 1..k {
        let total: f64 = closest.iter().sum();
        let pick = if total > 0.0 {
            let mut t = rng.gen::<f64>() * total;
            let mut chosen = n - 1;
            for (i, &w) in closest.iter().enumerate() {
                if t < w {
                    chosen = i;
                    break;
                }
                t -= w;
            }
            chosen
        } else {
            rng.gen_range(0..n)
        };
        centres.row_mut(c).assign(&x.row(pick));
        let p = x.row(pick).to_vec();
        for (i, row) in x.rows().into_iter().enumerate() {
            let dd = sqdist(&row.to_vec(), &p);
            if dd < closest[i] {
                closest[i] = dd;
            }
        }
    }
    let (mut labels, mut dists) = assign(x, &centres);
    for _ in 0..opts.max_iter {
        let mut sums = Array2::<f64>::zeros((k, d));
        let mut counts = vec![0usize; k];
        for (i, &l) in labels.iter().enumerate() {
            sums.row_mut(l).scaled_add(1.0, &x.row(i));
            counts[l] += 1;
        }
        let mut new_centres = Array2::zeros((k, d));
        for (c, &count) in counts.iter().enumerate() {
            if count > 0 {
                new_centres
                    .row_mut(c)
                    .assign(&(&sums.row(c) / count as f64));
            } else {
                // Empty cluster: move it to the point farthest from its centre.
                let far = dists
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(i, _)| i);
                new_centres.row_mut(c).assign(&x.row(far));
                dists[far] = 0.0;
            }
        }
        let shift: f64 = (&new_centres - &centres).mapv(|v| v * v).sum();
        centres = new_centres;
        let (l2, d2) = assign(x, &centres);
        let changed = l2 != labels;
        labels = l2;
        dists = d2;
        if !changed || shift <= tol {
            break;
        }
    }
    let inertia = dists.iter().sum();
    (labels, inertia)
}

/// Deterministic k-means: cluster index of every row.
pub fn kmeans(x: &Array2<f64>, k: usize, opts: &KMeansOptions) -> Result<Vec<usize>> {
    let n = x.nrows();
    if k == 0 || k > n {
        bail!("k-means: k = {k} is not in 1..={n}");
    }
    if x.iter().any(|v| !v.is_finite()) {
        bail!("k-means: non-finite input");
    }
    let var_mean = x.var_axis(Axis(0), 0.0).mean().unwrap_or(0.0);
    let tol = opts.tol * var_mean;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut best: Option<(Vec<usize>, f64)> = None;
    for _ in 0..opts.n_init.max(1) {
        let run = kmeans_once(x, k, opts, &mut rng, tol);
        if best.as_ref().is_none_or(|b| run.1 < b.1) {
            best = Some(run);
        }
    }
    Ok(best.map(|b| b.0).unwrap_or_default())
}

fn contingency(a: &[usize], b: &[usize]) -> (Vec<Vec<f64>>, Vec<f64>, Vec<f64>) {
    let na = a.iter().max().map_or(0, |m| m + 1);
    let nb = b.iter().max().map_or(0, |m| m + 1);
    let mut c = vec![vec![0.0; nb]; na];
    for (&x, &y) in a.iter().zip(b) {
        c[x][y] += 1.0;
    }
    // Drop empty rows/columns (codes may be sparse).
    let rows: Vec<f64> = c.iter().map(|r| r.iter().sum()).collect();
    let cols: Vec<f64> = (0..nb).map(|j| c.iter().map(|r| r[j]).sum()).collect();
    (c, rows, cols)
}

fn entropy(counts: &[f64], n: f64) -> f64 {
    counts
        .iter()
        .filter(|&&c| c > 0.0)
        .map(|&c| {
            let p = c / n;
            -p * p.ln()
        })
        .sum()
}

/// Normalised mutual information with arithmetic-mean normalisation
/// (scikit-learn's `normalized_mutual_info_score` default).
pub fn nmi(a: &[usize], b: &[usize]) -> Result<f64> {
    if a.len() != b.len() {
        bail!("NMI: labelings have lengths {} and {}", a.len(), b.len());
    }
    let n = a.len() as f64;
    let (c, rows, cols) = contingency(a, b);
    let ka = rows.iter().filter(|&&v| v > 0.0).count();
    let kb = cols.iter().filter(|&&v| v > 0.0).count();
    if (ka == 1 && kb == 1) || (ka == 0 && kb == 0) {
        return Ok(1.0);
    }
    let mut mi = 0.0;
    for (i, row) in c.iter().enumerate() {
        for (j, &nij) in row.iter().enumerate() {
            if nij > 0.0 {
                mi += nij / n * ((nij * n) / (rows[i] * cols[j])).ln();
            }
        }
    }
    if mi.abs() < f64::EPSILON {
        return Ok(0.0);
    }
    let norm = 0.5 * (entropy(&rows, n) + entropy(&cols, n));
    Ok(mi / norm.max(f64::EPSILON))
}

/// Adjusted Rand index (scikit-learn's pair-confusion formulation).
pub fn ari(a: &[usize], b: &[usize]) -> Result<f64> {
    if a.len() != b.len() {
        bail!("ARI: labelings have lengths {} and {}", a.len(), b.len());
    }
    let n = a.len() as f64;
    let (c, rows, cols) = contingency(a, b);
    let sum_sq: f64 = c.iter().flatten().map(|v| v * v).sum();
    let c11 = sum_sq - n;
    let c01 = cols.iter().map(|v| v * v).sum::<f64>() - sum_sq;
    let c10 = rows.iter().map(|v| v * v).sum::<f64>() - sum_sq;
    let c00 = n * n - c01 - c10 - sum_sq;
    let (tn, fp, fnn, tp) = (c00, c01, c10, c11);
    if fnn == 0.0 && fp == 0.0 {
        return Ok(1.0);
    }
    Ok(2.0 * (tp * tn - fnn * fp) / ((tp + fnn) * (fnn + tn) + (tp + fp) * (fp + tn)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn identical_labelings_score_one_and_hand_case() {
        let a = [0, 0, 1, 1, 2, 2];
        assert_eq!(nmi(&a, &a).unwrap(), 1.0);
        assert_eq!(ari(&a, &a).unwrap(), 1.0);
        let perm = [2, 2, 0, 0, 1, 1];
        assert!((nmi(&a, &perm).unwrap() - 1.0).abs() < 1e-12);
        // sklearn: adjusted_rand_score([0,0,1,1],[0,0,1,2]) = 0.5714285714
        assert!((ari(&[0, 0, 1, 1], &[0, 0, 1, 2]).unwrap() - 0.5714285714285714).abs() < 1e-12);
        // sklearn: normalized_mutual_info_score([0,0,1,1],[0,0,1,2]) = 0.8
        assert!((nmi(&[0, 0, 1, 1], &[0, 0, 1, 2]).unwrap() - 0.8).abs() < 1e-12);
        // Independent labelings: NMI 0.
        assert_eq!(nmi(&[0, 0, 1, 1], &[0, 1, 0, 1]).unwrap(), 0.0);
    }

    #[test]
    fn kmeans_recovers_separated_blobs_deterministically() {
        let x = Array2::from_shape_fn((90, 2), |(i, j)| {
            (i / 30) as f64 * 100.0 + ((i * 7 + j * 3) % 5) as f64
        });
        let opts = KMeansOptions::default();
        let l1 = kmeans(&x, 3, &opts).unwrap();
        let l2 = kmeans(&x, 3, &opts).unwrap();
        assert_eq!(l1, l2);
        let truth: Vec<usize> = (0..90).map(|i| i / 30).collect();
        assert_eq!(ari(&truth, &l1).unwrap(), 1.0);
        assert!(kmeans(&x, 0, &opts).is_err());
        assert!(kmeans(&x, 91, &opts).is_err());
    }

    proptest! {
        #[test]
        fn scores_are_symmetric_and_bounded(v in proptest::collection::vec((0usize..4, 0usize..4), 2..60)) {
            let a: Vec<usize> = v.iter().map(|p| p.0).collect();
            let b: Vec<usize> = v.iter().map(|p| p.1).collect();
            let n1 = nmi(&a, &b).unwrap();
            let n2 = nmi(&b, &a).unwrap();
            prop_assert!((n1 - n2).abs() < 1e-12);
            prop_assert!((-1e-12..=1.0 + 1e-12).contains(&n1));
            let r1 = ari(&a, &b).unwrap();
            prop_assert!((r1 - ari(&b, &a).unwrap()).abs() < 1e-12);
            prop_assert!(r1 <= 1.0 + 1e-12);
        }
    }
}
