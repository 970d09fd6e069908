//! The daemon's state directory under damage (issue #15, items 1, 2, 3 and
//! 14): every state here is written by the real directory-mode daemon,
//! damaged on disk, then restored — by the daemon, by the library, and
//! inspected and repaired with `balans state check` / `balans state repair`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use balans::io::table::read_table;
use balans::serve::state::wal;
use balans::serve::state::StateDir;
use balans::Model;
use proptest::prelude::*;

mod common;
use common::*;

/// `-q serve` in directory mode with a snapshot only every 100 plates, so
/// the plates stay in the write-ahead log.
fn args(st: &Data, state: &Path, inbox: &Path, outbox: &Path) -> Vec<String> {
    let mut v = vec!["-q".to_string()];
    v.extend(dir_args(st, state, inbox, outbox));
    let n = v.len();
    v[n - 1] = "100".into();
    v
}

fn published(outbox: &Path) -> usize {
    std::fs::read_dir(outbox).map_or(0, |rd| {
        rd.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".qc.json"))
            .count()
    })
}

/// A state directory as the daemon leaves it when killed (-9) after
/// publishing every plate: the warm-start snapshot plus one log record per
/// plate. Returns (data, state dir, inbox, outbox).
fn logged_state() -> (Data, PathBuf, PathBuf, PathBuf) {
    let st = data();
    let (state, inbox, outbox) = st.dirs();
    for (p, t) in &st.plates {
        drop_plate(&inbox, &format!("{p}.arrow"), t);
    }
    let mut child = bin()
        .args(args(&st, &state, &inbox, &outbox))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while published(&outbox) < st.plates.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(published(&outbox), st.plates.len());
    (st, state, inbox, outbox)
}

/// Offsets of the log's records.
fn record_offsets(state: &Path) -> Vec<usize> {
    let s = wal::scan(&std::fs::read(state.join("wal.log")).unwrap());
    assert!(s.damage.is_none());
    s.records.iter().map(|r| r.offset as usize).collect()
}

fn restore(state: &Path) -> anyhow::Result<(Model, usize)> {
    StateDir::open(state)?
        .restore()?
        .ok_or_else(|| anyhow::anyhow!("no state"))
}

