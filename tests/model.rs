//! The incremental model: plates corrected one at a time against a
//! reference fit, published rows never move, replays are idempotent.

use balans::method::model::{content_hash, Lookup, Model};
use balans::method::params::IndexKind;
use balans::method::params::Params;
use balans::qc::{correct_plate, offline_plate_qc, plate_mixing, plate_qc, QcConfig};
use balans::synth::{generate, SynthSpec, SynthTable};
use balans::{correct, Dataset, NoProgress};
use ndarray::{Array2, Axis};

fn table() -> SynthTable {
    generate(&SynthSpec {
        rows: 3000,
        batches: 4,
        features: 30,
        plates_per_batch: 3,
        seed: 11,
        ..SynthSpec::default()
    })
    .unwrap()
}

fn rows_where(t: &SynthTable, f: impl Fn(usize) -> bool) -> Vec<usize> {
    (0..t.rows()).filter(|&i| f(i)).collect()
}

fn params() -> Params {
    Params {
        threads: 2,
        ..Params::default()
    }
}

/// Fit on batches 1-3 minus one plate of batch 2; return model and held-out plates.
fn setup() -> (SynthTable, Model, Vec<usize>, Vec<usize>) {
    setup_with(&params())
}

/// [`setup`] with other parameters.
fn setup_with(params: &Params) -> (SynthTable, Model, Vec<usize>, Vec<usize>) {
    let t = table();
    let held_plate = t.plate[rows_where(&t, |i| t.batch[i] == "Batch02")[0]].clone();
    let reference = rows_where(&t, |i| t.batch[i] != "Batch04" && t.plate[i] != held_plate);
    let plate_rows = rows_where(&t, |i| t.plate[i] == held_plate);
    let new_batch_plate = t.plate[rows_where(&t, |i| t.batch[i] == "Batch04")[0]].clone();
    let new_rows = rows_where(&t, |i| t.plate[i] == new_batch_plate);
    let model = fit_on(&t, &reference, params);
    (t, model, plate_rows, new_rows)
}

/// The model of an offline fit on the table's rows `reference`.
fn fit_on(t: &SynthTable, reference: &[usize], params: &Params) -> Model {
    let x = t.features.select(Axis(0), reference);
    let batch: Vec<String> = reference.iter().map(|&i| t.batch[i].clone()).collect();
    let plate: Vec<String> = reference.iter().map(|&i| t.plate[i].clone()).collect();
    let controls: Vec<bool> = reference.iter().map(|&i| t.label[i] == "DMSO").collect();
    let data = Dataset {
        x: x.view(),
        batch: &batch,
        plate: Some(&plate),
        controls: Some(&controls),
    };
    let fit = correct(&data, params, &NoProgress).unwrap();
    Model::from_fit(&fit, t.feature_names(), params).unwrap()
}

/// What a restart does: the model rebuilt from its meta and stored rows.
fn restored_copy(model: &Model) -> Model {
    Model::restore(
        model.meta().clone(),
        model.rows_y().to_vec(),
        model.rows_batch().to_vec(),
        model.rows_coverage().to_vec(),
    )
    .unwrap()
    .with_feature_rows(model.rows_w().to_vec())
    .unwrap()
}

fn plate_inputs(t: &SynthTable, rows: &[usize]) -> (Array2<f64>, Vec<bool>) {
    (
        t.features.select(Axis(0), rows),
        rows.iter().map(|&i| t.label[i] == "DMSO").collect(),
    )
}

#[test]
fn streamed_plates_are_corrected_and_published_rows_do_not_move() {
    let (t, mut model, plate_rows, new_rows) = setup();
    let n0 = model.len();
    let (x, ctrl) = plate_inputs(&t, &plate_rows);
    let pc = correct_plate(&model, "P1", "Batch02", x.view(), Some(&ctrl), 1).unwrap();
    assert_eq!(pc.corrected.dim(), x.dim());
    assert!(pc.corrected.iter().all(|v| v.is_finite()));
    assert!(pc.qc.mixing_after > pc.qc.mixing_before, "{:?}", pc.qc);
    model.apply(&pc.delta).unwrap();
    assert_eq!(model.len(), n0 + plate_rows.len());

    // A plate of a batch never seen: a new index appears; it mixes better.
    let (x2, ctrl2) = plate_inputs(&t, &new_rows);
    let pc2 = correct_plate(&model, "P2", "Batch04", x2.view(), Some(&ctrl2), 2).unwrap();
    assert!(pc2.qc.new_batch);
    assert!(
        pc2.qc.cross_batch_distance_after < 0.8 * pc2.qc.cross_batch_distance_before,
        "{:?}",
        pc2.qc
    );
    assert!(pc2.qc.mean_offset > 0.0);
    model.apply(&pc2.delta).unwrap();
    assert_eq!(model.indexed_rows().len(), 4);

    // P1's published output is unchanged by P2's arrival (inductive).
    let rec = match model.lookup("P1", 1) {
        Lookup::Replay(r) => r,
        other => panic!("expected replay, got {other:?}"),
    };
    let again = model.replay_plate(&rec, x.view(), Some(&ctrl)).unwrap();
    // Bit-identical: consumers deduplicate by key + version.
    let diff = max_abs(&(&again - &pc.corrected));
    assert!(again == pc.corrected, "replayed output moved by {diff}");
    assert!(matches!(model.lookup("P1", 99), Lookup::Clash(_)));
    assert_eq!(model.lookup("P3", 1), Lookup::New);
}

