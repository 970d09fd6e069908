//! Tests of the synthetic generator: determinism, design invariants, the
//! strength of the batch effect versus the truth, validation and Arrow layout.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

use arrow_array::{Array, Float64Array, StringArray};
use proptest::prelude::*;

use arrow_schema::DataType;

use super::design::pick_weighted;
use super::normal::Normal;
use super::spec::control_count;
use super::*;

fn small_spec() -> SynthSpec {
    SynthSpec {
        rows: 4_000,
        batches: 4,
        features: 30,
        groups: 12,
        ..SynthSpec::default()
    }
}

/// Mean row of `values` over the rows selected by `keep`.
fn centroid(values: &Array2<f64>, keep: impl Fn(usize) -> bool) -> Vec<f64> {
    let mut sum = vec![0.0; values.ncols()];
    let mut n = 0usize;
    for (i, row) in values.rows().into_iter().enumerate() {
        if keep(i) {
            n += 1;
            for (s, x) in sum.iter_mut().zip(row) {
                *s += x;
            }
        }
    }
    sum.iter().map(|s| s / n as f64).collect()
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Mean distance between the centroids of all pairs of batches.
fn mean_batch_centroid_distance(t: &SynthTable, values: &Array2<f64>) -> f64 {
    let batches: BTreeSet<&String> = t.batch.iter().collect();
    let centroids: Vec<Vec<f64>> = batches
        .iter()
        .map(|b| centroid(values, |i| &t.batch[i] == *b))
        .collect();
    let mut total = 0.0;
    let mut pairs = 0;
    for i in 0..centroids.len() {
        for j in i + 1..centroids.len() {
            total += distance(&centroids[i], &centroids[j]);
            pairs += 1;
        }
    }
    total / pairs as f64
}

/// Checks the design invariants every generated table must satisfy.
fn check_invariants(spec: &SynthSpec, t: &SynthTable) {
    let n = spec.rows;
    assert_eq!(t.features.dim(), (n, spec.features));
    assert_eq!(t.truth.dim(), (n, spec.features));
    for column in [&t.batch, &t.plate, &t.well, &t.label, &t.treatment] {
        assert_eq!(column.len(), n);
    }
    assert!(t
        .features
        .iter()
        .chain(t.truth.iter())
        .all(|x| x.is_finite()));

    // Controls: exact count, label and treatment agree.
    let controls = t.label.iter().filter(|l| *l == CONTROL_LABEL).count();
    assert_eq!(controls, control_count(spec));
    for (l, tr) in t.label.iter().zip(&t.treatment) {
        assert_eq!(l == CONTROL_LABEL, tr == CONTROL_LABEL);
    }

    // Every batch present and non-empty; rows sorted by batch, plate, well position.
    let batches: BTreeSet<&String> = t.batch.iter().collect();
    assert_eq!(batches.len(), spec.batches);
    assert!(t.batch.windows(2).all(|w| w[0] <= w[1]));
    assert!(t.plate.windows(2).all(|w| w[0] <= w[1]));

    // (plate, well) unique; each plate belongs to one batch; plate count per batch.
    let mut seen = HashSet::new();
    let mut plate_batch: HashMap<&String, &String> = HashMap::new();
    for i in 0..n {
        assert!(seen.insert((&t.plate[i], &t.well[i])), "duplicate well");
        assert_eq!(
            *plate_batch.entry(&t.plate[i]).or_insert(&t.batch[i]),
            &t.batch[i]
        );
        assert!(t.plate[i].starts_with(&t.batch[i]));
    }
    for b in &batches {
        let plates = plate_batch.values().filter(|pb| **pb == *b).count();
        let rows = t.batch.iter().filter(|x| x == b).count();
        assert_eq!(plates, spec.plates_per_batch.min(rows));
    }

    // A treatment belongs to one group; replicated treatments span >= 2 batches;
    // batch-specific groups live in exactly one batch.
    let mut treatment_label: HashMap<&String, &String> = HashMap::new();
    let mut treatment_batches: HashMap<&String, BTreeSet<&String>> = HashMap::new();
    let mut label_batches: HashMap<&String, BTreeSet<&String>> = HashMap::new();
    for i in 0..n {
        assert_eq!(
            *treatment_label
                .entry(&t.treatment[i])
                .or_insert(&t.label[i]),
            &t.label[i]
        );
        treatment_batches
            .entry(&t.treatment[i])
            .or_default()
            .insert(&t.batch[i]);
        label_batches
            .entry(&t.label[i])
            .or_default()
            .insert(&t.batch[i]);
    }
    let specific: HashSet<&String> = t.batch_specific_labels.iter().collect();
    assert_eq!(specific.len(), spec.batch_specific_groups);
    for (treatment, in_batches) in &treatment_batches {
        let label = treatment_label[treatment];
        if label == CONTROL_LABEL || specific.contains(label) {
            continue;
        }
        if spec.batches >= 2 {
            assert!(
                in_batches.len() >= 2,
                "treatment {treatment} ({label}) only in {in_batches:?}"
            );
        }
    }
    for label in &specific {
        if let Some(in_batches) = label_batches.get(label) {
            assert_eq!(
                in_batches.len(),
                1,
                "batch-specific {label} in {in_batches:?}"
            );
        }
    }
}

#[test]
fn same_seed_same_table_different_seed_different_table() {
    let spec = small_spec();
    let a = generate(&spec).unwrap();
    let b = generate(&spec).unwrap();
    assert_eq!(a.features, b.features);
    assert_eq!(a.truth, b.truth);
    assert_eq!(a.batch, b.batch);
    assert_eq!(a.plate, b.plate);
    assert_eq!(a.well, b.well);
    assert_eq!(a.label, b.label);
    assert_eq!(a.treatment, b.treatment);

    let c = generate(&SynthSpec { seed: 43, ..spec }).unwrap();
    assert_ne!(a.features, c.features);
    assert_ne!(a.truth, c.truth);
    assert_ne!(a.label, c.label);
}

#[test]
fn output_does_not_depend_on_thread_count() {
    // More than one chunk, so chunks really run on different threads.
    let spec = SynthSpec {
        rows: 3 * CHUNK_ROWS + 17,
        features: 8,
        ..small_spec()
    };
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| generate(&spec).unwrap())
    };
    let one = run(1);
    let three = run(3);
    assert_eq!(one.features, three.features);
    assert_eq!(one.truth, three.truth);
    assert_eq!(one.treatment, three.treatment);
}

