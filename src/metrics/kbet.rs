//! kBET per label, following scib-metrics 0.5 (`kbet_per_label`).
//!
//! Pipeline, for a k-NN graph of the whole data set (scib passes k = 50):
//! 1. **Fuzzy connectivities** — UMAP's `fuzzy_simplicial_set`: per row,
//!    `rho` = distance to the nearest non-self neighbour and `sigma` from a
//!    binary search so that `sum_j exp(-(d_j - rho)/sigma) = log2(k)`; edge
//!    weight `exp(-(d - rho)/sigma)`; symmetrised `W + W^T - W∘W^T`.
//! 2. For each label with at least 10 rows and 2 batches:
//!    `k0 = clamp(floor(mean rows per batch / 4), 10, 70)`. Restrict the
//!    connectivity graph to the label. If it is one connected component, embed
//!    it with a **diffusion map** (density-normalised transition matrix, the
//!    `min(100, n - 1)` eigenpairs of largest magnitude, each eigenvector scaled
//!    by `e / (1 - e)` — by `1` for `e = 1` — with scib's float32 rounding of the
//!    eigenvalues) and find `k0 + 1` nearest neighbours (self included) there.
//!    Otherwise keep the components with at least `3 k0` rows if they cover
//!    75% of the label (else the label scores 0) and do the same on them.
//! 3. **kBET test** per row: Pearson chi-square of the batch counts among its
//!    `k0 + 1` neighbours against the label's batch frequencies,
//!    `B - 1` degrees of freedom; the row is accepted when `p >= alpha`.
//!    The label's score is its acceptance rate; kBET is the mean over labels
//!    (labels that are skipped do not count).
//!
//! Deliberate differences: scib finds the diffusion-space neighbours with
//! pynndescent (approximate); we search exactly up to
//! [`DIFFUSION_EXACT_MAX_ROWS`] rows per label and with HNSW above. For label
//! subsets larger than [`DENSE_MAX`] rows the eigenpairs, instead of ARPACK's,
//! come from `2m + 100` Lanczos steps with full
//! re-orthogonalisation (extremal eigenpairs, which carry almost all the
//! weight, converge first). A subset too small for `k0 + 1` neighbours scores 0, which
//! is what scib's `except ValueError` path yields.

use super::knn::{knn, knn_hnsw, Metric, Neighbors};
use super::labels::{nanmean, Codes};
use crate::linalg::{lanczos_eigen, sym_eigen};
use anyhow::{bail, Result};
use ndarray::{Array2, Axis};
use rayon::prelude::*;

/// Largest label subset whose diffusion map uses a dense eigen-solver.
pub(crate) const DENSE_MAX: usize = 200;
/// Label subsets above this size find their diffusion-space neighbours
/// with HNSW instead of exactly.
pub(crate) const DIFFUSION_EXACT_MAX_ROWS: usize = 20_000;
const SMOOTH_K_TOLERANCE: f64 = 1e-5;
const MIN_K_DIST_SCALE: f64 = 1e-3;

/// A symmetric sparse graph as sorted adjacency lists of `(neighbour, weight)`.
#[derive(Debug, Clone)]
pub struct Graph {
    /// `adj[i]` = neighbours of `i` with positive weight, sorted by index.
    pub adj: Vec<Vec<(usize, f64)>>,
}

impl Graph {
    /// Induced subgraph on `rows` (re-indexed `0..rows.len()`).
    pub fn subgraph(&self, rows: &[usize]) -> Graph {
        let mut local = vec![usize::MAX; self.adj.len()];
        for (li, &i) in rows.iter().enumerate() {
            local[i] = li;
        }
        Graph {
            adj: rows
                .iter()
                .map(|&i| {
                    self.adj[i]
                        .iter()
                        .filter(|(j, _)| local[*j] != usize::MAX)
                        .map(|&(j, w)| (local[j], w))
                        .collect()
                })
                .collect(),
        }
    }

    /// Connected component id of every node (undirected).
    pub fn components(&self) -> (usize, Vec<usize>) {
        let n = self.adj.len();
        let mut comp = vec![usize::MAX; n];
        let mut count = 0;
        for s in 0..n {
            if comp[s] != usize::MAX {
                continue;
            }
            let mut stack = vec![s];
            comp[s] = count;
            while let Some(v) = stack.pop() {
                for &(w, _) in &self.adj[v] {
                    if comp[w] == usize::MAX {
                        comp[w] = count;
                        stack.push(w);
                    }
                }
            }
            count += 1;
        }
        (count, comp)
    }
}