#[test]
fn apply_is_idempotent_and_restore_reproduces_the_model() {
    let (t, mut model, plate_rows, new_rows) = setup();
    let (x, ctrl) = plate_inputs(&t, &plate_rows);
    let pc = correct_plate(&model, "P1", "Batch02", x.view(), Some(&ctrl), 7).unwrap();
    model.apply(&pc.delta).unwrap();
    let n = model.len();
    model.apply(&pc.delta).unwrap();
    assert_eq!(model.len(), n, "applying twice adds nothing");
    // The default neighbour space is whitened on the reference's controls,
    // and the checkpoint carries the whitening (restored below).
    assert!(
        model.meta().pca_whitening.is_some(),
        "a reference fit with controls whitens the neighbour space"
    );

    let restored = restored_copy(&model);
    let (x2, ctrl2) = plate_inputs(&t, &new_rows);
    let a = correct_plate(&model, "P2", "Batch04", x2.view(), Some(&ctrl2), 3).unwrap();
    let b = correct_plate(&restored, "P2", "Batch04", x2.view(), Some(&ctrl2), 3).unwrap();
    let diff = max_abs(&(&a.corrected - &b.corrected));
    assert!(diff < 1e-6, "restored model corrects differently by {diff}");
    assert_eq!(a.delta.version, b.delta.version);
}

#[test]
fn bad_plates_are_refused_with_reasons() {
    let (t, model, plate_rows, _) = setup();
    let (mut x, ctrl) = plate_inputs(&t, &plate_rows);
    x[[2, 5]] = f64::NAN;
    let e = correct_plate(&model, "P1", "Batch02", x.view(), Some(&ctrl), 1).unwrap_err();
    assert!(format!("{e}").contains("row 3"), "{e}");
    let empty = Array2::<f64>::zeros((0, 30));
    assert!(correct_plate(&model, "P0", "Batch02", empty.view(), None, 1).is_err());
    let narrow = Array2::<f64>::zeros((3, 29));
    assert!(correct_plate(&model, "P0", "Batch02", narrow.view(), None, 1).is_err());
    assert_ne!(content_hash(b"a"), content_hash(b"b"));
}

#[test]
fn bootstrap_from_a_first_plate() {
    let t = table();
    let rows = rows_where(&t, |i| t.plate[i] == t.plate[0]);
    let (x, ctrl) = plate_inputs(&t, &rows);
    let mut model = Model::bootstrap(x.view(), Some(&ctrl), t.feature_names(), &params()).unwrap();
    let pc = correct_plate(&model, "first", &t.batch[0], x.view(), Some(&ctrl), 1).unwrap();
    // Nothing to align to: the plate is only normalised.
    assert_eq!(pc.qc.mean_offset, 0.0);
    model.apply(&pc.delta).unwrap();
    assert_eq!(model.len(), rows.len());
    let other = rows_where(&t, |i| t.batch[i] == "Batch03");
    let other_plate = t.plate[other[0]].clone();
    let rows2 = rows_where(&t, |i| t.plate[i] == other_plate);
    let (x2, c2) = plate_inputs(&t, &rows2);
    let pc2 = correct_plate(&model, "second", "Batch03", x2.view(), Some(&c2), 2).unwrap();
    assert!(pc2.qc.mean_offset > 0.0);
}