#[test]
fn default_spec_shapes_labels_and_invariants() {
    let spec = SynthSpec::default();
    let t = generate(&spec).unwrap();
    check_invariants(&spec, &t);

    let labels: BTreeSet<&str> = t.label.iter().map(String::as_str).collect();
    let mut expected: BTreeSet<String> = (1..=20).map(|g| format!("G{g:02}")).collect();
    expected.insert(CONTROL_LABEL.to_string());
    assert_eq!(
        labels,
        expected.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    assert_eq!(
        t.label.iter().filter(|l| *l == CONTROL_LABEL).count(),
        1_000
    );
    let batches: BTreeSet<&str> = t.batch.iter().map(String::as_str).collect();
    assert_eq!(
        batches,
        ["Batch01", "Batch02", "Batch03", "Batch04"]
            .into_iter()
            .collect()
    );
    assert_eq!(t.feature_names()[0], "Feature_000");
    assert_eq!(t.feature_names()[49], "Feature_049");
    assert_eq!(t.well[0], "A01");
    assert!(t.batch_specific_labels.is_empty());

    // About `replicates` rows per treatment.
    let treatments: HashSet<&String> = t.treatment.iter().filter(|x| *x != CONTROL_LABEL).collect();
    assert_eq!(treatments.len(), 9_000 / 4);

    // Batches differ in size, but within the documented ±30 % band (plus noise).
    let mut sizes: BTreeMap<&String, usize> = BTreeMap::new();
    for b in &t.batch {
        *sizes.entry(b).or_default() += 1;
    }
    let mean = spec.rows as f64 / spec.batches as f64;
    assert!(sizes
        .values()
        .all(|&s| (s as f64) > 0.6 * mean && (s as f64) < 1.4 * mean));
    assert!(
        sizes.values().collect::<BTreeSet<_>>().len() > 1,
        "{sizes:?}"
    );
}

#[test]
fn batch_specific_groups_live_in_exactly_one_batch() {
    let spec = SynthSpec {
        batch_specific_groups: 3,
        ..small_spec()
    };
    let t = generate(&spec).unwrap();
    check_invariants(&spec, &t);
    assert_eq!(t.batch_specific_labels, ["G10", "G11", "G12"]);
    let mut homes = BTreeSet::new();
    for label in &t.batch_specific_labels {
        let batches: BTreeSet<&String> = (0..t.rows())
            .filter(|&i| &t.label[i] == label)
            .map(|i| &t.batch[i])
            .collect();
        assert_eq!(batches.len(), 1, "{label}: {batches:?}");
        homes.extend(batches);
    }
    // Three specific groups over four batches: round-robin puts them in different batches.
    assert_eq!(homes.len(), 3);
    // The shared groups still span several batches.
    let shared: BTreeSet<&String> = (0..t.rows())
        .filter(|&i| t.label[i] == "G01")
        .map(|i| &t.batch[i])
        .collect();
    assert_eq!(shared.len(), 4);
}

#[test]
fn batch_effect_is_strong_in_features_and_absent_in_truth() {
    let spec = small_spec();
    let t = generate(&spec).unwrap();
    let observed = mean_batch_centroid_distance(&t, &t.features);
    let truth = mean_batch_centroid_distance(&t, &t.truth);
    println!("batch centroid distance: features {observed:.3}, truth {truth:.3}");
    assert!(
        observed > 5.0 * truth,
        "features {observed} vs truth {truth}"
    );

    // Per group: centroids in different batches agree in the truth (up to
    // sampling noise) but not in the observed features.
    let within_group = |values: &Array2<f64>| {
        let mut total = 0.0;
        let mut pairs = 0;
        for g in ["G01", "G02", "G03", CONTROL_LABEL] {
            let c: Vec<Vec<f64>> = ["Batch01", "Batch02", "Batch03", "Batch04"]
                .iter()
                .map(|b| centroid(values, |i| t.label[i] == g && t.batch[i] == *b))
                .collect();
            for i in 0..c.len() {
                for j in i + 1..c.len() {
                    total += distance(&c[i], &c[j]);
                    pairs += 1;
                }
            }
        }
        total / pairs as f64
    };
    let between_groups = distance(
        &centroid(&t.truth, |i| t.label[i] == "G01"),
        &centroid(&t.truth, |i| t.label[i] == "G02"),
    );
    let truth_same_group = within_group(&t.truth);
    let observed_same_group = within_group(&t.features);
    println!(
        "same group across batches: truth {truth_same_group:.3}, features {observed_same_group:.3}; \
         G01-G02 in truth {between_groups:.3}"
    );
    assert!(truth_same_group < 0.25 * between_groups);
    assert!(observed_same_group > 4.0 * truth_same_group);
}

#[test]
fn zero_effect_strengths_give_the_truth() {
    let spec = SynthSpec {
        shift: 0.0,
        scale: 0.0,
        warp: 0.0,
        ..small_spec()
    };
    let t = generate(&spec).unwrap();
    assert_eq!(t.features, t.truth);
    // And each effect alone changes the table.
    for spec in [
        SynthSpec {
            shift: 1.0,
            ..spec.clone()
        },
        SynthSpec {
            scale: 0.2,
            ..spec.clone()
        },
        SynthSpec {
            warp: 0.5,
            ..spec.clone()
        },
    ] {
        let t = generate(&spec).unwrap();
        assert_ne!(t.features, t.truth, "{spec:?}");
    }
}

#[test]
fn truth_features_are_correlated_like_real_profiles() {
    // Low-rank biology: features are strongly correlated, unlike i.i.d. noise.
    let spec = SynthSpec {
        features: 40,
        ..small_spec()
    };
    let t = generate(&spec).unwrap();
    let x = &t.truth;
    let n = x.nrows() as f64;
    let mean = x.mean_axis(ndarray::Axis(0)).unwrap();
    let centred = x - &mean;
    let cov = centred.t().dot(&centred) / n;
    let mut total = 0.0;
    let mut pairs = 0;
    for i in 0..spec.features {
        for j in i + 1..spec.features {
            total += (cov[[i, j]] / (cov[[i, i]] * cov[[j, j]]).sqrt()).abs();
            pairs += 1;
        }
    }
    let mean_abs_corr = total / pairs as f64;
    println!("mean |correlation| between truth features: {mean_abs_corr:.3}");
    assert!(mean_abs_corr > 0.15, "{mean_abs_corr}");
}

#[test]
fn replicates_of_a_treatment_are_closer_than_other_treatments_of_the_group() {
    let t = generate(&small_spec()).unwrap();
    let mut by_treatment: BTreeMap<&String, Vec<usize>> = BTreeMap::new();
    for (i, tr) in t.treatment.iter().enumerate() {
        if tr != CONTROL_LABEL && t.label[i] == "G01" {
            by_treatment.entry(tr).or_default().push(i);
        }
    }
    let rows: Vec<(&String, usize)> = by_treatment
        .iter()
        .flat_map(|(tr, rows)| rows.iter().map(move |&i| (*tr, i)))
        .collect();
    let (mut same, mut same_n, mut other, mut other_n) = (0.0, 0, 0.0, 0);
    for (a, &(ta, i)) in rows.iter().enumerate() {
        for &(tb, j) in &rows[a + 1..] {
            let d = distance(
                t.truth.row(i).as_slice().unwrap(),
                t.truth.row(j).as_slice().unwrap(),
            );
            if ta == tb {
                same += d;
                same_n += 1;
            } else {
                other += d;
                other_n += 1;
            }
        }
    }
    let (same, other) = (same / same_n as f64, other / other_n as f64);
    println!("G01 replicate distance {same:.3}, other-treatment distance {other:.3}");
    assert!(same < other);
}

#[test]
fn invalid_specs_are_rejected_with_the_field_name() {
    let ok = small_spec();
    let cases: Vec<(SynthSpec, &str)> = vec![
        (
            SynthSpec {
                rows: 0,
                ..ok.clone()
            },
            "rows",
        ),
        (
            SynthSpec {
                batches: 0,
                ..ok.clone()
            },
            "batches",
        ),
        (
            SynthSpec {
                features: 0,
                ..ok.clone()
            },
            "features",
        ),
        (
            SynthSpec {
                groups: 0,
                ..ok.clone()
            },
            "groups",
        ),
        (
            SynthSpec {
                plates_per_batch: 0,
                ..ok.clone()
            },
            "plates_per_batch",
        ),
        (
            SynthSpec {
                latent_dim: 0,
                ..ok.clone()
            },
            "latent_dim",
        ),
        (
            SynthSpec {
                rows: 10,
                batches: 11,
                ..ok.clone()
            },
            "batches (11) must not exceed rows",
        ),
        (
            SynthSpec {
                controls_fraction: 1.0,
                ..ok.clone()
            },
            "controls_fraction",
        ),
        (
            SynthSpec {
                controls_fraction: -0.1,
                ..ok.clone()
            },
            "controls_fraction",
        ),
        (
            SynthSpec {
                controls_fraction: f64::NAN,
                ..ok.clone()
            },
            "controls_fraction",
        ),
        (
            SynthSpec {
                shift: -1.0,
                ..ok.clone()
            },
            "shift",
        ),
        (
            SynthSpec {
                scale: f64::INFINITY,
                ..ok.clone()
            },
            "scale",
        ),
        (
            SynthSpec {
                warp: f64::NAN,
                ..ok.clone()
            },
            "warp",
        ),
        (
            SynthSpec {
                replicates: 1,
                ..ok.clone()
            },
            "replicates",
        ),
        (
            SynthSpec {
                batch_specific_groups: 12,
                ..ok.clone()
            },
            "batch_specific_groups",
        ),
        (
            SynthSpec {
                rows: 10,
                batches: 6,
                ..ok.clone()
            },
            "too few",
        ),
        (
            SynthSpec {
                rows: usize::MAX / 2,
                ..ok.clone()
            },
            "too large",
        ),
    ];
    for (spec, needle) in cases {
        let err = generate(&spec).expect_err(needle).to_string();
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }
}

#[test]
fn tiny_specs_work() {
    for spec in [
        SynthSpec {
            rows: 2,
            batches: 1,
            controls_fraction: 0.0,
            ..small_spec()
        },
        SynthSpec {
            rows: 4,
            batches: 2,
            controls_fraction: 0.0,
            ..small_spec()
        },
        SynthSpec {
            rows: 12,
            batches: 3,
            features: 1,
            latent_dim: 3,
            ..small_spec()
        },
    ] {
        let t = generate(&spec).unwrap();
        check_invariants(&spec, &t);
    }
}

#[test]
fn large_plates_continue_with_site_suffixes() {
    assert_eq!(well_name(0), "A01");
    assert_eq!(well_name(23), "A24");
    assert_eq!(well_name(24), "B01");
    assert_eq!(well_name(383), "P24");
    assert_eq!(well_name(384), "A01_s2");
    let spec = SynthSpec {
        rows: 2_000,
        batches: 2,
        plates_per_batch: 1,
        ..small_spec()
    };
    let t = generate(&spec).unwrap();
    check_invariants(&spec, &t);
    assert!(t.well.iter().any(|w| w.ends_with("_s2")));
}

#[test]
fn box_muller_gives_standard_normals() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut normal = Normal::default();
    let n = 200_000;
    let xs: Vec<f64> = (0..n).map(|_| normal.sample(&mut rng)).collect();
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
    let within_1sd = xs.iter().filter(|x| x.abs() < 1.0).count() as f64 / n as f64;
    assert!(mean.abs() < 0.01, "{mean}");
    assert!((var - 1.0).abs() < 0.01, "{var}");
    assert!((within_1sd - 0.6827).abs() < 0.005, "{within_1sd}");
}