/// UMAP `smooth_knn_dist` (local connectivity 1, bandwidth 1): `(sigma, rho)`
/// per row. Column 0 of each row must be the row itself.
pub(crate) fn smooth_knn_dist(nn: &Neighbors) -> (Vec<f64>, Vec<f64>) {
    let k = nn.k;
    let target = (k as f64).log2();
    let mean_all = nn.distances.iter().sum::<f64>() / nn.distances.len().max(1) as f64;
    (0..nn.n)
        .map(|i| {
            let d = nn.row_dist(i);
            let rho = d.iter().copied().find(|&v| v > 0.0).unwrap_or(0.0);
            let (mut lo, mut hi, mut mid) = (0.0f64, f64::MAX, 1.0f64);
            for _ in 0..64 {
                let psum: f64 = d[1..]
                    .iter()
                    .map(|&dj| {
                        let x = dj - rho;
                        if x > 0.0 {
                            (-(x / mid)).exp()
                        } else {
                            1.0
                        }
                    })
                    .sum();
                if (psum - target).abs() < SMOOTH_K_TOLERANCE {
                    break;
                }
                if psum > target {
                    hi = mid;
                    mid = (lo + hi) / 2.0;
                } else {
                    lo = mid;
                    if hi >= f64::MAX {
                        mid *= 2.0;
                    } else {
                        mid = (lo + hi) / 2.0;
                    }
                }
            }
            let mut sigma = mid;
            if rho > 0.0 {
                let mean_i = d.iter().sum::<f64>() / k as f64;
                sigma = sigma.max(MIN_K_DIST_SCALE * mean_i);
            } else {
                sigma = sigma.max(MIN_K_DIST_SCALE * mean_all);
            }
            (sigma, rho)
        })
        .unzip()
}

/// UMAP fuzzy simplicial set of a k-NN graph (scib's
/// `knn_graph_connectivities`).
pub(crate) fn fuzzy_connectivities(nn: &Neighbors) -> Graph {
    let (sigma, rho) = smooth_knn_dist(nn);
    let n = nn.n;
    let mut directed: Vec<Vec<(usize, f64)>> = vec![Vec::new(); n];
    for i in 0..n {
        for (&j, &d) in nn.row(i).iter().zip(nn.row_dist(i)) {
            let w = if j == i {
                0.0
            } else if d - rho[i] <= 0.0 || sigma[i] == 0.0 {
                1.0
            } else {
                (-((d - rho[i]) / sigma[i])).exp()
            };
            if w > 0.0 {
                directed[i].push((j, w));
            }
        }
    }
    // Symmetrise: w_ij + w_ji - w_ij w_ji.
    let mut sym: Vec<std::collections::BTreeMap<usize, (f64, f64)>> = vec![Default::default(); n];
    for (i, row) in directed.iter().enumerate() {
        for &(j, w) in row {
            sym[i].entry(j).or_insert((0.0, 0.0)).0 += w;
            sym[j].entry(i).or_insert((0.0, 0.0)).1 += w;
        }
    }
    Graph {
        adj: sym
            .into_iter()
            .map(|m| {
                m.into_iter()
                    .map(|(j, (a, b))| (j, a + b - a * b))
                    .filter(|&(_, w)| w != 0.0)
                    .collect()
            })
            .collect(),
    }
}

/// Symmetric density-normalised transition matrix of a graph, as sparse rows.
fn transitions(g: &Graph) -> Vec<Vec<(usize, f64)>> {
    let n = g.adj.len();
    let mut q = vec![0.0; n];
    for row in &g.adj {
        for &(j, w) in row {
            q[j] += w;
        }
    }
    let k: Vec<Vec<(usize, f64)>> = g
        .adj
        .iter()
        .enumerate()
        .map(|(i, row)| row.iter().map(|&(j, w)| (j, w / (q[i] * q[j]))).collect())
        .collect();
    let mut z = vec![0.0; n];
    for row in &k {
        for &(j, w) in row {
            z[j] += w;
        }
    }
    let z: Vec<f64> = z.iter().map(|v| v.sqrt()).collect();
    k.iter()
        .enumerate()
        .map(|(i, row)| row.iter().map(|&(j, w)| (j, w / (z[i] * z[j]))).collect())
        .collect()
}

