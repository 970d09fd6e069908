//! `evaluate()`: the whole evaluation protocol in one call.
//!
//! 1. Validate the input (lengths, finite values, at least two batches among
//!    the evaluated rows) — bad input is an error naming the row and column.
//! 2. Optionally apply the protocol's robust scaling ([`robust_scale`]).
//! 3. Fit PCA (default 50 components) on the **non-control** rows and project
//!    all rows; metrics are computed on the non-control rows of this
//!    embedding, as in Arevalo et al. and evaluation.md.
//! 4. One exact 90-NN graph (Euclidean by default, like scib's pynndescent
//!    graphs) serves iLISI/cLISI (90), kBET (50) and graph connectivity (15).
//! 5. Retrieval metrics (mAP presets, NSC/NSCB) on the (scaled) features, as
//!    the anchors of evaluation.md, and drift when the needed columns /
//!    previous embedding are present; otherwise a note says why they were
//!    skipped.
//!
//! Large inputs: silhouettes are O(n^2) and run on a seeded subsample of
//! `max_silhouette_rows` rows (as scikit-learn's `sample_size`); mAP uses at
//! most `map.max_queries` queries. Both are recorded in `notes`.

use super::cluster::{ari, kmeans, nmi, KMeansOptions};
use super::connectivity::graph_connectivity;
use super::drift::{replicate_distance, representation_drift};
use super::kbet::kbet_per_label;
use super::knn::{knn, knn_hnsw, Metric};
use super::labels::Codes;
use super::lisi::{clisi, ilisi};
use super::map::{evaluate_map, Columns, MapOptions, MapSpec};
use super::nsc::nsc;
use super::pcr::{pcr, pcr_comparison};
use super::preprocess::robust_scale;
use super::report::Report;
use super::silhouette::{bras, silhouette_batch, silhouette_label, Between};
use crate::method::pca::Pca;
use anyhow::{bail, Result};
use ndarray::{Array2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Everything `evaluate` needs about one corrected table. All vectors have
/// one entry per row of `features`.
#[derive(Debug, Clone, Default)]
pub struct EvalInput {
    /// Corrected profiles (rows x features).
    pub features: Array2<f64>,
    /// Batch of each row (e.g. `Metadata_Week` / `Metadata_Batch`).
    pub batch: Vec<String>,
    /// Biological label of each row (e.g. `Metadata_MoA`).
    pub label: Vec<String>,
    /// Compound of each row (needed for mAP presets and NSC).
    pub compound: Option<Vec<String>>,
    /// Treatment (compound + dose) of each row; NSC falls back to compound.
    pub treatment: Option<Vec<String>>,
    /// Plate of each row (needed for Arevalo's mAP presets).
    pub plate: Option<Vec<String>>,
    /// `true` for control (e.g. DMSO) rows; they are excluded from metrics.
    pub is_control: Vec<bool>,
    /// Uncorrected profiles of the same rows, for PCR comparison.
    pub baseline: Option<Array2<f64>>,
    /// An earlier corrected version of the same rows, for drift.
    pub previous: Option<Array2<f64>>,
}

/// Tunables; `Default` reproduces the evaluation protocol.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// PCA components before the metrics (`None` = use features as given).
    pub pca_components: Option<usize>,
    /// Apply robust median/MAD scaling first (to features and baseline).
    pub robust_scale: bool,
    /// Clip for robust scaling.
    pub clip: f64,
    /// Metric of the neighbour graphs.
    pub knn_metric: Metric,
    /// Neighbours for LISI (perplexity k/3).
    pub k_lisi: usize,
    /// Neighbours for kBET's connectivity graph.
    pub k_kbet: usize,
    /// Neighbours for graph connectivity.
    pub k_connectivity: usize,
    /// kBET significance level.
    pub kbet_alpha: f64,
    /// Diffusion components in kBET.
    pub kbet_diffusion_comps: usize,
    /// k-means settings for NMI / ARI.
    pub kmeans: KMeansOptions,
    /// mAP settings.
    pub map: MapOptions,
    /// Subsample silhouettes to this many rows (`None` = all).
    pub max_silhouette_rows: Option<usize>,
    /// Compute mAP and NSC in the PCA embedding instead of on the
    /// (optionally robust-scaled) features. Default `false`, which is how
    /// the anchor numbers of evaluation.md were measured.
    pub retrieval_on_embedding: bool,
    /// Above this many evaluated rows the neighbour graph is approximate
    /// (usearch HNSW, [`super::knn::knn_hnsw`]) instead of exact; the
    /// reference (scib-metrics) always uses approximate pynndescent graphs.
    pub exact_knn_max_rows: usize,
    /// HNSW search beam for the approximate graph (raised to at least 2k).
    pub hnsw_expansion: usize,
    /// Seed for all subsampling.
    pub seed: u64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            pca_components: Some(50),
            robust_scale: false,
            clip: 50.0,
            knn_metric: Metric::Euclidean,
            k_lisi: 90,
            k_kbet: 50,
            k_connectivity: 15,
            kbet_alpha: 0.05,
            kbet_diffusion_comps: 100,
            kmeans: KMeansOptions::default(),
            map: MapOptions::default(),
            max_silhouette_rows: Some(20_000),
            retrieval_on_embedding: false,
            exact_knn_max_rows: 50_000,
            hnsw_expansion: 128,
            seed: 0,
        }
    }
}