/// A model's full content, to compare two restores.
fn fingerprint(m: &Model) -> (String, Vec<u32>, Vec<u32>, Vec<u32>) {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    (
        serde_json::to_string(m.meta()).unwrap(),
        bits(m.rows_y()),
        m.rows_batch().to_vec(),
        bits(m.rows_coverage()),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

fn flip(path: &Path, at: usize, x: u8) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= x;
    std::fs::write(path, b).unwrap();
}

fn restart(st: &Data, state: &Path, inbox: &Path, outbox: &Path) -> Output {
    let mut a = args(st, state, inbox, outbox);
    a.push("--once".into());
    bin().args(a).output().unwrap()
}

fn state_cmd(action: &str, state: &Path, extra: &[&str]) -> (i32, String) {
    let o = bin()
        .args(["state", action, "--state-dir", s(state)])
        .args(extra)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

// ------------------------------------------------------------- item 1: log

#[test]
fn a_damaged_record_mid_log_is_refused_then_checked_and_repaired() {
    let (st, state, inbox, outbox) = logged_state();
    let offs = record_offsets(&state);
    assert!(offs.len() >= 4, "{offs:?}");
    let wal_path = state.join("wal.log");
    let before = std::fs::read(&wal_path).unwrap();
    // One byte inside the second record's body.
    flip(&wal_path, offs[1] + 40, 0x01);
    let o = restart(&st, &state, &inbox, &outbox);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a damaged log must not start: {err}");
    assert!(
        err.contains("wal.log") && err.contains(&format!("byte offset {}", offs[1])),
        "{err}"
    );
    // Nothing was dropped or rewritten by the refused start.
    assert_eq!(std::fs::read(&wal_path).unwrap().len(), before.len());

    let (code, out) = state_cmd("check", &state, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("byte offset {}", offs[1])), "{out}");
    // A dry run changes nothing.
    let (code, out) = state_cmd("repair", &state, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("dry run"), "{out}");
    assert_eq!(std::fs::read(&wal_path).unwrap().len(), before.len());
    // The repair cuts at the damage, keeps the bytes, names the plates.
    let dropped = offs.len() - 2;
    let (code, out) = state_cmd("repair", &state, &["--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{dropped} plate(s) dropped")),
        "{out}"
    );
    let kept = std::fs::read(state.join(format!("wal.log.damaged-{}", offs[1]))).unwrap();
    assert_eq!(kept.len(), before.len() - offs[1]);
    assert_eq!(std::fs::read(&wal_path).unwrap(), before[..offs[1]]);
    let (code, out) = state_cmd("check", &state, &[]);
    assert_eq!(code, 0, "{out}");
    let (m, replayed) = restore(&state).unwrap();
    assert_eq!(replayed, 1);
    assert_eq!(m.version(), format!("g1.p{}", 1));
    // And the daemon starts again.
    let o = restart(&st, &state, &inbox, &outbox);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_record_cut_out_of_the_middle_is_a_gap_and_refused() {
    let (_st, state, _inbox, _outbox) = logged_state();
    let offs = record_offsets(&state);
    let wal_path = state.join("wal.log");
    let mut b = std::fs::read(&wal_path).unwrap();
    // Remove the second record exactly at its boundaries.
    b.drain(offs[1]..offs[2]);
    std::fs::write(&wal_path, &b).unwrap();
    let e = format!("{:#}", restore(&state).err().expect("refused"));
    assert!(
        e.contains("wal.log") && e.contains(&format!("byte offset {}", offs[1])),
        "{e}"
    );
    assert!(e.contains("missing"), "{e}");
    let (code, out) = state_cmd("check", &state, &[]);
    assert_eq!(code, 1, "{out}");
}

#[test]
fn a_torn_tail_is_truncated_and_the_rest_restored() {
    let (_st, state, _inbox, _outbox) = logged_state();
    let offs = record_offsets(&state);
    let wal_path = state.join("wal.log");
    let len = std::fs::metadata(&wal_path).unwrap().len() as usize;
    let last = *offs.last().unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal_path)
        .unwrap();
    f.set_len(((last + len) / 2) as u64).unwrap();
    drop(f);
    let (code, out) = state_cmd("check", &state, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("torn tail"), "{out}");
    let (m, replayed) = restore(&state).unwrap();
    assert_eq!(replayed, offs.len() - 1);
    assert_eq!(m.meta().plates.len(), offs.len() - 1);
    assert_eq!(std::fs::metadata(&wal_path).unwrap().len() as usize, last);
}

#[test]
fn a_record_with_a_huge_value_and_a_valid_hash_is_refused() {
    let (_st, state, _inbox, _outbox) = logged_state();
    let offs = record_offsets(&state);
    let wal_path = state.join("wal.log");
    let b = std::fs::read(&wal_path).unwrap();
    let recs = wal::scan(&b).records;
    let mut d = recs[1].delta.clone();
    d.y[3] = 1e30;
    let mut log = b[..offs[1]].to_vec();
    log.extend(wal::encode(recs[1].seq.unwrap(), &d).unwrap());
    std::fs::write(&wal_path, &log).unwrap();
    let e = format!("{:#}", restore(&state).err().expect("refused"));
    assert!(e.contains(&format!("byte offset {}", offs[1])), "{e}");
    assert!(e.contains("not finite or out of range"), "{e}");
}

// ------------------------------------------------------- item 2: snapshot