/// The `m` eigenpairs of largest magnitude of a symmetric sparse matrix:
/// dense for small `n`, Lanczos (full re-orthogonalisation) otherwise.
fn top_eigen(
    t: &[Vec<(usize, f64)>],
    m: usize,
    seed: u64,
    dense_max: usize,
) -> Result<(Vec<f64>, Array2<f64>)> {
    let n = t.len();
    let pick = |vals: &ndarray::Array1<f64>, vecs: &Array2<f64>, m: usize| {
        let mut order: Vec<usize> = (0..vals.len()).collect();
        order.sort_by(|&a, &b| vals[b].abs().total_cmp(&vals[a].abs()));
        order.truncate(m);
        let v: Vec<f64> = order.iter().map(|&i| vals[i]).collect();
        let vecs = vecs.select(Axis(1), &order);
        (v, vecs)
    };
    if n <= dense_max {
        let mut dense = Array2::zeros((n, n));
        for (i, row) in t.iter().enumerate() {
            for &(j, w) in row {
                dense[[i, j]] = w;
            }
        }
        // Symmetrise numerically.
        let dense = (&dense + &dense.t()) / 2.0;
        let (vals, vecs) = sym_eigen(&dense)?;
        return Ok(pick(&vals, &vecs, m));
    }
    // Lanczos with full re-orthogonalisation: extremal eigenpairs converge
    // quickly even where the spectrum clusters near 1.
    let steps = (2 * m + 100).min(n);
    let (vals, vecs) = lanczos_eigen(t, steps, seed)?;
    Ok(pick(&vals, &vecs, m))
}

/// scib's `diffusion_nn` embedding of a connected (sub)graph.
pub(crate) fn diffusion_embedding(g: &Graph, n_comps: usize) -> Result<Array2<f64>> {
    diffusion_embedding_with(g, n_comps, DENSE_MAX)
}

/// [`diffusion_embedding`] with an explicit dense-solver threshold.
pub(crate) fn diffusion_embedding_with(
    g: &Graph,
    n_comps: usize,
    dense_max: usize,
) -> Result<Array2<f64>> {
    let n = g.adj.len();
    if n < 2 {
        bail!("diffusion map needs at least 2 nodes");
    }
    let m = n_comps.min(n - 1).max(1);
    let t = transitions(g);
    let (vals, vecs) = top_eigen(&t, m, n as u64, dense_max)?;
    let mut emb = Array2::zeros((n, vals.len()));
    for (c, &e) in vals.iter().enumerate() {
        // scib: evals cast to float32, += 1e-8, scaled e/(1-e) unless == 1.
        let e32 = (e as f32) + 1e-8f32;
        let scale = if e32 == 1.0 { e32 } else { e32 / (1.0 - e32) };
        for r in 0..n {
            emb[[r, c]] = ((vecs[[r, c]] as f32) * scale) as f64;
        }
    }
    Ok(emb)
}

/// Regularised upper incomplete gamma function `Q(a, x)` (series /
/// continued fraction, Numerical Recipes §6.2): the chi-square survival
/// function is `Q(dof / 2, stat / 2)`.
pub(crate) fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if a <= 0.0 {
        return 0.0;
    }
    let gln = ln_gamma(a);
    let front = (-x + a * x.ln() - gln).exp();
    if x < a + 1.0 {
        let mut ap = a;
        let mut del = 1.0 / a;
        let mut sum = del;
        for _ in 0..10_000 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        (1.0 - sum * front).clamp(0.0, 1.0)
    } else {
        const FPMIN: f64 = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / FPMIN;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < FPMIN {
                d = FPMIN;
            }
            c = b + an / c;
            if c.abs() < FPMIN {
                c = FPMIN;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (front * h).clamp(0.0, 1.0)
    }
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, 9 terms; ~1e-15 relative).
pub(crate) fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, &c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// kBET acceptance rate of one neighbourhood graph: `nn` rows are tested
/// against the batch frequencies of all its rows.
pub(crate) fn kbet_acceptance(nn: &Neighbors, batches: &Codes, alpha: f64) -> f64 {
    let nb = batches.n_levels();
    if nb < 2 {
        return 0.0; // scib: chi2 with 0 dof gives NaN / 0 p-values -> no acceptance
    }
    let counts = batches.counts();
    let n = batches.codes.len() as f64;
    let k = nn.k as f64;
    let expected: Vec<f64> = counts.iter().map(|&c| c as f64 / n * k).collect();
    let dof = (nb - 1) as f64;
    let accepted = (0..nn.n)
        .filter(|&i| {
            let mut obs = vec![0.0; nb];
            for &j in nn.row(i) {
                obs[batches.codes[j]] += 1.0;
            }
            let stat: f64 = obs
                .iter()
                .zip(&expected)
                .map(|(o, e)| (o - e) * (o - e) / e)
                .sum();
            gamma_q(dof / 2.0, stat / 2.0) >= alpha
        })
        .count();
    accepted as f64 / nn.n as f64
}