fn check_len(name: &str, len: usize, n: usize) -> Result<()> {
    if len != n {
        bail!("{name} has {len} values but the feature table has {n} rows");
    }
    Ok(())
}

fn check_finite(name: &str, x: &Array2<f64>) -> Result<()> {
    if let Some(((r, c), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        bail!("{name}: non-finite value {v} at row {r}, feature column {c}");
    }
    Ok(())
}

/// Run `f`, turning an error into a note and `None`.
fn soft<T>(notes: &mut Vec<String>, name: &str, f: impl FnOnce() -> Result<T>) -> Option<T> {
    match f() {
        Ok(v) => Some(v),
        Err(e) => {
            notes.push(format!("{name} skipped: {e}"));
            None
        }
    }
}

/// Embed `x`: optional robust scaling, then PCA fitted on `fit_rows`.
fn embed(x: &Array2<f64>, fit_rows: &[usize], opts: &EvalOptions) -> Result<Array2<f64>> {
    let scaled;
    let x = if opts.robust_scale {
        scaled = robust_scale(x, opts.clip)?.values;
        &scaled
    } else {
        x
    };
    match opts.pca_components {
        Some(k) => {
            let fit = x.select(Axis(0), fit_rows);
            let pca = Pca::fit_exact(fit.view(), k)?;
            pca.transform(x.view())
        }
        None => Ok(x.to_owned()),
    }
}

/// Compute every metric the input allows. See the module docs.
pub fn evaluate(input: &EvalInput, opts: &EvalOptions) -> Result<Report> {
    Ok(evaluate_full(input, opts)?.report)
}

/// The report plus what the figures need: the embedding the metrics saw.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Every metric.
    pub report: Report,
    /// The evaluated (non-control) rows, as indices into the input.
    pub rows: Vec<usize>,
    /// Their embedding (PCA components in decreasing variance, or the
    /// features themselves), one row per entry of `rows`.
    pub embedding: Array2<f64>,
}