#[test]
fn snapshot_damage_is_refused_naming_the_file() {
    let (st, state, inbox, outbox) = logged_state();
    let snap = state.join("snapshot");
    let fresh = |name: &str| -> PathBuf {
        let d = st.dir.path().join(name);
        copy_dir(&state, &d);
        d
    };
    // 40 flipped bytes in y.f32: the checksum refuses it.
    let d = fresh("flipped");
    for i in 0..40 {
        flip(&d.join("snapshot/y.f32"), 100 + 16 * i, 0x40);
    }
    let e = format!("{:#}", restore(&d).err().expect("refused"));
    assert!(e.contains("y.f32") && e.contains("checksum"), "{e}");
    // A snapshot one row short, without a manifest (as an old build wrote
    // it): the row counts disagree with the plates recorded.
    let d = fresh("short");
    // First fold the log into the snapshot, so the plates are in it.
    let mut sd = StateDir::open(&d).unwrap();
    let (m, _) = sd.restore().unwrap().unwrap();
    sd.snapshot(&m).unwrap();
    // Old builds wrote each row array as one file: rewrite it so (the fold
    // above may have added a row segment).
    let snapd = d.join("snapshot");
    std::fs::remove_dir_all(&snapd).unwrap();
    std::fs::create_dir(&snapd).unwrap();
    balans::serve::state::snapshot::write(&snapd, &m).unwrap();
    let p = m.meta().dims;
    let nv = m.meta().varying.len();
    assert!(m.meta().feature_rows, "the default model keeps profiles");
    for (f, w) in [
        ("y.f32", 4 * p),
        ("batch.u32", 4),
        ("coverage.f32", 4),
        ("w.f32", 4 * nv),
    ] {
        let path = d.join("snapshot").join(f);
        let b = std::fs::read(&path).unwrap();
        std::fs::write(&path, &b[..b.len() - w]).unwrap();
    }
    std::fs::remove_file(d.join("snapshot/manifest.json")).unwrap();
    std::fs::remove_file(d.join("FORMAT")).unwrap();
    let e = format!("{:#}", restore(&d).err().expect("refused"));
    assert!(e.contains("meta.json") && e.contains("spans rows"), "{e}");
    // NaN in an old (unverified) snapshot.
    let d = fresh("nan");
    let path = d.join("snapshot/y.f32");
    let mut b = std::fs::read(&path).unwrap();
    b[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, b).unwrap();
    std::fs::remove_file(d.join("snapshot/manifest.json")).unwrap();
    std::fs::remove_file(d.join("FORMAT")).unwrap();
    let e = format!("{:#}", restore(&d).err().expect("refused"));
    assert!(e.contains("y.f32") && e.contains("NaN"), "{e}");
    // A manifest removed where the directory says there must be one.
    let d = fresh("nomanifest");
    std::fs::remove_file(d.join("snapshot/manifest.json")).unwrap();
    let e = format!("{:#}", restore(&d).err().expect("refused"));
    assert!(e.contains("manifest.json"), "{e}");
    // An old snapshot (no manifest, no FORMAT) still restores, unchanged.
    let d = fresh("old");
    std::fs::remove_file(d.join("snapshot/manifest.json")).unwrap();
    std::fs::remove_file(d.join("FORMAT")).unwrap();
    assert_eq!(
        fingerprint(&restore(&d).unwrap().0),
        fingerprint(&restore(&fresh("intact")).unwrap().0)
    );
    // meta.json deleted while data is present: the daemon (with its
    // reference table) refuses instead of warm-starting over the log.
    let wal = std::fs::read(state.join("wal.log")).unwrap();
    std::fs::remove_file(snap.join("meta.json")).unwrap();
    let o = restart(&st, &state, &inbox, &outbox);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("meta.json") && err.contains("refusing"),
        "{err}"
    );
    assert_eq!(std::fs::read(state.join("wal.log")).unwrap(), wal);
    let (code, out) = state_cmd("check", &state, &[]);
    assert_eq!(code, 1, "{out}");
    // The whole snapshot gone, the log left: refused too.
    std::fs::remove_dir_all(&snap).unwrap();
    let e = format!("{:#}", restore(&state).err().expect("refused"));
    assert!(e.contains("no snapshot"), "{e}");
}

// ------------------------------- snapshots in row segments