/// The QC mixing figures are computed from round 1's candidate queries
/// (not repeated); they must equal a fresh query of the same coordinates.
#[test]
fn qc_mixing_reuses_queries_without_changing_figures() {
    let (t, model, rows, new_rows) = setup();
    for (rows, batch) in [(&rows, "Batch02"), (&new_rows, "Batch04")] {
        let (x, c) = plate_inputs(&t, rows);
        let pc = correct_plate(&model, "P", batch, x.view(), Some(&c), 1).unwrap();
        let b = model.meta().batches.iter().position(|x| x == batch);
        let y_raw = model.project(x.view(), Some(&c), Some(batch));
        let before = plate_mixing(&model, y_raw.view(), b).unwrap();
        assert_eq!(pc.qc.mixing_before, before.0, "{batch}");
        assert_eq!(pc.qc.cross_batch_distance_before, before.1, "{batch}");
        let p = model.meta().dims;
        let y = Array2::from_shape_vec((rows.len(), p), pc.delta.y.clone()).unwrap();
        let after = plate_mixing(&model, y.view(), b).unwrap();
        assert_eq!(pc.qc.mixing_after, after.0, "{batch}");
        assert!(pc.qc.mixing_before.is_finite());
        // The figures the delta carries into the batch's history.
        assert_eq!(pc.delta.qc, Some(pc.qc.figures()));
    }
}

/// The daemon's QC figures and `balans correct --qc`'s are one definition:
/// a plate aligned by the model, and the same coordinates handed to the
/// offline QC (the model's rows plus the plate, the plate left out of its
/// own neighbours), give the same figures. Exact search, so both paths see
/// the same neighbours.
#[test]
fn daemon_and_offline_qc_figures_agree() {
    let params = Params {
        exact: true,
        ..params()
    };
    let (t, model, rows, new_rows) = setup_with(&params);
    let p = model.meta().dims;
    let n = model.len();
    let model_y = Array2::from_shape_vec((n, p), model.rows_y().to_vec()).unwrap();
    let model_batch: Vec<String> = model
        .rows_batch()
        .iter()
        .map(|&b| model.meta().batches[b as usize].clone())
        .collect();
    for (rows, batch) in [(&rows, "Batch02"), (&new_rows, "Batch04")] {
        let (x, c) = plate_inputs(&t, rows);
        let aligned = model
            .align_plate("P", batch, x.view(), Some(&c), 1)
            .unwrap();
        let daemon = plate_qc(&model, &aligned, Some(&c)).unwrap();
        // The offline table: every model row (one plate per batch) + the plate.
        let stack = |plate_y: &Array2<f32>| {
            ndarray::concatenate(Axis(0), &[model_y.view(), plate_y.view()]).unwrap()
        };
        let before = stack(&aligned.y_raw);
        let after = stack(&aligned.y_corrected);
        let mut batches = model_batch.clone();
        batches.extend(std::iter::repeat_n(batch.to_string(), rows.len()));
        let mut plates: Vec<String> = model_batch.iter().map(|b| format!("M{b}")).collect();
        plates.extend(std::iter::repeat_n("P".to_string(), rows.len()));
        let mut controls = vec![false; n];
        controls.extend_from_slice(&c);
        let table = offline_plate_qc(
            before.view(),
            after.view(),
            &batches,
            &plates,
            Some(&controls),
            &|_| None,
            params.k,
            IndexKind::Exact,
            &QcConfig::default(),
        )
        .unwrap();
        let offline = table.iter().find(|r| r.plate == "P").unwrap();
        assert_eq!(offline.rows, daemon.rows);
        assert_eq!(offline.controls, daemon.controls);
        assert_eq!(offline.mixing_before, daemon.mixing_before, "{batch}");
        assert_eq!(offline.mixing_after, daemon.mixing_after, "{batch}");
        assert_eq!(
            offline.cross_batch_distance_before, daemon.cross_batch_distance_before,
            "{batch}"
        );
        assert_eq!(
            offline.cross_batch_distance_after, daemon.cross_batch_distance_after,
            "{batch}"
        );
        assert_eq!(offline.mean_offset, daemon.mean_offset, "{batch}");
        assert_eq!(offline.control_dispersion, daemon.control_dispersion);
        // Not vacuous: the figures exist and the correction moved the plate.
        assert!(daemon.mixing_before.is_finite() && daemon.mixing_after.is_finite());
        assert!(daemon.cross_batch_distance_after.is_finite());
        assert!(daemon.mean_offset > 0.0);
        assert!(daemon.control_dispersion.is_some());
        assert_eq!(daemon.new_batch, batch == "Batch04");
    }
}

#[test]
fn states_written_before_the_whitening_restore_as_plain_pca() {
    let (_t, model, _, _) = setup();
    let mut v = serde_json::to_value(model.meta()).unwrap();
    v.as_object_mut().unwrap().remove("pca_whitening");
    let old: balans::method::model::ModelMeta = serde_json::from_value(v).unwrap();
    assert!(old.pca_whitening.is_none());
    let restored = Model::restore(
        old,
        model.rows_y().to_vec(),
        model.rows_batch().to_vec(),
        model.rows_coverage().to_vec(),
    )
    .unwrap();
    assert_eq!(restored.len(), model.len());
}

