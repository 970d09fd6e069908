//! Scale check (ignored by default): every metric on 100,000 rows x 50 dims.
//!
//! Run with
//! `cargo test --release --test metrics_scale -- --ignored --nocapture`
//! (set `BALANS_SCALE_ROWS` to try other sizes). Prints the time of each
//! stage and of the whole `evaluate()`.

use balans::metrics::cluster::{kmeans, KMeansOptions};
use balans::metrics::connectivity::graph_connectivity;
use balans::metrics::kbet::kbet_per_label;
use balans::metrics::knn::{knn, knn_hnsw, recall, Metric};
use balans::metrics::lisi::{clisi, ilisi};
use balans::metrics::map::{evaluate_map, Columns, MapOptions, MapSpec};
use balans::metrics::silhouette::{bras, silhouette_label};
use balans::metrics::{evaluate, Codes, EvalInput, EvalOptions};
use ndarray::{Array2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

fn synthetic(n: usize, d: usize) -> EvalInput {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let n_labels = 20;
    let n_batches = 10;
    let centres = Array2::from_shape_fn((n_labels, d), |_| rng.gen_range(-2.0..2.0));
    let shifts = Array2::from_shape_fn((n_batches, d), |_| rng.gen_range(-0.5..0.5));
    let mut x = Array2::zeros((n, d));
    let mut batch = Vec::with_capacity(n);
    let mut label = Vec::with_capacity(n);
    let mut compound = Vec::with_capacity(n);
    let mut plate = Vec::with_capacity(n);
    let mut ctrl = Vec::with_capacity(n);
    for i in 0..n {
        let b = i % n_batches;
        let is_ctrl = i % 20 == 0;
        let l = (i / n_batches) % n_labels;
        for j in 0..d {
            let c = if is_ctrl { 0.0 } else { centres[[l, j]] };
            x[[i, j]] = c + shifts[[b, j]] + rng.gen_range(-1.0..1.0);
        }
        batch.push(format!("b{b}"));
        label.push(if is_ctrl {
            "DMSO".into()
        } else {
            format!("L{l}")
        });
        compound.push(if is_ctrl {
            "DMSO".into()
        } else {
            format!("c{}_{}", l, (i / 200) % 25)
        });
        plate.push(format!("p{}_{}", b, (i / 1000) % 10));
        ctrl.push(is_ctrl);
    }
    EvalInput {
        features: x.clone(),
        batch,
        label,
        compound: Some(compound),
        treatment: None,
        plate: Some(plate),
        is_control: ctrl,
        baseline: Some(x),
        previous: None,
    }
}

fn lap(what: &str, t: &mut Instant) {
    println!("{what:<36} {:>8.2} s", t.elapsed().as_secs_f64());
    *t = Instant::now();
}

#[test]
#[ignore = "scale benchmark: run explicitly with --ignored (use --release)"]
fn metrics_at_100k_rows() {
    let n: usize = std::env::var("BALANS_SCALE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let input = synthetic(n, 50);
    let treated: Vec<usize> = (0..n).filter(|&i| !input.is_control[i]).collect();
    let x = input.features.select(Axis(0), &treated);
    let sub = |v: &[String]| treated.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
    let batches = Codes::new(&sub(&input.batch));
    let labels = Codes::new(&sub(&input.label));
    println!(
        "rows {n} ({} treated) x 50 dims, {} threads",
        treated.len(),
        rayon::current_num_threads()
    );
    let total = Instant::now();
    let mut t = Instant::now();
    let nn = knn(&x, 90, Metric::Euclidean).unwrap();
    lap("exact 90-NN", &mut t);
    let approx = knn_hnsw(&x, 90, Metric::Euclidean, 128).unwrap();
    lap("HNSW 90-NN (evaluate above 50k rows)", &mut t);
    println!("HNSW recall@90 vs exact: {:.4}", recall(&approx, &nn));
    let il = ilisi(&nn, &batches).unwrap();
    let cl = clisi(&nn, &labels).unwrap();
    lap("iLISI + cLISI", &mut t);
    let gc = graph_connectivity(&nn.subset(15).unwrap(), &labels).unwrap();
    lap("graph connectivity", &mut t);
    let (kb, _) = kbet_per_label(&nn.subset(50).unwrap(), &batches, &labels, 0.05, 100).unwrap();
    lap("kBET per label", &mut t);
    let m = 20_000.min(treated.len());
    let sx = x.slice(ndarray::s![..m, ..]).to_owned();
    let rows: Vec<usize> = (0..m).collect();
    let sl = silhouette_label(&sx, &labels.subset(&rows), Metric::Euclidean, true).unwrap();
    let br = bras(&sx, &labels.subset(&rows), &batches.subset(&rows)).unwrap();
    lap("silhouette label + BRAS (20k rows)", &mut t);
    let km = kmeans(&x, labels.n_levels(), &KMeansOptions::default()).unwrap();
    lap("k-means (5 restarts)", &mut t);
    let mut cols = Columns::new();
    cols.insert("batch".into(), Codes::new(&input.batch));
    cols.insert("label".into(), Codes::new(&input.label));
    cols.insert(
        "compound".into(),
        Codes::new(input.compound.as_deref().unwrap_or(&[])),
    );
    let opts = MapOptions {
        null_size: 10_000,
        max_queries: Some(5_000),
        ..Default::default()
    };
    let mp = evaluate_map(
        &input.features,
        &cols,
        &MapSpec::cross_batch("label", "batch", "compound"),
        &treated,
        &opts,
    )
    .unwrap();
    lap("cross-batch mAP (5k queries, 10k null)", &mut t);
    println!("iLISI {il:.3} cLISI {cl:.3} GC {gc:.3} kBET {kb:?} sil {sl:.3} BRAS {br:?} mAP {:.3} ({} clusters)", mp.mean_map, km.len());
    println!(
        "{:<36} {:>8.2} s",
        "metrics total",
        total.elapsed().as_secs_f64()
    );

    let t0 = Instant::now();
    let opts = EvalOptions {
        map: MapOptions {
            max_queries: Some(5_000),
            ..Default::default()
        },
        ..Default::default()
    };
    let rep = evaluate(&input, &opts).unwrap();
    println!(
        "{:<36} {:>8.2} s",
        "evaluate() end to end",
        t0.elapsed().as_secs_f64()
    );
    println!("{}", rep.to_text());
}

#[test]
#[ignore = "micro-benchmark of the kNN tile GEMM"]
fn knn_tile_gemm_throughput() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let q = Array2::<f32>::from_shape_fn((256, 50), |_| rng.gen_range(-1.0..1.0));
    let c = Array2::<f32>::from_shape_fn((2048, 50), |_| rng.gen_range(-1.0..1.0));
    let t = Instant::now();
    let mut acc = 0.0f32;
    let reps = 400;
    for _ in 0..reps {
        let g = q.dot(&c.t());
        acc += g[[0, 0]];
    }
    let s = t.elapsed().as_secs_f64();
    let flops = 2.0 * 256.0 * 2048.0 * 50.0 * reps as f64;
    println!(
        "tile GEMM: {:.1} GFLOP/s single thread ({acc})",
        flops / s / 1e9
    );
    let t = Instant::now();
    let mut cnt = 0usize;
    let g = q.dot(&c.t());
    for _ in 0..reps {
        for row in g.rows() {
            let mut worst = f32::INFINITY;
            for &v in row.iter() {
                if v < worst {
                    worst = v - 1.0;
                    cnt += 1;
                }
            }
        }
    }
    println!(
        "tile scan: {:.2} ns/entry ({cnt})",
        t.elapsed().as_secs_f64() * 1e9 / (256.0 * 2048.0 * reps as f64)
    );
}