#[test]
fn pick_weighted_follows_weights_and_respects_exclusion() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let weights = [1.0, 3.0, 0.5];
    let mut counts = [0usize; 3];
    for _ in 0..45_000 {
        counts[pick_weighted(&weights, None, &mut rng)] += 1;
    }
    let expected = [10_000.0, 30_000.0, 5_000.0];
    for (c, e) in counts.iter().zip(expected) {
        assert!((*c as f64 - e).abs() < 0.05 * e, "{counts:?}");
    }
    for _ in 0..1_000 {
        assert_ne!(pick_weighted(&weights, Some(1), &mut rng), 1);
    }
}

#[test]
fn record_batches_have_pycytominer_layout() {
    let spec = SynthSpec {
        rows: 500,
        features: 12,
        ..small_spec()
    };
    let t = generate(&spec).unwrap();
    for (rb, values) in [
        (to_record_batch(&t).unwrap(), &t.features),
        (truth_record_batch(&t).unwrap(), &t.truth),
    ] {
        assert_eq!(rb.num_rows(), 500);
        assert_eq!(rb.num_columns(), 5 + 12);
        let schema = rb.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            &names[..6],
            [
                "Metadata_Batch",
                "Metadata_Plate",
                "Metadata_Well",
                "Metadata_Label",
                "Metadata_Treatment",
                "Feature_000"
            ]
        );
        assert_eq!(names[16], "Feature_011");
        for (j, field) in schema.fields().iter().enumerate() {
            let expected = if j < 5 {
                DataType::Utf8
            } else {
                DataType::Float64
            };
            assert_eq!(field.data_type(), &expected);
        }
        let treatment = rb.column(4).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(treatment.value(7), t.treatment[7]);
        let f3 = rb
            .column(5 + 3)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(f3.null_count(), 0);
        for i in 0..500 {
            assert_eq!(f3.value(i), values[[i, 3]]);
        }
    }
}