#[test]
fn states_written_before_newer_method_keys_restore_with_their_old_semantics() {
    use balans::method::params::{PlateMove, TrustRule};
    use balans::serve::state::StateDir;
    let (_t, model, _, _) = setup_with(&Params {
        rounds: 3,
        ..params()
    });
    assert_eq!(model.meta().params.trust_rule, TrustRule::Mutual);
    assert_eq!(model.meta().params.gain_shrinkage, 0.5);
    assert_eq!(model.meta().params.plate_rounds, 1);
    assert_eq!(model.meta().params.plate_mutual_share, 0.25);
    assert_eq!(model.meta().params.plate_move, PlateMove::Trusted);
    let dir = tempfile::tempdir().unwrap();
    StateDir::open(dir.path())
        .unwrap()
        .snapshot(&model)
        .unwrap();
    let restore = || -> Model {
        let mut state = StateDir::open(dir.path()).unwrap();
        state.restore().unwrap().unwrap().0
    };
    assert_eq!(restore().meta().params.trust_rule, TrustRule::Mutual);
    assert_eq!(restore().meta().params.gain_shrinkage, 0.5);
    assert_eq!(restore().meta().params.plate_rounds, 1);
    assert_eq!(restore().meta().params.plate_mutual_share, 0.25);
    assert_eq!(restore().meta().params.plate_move, PlateMove::Trusted);
    // The same snapshot as a build without `trust_rule`, `gain_shrinkage`,
    // `plate_rounds`, `plate_mutual_share` and `plate_move` wrote it.
    let meta = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path().join("meta.json"))
        .find(|p| p.exists())
        .unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let params = v["params"].as_object_mut().unwrap();
    params.remove("trust_rule");
    params.remove("gain_shrinkage");
    params.remove("plate_rounds");
    params.remove("plate_mutual_share");
    params.remove("plate_move");
    std::fs::write(&meta, serde_json::to_vec(&v).unwrap()).unwrap();
    // Such a build wrote no checksum manifest either.
    std::fs::remove_file(meta.with_file_name("manifest.json")).unwrap();
    std::fs::remove_file(dir.path().join("FORMAT")).unwrap();
    let old = restore();
    assert_eq!(old.meta().params.trust_rule, TrustRule::Mass);
    assert_eq!(old.meta().params.gain_shrinkage, 1.0);
    assert_eq!(
        old.meta().params.plate_rounds,
        3,
        "plates were aligned in `rounds` rounds"
    );
    assert_eq!(
        old.meta().params.plate_mutual_share,
        0.5,
        "a plate's mutual rank reached half of it"
    );
    assert_eq!(
        old.meta().params.plate_move,
        PlateMove::Full,
        "a plate's landmark moved it all the way"
    );
    assert_eq!(old.len(), model.len());
}

