//! Scale bench: time and peak memory of `balans correct`'s fit on synthetic
//! tables of 10k, 100k and 1M rows x 50 features in 10 batches.
//!
//! Run: `cargo bench --bench scale` (all sizes) or
//! `BALANS_BENCH_SIZES=10000,100000 cargo bench --bench scale`.
//! Each size runs in a child process so its peak RSS (VmHWM) is its own.
//! Figures are printed, never asserted.

use std::process::Command;
use std::time::Instant;

use balans::method::params::Params;
use balans::synth::{generate, SynthSpec};
use balans::{correct, Dataset, NoProgress};

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn child(n: usize) -> anyhow::Result<()> {
    let spec = SynthSpec {
        rows: n,
        batches: 10,
        features: 50,
        seed: 7,
        ..SynthSpec::default()
    };
    let t = Instant::now();
    let table = generate(&spec)?;
    let synth_s = t.elapsed().as_secs_f64();
    let rss_data = peak_rss_mb();
    let data = Dataset {
        x: table.features.view(),
        batch: &table.batch,
        plate: Some(&table.plate),
        controls: None,
    };
    // Method parameters: defaults, overridable by BALANS_METHOD__* variables.
    let params: Params = balans::config::Config::load(None)?.method;
    let t = Instant::now();
    let fit = correct(&data, &params, &NoProgress)?;
    let fit_s = t.elapsed().as_secs_f64();
    let landmarks: usize = fit.summary.rounds.iter().map(|r| r.landmarks).sum();
    let r0 = &fit.summary.rounds[0];
    println!(
        "RESULT n={n} d=50 batches=10 synth_s={synth_s:.2} fit_s={fit_s:.2} rows_per_s={:.0} \
         landmarks_per_round={:.0} covered={:.3} peak_rss_mb={:.0} data_rss_mb={rss_data:.0}",
        n as f64 / fit_s,
        landmarks as f64 / fit.summary.rounds.len() as f64,
        r0.covered_fraction,
        peak_rss_mb()
    );
    for (i, r) in fit.summary.rounds.iter().enumerate() {
        println!(
            "  round {}: landmarks {} sampling rounds {} coverage min {:.2} median {:.2} \
             index {:.2}s sampling {:.2}s align {:.2}s total {:.2}s",
            i + 1,
            r.landmarks,
            r.sampling_rounds,
            r.coverage_min,
            r.coverage_median,
            r.index_seconds,
            r.sampling_seconds,
            r.align_seconds,
            r.seconds
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let n: usize = args
            .get(pos + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("--child needs a row count"))?;
        return child(n);
    }
    let sizes: Vec<usize> = std::env::var("BALANS_BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "balans scale bench: {} threads, sizes {:?}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        sizes
    );
    let exe = std::env::current_exe()?;
    for n in sizes {
        let status = Command::new(&exe)
            .arg("--child")
            .arg(n.to_string())
            .status()?;
        if !status.success() {
            println!("n={n}: child failed ({status})");
        }
    }
    Ok(())
}