/// Per-label kBET outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KbetLabel {
    /// Label name.
    pub label: String,
    /// Acceptance rate, or `None` when the label was skipped (fewer than 10
    /// rows or a single batch).
    pub score: Option<f64>,
    /// Neighbourhood size `k0` used.
    pub k0: usize,
}

/// kBET per label (see module docs). `nn` is the k-NN graph of all rows
/// (scib uses 50 neighbours). Returns the mean over scored labels and the
/// per-label detail; the mean is `None` if every label was skipped.
pub fn kbet_per_label(
    nn: &Neighbors,
    batches: &Codes,
    labels: &Codes,
    alpha: f64,
    diffusion_n_comps: usize,
) -> Result<(Option<f64>, Vec<KbetLabel>)> {
    if batches.codes.len() != nn.n || labels.codes.len() != nn.n {
        bail!("kBET: batch/label lengths do not match {} rows", nn.n);
    }
    let conn = fuzzy_connectivities(nn);
    let members = labels.members();
    let out: Vec<KbetLabel> = members
        .par_iter()
        .enumerate()
        .map(|(li, rows)| {
            kbet_one_label(
                &conn,
                rows,
                &labels.levels[li],
                batches,
                alpha,
                diffusion_n_comps,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let scores: Vec<f64> = out.iter().map(|l| l.score.unwrap_or(f64::NAN)).collect();
    let mean = nanmean(&scores);
    Ok((if mean.is_nan() { None } else { Some(mean) }, out))
}

/// kBET of one label's rows (see [`kbet_per_label`]).
fn kbet_one_label(
    conn: &Graph,
    rows: &[usize],
    name: &str,
    batches: &Codes,
    alpha: f64,
    diffusion_n_comps: usize,
) -> Result<KbetLabel> {
    let label = name.to_string();
    let sub_b = batches.subset(rows);
    let n_obs = rows.len();
    if n_obs < 10 || sub_b.n_levels() == 1 {
        return Ok(KbetLabel {
            label,
            score: None,
            k0: 0,
        });
    }
    let mean_per_batch = n_obs as f64 / sub_b.n_levels() as f64;
    let k0 = ((mean_per_batch / 4.0).floor() as usize).clamp(10, 70);
    let g = conn.subgraph(rows);
    let (n_comp, comp) = g.components();
    let (graph, b) = if n_comp == 1 {
        (g, sub_b)
    } else {
        let mut sizes = vec![0usize; n_comp];
        for &c in &comp {
            sizes[c] += 1;
        }
        let keep: Vec<usize> = (0..n_obs).filter(|&i| sizes[comp[i]] >= 3 * k0).collect();
        if (keep.len() as f64) / (n_obs as f64) < 0.75 {
            return Ok(KbetLabel {
                label,
                score: Some(0.0),
                k0,
            });
        }
        (g.subgraph(&keep), sub_b.subset(&keep))
    };
    let n_sub = graph.adj.len();
    if k0 + 1 > n_sub {
        return Ok(KbetLabel {
            label,
            score: Some(0.0),
            k0,
        });
    }
    let emb = diffusion_embedding(&graph, diffusion_n_comps.min(n_sub - 1))?;
    // Like scib (pynndescent), approximate on large label subsets.
    let dnn = if n_sub > DIFFUSION_EXACT_MAX_ROWS {
        knn_hnsw(&emb, k0 + 1, Metric::Euclidean, 128)?
    } else {
        knn(&emb, k0 + 1, Metric::Euclidean)?
    };
    let score = kbet_acceptance(&dnn, &b, alpha);
    Ok(KbetLabel {
        label,
        score: Some(score),
        k0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn gamma_q_matches_known_chi_square_tails() {
        // chi2.sf(3.841458820694124, 1) = 0.05; chi2.sf(5.991464547107979, 2) = 0.05
        assert!((gamma_q(0.5, 3.841458820694124 / 2.0) - 0.05).abs() < 1e-12);
        assert!((gamma_q(1.0, 5.991464547107979 / 2.0) - 0.05).abs() < 1e-12);
        // dof 2: Q(1, x) = exp(-x)
        for x in [0.1, 1.0, 7.0, 30.0] {
            assert!((gamma_q(1.0, x) - (-x).exp()).abs() < 1e-13);
        }
        // chi2.sf(20, 10) = 0.029252688076961127
        assert!((gamma_q(5.0, 10.0) - 0.029252688076961127).abs() < 1e-12);
        assert!((ln_gamma(10.0) - 362880f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn fuzzy_weights_are_symmetric_and_in_unit_interval() {
        let x = Array2::from_shape_fn((40, 2), |(i, j)| ((i * 31 + j * 17) % 23) as f64);
        let nn = knn(&x, 8, Metric::Euclidean).unwrap();
        let g = fuzzy_connectivities(&nn);
        for (i, row) in g.adj.iter().enumerate() {
            for &(j, w) in row {
                assert!(w > 0.0 && w <= 1.0);
                let back = g.adj[j].iter().find(|p| p.0 == i).map(|p| p.1);
                assert_eq!(back, Some(w));
                assert_ne!(i, j);
            }
        }
    }

    #[test]
    fn mixed_batches_accept_and_separated_reject() {
        // One label, two batches. Mixed: batches alternate along a line.
        let n = 200;
        let x = Array2::from_shape_fn((n, 2), |(i, j)| {
            if j == 0 {
                i as f64
            } else {
                ((i * 7) % 5) as f64
            }
        });
        let mixed: Vec<String> = (0..n).map(|i| format!("b{}", i % 2)).collect();
        let labels = Codes::new(&vec!["a"; n]);
        let nn = knn(&x, 50, Metric::Euclidean).unwrap();
        let (m, _) = kbet_per_label(&nn, &Codes::new(&mixed), &labels, 0.05, 100).unwrap();
        let m = m.unwrap();
        assert!(m > 0.8, "mixed kBET {m}");
        // Separated: left half batch 0, right half batch 1.
        let sep: Vec<String> = (0..n).map(|i| format!("b{}", i * 2 / n)).collect();
        let (s, _) = kbet_per_label(&nn, &Codes::new(&sep), &labels, 0.05, 100).unwrap();
        assert!(s.unwrap() < 0.3, "separated kBET {:?}", s);
        // Tiny label skipped.
        let few = Codes::new(
            &(0..n)
                .map(|i| {
                    if i < 5 {
                        "t".to_string()
                    } else {
                        "a".to_string()
                    }
                })
                .collect::<Vec<_>>(),
        );
        let (_, detail) = kbet_per_label(&nn, &Codes::new(&mixed), &few, 0.05, 100).unwrap();
        assert!(detail.iter().any(|d| d.label == "t" && d.score.is_none()));
    }

    #[test]
    fn lanczos_agrees_with_dense_on_dominant_pairs() {
        // Random 10-NN graph just above the dense threshold.
        let n = DENSE_MAX + 60;
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let x = Array2::from_shape_fn((n, 3), |_| rng.gen_range(-1.0..1.0));
        let nn = knn(&x, 10, Metric::Euclidean).unwrap();
        let g = fuzzy_connectivities(&nn);
        let t = transitions(&g);
        let (vals, vecs) = top_eigen(&t, 8, 1, DENSE_MAX).unwrap();
        let mut dense = Array2::zeros((n, n));
        for (i, row) in t.iter().enumerate() {
            for &(j, w) in row {
                dense[[i, j]] = w;
            }
        }
        let (dv, _) = sym_eigen(&((&dense + &dense.t()) / 2.0)).unwrap();
        let mut mags: Vec<f64> = dv.iter().map(|v| v.abs()).collect();
        mags.sort_by(|a, b| b.total_cmp(a));
        assert!((vals[0] - 1.0).abs() < 1e-9, "{vals:?}");
        for (a, b) in vals.iter().zip(&mags) {
            assert!((a.abs() - b).abs() < 1e-4, "{a} vs {b}");
        }
        // Ritz vectors are eigenvectors: residual |T v - lambda v| small.
        for (c, &val) in vals.iter().enumerate().take(3) {
            let v = vecs.column(c);
            let tv = dense.dot(&v);
            let r = (&tv - &(&v * val)).mapv(|e| e * e).sum().sqrt();
            assert!(r < 1e-4, "residual {r}");
        }
    }

    #[test]
    fn lanczos_diffusion_neighbours_match_dense_ones() {
        // Full scib setting: 100 components, k0 + 1 = 11 neighbours.
        let n = DENSE_MAX + 100;
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let x = Array2::from_shape_fn((n, 5), |_| rng.gen_range(-1.0..1.0));
        let g = fuzzy_connectivities(&knn(&x, 30, Metric::Euclidean).unwrap());
        let lanczos = diffusion_embedding_with(&g, 100, 0).unwrap();
        let dense = diffusion_embedding_with(&g, 100, usize::MAX).unwrap();
        let a = knn(&lanczos, 11, Metric::Euclidean).unwrap();
        let b = knn(&dense, 11, Metric::Euclidean).unwrap();
        let mut shared = 0;
        for i in 0..n {
            shared += a.row(i).iter().filter(|j| b.row(i).contains(j)).count();
        }
        let frac = shared as f64 / (n * 11) as f64;
        assert!(frac > 0.97, "neighbour overlap {frac}");
    }
}