/// Largest absolute entry.
fn max_abs(a: &Array2<f64>) -> f64 {
    a.iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// `x` with every feature stretched by `g` about its control median.
fn stretched(x: &Array2<f64>, ctrl: &[bool], g: f64) -> Array2<f64> {
    let mut out = x.clone();
    for (f, mut col) in out.axis_iter_mut(Axis(1)).enumerate() {
        let mut c: Vec<f64> = (0..x.nrows())
            .filter(|&i| ctrl[i])
            .map(|i| x[[i, f]])
            .collect();
        let centre = balans::method::preprocess::median_inplace(&mut c);
        col.mapv_inplace(|v| centre + g * (v - centre));
    }
    out
}

#[test]
fn a_new_batch_plate_measures_its_gain_on_its_own_controls() {
    let (t, model, plate_rows, new_rows) = setup();
    // The reference fit measured a gain for each of its batches.
    assert_eq!(model.meta().batch_gain.len(), 3);
    assert!(!model.meta().control_mad.is_empty());
    let (x, ctrl) = plate_inputs(&t, &new_rows);
    assert!(ctrl.iter().filter(|&&c| c).count() >= 8);
    // A plate of an unseen batch whose staining is twice as strong gives the
    // same output as the plate itself: its gain is measured and removed.
    let a = correct_plate(&model, "P", "Batch04", x.view(), Some(&ctrl), 1).unwrap();
    let x2 = stretched(&x, &ctrl, 2.0);
    let b = correct_plate(&model, "P", "Batch04", x2.view(), Some(&ctrl), 1).unwrap();
    let spread = max_abs(&a.corrected);
    let diff = max_abs(&(&a.corrected - &b.corrected));
    assert!(diff <= 1e-6 * spread, "stretched plate moved by {diff}");
    // A plate of a reference batch uses that batch's frozen gain instead:
    // the same stretch now shows in the output.
    let (y, yctrl) = plate_inputs(&t, &plate_rows);
    let c = correct_plate(&model, "Q", "Batch02", y.view(), Some(&yctrl), 1).unwrap();
    let y2 = stretched(&y, &yctrl, 2.0);
    let d = correct_plate(&model, "Q", "Batch02", y2.view(), Some(&yctrl), 1).unwrap();
    let moved = max_abs(&(&c.corrected - &d.corrected));
    assert!(
        moved > 1e-3 * spread,
        "frozen gain ignored the stretch ({moved})"
    );
}

/// Oracle for the feature-space correction: with a basis that spans every
/// feature (as many plain PCA dimensions as features), moving a plate in
/// the feature space and projecting is the same linear map as moving it in
/// the neighbour space and mapping the offset back through the loadings.
/// So the two correction spaces must give the same output, up to the f32
/// rounding of the stored rows.
#[test]
fn feature_space_equals_neighbour_space_with_a_full_plain_basis() {
    use balans::method::params::{CorrectionSpace, NeighborSpace};
    let base = Params {
        neighbor_dims: 30,
        neighbor_space: NeighborSpace::Pca,
        index: IndexKind::Exact,
        ..params()
    };
    let (t, in_features, plate_rows, new_rows) = setup_with(&Params {
        correction_space: CorrectionSpace::Features,
        ..base.clone()
    });
    let (_, in_neighbors, _, _) = setup_with(&Params {
        correction_space: CorrectionSpace::Neighbors,
        ..base
    });
    assert!(in_features.meta().feature_rows && !in_neighbors.meta().feature_rows);
    assert_eq!(in_features.meta().varying.len(), 30);
    assert_eq!(in_features.rows_w().len(), in_features.len() * 30);
    assert!(in_neighbors.rows_w().is_empty());
    for (rows, batch) in [(&plate_rows, "Batch02"), (&new_rows, "Batch04")] {
        let (x, ctrl) = plate_inputs(&t, rows);
        let a = correct_plate(&in_features, "P", batch, x.view(), Some(&ctrl), 1).unwrap();
        let b = correct_plate(&in_neighbors, "P", batch, x.view(), Some(&ctrl), 1).unwrap();
        let moved = max_abs(&(&a.corrected - &x));
        let diff = max_abs(&(&a.corrected - &b.corrected));
        assert!(moved > 0.0);
        assert!(
            diff <= 1e-3 * moved,
            "{batch}: spaces differ by {diff} (correction {moved})"
        );
        assert_eq!(a.delta.w.len(), rows.len() * 30);
        assert!(b.delta.w.is_empty());
    }
}

/// A batch the reference did not have pools its plates' controls for its
/// gains: a plate with too few controls of its own is measured on the
/// pool once it is large enough, a replay uses the pool as it was, and the
/// pool survives a snapshot.
#[test]
fn a_new_batch_pools_its_plates_controls_for_its_gains() {
    let (t, mut model, _, _) = setup_with(&Params {
        pool_controls: true,
        ..params()
    });
    // Batch04's rows as plates of 5 controls and 20 treated wells each.
    let b4 = rows_where(&t, |i| t.batch[i] == "Batch04");
    let ctrl_rows: Vec<usize> = b4
        .iter()
        .copied()
        .filter(|&i| t.label[i] == "DMSO")
        .collect();
    let treated: Vec<usize> = b4
        .iter()
        .copied()
        .filter(|&i| t.label[i] != "DMSO")
        .collect();
    assert!(ctrl_rows.len() >= 15 && treated.len() >= 60);
    let plate = |k: usize| -> Vec<usize> {
        let mut r: Vec<usize> = ctrl_rows[5 * k..5 * k + 5].to_vec();
        r.extend_from_slice(&treated[20 * k..20 * k + 20]);
        r
    };
    let nv = model.meta().varying.len();
    let (x0, c0) = plate_inputs(&t, &plate(0));
    let p0 = correct_plate(&model, "A", "Batch04", x0.view(), Some(&c0), 1).unwrap();
    assert_eq!(p0.delta.pooled_controls, 0);
    assert_eq!(p0.delta.control_dev.len(), 5 * nv);
    // Before any pool, the second plate's 5 controls are too few: gain 1.
    let (x1, c1) = plate_inputs(&t, &plate(1));
    let alone = correct_plate(&model, "B", "Batch04", x1.view(), Some(&c1), 2).unwrap();
    assert_eq!(alone.delta.pooled_controls, 0);
    model.apply(&p0.delta).unwrap();
    assert_eq!(model.meta().control_pool["Batch04"].len(), 5 * nv);
    let p1 = correct_plate(&model, "B", "Batch04", x1.view(), Some(&c1), 2).unwrap();
    assert_eq!(p1.delta.pooled_controls, 5);
    let gained = max_abs(&(&p1.corrected - &alone.corrected));
    assert!(gained > 0.0, "the pooled gains changed nothing");
    model.apply(&p1.delta).unwrap();
    let (x2, c2) = plate_inputs(&t, &plate(2));
    let p2 = correct_plate(&model, "C", "Batch04", x2.view(), Some(&c2), 3).unwrap();
    assert_eq!(p2.delta.pooled_controls, 10);
    model.apply(&p2.delta).unwrap();
    assert_eq!(model.meta().control_pool["Batch04"].len(), 15 * nv);
    // B's replay, after C grew the pool, publishes what B published.
    let rec = match model.lookup("B", 2) {
        Lookup::Replay(r) => r,
        other => panic!("expected replay, got {other:?}"),
    };
    assert_eq!(rec.pooled_controls, 5);
    let again = model.replay_plate(&rec, x1.view(), Some(&c1)).unwrap();
    assert!(again == p1.corrected, "replay moved");
    // A reference batch does not pool: its gains are frozen.
    assert!(!model.meta().control_pool.contains_key("Batch02"));
    // The pool and the profiles survive a snapshot.
    let dir = tempfile::tempdir().unwrap();
    balans::serve::state::snapshot::write(dir.path(), &model).unwrap();
    let back = balans::serve::state::snapshot::read(dir.path(), true).unwrap();
    assert_eq!(back.meta().control_pool, model.meta().control_pool);
    assert!(back.rows_w() == model.rows_w());
    let again = back.replay_plate(&rec, x1.view(), Some(&c1)).unwrap();
    assert!(again == p1.corrected, "replay after a snapshot moved");
    // Off (the default): no pool, each plate's own controls only.
    let (_, plain, _, _) = setup();
    let q = correct_plate(&plain, "A", "Batch04", x0.view(), Some(&c0), 1).unwrap();
    assert!(q.delta.control_dev.is_empty() && q.delta.pooled_controls == 0);
}

/// Sorted keys of every batch index of a model.
fn index_keys(model: &Model) -> Vec<Vec<u64>> {
    model
        .batch_indices()
        .iter()
        .map(|ix| {
            let mut k = ix.keys().to_vec();
            k.sort_unstable();
            k
        })
        .collect()
}

/// Batch summaries: a batch with more rows than `summary_rows` is indexed
/// by that many of its rows; a plate's rows replace some of them (the
/// bottom-k sample of the batch's history), a restart rebuilds exactly the
/// same summaries, and the plate is corrected as with full indices.
#[test]
fn batch_summaries_are_bounded_restore_identically_and_still_correct() {
    let summary = Params {
        summary_rows: 150,
        ..params()
    };
    let (t, mut model, plate_rows, new_rows) = setup_with(&summary);
    let sizes: Vec<usize> = model.indexed_rows().iter().map(|x| x.1).collect();
    assert_eq!(
        sizes,
        vec![150, 150, 150],
        "every reference batch is summarised"
    );
    assert_eq!(model.indexed_len(), 450);
    let before = index_keys(&model);
    let n0 = model.len() as u64;

    let (x, ctrl) = plate_inputs(&t, &plate_rows);
    let pc = correct_plate(&model, "P1", "Batch02", x.view(), Some(&ctrl), 1).unwrap();
    assert!(pc.qc.mixing_after > pc.qc.mixing_before, "{:?}", pc.qc);
    model.apply(&pc.delta).unwrap();
    let after = index_keys(&model);
    assert_eq!(after[1].len(), 150, "the summary stays at its size");
    assert_eq!(after[0], before[0], "other batches are untouched");
    let entered = after[1].iter().filter(|&&k| k >= n0).count();
    // 250 new rows of a batch of 750: about a quarter of the sample.
    assert!(
        (15..=70).contains(&entered),
        "{entered} of the plate's rows entered the summary"
    );
    assert!(after[1]
        .iter()
        .all(|&k| k < n0 || k < n0 + plate_rows.len() as u64));

    let restored = restored_copy(&model);
    assert_eq!(
        index_keys(&restored),
        after,
        "a restart rebuilds the same summaries"
    );

    // A plate of a new batch: identical through the live and the restored
    // model (exact indices over the same rows), and corrected about as well
    // as against full indices.
    let (x2, ctrl2) = plate_inputs(&t, &new_rows);
    let a = correct_plate(&model, "P2", "Batch04", x2.view(), Some(&ctrl2), 3).unwrap();
    let b = correct_plate(&restored, "P2", "Batch04", x2.view(), Some(&ctrl2), 3).unwrap();
    assert!(
        a.corrected == b.corrected,
        "restored summaries correct differently"
    );
    let (_, mut full, _, _) = setup();
    let pf = correct_plate(&full, "P1", "Batch02", x.view(), Some(&ctrl), 1).unwrap();
    full.apply(&pf.delta).unwrap();
    let f = correct_plate(&full, "P2", "Batch04", x2.view(), Some(&ctrl2), 3).unwrap();
    // Error to the batch-free truth (RMS over the plate's cells; measured
    // 1.350 uncorrected, 1.000 full indices, 0.997 summaries of 150 of
    // 500-750 rows; 1.009 and 1.034 under `plate_move = "full"`).
    let truth = t.truth.select(Axis(0), &new_rows);
    let rms = |m: &Array2<f64>| (m.mapv(|v| v * v).sum() / m.len() as f64).sqrt();
    let (e_raw, e_full, e_sum) = (
        rms(&(&x2 - &truth)),
        rms(&(&f.corrected - &truth)),
        rms(&(&a.corrected - &truth)),
    );
    eprintln!(
        "error to truth: uncorrected {e_raw:.4}, full indices {e_full:.4}, summaries {e_sum:.4}"
    );
    assert!(
        e_sum < 0.9 * e_raw && e_sum < 1.1 * e_full,
        "error to truth: uncorrected {e_raw}, full indices {e_full}, summaries {e_sum}"
    );
    // The plate comes closer to the model's rows (measured 3.95 -> 3.19;
    // 3.95 -> 2.90 under `full`: a plate's landmarks now move it by their
    // trust, less than all the way, and nearer the truth).
    assert!(
        a.qc.cross_batch_distance_after < 0.9 * a.qc.cross_batch_distance_before,
        "{:?}",
        a.qc
    );
}

/// `plate_rounds` sets how many rounds a plate aligned to a model takes,
/// and nothing of the offline fit: fits with 1 and 2 plate rounds are the
/// same bits. A plate takes one round's landmarks per round; with 0 rounds
/// it is normalised only (its coordinates stay as projected); 1 and 2
/// rounds give different corrections, both toward the model.
#[test]
fn plate_rounds_set_the_plates_alignment_not_the_fit() {
    let (t, one, plate_rows, _) = setup_with(&Params {
        plate_rounds: 1,
        ..params()
    });
    let (_, two, _, _) = setup_with(&Params {
        plate_rounds: 2,
        ..params()
    });
    let bits = |m: &Model| m.rows_w().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&one),
        bits(&two),
        "the fit does not depend on plate_rounds"
    );
    assert_eq!(one.rows_y(), two.rows_y());
    let (x, c) = plate_inputs(&t, &plate_rows);
    let align = |m: &Model| {
        m.align_plate("P", "Batch02", x.view(), Some(&c), 1)
            .unwrap()
    };
    let (a1, a2) = (align(&one), align(&two));
    assert!(a1.timings.landmarks > 0);
    assert!(
        a2.timings.landmarks > a1.timings.landmarks,
        "{} vs {}",
        a2.timings.landmarks,
        a1.timings.landmarks
    );
    let moved = |a: &balans::method::model::AlignedPlate| max_abs(&(&a.corrected - &x));
    assert!(moved(&a1) > 0.0 && max_abs(&(&a1.corrected - &a2.corrected)) > 0.0);
    let (_, zero, _, _) = setup_with(&Params {
        plate_rounds: 0,
        ..params()
    });
    let a0 = align(&zero);
    assert_eq!(a0.timings.landmarks, 0);
    assert_eq!(a0.y_corrected, a0.y_raw, "normalised only");
}