/// A snapshot after plates reuses the previous one's row files (the same
/// inodes: hard links) and writes only the rows added since; the state
/// restores to the same model, and damage to the new segment is refused
/// naming it. A model whose rows are not a continuation of the stored ones
/// (another generation) gets every row written.
#[test]
fn a_snapshot_writes_the_new_rows_and_reuses_the_old_segments() {
    use balans::serve::state::snapshot::{segment_file, Manifest};
    use std::os::unix::fs::MetadataExt;
    let (st, state, _inbox, _outbox) = logged_state();
    let manifest = |d: &Path| -> Manifest {
        serde_json::from_slice(&std::fs::read(d.join("snapshot/manifest.json")).unwrap()).unwrap()
    };
    let ino = |d: &Path, f: &str| std::fs::metadata(d.join("snapshot").join(f)).unwrap().ino();
    let d = st.dir.path().join("segments");
    copy_dir(&state, &d);
    // Two plates past the snapshot: fewer rows than half the reference, so
    // they make a segment of their own.
    let offsets = record_offsets(&d);
    assert!(offsets.len() > 2);
    let log = std::fs::read(d.join("wal.log")).unwrap();
    std::fs::write(d.join("wal.log"), &log[..offsets[2]]).unwrap();
    let before = manifest(&d);
    assert!(before.segments.is_empty());
    let (y0, w0) = (ino(&d, "y.f32"), ino(&d, "w.f32"));
    let mut sd = StateDir::open(&d).unwrap();
    let (m, applied) = sd.restore().unwrap().unwrap();
    assert!(applied > 0);
    assert!((m.len() as u64) > before.rows);
    sd.snapshot(&m).unwrap();
    let after = manifest(&d);
    assert_eq!(after.rows, m.len() as u64);
    let (starts, kept) =
        balans::serve::state::snapshot::plan_segments(&[0], before.rows, after.rows);
    assert_eq!(after.segments, starts[1..].to_vec());
    assert_eq!(
        kept, 1,
        "{} reference rows, {} after",
        before.rows, after.rows
    );
    // The reference rows' files are the very same files.
    assert_eq!((ino(&d, "y.f32"), ino(&d, "w.f32")), (y0, w0));
    assert_eq!(after.segments, vec![before.rows]);
    let new_y = std::fs::metadata(d.join("snapshot").join(segment_file("y", before.rows))).unwrap();
    assert_eq!(
        new_y.len(),
        (after.rows - before.rows) * 4 * m.meta().dims as u64
    );
    let (again, replayed) = restore(&d).unwrap();
    assert_eq!(replayed, 0);
    assert_eq!(fingerprint(&again), fingerprint(&m));
    assert_eq!(again.rows_w(), m.rows_w());
    // A second snapshot with nothing new keeps every segment.
    let mut sd = StateDir::open(&d).unwrap();
    let (m2, _) = sd.restore().unwrap().unwrap();
    let y_last = ino(&d, &segment_file("y", *starts.last().unwrap()));
    sd.snapshot(&m2).unwrap();
    assert_eq!(manifest(&d).segments, after.segments);
    assert_eq!(ino(&d, &segment_file("y", *starts.last().unwrap())), y_last);
    let (code, out) = state_cmd("check", &d, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("checksums verified; rows in 2 segments"),
        "{out}"
    );
    // Damage in the last segment is refused, naming its file.
    let last = segment_file("w", *starts.last().unwrap());
    let dd = st.dir.path().join("segments-flipped");
    copy_dir(&d, &dd);
    flip(&dd.join("snapshot").join(&last), 40, 0x40);
    let e = format!("{:#}", restore(&dd).err().expect("refused"));
    assert!(e.contains(&last) && e.contains("checksum"), "{e}");
    // Another generation's model over this directory: nothing reused.
    let mut other = restore(&d).unwrap().0;
    other.bump_generation();
    let mut sd = StateDir::open(&d).unwrap();
    sd.restore().unwrap();
    sd.snapshot(&other).unwrap();
    assert!(manifest(&d).segments.is_empty());
    assert_ne!(ino(&d, "y.f32"), y0);
    assert_eq!(fingerprint(&restore(&d).unwrap().0), fingerprint(&other));
}

// ------------------------------- stored batch indices: derived, verified

