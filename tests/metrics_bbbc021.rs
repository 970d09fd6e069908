//! `evaluate()` end to end on the real BBBC021 table (data/bbbc021), with the
//! protocol's preprocessing done by balans itself, against the "none
//! (scaled)" anchor row of evaluation.md (measured with scib-metrics'
//! Benchmarker, pynndescent graphs, JAX k-means, copairs).

use balans::metrics::{evaluate, EvalInput, EvalOptions};
use flate2::read::GzDecoder;
use ndarray::Array2;
use regex::Regex;
use std::io::Read;

fn load() -> EvalInput {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/bbbc021/bbbc021_wells_annotated.csv.gz"
    );
    let mut text = String::new();
    GzDecoder::new(std::fs::File::open(path).expect("BBBC021 table"))
        .read_to_string(&mut text)
        .expect("gzip");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let positional = Regex::new("_AreaShape_Center_|_Location_").expect("regex");
    let feat: Vec<usize> = (0..header.len())
        .filter(|&j| !header[j].starts_with("Metadata_") && !positional.is_match(header[j]))
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect("column");
    let (week, plate, compound, treatment, moa) = (
        col("Metadata_Week"),
        col("Metadata_Plate"),
        col("Metadata_Compound"),
        col("Metadata_Treatment"),
        col("Metadata_MoA"),
    );
    let rows: Vec<Vec<&str>> = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').collect())
        .collect();
    let x = Array2::from_shape_fn((rows.len(), feat.len()), |(i, j)| {
        rows[i][feat[j]].parse::<f64>().expect("numeric feature")
    });
    let get = |c: usize| rows.iter().map(|r| r[c].to_string()).collect::<Vec<_>>();
    EvalInput {
        features: x.clone(),
        batch: get(week),
        label: get(moa),
        compound: Some(get(compound)),
        treatment: Some(get(treatment)),
        plate: Some(get(plate)),
        is_control: rows.iter().map(|r| r[moa] == "DMSO").collect(),
        baseline: Some(x),
        previous: None,
    }
}

#[test]
fn uncorrected_bbbc021_reproduces_the_anchor_row() {
    let input = load();
    let opts = EvalOptions {
        robust_scale: true,
        ..Default::default()
    };
    let r = evaluate(&input, &opts).expect("evaluate");
    println!("{}", r.to_text());
    assert_eq!(r.n_evaluated, 302);
    assert_eq!(r.embedding_dims, 50);
    // (value, anchor, tolerance): scib-style metrics differ only through
    // pynndescent vs exact graphs; k-means runs differ (loose).
    let checks = [
        ("silhouette label", r.silhouette_label, 0.574, 0.01),
        ("cLISI", r.clisi, 0.954, 0.01),
        ("BRAS", r.bras, 0.500, 0.01),
        ("iLISI", r.ilisi, 0.134, 0.01),
        ("kBET", r.kbet, 0.298, 0.03),
        ("graph connectivity", r.graph_connectivity, 0.844, 0.01),
        ("PCR comparison (self)", r.pcr_comparison, 0.0, 1e-9),
        ("NMI", r.nmi, 0.677, 0.1),
        ("ARI", r.ari, 0.438, 0.15),
        ("cross-week mAP", r.map_cross_batch, 0.538, 0.005),
        ("NSCB", r.nscb, 0.621, 0.005),
    ];
    for (name, got, want, tol) in checks {
        let got = got.unwrap_or(f64::NAN);
        assert!(
            (got - want).abs() <= tol,
            "{name}: {got} vs anchor {want} (tol {tol})"
        );
    }
}