/// `plate_mutual_share` sets the mutual test's rank against a plate the
/// model aligns, and nothing of the offline fit. A plate of at least
/// `k / share` rows is tested at rank k whatever the share (same bits); a
/// small plate is tested at a quarter of its rows instead of half, which
/// changes its correction.
#[test]
fn plate_mutual_share_sets_a_small_plates_trust_not_the_fit() {
    let (t, quarter, plate_rows, _) = setup_with(&Params {
        plate_mutual_share: 0.25,
        ..params()
    });
    let (_, half, _, _) = setup_with(&Params {
        plate_mutual_share: 0.5,
        ..params()
    });
    let bits = |m: &Model| m.rows_w().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&quarter), bits(&half), "the fit does not depend on it");
    let k = params().k;
    assert!(
        plate_rows.len() as f64 * 0.25 >= k as f64,
        "the held-out plate has {} rows",
        plate_rows.len()
    );
    let align = |m: &Model, rows: &[usize]| {
        let (x, c) = plate_inputs(&t, rows);
        m.align_plate("P", "Batch02", x.view(), Some(&c), 1)
            .unwrap()
            .corrected
    };
    assert_eq!(
        align(&quarter, &plate_rows),
        align(&half, &plate_rows),
        "a plate of >= k / share rows is tested at rank k"
    );
    // A small plate: its controls and 8 treated wells.
    let controls: Vec<usize> = plate_rows
        .iter()
        .copied()
        .filter(|&i| t.label[i] == "DMSO")
        .take(6)
        .collect();
    let treated = plate_rows.iter().copied().filter(|&i| t.label[i] != "DMSO");
    let small: Vec<usize> = controls.iter().copied().chain(treated.take(8)).collect();
    assert!(controls.len() >= 3 && small.len() < 2 * k);
    let (a, b) = (align(&quarter, &small), align(&half, &small));
    assert!(a.iter().all(|v| v.is_finite()));
    assert!(
        max_abs(&(&a - &b)) > 0.0,
        "a small plate's trust depends on the share"
    );
}