/// The snapshot stores each batch's HNSW index with its checksum, so a
/// restart loads instead of rebuilding it. An index file is derived data:
/// one that is damaged, missing or does not match the rows is rebuilt from
/// the (checksummed) rows with a warning — the restore succeeds with the
/// same model — and `balans state check` names it.
#[test]
fn a_damaged_or_missing_index_file_is_rebuilt_and_reported() {
    let (st, state, _, _) = logged_state();
    // Fold the log into the snapshot, so every batch has an index file.
    let mut sd = StateDir::open(&state).unwrap();
    let (m, _) = sd.restore().unwrap().unwrap();
    sd.snapshot(&m).unwrap();
    drop((sd, m));
    let snap = state.join("snapshot");
    let manifest = std::fs::read_to_string(snap.join("manifest.json")).unwrap();
    let (intact, _) = restore(&state).unwrap();
    let nb = intact.meta().batches.len();
    assert!(nb >= 2, "the fixture has {nb} batches");
    for b in 0..nb {
        let f = format!("index-{b}.usearch");
        assert!(snap.join(&f).is_file(), "{f} written");
        assert!(manifest.contains(&f), "{f} in the manifest");
    }
    let (code, out) = state_cmd("check", &state, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{nb} of {nb} batch indices load")),
        "{out}"
    );
    // A loaded index answers like the live one: each row's nearest row of
    // its own batch is itself.
    let p = intact.meta().dims;
    for i in (0..intact.len()).step_by(97) {
        let b = intact.rows_batch()[i] as usize;
        let q = &intact.rows_y()[i * p..(i + 1) * p];
        let nn = intact.batch_indices()[b].search(q, 1).unwrap();
        assert_eq!((nn[0].key, nn[0].dist2), (i as u64, 0.0));
    }
    // Damage: index 0 flipped, index 1 deleted, and (where there is a
    // third batch) index 2 swapped for index 1's bytes with the manifest
    // left as it was — the checksum catches the flip and the swap.
    let d = st.dir.path().join("damaged-index");
    copy_dir(&state, &d);
    let ds = d.join("snapshot");
    let len0 = std::fs::metadata(ds.join("index-0.usearch")).unwrap().len() as usize;
    flip(&ds.join("index-0.usearch"), len0 / 2, 0x10);
    if nb >= 3 {
        std::fs::copy(ds.join("index-1.usearch"), ds.join("index-2.usearch")).unwrap();
    }
    std::fs::remove_file(ds.join("index-1.usearch")).unwrap();
    let (rebuilt, _) = restore(&d).unwrap();
    assert_eq!(fingerprint(&rebuilt), fingerprint(&intact));
    for b in 0..nb {
        assert_eq!(rebuilt.batch_rows(b), intact.batch_rows(b));
    }
    for i in (0..rebuilt.len()).step_by(97) {
        let b = rebuilt.rows_batch()[i] as usize;
        let q = &rebuilt.rows_y()[i * p..(i + 1) * p];
        assert_eq!(
            rebuilt.batch_indices()[b].search(q, 1).unwrap()[0].key,
            i as u64
        );
    }
    let (code, out) = state_cmd("check", &d, &[]);
    assert_eq!(code, 0, "a rebuilt index is a warning, not an error: {out}");
    let warned = |f: &str, why: &str| {
        out.lines()
            .any(|l| l.contains("WARNING") && l.contains(f) && l.contains(why))
    };
    assert!(warned("index-0.usearch", "checksum"), "{out}");
    assert!(warned("index-1.usearch", "cannot read"), "{out}");
    if nb >= 3 {
        // (a different length here; same-length bytes fail the checksum)
        assert!(warned("index-2.usearch", "the manifest says"), "{out}");
    }
    // The next snapshot writes them all again.
    let mut sd = StateDir::open(&d).unwrap();
    let (m, _) = sd.restore().unwrap().unwrap();
    sd.snapshot(&m).unwrap();
    let (code, out) = state_cmd("check", &d, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{nb} of {nb} batch indices load")),
        "{out}"
    );
}

// ------------------------------------------- property: single-byte flips

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    /// A single flipped byte anywhere in wal.log or a snapshot file never
    /// restores silently to a different model: it is refused with an error
    /// naming the file (and the offset, for the log), or it is in the last
    /// record (a torn tail: the state before it), or the model is
    /// identical (a flip JSON does not see, e.g. whitespace).
    #[test]
    fn single_byte_flips_never_restore_a_different_model(
        file in 0usize..6, frac in 0.0f64..1.0, x in 1u8..=255,
    ) {
        let fx = fixture();
        let names = ["wal.log", "snapshot/meta.json", "snapshot/y.f32", "snapshot/batch.u32",
                     "snapshot/coverage.f32", "snapshot/manifest.json"];
        let name = names[file];
        let d = tempfile::tempdir().unwrap();
        copy_dir(&fx.state, d.path());
        let path = d.path().join(name);
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        let at = ((len as f64 * frac) as usize).min(len - 1);
        flip(&path, at, x);
        match restore(d.path()) {
            Ok((m, _)) => {
                let got = fingerprint(&m);
                if name == "wal.log" && at >= fx.last_record {
                    prop_assert!(got == fx.without_last, "flip at {at} of {name}");
                } else {
                    prop_assert!(got == fx.intact, "flip at {at} of {name}: a different model");
                }
            }
            Err(e) => {
                let e = format!("{e:#}");
                let file_name = name.rsplit('/').next().unwrap();
                let named = e.contains(file_name)
                    || (name.starts_with("snapshot/") && e.contains("snapshot"));
                prop_assert!(named, "flip at {at} of {name}: {e}");
                if name == "wal.log" {
                    prop_assert!(at < fx.last_record && e.contains("byte offset"), "{e}");
                }
            }
        }
    }
}

