//! Batch summaries (`[method] summary_rows`): what a streamed plate loses,
//! and gains, when each large batch of the model is represented by a
//! seeded sample of its rows instead of an HNSW index over all of them.
//!
//! Run: `cargo bench --bench summary` (`BALANS_BENCH_ROWS`, default 60000:
//! synthetic rows in 384-row plates; `BALANS_BENCH_BATCHES`, default 5;
//! `BALANS_BENCH_FEATURES`, default 100;
//! `BALANS_BENCH_SUMMARY`, default `2000,0`: the `summary_rows` values
//! compared; `BALANS_BENCH_PLATE_ROUNDS`, default the `plate_rounds`
//! default: the plate rounds compared, e.g. `1,2`; `BALANS_BENCH_REPEAT`,
//! default 1: each plate corrected that many times, for profiling). The
//! reference is batches 1-4 without their last 3 plates; the stream is
//! those 12 held plates, then 6 plates of batch 5 (a batch the reference
//! did not have). The same stream runs through models seeded from one
//! offline fit, one per `summary_rows` value: by default 2000 (the
//! default) and 0 (every row in HNSW). Printed per model: per-plate time (`correct_plate`, one thread
//! pool), error to the batch-free truth (RMS over the plates' cells, after
//! scaling each feature by the truth's SD over the stream) and the QC's
//! mixing after correction. Figures are printed, never asserted.

use std::time::Instant;

use anyhow::Result;
use balans::method::model::Model;
use balans::method::params::Params;
use balans::qc::correct_plate;
use balans::synth::{generate, SynthSpec, CONTROL_LABEL};
use balans::{correct, Dataset, NoProgress};
use ndarray::{Array2, Axis};