/// [`evaluate`], also returning the embedding (for plots).
pub fn evaluate_full(input: &EvalInput, opts: &EvalOptions) -> Result<Evaluation> {
    let n = input.features.nrows();
    if n == 0 || input.features.ncols() == 0 {
        bail!(
            "evaluate: empty feature table ({} rows x {} columns)",
            n,
            input.features.ncols()
        );
    }
    check_len("batch labels", input.batch.len(), n)?;
    check_len("bio labels", input.label.len(), n)?;
    check_len("control mask", input.is_control.len(), n)?;
    for (name, col) in [
        ("compound", &input.compound),
        ("treatment", &input.treatment),
        ("plate", &input.plate),
    ] {
        if let Some(c) = col {
            check_len(name, c.len(), n)?;
        }
    }
    check_finite("features", &input.features)?;
    for (name, m) in [("baseline", &input.baseline), ("previous", &input.previous)] {
        if let Some(m) = m {
            if m.nrows() != n {
                bail!(
                    "{name} has {} rows but the feature table has {n}",
                    m.nrows()
                );
            }
            check_finite(name, m)?;
        }
    }
    let treated: Vec<usize> = (0..n).filter(|&i| !input.is_control[i]).collect();
    if treated.len() < 3 {
        bail!(
            "evaluate: need at least 3 non-control rows, got {}",
            treated.len()
        );
    }
    let sub = |v: &[String]| treated.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
    let batches = Codes::new(&sub(&input.batch));
    let labels = Codes::new(&sub(&input.label));
    if batches.n_levels() < 2 {
        bail!(
            "evaluate: the non-control rows come from a single batch ('{}'); batch-mixing metrics need at least 2",
            batches.levels.first().map_or("", |s| s.as_str())
        );
    }
    let mut notes = Vec::new();
    let mut clock = std::time::Instant::now();
    let mut stage = |name: &str| {
        tracing::debug!(
            stage = name,
            seconds = clock.elapsed().as_secs_f64(),
            "evaluate stage"
        );
        clock = std::time::Instant::now();
    };
    let emb_all = embed(&input.features, &treated, opts)?;
    stage("embedding");
    let emb = emb_all.select(Axis(0), &treated);
    let mut rep = Report {
        n_rows: n,
        n_evaluated: treated.len(),
        n_batches: batches.n_levels(),
        n_labels: labels.n_levels(),
        embedding_dims: emb.ncols(),
        ..Default::default()
    };
    if labels.n_levels() < 2 {
        notes.push("only one bio label: label-based metrics are skipped".into());
    }
    let singletons = labels.counts().iter().filter(|&&c| c == 1).count();
    if singletons > 0 {
        notes.push(format!(
            "{singletons} label(s) have a single row (silhouette 0, kBET skips them)"
        ));
    }

    // Neighbour graphs.
    let k_max = opts.k_lisi.max(opts.k_kbet).max(opts.k_connectivity);
    let nn = if emb.nrows() > opts.exact_knn_max_rows {
        notes.push(format!(
            "neighbour graph approximate (HNSW, beam {}) above {} rows, as the reference's pynndescent graphs",
            opts.hnsw_expansion.max(2 * k_max),
            opts.exact_knn_max_rows
        ));
        knn_hnsw(&emb, k_max, opts.knn_metric, opts.hnsw_expansion)?
    } else {
        knn(&emb, k_max, opts.knn_metric)?
    };
    let nn_at = |k: usize| nn.subset(k.min(nn.k));
    stage("knn");
    rep.ilisi = soft(&mut notes, "iLISI", || {
        ilisi(&nn_at(opts.k_lisi)?, &batches)
    });
    rep.clisi = soft(&mut notes, "cLISI", || clisi(&nn_at(opts.k_lisi)?, &labels));
    rep.graph_connectivity = soft(&mut notes, "graph connectivity", || {
        graph_connectivity(&nn_at(opts.k_connectivity)?, &labels)
    });
    stage("lisi_connectivity");
    rep.kbet = soft(&mut notes, "kBET", || {
        kbet_per_label(
            &nn_at(opts.k_kbet)?,
            &batches,
            &labels,
            opts.kbet_alpha,
            opts.kbet_diffusion_comps,
        )
        .map(|(m, _)| m)
    })
    .flatten();

    stage("kbet");
    // Silhouettes (subsampled when large).
    let sil_rows: Vec<usize> = match opts.max_silhouette_rows {
        Some(m) if treated.len() > m => {
            let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
            let mut idx: Vec<usize> = (0..treated.len()).collect();
            idx.shuffle(&mut rng);
            idx.truncate(m);
            idx.sort_unstable();
            notes.push(format!(
                "silhouettes computed on a seeded sample of {m} of {} rows",
                treated.len()
            ));
            idx
        }
        _ => (0..treated.len()).collect(),
    };
    let sx = emb.select(Axis(0), &sil_rows);
    let sl = labels.subset(&sil_rows);
    let sb = batches.subset(&sil_rows);
    rep.silhouette_label = soft(&mut notes, "silhouette label", || {
        silhouette_label(&sx, &sl, Metric::Euclidean, true)
    });
    rep.bras = soft(&mut notes, "BRAS", || bras(&sx, &sl, &sb)).flatten();
    rep.silhouette_batch = soft(&mut notes, "silhouette batch", || {
        silhouette_batch(&sx, &sl, &sb, Metric::Euclidean, Between::Nearest)
    })
    .flatten();

    stage("silhouettes");
    // PCR.
    rep.pcr_batch = soft(&mut notes, "PCR batch", || pcr(&emb, &batches, None));
    if let Some(base) = &input.baseline {
        rep.pcr_comparison = soft(&mut notes, "PCR comparison", || {
            let be = embed(base, &treated, opts)?.select(Axis(0), &treated);
            pcr_comparison(&be, &emb, &batches)
        });
    } else {
        notes.push("PCR comparison skipped: no baseline given".into());
    }

    stage("pcr");
    // Clustering.
    if labels.n_levels() >= 2 {
        if let Some(cl) = soft(&mut notes, "k-means", || {
            kmeans(&emb, labels.n_levels(), &opts.kmeans)
        }) {
            rep.nmi = soft(&mut notes, "NMI", || nmi(&labels.codes, &cl));
            rep.ari = soft(&mut notes, "ARI", || ari(&labels.codes, &cl));
        }
    }

    stage("kmeans");
    // Retrieval metrics (as the anchor numbers of evaluation.md): on the
    // features themselves (after optional robust scaling) unless
    // `retrieval_on_embedding`; cross-batch and non-replicate mAP rank
    // non-control rows only, the control-negative preset needs the controls
    // as candidates. Queries are always the non-control rows.
    let features_scaled;
    let space_all: &Array2<f64> = if opts.retrieval_on_embedding {
        &emb_all
    } else if opts.robust_scale {
        features_scaled = robust_scale(&input.features, opts.clip)?.values;
        &features_scaled
    } else {
        &input.features
    };
    let space_treated = space_all.select(Axis(0), &treated);
    let make_cols = |rows: &[usize]| {
        let pick = |v: &[String]| rows.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
        let mut cols = Columns::new();
        cols.insert("batch".into(), Codes::new(&pick(&input.batch)));
        cols.insert("label".into(), Codes::new(&pick(&input.label)));
        let ctrl: Vec<&str> = rows
            .iter()
            .map(|&i| {
                if input.is_control[i] {
                    "control"
                } else {
                    "treated"
                }
            })
            .collect();
        cols.insert("control".into(), Codes::new(&ctrl));
        if let Some(c) = &input.compound {
            cols.insert("compound".into(), Codes::new(&pick(c)));
        }
        if let Some(p) = &input.plate {
            cols.insert("plate".into(), Codes::new(&pick(p)));
        }
        cols
    };
    let all_rows: Vec<usize> = (0..n).collect();
    let mut null_draws = opts.map.null_size;
    let cols_all = make_cols(&all_rows);
    let cols_treated = make_cols(&treated);
    let local: Vec<usize> = (0..treated.len()).collect();
    if treated.len() > opts.map.max_queries.unwrap_or(usize::MAX) {
        notes.push(format!(
            "mAP computed on a seeded sample of about {} query rows (stratified by group)",
            opts.map.max_queries.unwrap_or(0)
        ));
    }
    if input.compound.is_some() {
        let spec = MapSpec::cross_batch("label", "batch", "compound");
        if let Some(r) = soft(&mut notes, "cross-batch mAP", || {
            evaluate_map(&space_treated, &cols_treated, &spec, &local, &opts.map)
        }) {
            rep.map_cross_batch = Some(r.mean_map);
            null_draws = null_draws.min(r.null_draws);
            rep.map_cross_batch_fraction = Some(r.fraction_retrieved);
        }
        if input.plate.is_some() {
            let spec = MapSpec::arevalo_nonrep("compound", "plate");
            if let Some(r) = soft(&mut notes, "mAP (non-rep)", || {
                evaluate_map(&space_treated, &cols_treated, &spec, &local, &opts.map)
            }) {
                rep.map_nonrep = Some(r.mean_map);
                null_draws = null_draws.min(r.null_draws);
                rep.map_nonrep_fraction = Some(r.fraction_retrieved);
            }
            if treated.len() < n {
                let spec = MapSpec::arevalo_control("compound", "plate", "control");
                if let Some(r) = soft(&mut notes, "mAP (control)", || {
                    evaluate_map(space_all, &cols_all, &spec, &treated, &opts.map)
                }) {
                    rep.map_control = Some(r.mean_map);
                    null_draws = null_draws.min(r.null_draws);
                    rep.map_control_fraction = Some(r.fraction_retrieved);
                }
            } else {
                notes.push("mAP (control) skipped: no control rows".into());
            }
        } else {
            notes.push("Arevalo mAP presets skipped: no plate column".into());
        }
        stage("map");
        let comp = Codes::new(&sub(input.compound.as_deref().unwrap_or(&[])));
        let treat = match &input.treatment {
            Some(t) => Codes::new(&sub(t)),
            None => comp.clone(),
        };
        if let Some(r) = soft(&mut notes, "NSC", || {
            nsc(&space_treated, &treat, &comp, &labels, &batches)
        }) {
            rep.nsc = r.nsc;
            rep.nscb = r.nscb;
        }
    } else {
        notes.push("mAP and NSC skipped: no compound column".into());
    }

    if null_draws < opts.map.null_size {
        notes.push(format!(
            "mAP p-values of large configurations from at least {null_draws} null draws instead of {} (work budget)",
            opts.map.null_size
        ));
    }
    stage("retrieval");
    // Drift against a previous embedding of the same rows.
    if let Some(prev) = &input.previous {
        rep.drift = soft(&mut notes, "drift", || {
            representation_drift(prev, &input.features, &input.is_control, true)
        });
        if let Some(d) = rep.drift {
            let perts = match (&input.treatment, &input.compound) {
                (Some(t), _) => Some(Codes::new(&sub(t))),
                (None, Some(c)) => Some(Codes::new(&sub(c))),
                _ => None,
            };
            if let Some(p) = perts {
                let prev_t = prev.select(Axis(0), &treated);
                let rd = replicate_distance(&prev_t, &p, Some(&batches), 2000, opts.seed);
                rep.normalised_drift = rd.filter(|r| *r > 0.0).map(|r| d / r);
            }
        }
    }

    stage("drift");
    rep.notes = notes;
    rep.aggregate();
    Ok(Evaluation {
        report: rep,
        rows: treated,
        embedding: emb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn toy(n: usize, batch_shift: f64) -> EvalInput {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let labels = ["m1", "m2", "m3"];
        let mut x = Array2::zeros((n, 8));
        let mut batch = Vec::new();
        let mut label = Vec::new();
        let mut compound = Vec::new();
        let mut plate = Vec::new();
        let mut ctrl = Vec::new();
        for i in 0..n {
            let b = i % 2;
            let is_ctrl = i % 10 == 0;
            let l = if is_ctrl { 0 } else { (i / 2) % 3 };
            for j in 0..8 {
                let signal = if is_ctrl { 7 } else { l };
                x[[i, j]] = rng.gen_range(-0.3..0.3)
                    + if j == signal { 3.0 } else { 0.0 }
                    + batch_shift * b as f64 * (j == 5) as u8 as f64;
            }
            batch.push(format!("w{b}"));
            label.push(if is_ctrl {
                "DMSO".to_string()
            } else {
                labels[l].to_string()
            });
            compound.push(if is_ctrl {
                "DMSO".to_string()
            } else {
                format!("c{}_{}", l, (i / 6) % 4)
            });
            plate.push(format!("p{}", i % 4));
            ctrl.push(is_ctrl);
        }
        EvalInput {
            features: x,
            batch,
            label,
            compound: Some(compound),
            treatment: None,
            plate: Some(plate),
            is_control: ctrl,
            baseline: None,
            previous: None,
        }
    }

    fn quick() -> EvalOptions {
        EvalOptions {
            pca_components: Some(5),
            map: MapOptions {
                null_size: 200,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn well_mixed_data_scores_high_batch_and_bio() {
        let mut input = toy(300, 0.0);
        input.baseline = Some(toy(300, 4.0).features);
        input.previous = Some(input.features.clone());
        let r = evaluate(&input, &quick()).unwrap();
        assert!(r.ilisi.unwrap() > 0.7, "{}", r.to_text());
        assert!(
            r.nmi.unwrap() > 0.9 && r.ari.unwrap() > 0.9,
            "{}",
            r.to_text()
        );
        assert!(r.pcr_comparison.unwrap() > 0.5, "{}", r.to_text());
        assert!(r.map_cross_batch.unwrap() > 0.9);
        assert_eq!(r.drift, Some(0.0));
        assert!(r.total.is_some());
        assert_eq!(r.n_evaluated, 270);
    }

    #[test]
    fn batch_effect_lowers_batch_score() {
        let mixed = evaluate(&toy(300, 0.0), &quick()).unwrap();
        let split = evaluate(&toy(300, 20.0), &quick()).unwrap();
        assert!(split.ilisi.unwrap() < mixed.ilisi.unwrap());
        assert!(split.kbet.unwrap() < mixed.kbet.unwrap());
        assert!(split.bras.unwrap() < mixed.bras.unwrap());
    }

    #[test]
    fn bad_input_is_a_clear_error_not_a_panic() {
        let mut one_batch = toy(60, 0.0);
        one_batch.batch = vec!["w0".into(); 60];
        let e = evaluate(&one_batch, &quick()).unwrap_err().to_string();
        assert!(e.contains("single batch"), "{e}");
        let mut nan = toy(60, 0.0);
        nan.features[[7, 3]] = f64::NAN;
        let e = evaluate(&nan, &quick()).unwrap_err().to_string();
        assert!(e.contains("row 7") && e.contains("column 3"), "{e}");
        let mut short = toy(60, 0.0);
        short.label.pop();
        assert!(evaluate(&short, &quick())
            .unwrap_err()
            .to_string()
            .contains("bio labels"));
        // Missing optional columns: documented skips.
        let mut bare = toy(60, 0.0);
        bare.compound = None;
        bare.plate = None;
        let r = evaluate(&bare, &quick()).unwrap();
        assert!(r.map_cross_batch.is_none());
        assert!(r.notes.iter().any(|n| n.contains("no compound column")));
        // Too few controls for drift: refused, noted, not a panic.
        let mut few = toy(60, 0.0);
        few.previous = Some(few.features.clone());
        let r = evaluate(&few, &quick()).unwrap();
        assert!(r.drift.is_none());
        assert!(
            r.notes.iter().any(|n| n.contains("control rows")),
            "{:?}",
            r.notes
        );
    }
}