#[test]
fn feature_names_widen_past_a_thousand() {
    assert_eq!(feature_names(1000)[999], "Feature_999");
    assert_eq!(feature_names(1001)[1000], "Feature_1000");
    assert_eq!(feature_names(1001)[0], "Feature_0000");
}

#[test]
fn generates_200k_by_50_quickly() {
    let spec = SynthSpec {
        rows: 200_000,
        batches: 8,
        ..SynthSpec::default()
    };
    let start = Instant::now();
    let t = generate(&spec).unwrap();
    let elapsed = start.elapsed();
    println!(
        "generated {} x {} in {:.2} s ({} threads)",
        t.rows(),
        t.features.ncols(),
        elapsed.as_secs_f64(),
        rayon::current_num_threads()
    );
    assert_eq!(t.rows(), 200_000);
}

/// The benchmark size; ignored by default (run with `--run-ignored all`).
#[test]
#[ignore]
fn generates_1m_by_50() {
    let spec = SynthSpec {
        rows: 1_000_000,
        batches: 10,
        ..SynthSpec::default()
    };
    let start = Instant::now();
    let t = generate(&spec).unwrap();
    println!(
        "generated {} x {} in {:.2} s ({} threads)",
        t.rows(),
        t.features.ncols(),
        start.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    let start = Instant::now();
    let rb = to_record_batch(&t).unwrap();
    println!("record batch in {:.2} s", start.elapsed().as_secs_f64());
    assert_eq!(rb.num_rows(), 1_000_000);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any valid spec either yields a table satisfying every invariant or, only
    /// when batch-specific groups crowd out a batch, a clear error.
    #[test]
    fn generated_tables_satisfy_the_design_invariants(
        rows in 1usize..600,
        batches in 1usize..7,
        features in 1usize..9,
        groups in 1usize..9,
        controls_fraction in 0.0f64..0.5,
        plates_per_batch in 1usize..5,
        specific in 0usize..4,
        replicates in 2usize..6,
        seed in any::<u64>(),
    ) {
        let spec = SynthSpec {
            rows,
            batches,
            features,
            groups,
            controls_fraction,
            plates_per_batch,
            batch_specific_groups: specific.min(groups - 1),
            replicates,
            latent_dim: 3,
            seed,
            ..SynthSpec::default()
        };
        match generate(&spec) {
            Ok(t) => check_invariants(&spec, &t),
            Err(e) => {
                let msg = e.to_string();
                let treated = rows - control_count(&spec);
                let explained = treated < 2 * batches
                    || batches > rows
                    || (spec.batch_specific_groups > 0 && msg.contains("without rows"));
                prop_assert!(explained, "{spec:?}: {msg}");
            }
        }
    }
}
