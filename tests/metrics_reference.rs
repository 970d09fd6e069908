//! Agreement of `balans::metrics` with the reference implementations
//! (scib-metrics 0.5.10, copairs 0.5.5, cpdrift 1.0.0, scikit-learn).
//!
//! Fixtures come from `scripts/reference_metrics.py`: embeddings of real
//! BBBC021 wells (evaluation protocol, PCA-50; uncorrected and DMSO-centred)
//! and a synthetic set built to hit the skip paths, plus the reference values
//! computed on exactly those matrices with exact neighbour graphs. Tolerances
//! (docs/metrics.md): deterministic metrics 1e-3 (the reference runs in JAX
//! float32); kBET 0.02 (float32 UMAP weights and eigenvalues can move a row
//! across the p = 0.05 line); mAP p-values statistically (independent null
//! draws).

use balans::method::pca::Pca;
use balans::metrics::cluster::{ari, kmeans, nmi, KMeansOptions};
use balans::metrics::connectivity::graph_connectivity;
use balans::metrics::drift::{replicate_distance, representation_drift};
use balans::metrics::kbet::kbet_per_label;
use balans::metrics::knn::{knn, Metric};
use balans::metrics::lisi::{clisi, ilisi};
use balans::metrics::map::{
    average_precision, mean_average_precision, Columns, MapOptions, MapSpec,
};
use balans::metrics::nsc::nsc;
use balans::metrics::pcr::{pcr, pcr_comparison};
use balans::metrics::silhouette::{bras, silhouette_batch, silhouette_label, Between};
use balans::metrics::{evaluate, Codes, EvalInput, EvalOptions};
use ndarray::{Array2, Axis};
use serde_json::Value;
use std::path::PathBuf;

const DET_TOL: f64 = 1e-3;
const KBET_TOL: f64 = 0.02;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics")
}

struct Table {
    meta: std::collections::BTreeMap<String, Vec<String>>,
    x: Array2<f64>,
}

impl Table {
    fn col(&self, name: &str) -> &Vec<String> {
        &self.meta[name]
    }
    fn controls(&self) -> Vec<bool> {
        self.col("control").iter().map(|v| v == "1").collect()
    }
    fn treated(&self) -> Vec<usize> {
        self.controls()
            .iter()
            .enumerate()
            .filter(|(_, &c)| !c)
            .map(|(i, _)| i)
            .collect()
    }
}

fn load(name: &str) -> Table {
    let text = std::fs::read_to_string(fixture_dir().join(name))
        .expect("fixture missing: run scripts/reference_metrics.py");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("empty fixture").split(',').collect();
    let n_meta = header
        .iter()
        .take_while(|h| {
            !h.starts_with('f') || h.len() < 2 || !h[1..].chars().all(|c| c.is_ascii_digit())
        })
        .count();
    let rows: Vec<Vec<&str>> = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').collect())
        .collect();
    let mut meta = std::collections::BTreeMap::new();
    for (j, h) in header.iter().enumerate().take(n_meta) {
        meta.insert(
            h.to_string(),
            rows.iter().map(|r| r[j].to_string()).collect(),
        );
    }
    let d = header.len() - n_meta;
    let x = Array2::from_shape_fn((rows.len(), d), |(i, j)| {
        rows[i][n_meta + j].parse::<f64>().expect("number")
    });
    Table { meta, x }
}