fn main() -> Result<()> {
    let n: usize = std::env::var("BALANS_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000);
    let batches: usize = std::env::var("BALANS_BENCH_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let features: usize = std::env::var("BALANS_BENCH_FEATURES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let t = generate(&SynthSpec {
        rows: n,
        batches,
        features,
        plates_per_batch: (n / batches / 384).max(4),
        seed: 5,
        ..SynthSpec::default()
    })?;
    let mut plates: Vec<(String, String)> = Vec::new(); // (batch, plate) in order
    for i in 0..t.rows() {
        let key = (t.batch[i].clone(), t.plate[i].clone());
        if !plates.contains(&key) {
            plates.push(key);
        }
    }
    let batch_names: Vec<String> = {
        let mut b: Vec<String> = t.batch.clone();
        b.sort();
        b.dedup();
        b
    };
    let last = &batch_names[batch_names.len() - 1];
    let mut held: Vec<(String, String)> = Vec::new();
    for b in &batch_names[..batch_names.len() - 1] {
        let of: Vec<&(String, String)> = plates.iter().filter(|p| &p.0 == b).collect();
        held.extend(
            of[of.len().saturating_sub(3)..]
                .iter()
                .map(|p| (*p).clone()),
        );
    }
    let new_batch: Vec<(String, String)> = plates
        .iter()
        .filter(|p| &p.0 == last)
        .take(6)
        .cloned()
        .collect();
    let reference: Vec<usize> = (0..t.rows())
        .filter(|&i| &t.batch[i] != last && !held.iter().any(|p| p.1 == t.plate[i]))
        .collect();
    let x = t.features.select(Axis(0), &reference);
    let batch: Vec<String> = reference.iter().map(|&i| t.batch[i].clone()).collect();
    let plate: Vec<String> = reference.iter().map(|&i| t.plate[i].clone()).collect();
    let controls: Vec<bool> = reference
        .iter()
        .map(|&i| t.label[i] == CONTROL_LABEL)
        .collect();
    let data = Dataset {
        x: x.view(),
        batch: &batch,
        plate: Some(&plate),
        controls: Some(&controls),
    };
    let t0 = Instant::now();
    let params = Params::default();
    let fit = correct(&data, &params, &NoProgress)?;
    println!(
        "summary bench: {} rows, {} reference rows in {} batches, fit {:.1}s; stream: {} held plates then {} plates of new batch {last}",
        t.rows(),
        reference.len(),
        batches - 1,
        t0.elapsed().as_secs_f64(),
        held.len(),
        new_batch.len()
    );
    let stream: Vec<(String, String)> = held.into_iter().chain(new_batch).collect();
    let stream_rows: Vec<Vec<usize>> = stream
        .iter()
        .map(|(_, p)| (0..t.rows()).filter(|&i| &t.plate[i] == p).collect())
        .collect();
    let all: Vec<usize> = stream_rows.iter().flatten().copied().collect();
    let truth_sd: Vec<f64> = t
        .truth
        .select(Axis(0), &all)
        .axis_iter(Axis(1))
        .map(|c| c.std(0.0).max(1e-12))
        .collect();
    let err = |m: &Array2<f64>, rows: &[usize]| -> f64 {
        let truth = t.truth.select(Axis(0), rows);
        let mut s = 0.0;
        for ((r, c), v) in m.indexed_iter() {
            s += ((v - truth[[r, c]]) / truth_sd[c]).powi(2);
        }
        (s / m.len() as f64).sqrt()
    };
    let raw: f64 = {
        let x = t.features.select(Axis(0), &all);
        err(&x, &all)
    };
    println!("  uncorrected: error to truth {raw:.4}");
    let caps: Vec<usize> = std::env::var("BALANS_BENCH_SUMMARY")
        .unwrap_or_else(|_| "2000,0".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let plate_rounds: Vec<usize> = std::env::var("BALANS_BENCH_PLATE_ROUNDS")
        .unwrap_or_else(|_| params.plate_rounds.to_string())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    for (cap, rounds) in caps
        .iter()
        .flat_map(|&c| plate_rounds.iter().map(move |&r| (c, r)))
    {
        let p = Params {
            summary_rows: cap,
            plate_rounds: rounds,
            ..params.clone()
        };
        let t1 = Instant::now();
        let mut model = Model::from_fit(&fit, t.feature_names(), &p)?;
        let seeded = t1.elapsed().as_secs_f64();
        let mut times = Vec::new();
        let mut corrected: Vec<Array2<f64>> = Vec::new();
        let mut mixing = Vec::new();
        let repeat: usize = std::env::var("BALANS_BENCH_REPEAT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        for (k, ((b, name), rows)) in stream.iter().zip(&stream_rows).enumerate() {
            let xp = t.features.select(Axis(0), rows);
            let ctrl: Vec<bool> = rows.iter().map(|&i| t.label[i] == CONTROL_LABEL).collect();
            // Extra passes (`BALANS_BENCH_REPEAT`, for profiling the plate
            // path): the same plate again, its delta not applied.
            for _ in 1..repeat {
                correct_plate(&model, name, b, xp.view(), Some(&ctrl), k as u64)?;
            }
            let t2 = Instant::now();
            let pc = correct_plate(&model, name, b, xp.view(), Some(&ctrl), k as u64)?;
            model.apply(&pc.delta)?;
            times.push(t2.elapsed().as_secs_f64() * 1e3);
            mixing.push(pc.qc.mixing_after);
            corrected.push(pc.corrected);
        }
        let stacked = ndarray::concatenate(
            Axis(0),
            &corrected.iter().map(|c| c.view()).collect::<Vec<_>>(),
        )?;
        times.sort_by(f64::total_cmp);
        let mean_mix = mixing.iter().sum::<f64>() / mixing.len() as f64;
        println!(
            "  summary_rows={cap} plate_rounds={rounds}: model seeded in {seeded:.1}s, {} rows indexed; per plate p50 {:.0} ms, max {:.0} ms; error to truth {:.4}; mixing after {:.3}",
            model.indexed_len(),
            times[times.len() / 2],
            times[times.len() - 1],
            err(&stacked, &all),
            mean_mix
        );
    }
    Ok(())
}