/// `plate_move` sets how far a plate row's landmark moves the plate onto
/// the model, and nothing of the offline fit. A state the model does not
/// hold (one label left out of the fit) fails the trust test against every
/// model batch, so under `trusted` its rows move less than under `full`,
/// which moves them all the way onto whatever model rows are nearest;
/// rows of states the model holds are trusted and move about as far under
/// both.
#[test]
fn plate_move_keeps_a_state_the_model_lacks_near_where_it_is() {
    use balans::method::params::PlateMove;
    let t = table();
    let held_plate = t.plate[rows_where(&t, |i| t.batch[i] == "Batch02")[0]].clone();
    let plate_rows = rows_where(&t, |i| t.plate[i] == held_plate);
    let absent = t.label[plate_rows
        .iter()
        .copied()
        .find(|&i| t.label[i] != "DMSO")
        .unwrap()]
    .clone();
    let reference = rows_where(&t, |i| {
        t.batch[i] != "Batch04" && t.plate[i] != held_plate && t.label[i] != absent
    });
    let fit_with = |moves: PlateMove, plate_rounds: usize| {
        let params = Params {
            plate_move: moves,
            plate_rounds,
            ..params()
        };
        fit_on(&t, &reference, &params)
    };
    let (trusted, full) = (
        fit_with(PlateMove::Trusted, 1),
        fit_with(PlateMove::Full, 1),
    );
    // The plate normalised only (no round): where the alignment starts.
    let unaligned = fit_with(PlateMove::Full, 0);
    let bits = |m: &Model| m.rows_w().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&trusted), bits(&full), "the fit does not depend on it");
    let (x, c) = plate_inputs(&t, &plate_rows);
    let align = |m: &Model| {
        m.align_plate("P", "Batch02", x.view(), Some(&c), 1)
            .unwrap()
            .corrected
    };
    let (a, b, start) = (align(&trusted), align(&full), align(&unaligned));
    // Mean distance from `from` of the plate's rows of the absent state
    // (`lacking`), or of the states the model holds.
    let mean_distance = |m: &Array2<f64>, from: &Array2<f64>, lacking: bool| {
        let rows: Vec<usize> = (0..plate_rows.len())
            .filter(|&r| (t.label[plate_rows[r]] == absent) == lacking)
            .collect();
        rows.iter()
            .map(|&r| {
                let d = &m.row(r) - &from.row(r);
                d.dot(&d).sqrt()
            })
            .sum::<f64>()
            / rows.len() as f64
    };
    // How far the alignment moved them.
    let moved = |m: &Array2<f64>, lacking: bool| mean_distance(m, &start, lacking);
    let (lack_t, lack_f) = (moved(&a, true), moved(&b, true));
    let (held_t, held_f) = (moved(&a, false), moved(&b, false));
    eprintln!(
        "absent state ({absent}) moved {lack_t:.3} trusted, {lack_f:.3} full; \
         held states {held_t:.3} trusted, {held_f:.3} full"
    );
    let truth = t.truth.select(Axis(0), &plate_rows);
    let err = |m: &Array2<f64>| mean_distance(m, &truth, true);
    eprintln!(
        "absent state's error to truth: uncorrected {:.3}, trusted {:.3}, full {:.3}",
        err(&x),
        err(&a),
        err(&b)
    );
    assert!(lack_t < 0.8 * lack_f, "{lack_t} vs {lack_f}");
    assert!(held_t > 0.8 * held_f, "{held_t} vs {held_f}");
    assert!(err(&a) < err(&b), "{} vs {}", err(&a), err(&b));
}