fn reference() -> Value {
    let text =
        std::fs::read_to_string(fixture_dir().join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("valid JSON")
}

/// Collects comparisons and fails once with the full table.
struct Checker {
    lines: Vec<String>,
    failures: usize,
}

impl Checker {
    fn new() -> Self {
        Checker {
            lines: Vec::new(),
            failures: 0,
        }
    }
    fn check(&mut self, what: &str, got: f64, want: f64, tol: f64) {
        let ok = (got - want).abs() <= tol;
        if !ok {
            self.failures += 1;
        }
        self.lines.push(format!(
            "{:<48} rust {:>10.6} ref {:>10.6} |diff| {:.2e} tol {:.0e} {}",
            what,
            got,
            want,
            (got - want).abs(),
            tol,
            if ok { "ok" } else { "FAIL" }
        ));
    }
    fn finish(self) {
        println!("{}", self.lines.join("\n"));
        assert_eq!(
            self.failures,
            0,
            "{} comparison(s) failed:\n{}",
            self.failures,
            self.lines.join("\n")
        );
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn sub(v: &[String], rows: &[usize]) -> Vec<String> {
    rows.iter().map(|&i| v[i].clone()).collect()
}

fn columns(t: &Table, rows: &[usize]) -> Columns {
    let mut cols = Columns::new();
    for c in ["batch", "label", "compound", "plate", "control"] {
        cols.insert(c.to_string(), Codes::new(&sub(t.col(c), rows)));
    }
    cols
}

/// All scib-metrics / sklearn / copairs comparisons on one dataset.
fn check_dataset(c: &mut Checker, ds: &str, emb: &Table, base: Option<&Table>, r: &Value) {
    let treated = emb.treated();
    let x = emb.x.select(Axis(0), &treated);
    let batch = Codes::new(&sub(emb.col("batch"), &treated));
    let label = Codes::new(&sub(emb.col("label"), &treated));
    let nn = knn(&x, 90, Metric::Euclidean).unwrap();
    c.check(
        &format!("{ds} iLISI"),
        ilisi(&nn, &batch).unwrap(),
        num(&r["ilisi"]),
        DET_TOL,
    );
    c.check(
        &format!("{ds} cLISI"),
        clisi(&nn, &label).unwrap(),
        num(&r["clisi"]),
        DET_TOL,
    );
    c.check(
        &format!("{ds} graph connectivity"),
        graph_connectivity(&nn.subset(15).unwrap(), &label).unwrap(),
        num(&r["graph_connectivity"]),
        DET_TOL,
    );
    let (kb, per) = kbet_per_label(&nn.subset(50).unwrap(), &batch, &label, 0.05, 100).unwrap();
    c.check(
        &format!("{ds} kBET (exact diffusion kNN)"),
        kb.unwrap_or(f64::NAN),
        num(&r["kbet"]),
        KBET_TOL,
    );
    c.check(
        &format!("{ds} kBET vs scib+pynndescent"),
        kb.unwrap_or(f64::NAN),
        num(&r["kbet_pynndescent"]),
        0.05,
    );
    for l in per {
        let want = &r["kbet_per_label"][&l.label];
        match (l.score, want.as_f64()) {
            (Some(s), Some(w)) => c.check(&format!("{ds} kBET[{}]", l.label), s, w, 0.1),
            (None, None) => {}
            (g, w) => c.check(
                &format!("{ds} kBET[{}] skipped? rust {:?} ref {:?}", l.label, g, w),
                1.0,
                0.0,
                0.0,
            ),
        }
    }
    c.check(
        &format!("{ds} silhouette label"),
        silhouette_label(&x, &label, Metric::Euclidean, true).unwrap(),
        num(&r["silhouette_label"]),
        DET_TOL,
    );
    c.check(
        &format!("{ds} silhouette batch"),
        silhouette_batch(&x, &label, &batch, Metric::Euclidean, Between::Nearest)
            .unwrap()
            .unwrap_or(f64::NAN),
        num(&r["silhouette_batch"]),
        DET_TOL,
    );
    c.check(
        &format!("{ds} BRAS"),
        bras(&x, &label, &batch).unwrap().unwrap_or(f64::NAN),
        num(&r["bras"]),
        DET_TOL,
    );
    c.check(
        &format!("{ds} PCR batch"),
        pcr(&x, &batch, None).unwrap(),
        num(&r["pcr_batch"]),
        DET_TOL,
    );
    if let Some(b) = base {
        let bx = b.x.select(Axis(0), &treated);
        c.check(
            &format!("{ds} PCR comparison"),
            pcr_comparison(&bx, &x, &batch).unwrap(),
            num(&r["pcr_comparison"]),
            DET_TOL,
        );
    }
    // NMI / ARI on scib's own k-means assignment: exact sklearn parity.
    let km: Vec<usize> = r["kmeans_labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    c.check(
        &format!("{ds} NMI (scib clusters)"),
        nmi(&label.codes, &km).unwrap(),
        num(&r["nmi"]),
        1e-9,
    );
    c.check(
        &format!("{ds} ARI (scib clusters)"),
        ari(&label.codes, &km).unwrap(),
        num(&r["ari"]),
        1e-9,
    );
    // Our own seeded k-means: a different clustering run, so only loosely.
    let own = kmeans(&x, label.n_levels(), &KMeansOptions::default()).unwrap();
    c.check(
        &format!("{ds} NMI (balans k-means, loose)"),
        nmi(&label.codes, &own).unwrap(),
        num(&r["nmi"]),
        0.1,
    );
    // NSC / NSCB vs independent numpy oracle.
    let res = nsc(
        &x,
        &Codes::new(&sub(emb.col("treatment"), &treated)),
        &Codes::new(&sub(emb.col("compound"), &treated)),
        &label,
        &batch,
    )
    .unwrap();
    c.check(
        &format!("{ds} NSC"),
        res.nsc.unwrap_or(f64::NAN),
        num(&r["nsc"]),
        1e-12,
    );
    c.check(
        &format!("{ds} NSCB"),
        res.nscb.unwrap_or(f64::NAN),
        num(&r["nscb"]),
        1e-12,
    );
    // copairs presets.
    let all: Vec<usize> = (0..emb.x.nrows()).collect();
    let local: Vec<usize> = (0..treated.len()).collect();
    let cols_all = columns(emb, &all);
    let cols_treated = columns(emb, &treated);
    let opts = MapOptions {
        null_size: 10_000,
        seed: 0,
        threshold: 0.05,
        max_queries: None,
        ..Default::default()
    };
    for spec in [
        MapSpec::cross_batch("label", "batch", "compound"),
        MapSpec::arevalo_nonrep("compound", "plate"),
        MapSpec::arevalo_control("compound", "plate", "control"),
    ] {
        let want = &r[&spec.name];
        // Candidates as in the reference: non-control rows only, except for
        // the control-negative preset.
        let (sx, cols, queries) = if want["candidates"] == "all" {
            (&emb.x, &cols_all, &treated)
        } else {
            (&x, &cols_treated, &local)
        };
        let aps = average_precision(sx, cols, &spec, queries).unwrap();
        let ref_ap = want["ap"].as_object().unwrap();
        assert_eq!(
            aps.len(),
            ref_ap.len(),
            "{ds} {}: number of queries with positives",
            spec.name
        );
        let worst = aps
            .iter()
            .map(|q| (q.ap - num(&ref_ap[&q.row.to_string()])).abs())
            .fold(0.0f64, f64::max);
        c.check(
            &format!("{ds} {} max |AP diff|", spec.name),
            worst,
            0.0,
            1e-5,
        );
        let m = mean_average_precision(&aps, cols, &spec, &opts).unwrap();
        c.check(
            &format!("{ds} {} mAP", spec.name),
            m.mean_map,
            num(&want["mean_map"]),
            1e-5,
        );
        let n_groups = m.groups.len() as f64;
        // Independent null streams: the groups whose p-value straddles the
        // BH line may flip (the p-values themselves are checked to 4 standard
        // errors below); up to two such groups are tolerated.
        c.check(
            &format!("{ds} {} fraction retrieved", spec.name),
            m.fraction_retrieved,
            num(&want["fraction_retrieved"]),
            2.0 / n_groups + 1e-9,
        );
        for g in &m.groups {
            let wp = num(&want["groups"][&g.key]["p_value"]);
            // 4 standard errors of a 10,000-draw Monte Carlo p-value.
            let se = (wp * (1.0 - wp) / 10_000.0).sqrt();
            c.check(
                &format!("{ds} {} p[{}]", spec.name, g.key),
                g.p_value,
                wp,
                4.0 * se + 2e-4,
            );
        }
    }
}

#[test]
fn bbbc021_uncorrected_matches_reference() {
    let r = reference();
    let mut c = Checker::new();
    check_dataset(
        &mut c,
        "bbbc021_none",
        &load("bbbc021_none_emb.csv"),
        None,
        &r["bbbc021_none"],
    );
    c.finish();
}

#[test]
fn bbbc021_dmso_centred_matches_reference() {
    let r = reference();
    let mut c = Checker::new();
    let pre = load("bbbc021_none_emb.csv");
    let post = load("bbbc021_dmso_emb.csv");
    let rr = &r["bbbc021_dmso"];
    check_dataset(&mut c, "bbbc021_dmso", &post, Some(&pre), rr);
    let ctrl = post.controls();
    c.check(
        "bbbc021 drift none -> DMSO-centred",
        representation_drift(&pre.x, &post.x, &ctrl, true).unwrap(),
        num(&rr["drift"]),
        1e-6,
    );
    let t = post.treated();
    let rd = replicate_distance(
        &pre.x.select(Axis(0), &t),
        &Codes::new(&sub(pre.col("treatment"), &t)),
        Some(&Codes::new(&sub(pre.col("batch"), &t))),
        2000,
        0,
    );
    c.check(
        "bbbc021 replicate distance",
        rd.unwrap_or(f64::NAN),
        num(&rr["replicate_distance"]),
        1e-9,
    );
    c.finish();
}

#[test]
fn synthetic_matches_reference_including_skips_and_drift() {
    let r = reference();
    let rr = &r["synthetic"];
    let mut c = Checker::new();
    let emb = load("synthetic_emb.csv");
    let base = load("synthetic_base.csv");
    check_dataset(&mut c, "synthetic", &emb, Some(&base), rr);
    let moved = load("synthetic_moved.csv");
    let ctrl = emb.controls();
    c.check(
        "synthetic drift (moved)",
        representation_drift(&emb.x, &moved.x, &ctrl, true).unwrap(),
        num(&rr["drift_moved"]),
        1e-6,
    );
    c.check(
        "synthetic drift (moved, no gauge)",
        representation_drift(&emb.x, &moved.x, &ctrl, false).unwrap(),
        num(&rr["drift_moved_ungauged"]),
        1e-6,
    );
    let t = emb.treated();
    let rd = replicate_distance(
        &emb.x.select(Axis(0), &t),
        &Codes::new(&sub(emb.col("treatment"), &t)),
        Some(&Codes::new(&sub(emb.col("batch"), &t))),
        2000,
        0,
    );
    // One (batch, treatment) group has 12 > 8 replicates, so both sides draw
    // a random 8 (numpy vs ChaCha8 streams): statistical agreement only.
    c.check(
        "synthetic replicate distance (sampled)",
        rd.unwrap_or(f64::NAN),
        num(&rr["replicate_distance"]),
        0.01,
    );
    c.finish();
}

#[test]
fn pca_matches_numpy_svd() {
    let r = reference();
    let t = load("pca_input.csv");
    let p = Pca::fit_exact(t.x.view(), 8).unwrap();
    let mut c = Checker::new();
    let want_var = r["pca"]["variance"].as_array().unwrap();
    for (j, w) in want_var.iter().enumerate() {
        c.check(&format!("PCA variance[{j}]"), p.variances[j], num(w), 1e-9);
        let comp = r["pca"]["components"][j].as_array().unwrap();
        // Same axis up to sign.
        let dot: f64 = comp
            .iter()
            .enumerate()
            .map(|(k, v)| num(v) * p.components[[k, j]])
            .sum();
        c.check(&format!("PCA |<axis {j}, ref>|"), dot.abs(), 1.0, 1e-9);
    }
    c.finish();
}

#[test]
fn evaluate_end_to_end_reproduces_reference_values() {
    // evaluate() on the DMSO-centred fixture (already PCA-50, so no PCA),
    // baseline = uncorrected, previous = uncorrected (drift).
    let r = reference();
    let rr = &r["bbbc021_dmso"];
    let pre = load("bbbc021_none_emb.csv");
    let post = load("bbbc021_dmso_emb.csv");
    let input = EvalInput {
        features: post.x.clone(),
        batch: post.col("batch").clone(),
        label: post.col("label").clone(),
        compound: Some(post.col("compound").clone()),
        treatment: Some(post.col("treatment").clone()),
        plate: Some(post.col("plate").clone()),
        is_control: post.controls(),
        baseline: Some(pre.x.clone()),
        previous: Some(pre.x.clone()),
    };
    let opts = EvalOptions {
        pca_components: None,
        ..Default::default()
    };
    let rep = evaluate(&input, &opts).unwrap();
    let mut c = Checker::new();
    for (name, got, tol) in [
        ("ilisi", rep.ilisi, DET_TOL),
        ("clisi", rep.clisi, DET_TOL),
        ("graph_connectivity", rep.graph_connectivity, DET_TOL),
        ("kbet", rep.kbet, KBET_TOL),
        ("silhouette_label", rep.silhouette_label, DET_TOL),
        ("silhouette_batch", rep.silhouette_batch, DET_TOL),
        ("bras", rep.bras, DET_TOL),
        ("pcr_batch", rep.pcr_batch, DET_TOL),
        ("pcr_comparison", rep.pcr_comparison, DET_TOL),
        ("nsc", rep.nsc, 1e-12),
        ("nscb", rep.nscb, 1e-12),
        ("drift", rep.drift, 1e-6),
        ("nmi (own k-means, loose)", rep.nmi, 0.1),
    ] {
        let key = name.split(' ').next().unwrap_or(name);
        c.check(
            &format!("evaluate {name}"),
            got.unwrap_or(f64::NAN),
            num(&rr[key]),
            tol,
        );
    }
    c.check(
        "evaluate cross-batch mAP",
        rep.map_cross_batch.unwrap_or(f64::NAN),
        num(&rr["map_cross_batch"]["mean_map"]),
        1e-5,
    );
    c.check(
        "evaluate mAP non-rep",
        rep.map_nonrep.unwrap_or(f64::NAN),
        num(&rr["map_nonrep"]["mean_map"]),
        1e-5,
    );
    c.check(
        "evaluate mAP control",
        rep.map_control.unwrap_or(f64::NAN),
        num(&rr["map_control"]["mean_map"]),
        1e-5,
    );
    c.check(
        "evaluate normalised drift",
        rep.normalised_drift.unwrap_or(f64::NAN),
        num(&rr["drift"]) / num(&rr["replicate_distance"]),
        1e-6,
    );
    println!("{}", rep.to_text());
    c.finish();
}