/// The intact state of [`logged_state`] (built once) and its models.
struct Fixture {
    _data: Data,
    state: PathBuf,
    last_record: usize,
    intact: (String, Vec<u32>, Vec<u32>, Vec<u32>),
    without_last: (String, Vec<u32>, Vec<u32>, Vec<u32>),
}

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let (st, state, _, _) = logged_state();
        let offs = record_offsets(&state);
        let last_record = *offs.last().unwrap();
        let probe = st.dir.path().join("probe");
        copy_dir(&state, &probe);
        let intact = fingerprint(&restore(&probe).unwrap().0);
        let probe2 = st.dir.path().join("probe2");
        copy_dir(&state, &probe2);
        let w = probe2.join("wal.log");
        let b = std::fs::read(&w).unwrap();
        std::fs::write(&w, &b[..last_record]).unwrap();
        let without_last = fingerprint(&restore(&probe2).unwrap().0);
        Fixture {
            _data: st,
            state,
            last_record,
            intact,
            without_last,
        }
    })
}

// ------------------------------------------------------ item 3: replays

#[test]
fn a_replay_after_a_restart_publishes_identical_values() {
    let (st, state, inbox, outbox) = logged_state();
    // The restart restores from the log, the shutdown snapshots: the replay
    // below reads the model back from a snapshot.
    let o = restart(&st, &state, &inbox, &outbox);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (p, t) in st.plates.iter().take(3) {
        let out = outbox.join(format!("{p}.parquet"));
        let first = read_table(&out).unwrap();
        drop_plate(&inbox, &format!("{p}.arrow"), t);
        let o = restart(&st, &state, &inbox, &outbox);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let again = read_table(&out).unwrap();
        assert_eq!(first.schema(), again.schema());
        for c in 0..first.num_columns() {
            let (a, b) = (first.column(c), again.column(c));
            if a != b {
                let fa = a.as_any().downcast_ref::<arrow_array::Float64Array>();
                let fb = b.as_any().downcast_ref::<arrow_array::Float64Array>();
                let diff = match (fa, fb) {
                    (Some(x), Some(y)) => x
                        .values()
                        .iter()
                        .zip(y.values().iter())
                        .map(|(u, v)| (u - v).abs())
                        .fold(0.0f64, f64::max),
                    _ => f64::NAN,
                };
                panic!(
                    "{p}: column {} of the replay differs from the first publication by {diff:e}",
                    first.schema().field(c).name()
                );
            }
        }
    }
}

// ------------------------------------------- bootstrap without a reference

#[test]
fn a_model_bootstrapped_without_a_reference_survives_a_kill() {
    let st = data();
    let (state, inbox, outbox) = st.dirs();
    let a: Vec<String> = args(&st, &state, &inbox, &outbox);
    // Drop --reference and its value.
    let i = a.iter().position(|x| x == "--reference").unwrap();
    let a: Vec<String> = a[..i].iter().chain(&a[i + 2..]).cloned().collect();
    for (p, t) in st.plates.iter().take(3) {
        drop_plate(&inbox, &format!("{p}.arrow"), t);
    }
    let mut child = bin().args(&a).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while published(&outbox) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let (m, replayed) = restore(&state).unwrap();
    assert_eq!(replayed, 3);
    assert_eq!(m.meta().plates.len(), 3);
}

// ------------------------------------------ item 14: unfinished snapshots

#[test]
fn a_failed_snapshot_leaves_no_temp_dir_and_a_restart_makes_progress() {
    let st = data();
    let (state, inbox, outbox) = st.dirs();
    let a = args(&st, &state, &inbox, &outbox);
    // Under a 1-block file size limit the warm start's snapshot fails
    // (EFBIG, as ENOSPC would) after creating snapshot.tmp/.
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("trap '' XFSZ; ulimit -f 1; exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_balans"))
        .args(&a)
        .arg("--once");
    let o = cmd.output().unwrap();
    assert!(!o.status.success());
    assert!(
        !state.join("snapshot.tmp").exists(),
        "snapshot.tmp left behind: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A stale snapshot.tmp/ (a kill mid-snapshot) is removed at start.
    std::fs::create_dir_all(state.join("snapshot.tmp")).unwrap();
    std::fs::write(state.join("snapshot.tmp/y.f32"), vec![0u8; 4096]).unwrap();
    let (p, t) = &st.plates[0];
    drop_plate(&inbox, &format!("{p}.arrow"), t);
    let o = restart(&st, &state, &inbox, &outbox);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!state.join("snapshot.tmp").exists());
    assert_eq!(published(&outbox), 1);
}
