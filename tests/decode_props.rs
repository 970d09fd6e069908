//! Structured-input runs over every decoder of outside bytes (issue #15,
//! "Harden by method"): valid encodings mutated by bit flips, truncations,
//! splices, deletions and insertions, then decoded. The coverage-guided
//! counterpart is the cargo-fuzz harness in `fuzz/` (`scripts/fuzz.sh`);
//! this file keeps CI checking the same decoders on every run.
//!
//! Every decoder must return an error or a value, never panic. Where the
//! format carries checksums or structure that makes it checkable, a value
//! is accepted only when it is what was encoded:
//! - write-ahead log (`wal::scan`, `wal::records_after`): every record
//!   returned is one of the records written, with its plate index, and a
//!   log cut short keeps exactly the records wholly before the cut;
//! - snapshot (`snapshot::read` with its manifest): the restored model is
//!   bit-identical to the one written, or the read fails;
//! - chunk reassembly (`chunks::Assembler`): a completed plate is the
//!   concatenation of the distinct chunks delivered, in index order, and a
//!   set delivered intact (any order, any redeliveries) completes, every
//!   time, with the original payload.
//!
//! Table formats (Arrow IPC stream and file, Parquet, CSV, gzipped CSV)
//! carry no checksum over values, so a flipped value may decode; what is
//! checked there is no panic through the decoder and both loaders, and the
//! unmutated bytes decoding to the original table.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use balans::io::layout::CorrectConfig;
use balans::io::table::{decode_ipc_stream, decode_table, encode_ipc_stream, write_table, Format};
use balans::method::model::{Model, PlateDelta};
use balans::method::params::Params;
use balans::serve::kafka::chunks::{split, Added, Assembler, Chunk};
use balans::serve::kafka::wire::{decode_payload, Encoding};
use balans::serve::state::{snapshot, wal};
use balans::synth::{generate, to_record_batch, SynthSpec};
use balans::{LoadSpec, ProfileTable};
use proptest::prelude::*;

// ---------------------------------------------------------------- mutations

/// One change to a byte string; positions are fractions of its length so
/// that shrinking stays meaningful.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: f64, bit: u8 },
    Truncate { at: f64 },
    Splice { from: f64, to: f64, len: usize },
    Delete { at: f64, len: usize },
    Insert { at: f64, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let frac = 0.0..1.0f64;
    prop_oneof![
        3 => (frac.clone(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        1 => frac.clone().prop_map(|at| Mutation::Truncate { at }),
        1 => (frac.clone(), frac.clone(), 1usize..64)
            .prop_map(|(from, to, len)| Mutation::Splice { from, to, len }),
        1 => (frac.clone(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => (frac, prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..4)
}

fn pos(len: usize, at: f64) -> usize {
    ((len as f64 * at) as usize).min(len.saturating_sub(1))
}

fn apply(bytes: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for m in ms {
        if b.is_empty() {
            break;
        }
        let n = b.len();
        match m {
            Mutation::Flip { at, bit } => b[pos(n, *at)] ^= 1 << bit,
            Mutation::Truncate { at } => b.truncate(pos(n, *at)),
            Mutation::Splice { from, to, len } => {
                let f = pos(n, *from);
                let piece: Vec<u8> = b[f..(f + len).min(n)].to_vec();
                let t = pos(n, *to);
                let end = (t + piece.len()).min(n);
                b[t..end].copy_from_slice(&piece[..end - t]);
            }
            Mutation::Delete { at, len } => {
                let a = pos(n, *at);
                b.drain(a..(a + len).min(n));
            }
            Mutation::Insert { at, bytes } => {
                let a = pos(n, *at);
                b.splice(a..a, bytes.iter().copied());
            }
        }
    }
    b
}

// ---------------------------------------------------------------- tables

/// A small plate (one batch, one plate, 24 rows, 4 features) in every
/// table encoding: (Arrow IPC stream, IPC file, Parquet, CSV, CSV.gz).
struct Encoded {
    table: RecordBatch,
    stream: Vec<u8>,
    file: Vec<u8>,
    parquet: Vec<u8>,
    csv: Vec<u8>,
    csv_gz: Vec<u8>,
}

fn encoded() -> &'static Encoded {
    static E: OnceLock<Encoded> = OnceLock::new();
    E.get_or_init(|| {
        let t = generate(&SynthSpec {
            rows: 24,
            batches: 1,
            features: 4,
            plates_per_batch: 1,
            seed: 3,
            ..SynthSpec::default()
        })
        .unwrap();
        let table = to_record_batch(&t).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bytes = |name: &str| -> Vec<u8> {
            let p = dir.path().join(name);
            write_table(&p, &table).unwrap();
            std::fs::read(p).unwrap()
        };
        Encoded {
            stream: encode_ipc_stream(&table).unwrap(),
            file: bytes("p.arrow"),
            parquet: bytes("p.parquet"),
            csv: bytes("p.csv"),
            csv_gz: bytes("p.csv.gz"),
            table,
        }
    })
}

/// What the product does with a decoded table: the offline loader and the
/// daemon's plate decoder. Errors are fine; a panic fails the test.
fn load(t: RecordBatch, bytes: &[u8]) {
    let _ = ProfileTable::from_table(t.clone(), &LoadSpec::new("Metadata_Batch"), "prop");
    let cfg = CorrectConfig {
        batch_col: Some("Metadata_Batch".into()),
        control: Some("Metadata_Label=DMSO".into()),
        ..CorrectConfig::default()
    };
    let _ = balans::serve::plate::decode(t, bytes, "prop", &cfg, "prop");
}

#[test]
fn unmutated_table_encodings_decode_to_the_original() {
    let e = encoded();
    let same = |t: RecordBatch, what: &str| {
        assert_eq!(t.num_rows(), e.table.num_rows(), "{what}");
        let names = |t: &RecordBatch| -> Vec<String> {
            t.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        };
        assert_eq!(names(&t), names(&e.table), "{what}");
    };
    same(decode_ipc_stream(&e.stream).unwrap(), "stream");
    assert_eq!(decode_ipc_stream(&e.stream).unwrap(), e.table);
    assert_eq!(
        decode_payload(&e.stream, Encoding::ArrowStream, "t").unwrap(),
        e.table
    );
    assert_eq!(decode_table(&e.file, Format::ArrowIpc).unwrap(), e.table);
    assert_eq!(decode_table(&e.parquet, Format::Parquet).unwrap(), e.table);
    same(decode_table(&e.csv, Format::Csv).unwrap(), "csv");
    same(decode_table(&e.csv_gz, Format::CsvGz).unwrap(), "csv.gz");
}

/// Regression (found by this file): arrow-ipc allocated a message's
/// announced body length before reading it; a record-batch message saying
/// its body is 2^62 bytes aborted the process (an allocation failure, which
/// nothing catches: a crash loop for the daemon). Now refused up front.
#[test]
fn an_ipc_message_announcing_a_huge_body_is_an_error_not_an_abort() {
    let e = encoded();
    let b = &e.stream;
    // The second message (the record batch): continuation, length, metadata.
    let word = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let first = 8 + word(4);
    let meta = first + 8..first + 8 + word(first + 4);
    let body = (b.len() - meta.end - 8) as i64; // minus the end-of-stream marker
    let at = b[meta.clone()]
        .windows(8)
        .position(|w| w == body.to_le_bytes())
        .expect("the body length in the metadata")
        + meta.start;
    let mut bad = b.clone();
    bad[at..at + 8].copy_from_slice(&(1i64 << 62).to_le_bytes());
    let err = decode_ipc_stream(&bad).unwrap_err();
    assert!(
        format!("{err:#}").contains("announces a body of"),
        "{err:#}"
    );
    let r = decode_payload(&bad, Encoding::ArrowStream, "plates/0@7").unwrap_err();
    assert!(r.to_string().contains("plates/0@7"), "{r}");
}

/// Regression (found by this file): six bytes of an IPC file copied over
/// its schema made arrow-buffer panic ("buffer not large enough") inside
/// the reader; the panic now becomes an unreadable-table error.
#[test]
fn an_ipc_file_that_makes_arrow_panic_is_an_error() {
    let ms = [Mutation::Splice {
        from: 0.0,
        to: 0.16789133175577983,
        len: 6,
    }];
    let bad = apply(&encoded().file, &ms);
    let err = decode_table(&bad, Format::ArrowIpc).unwrap_err();
    assert!(format!("{err:#}").contains("malformed"), "{err:#}");
}

/// Regression (found by the fuzz target `ipc_stream`): a stream whose
/// schema has a union column without children and no record batch made
/// arrow panic while building the empty table (`Option::unwrap()` in
/// arrow-data's `new_null`); now an unreadable-table error.
#[test]
fn an_ipc_stream_with_a_childless_union_and_no_batch_is_an_error() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz/ipc_stream_union_without_children.arrows");
    let b = std::fs::read(path).unwrap();
    let err = decode_ipc_stream(&b).unwrap_err();
    assert!(format!("{err:#}").contains("malformed"), "{err:#}");
    assert!(decode_payload(&b, Encoding::ArrowStream, "plates/0@3").is_err());
}

/// Regression (found by the fuzz target `parquet`, a timeout): a 2,251-byte
/// file whose footer holds a list of booleans. parquet 57 skips such a
/// list's elements without reading them, drifts from the footer's real
/// layout and then loops over a list it reads as 2^31 booleans: about 5 s
/// of CPU per decode. The length check now refuses the footer before
/// parquet sees it: its typed walk stops at field 2 (the schema, a list)
/// announced as a boolean, the list's first element; a list of booleans in
/// a field parquet skips is refused too (the unit test
/// `a_list_of_booleans_in_a_skipped_field_is_refused`).
#[test]
fn a_parquet_footer_with_a_list_of_booleans_is_refused_before_parquet_reads_it() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz/parquet_footer_bool_list_desync.parquet");
    let b = std::fs::read(path).unwrap();
    let err = format!("{:#}", decode_table(&b, Format::Parquet).unwrap_err());
    assert!(
        err.contains("field 2 of FileMetaData") && err.contains("parquet reads it as a list"),
        "{err}"
    );
    // The Kafka payload decoder refuses it earlier (no leading magic).
    assert!(decode_payload(&b, Encoding::Parquet, "plates/0@3").is_err());
}

/// `bytes`, a Parquet file, with its footer's schema list (the footer's
/// second field) re-announced as `count` elements: the shape of the fuzz
/// target `parquet`'s finding (a 1.5 KB file asking for 16.8 GB).
fn with_huge_schema_list(bytes: &[u8], count: u64) -> Vec<u8> {
    let n = bytes.len();
    let footer_len = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    let start = n - 8 - footer_len;
    let f = &bytes[start..n - 8];
    // Field 1 (version, i32, one varint byte), then field 2: a list.
    assert_eq!((f[0], f[2]), (0x15, 0x19), "footer starts {:x?}", &f[..4]);
    let head = f[3];
    let skip = if head >> 4 == 15 {
        4 + f[4..].iter().position(|b| b & 0x80 == 0).unwrap() + 1
    } else {
        4
    };
    let mut footer = f[..3].to_vec();
    footer.push(0xf0 | (head & 0x0f));
    let mut v = count;
    while v >= 0x80 {
        footer.push((v as u8) | 0x80);
        v >>= 7;
    }
    footer.push(v as u8);
    footer.extend_from_slice(&f[skip..]);
    let mut out = bytes[..start].to_vec();
    out.extend_from_slice(&footer);
    out.extend_from_slice(&(footer.len() as u32).to_le_bytes());
    out.extend_from_slice(b"PAR1");
    out
}

/// Regression (found by the fuzz target `parquet`): parquet 57 reserves a
/// footer list's announced length before reading its elements; a schema
/// list announcing 2e9 elements (parquet reads the count as an i32; the
/// struct is ~100 bytes: a ~200 GB reservation) aborts the process with an
/// allocation failure, which nothing catches (for the daemon, a crash
/// loop). Now refused up front, naming the file (or, for bytes, the
/// message).
#[test]
fn a_parquet_footer_announcing_a_huge_list_is_an_error_not_an_abort() {
    let bad = with_huge_schema_list(&encoded().parquet, 2_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.parquet");
    std::fs::write(&path, &bad).unwrap();
    let err = format!("{:#}", balans::io::table::read_table(&path).unwrap_err());
    assert!(err.contains("hostile.parquet"), "{err}");
    assert!(err.contains("announces 2000000000"), "{err}");
    let err = format!("{:#}", balans::io::table::read_metadata(&path).unwrap_err());
    assert!(
        err.contains("hostile.parquet") && err.contains("announces"),
        "{err}"
    );
    let err = format!("{:#}", decode_table(&bad, Format::Parquet).unwrap_err());
    assert!(err.contains("announces 2000000000"), "{err}");
    let r = decode_payload(&bad, Encoding::Parquet, "plates/0@9").unwrap_err();
    assert!(r.to_string().contains("plates/0@9"), "{r}");
    // The same edit announcing the true count decodes to the table: the
    // test's rewrite is faithful.
    let schema_len = {
        let f = &encoded().parquet;
        let m = f.len();
        let fl = u32::from_le_bytes(f[m - 8..m - 4].try_into().unwrap()) as usize;
        let h = f[m - 8 - fl + 3];
        assert!(h >> 4 < 15, "few columns: a short list header");
        u64::from(h >> 4)
    };
    let same = with_huge_schema_list(&encoded().parquet, schema_len);
    assert_eq!(
        decode_table(&same, Format::Parquet).unwrap(),
        encoded().table
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn mutated_ipc_streams_never_panic(ms in mutations()) {
        let b = apply(&encoded().stream, &ms);
        if let Ok(t) = decode_payload(&b, Encoding::ArrowStream, "prop") {
            load(t, &b);
        }
        let _ = decode_ipc_stream(&b);
    }

    #[test]
    fn mutated_ipc_files_never_panic(ms in mutations()) {
        let b = apply(&encoded().file, &ms);
        if let Ok(t) = decode_table(&b, Format::ArrowIpc) {
            load(t, &b);
        }
    }

    #[test]
    fn mutated_parquet_never_panics(ms in mutations()) {
        let b = apply(&encoded().parquet, &ms);
        if let Ok(t) = decode_table(&b, Format::Parquet) {
            load(t, &b);
        }
        let _ = decode_payload(&b, Encoding::Parquet, "prop");
    }

    #[test]
    fn mutated_csv_never_panics(ms in mutations(), gz in any::<bool>()) {
        let (src, format) = if gz {
            (&encoded().csv_gz, Format::CsvGz)
        } else {
            (&encoded().csv, Format::Csv)
        };
        let b = apply(src, &ms);
        if let Ok(t) = decode_table(&b, format) {
            load(t, &b);
        }
    }
}

// ---------------------------------------------------------------- write-ahead log

fn delta() -> impl Strategy<Value = PlateDelta> {
    (
        "[A-Za-z0-9_/]{1,12}",
        0u64..u64::MAX,
        prop::collection::vec(-50.0f32..50.0, 0..12),
        prop::collection::vec((0u64..1000, 0.0f32..2.0), 0..4),
        prop::collection::vec(0.0f32..2.0, 0..4),
        prop::collection::vec(-5.0f32..5.0, 0..16),
        prop::collection::vec(-5.0f32..5.0, 0..6),
        0u64..40,
    )
        .prop_map(
            |(plate, hash, y, updates, cov, w, control_dev, pooled)| PlateDelta {
                batch: format!("B{}", plate.len() % 3),
                plate,
                content_hash: hash,
                version: "g0.p1".into(),
                y,
                coverage_updates: updates,
                plate_coverage: cov,
                qc: None,
                w,
                control_dev,
                pooled_controls: pooled,
            },
        )
}

/// Record `i` of a test log: format 3 (what is written now) or, for every
/// third record, format 2 (what older builds wrote, still read).
fn record(i: usize, d: &PlateDelta) -> Vec<u8> {
    if i % 3 == 2 {
        wal::encode_v2(i as u64, d).unwrap()
    } else {
        wal::encode(i as u64, d).unwrap()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    /// A mutated log yields only records that were written, each with its
    /// own plate index.
    #[test]
    fn mutated_logs_yield_only_records_that_were_written(
        deltas in prop::collection::vec(delta(), 1..5),
        ms in mutations(),
    ) {
        let mut log = Vec::new();
        for (i, d) in deltas.iter().enumerate() {
            log.extend(record(i, d));
        }
        let intact = wal::scan(&log);
        prop_assert!(intact.damage.is_none());
        prop_assert_eq!(intact.records.len(), deltas.len());

        let b = apply(&log, &ms);
        let s = wal::scan(&b);
        prop_assert!(s.valid_len <= s.file_len);
        let from = b.len() / 2;
        for r in s.records.iter().chain(wal::records_after(&b, from).iter()) {
            let seq = r.seq.expect("format-2 and format-3 records");
            prop_assert!((seq as usize) < deltas.len(), "invented plate index {}", seq);
            prop_assert_eq!(&r.delta, &deltas[seq as usize]);
        }
    }

    /// A log cut anywhere keeps exactly the records wholly before the cut;
    /// the rest is a torn tail.
    #[test]
    fn a_cut_log_keeps_the_whole_records_before_the_cut(
        deltas in prop::collection::vec(delta(), 1..5),
        at in 0.0..1.0f64,
    ) {
        let mut log = Vec::new();
        let mut ends = Vec::new();
        for (i, d) in deltas.iter().enumerate() {
            log.extend(record(i, d));
            ends.push(log.len());
        }
        let cut = pos(log.len(), at);
        let s = wal::scan(&log[..cut]);
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        prop_assert_eq!(s.records.len(), whole);
        let mid_record = cut > 0 && !ends.contains(&cut);
        prop_assert_eq!(s.damage.is_some(), mid_record);
        if mid_record {
            prop_assert!(matches!(s.damage, Some(wal::Damage::TornTail { .. })), "{:?}", s.damage);
        }
    }
}

// ---------------------------------------------------------------- snapshot

/// A small model (bootstrapped from one synthetic plate) written as a
/// snapshot: the files' names and bytes, and the model's fingerprint.
/// The files of a one-segment snapshot, in the order the fuzz target
/// `snapshot` reads them; the manifest comes after them.
const SNAP_FILES: [&str; 5] = [
    snapshot::FILES[0],
    snapshot::FILES[1],
    snapshot::FILES[2],
    snapshot::FILES[3],
    snapshot::PROFILES,
];

struct Snap {
    /// [`SNAP_FILES`] then `manifest.json`.
    files: Vec<(String, Vec<u8>)>,
    fingerprint: String,
}

fn fingerprint(m: &Model) -> String {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    format!(
        "{}|{:?}|{:?}|{:?}",
        serde_json::to_string(m.meta()).unwrap(),
        bits(m.rows_y()),
        m.rows_batch(),
        bits(m.rows_coverage())
    ) + &format!("|{:?}", bits(m.rows_w()))
}

fn snap() -> &'static Snap {
    static S: OnceLock<Snap> = OnceLock::new();
    S.get_or_init(|| {
        let t = generate(&SynthSpec {
            rows: 96,
            batches: 1,
            features: 6,
            plates_per_batch: 1,
            seed: 5,
            ..SynthSpec::default()
        })
        .unwrap();
        let ctrl: Vec<bool> = t.label.iter().map(|l| l == "DMSO").collect();
        let params = Params {
            threads: 1,
            ..Params::default()
        };
        let mut m =
            Model::bootstrap(t.features.view(), Some(&ctrl), t.feature_names(), &params).unwrap();
        // The rows as one plate, so the row files are not empty.
        let aligned = m
            .align_plate("P1", "B1", t.features.view(), Some(&ctrl), 1)
            .unwrap();
        m.apply(&aligned.delta).unwrap();
        assert_eq!(m.len(), 96);
        let dir = tempfile::tempdir().unwrap();
        snapshot::write(dir.path(), &m).unwrap();
        // SNAP_FILES, then the manifest (last).
        let files: Vec<(String, Vec<u8>)> = SNAP_FILES
            .iter()
            .chain([&snapshot::MANIFEST])
            .map(|n| (n.to_string(), std::fs::read(dir.path().join(n)).unwrap()))
            .collect();
        let back = snapshot::read(dir.path(), true).unwrap();
        assert_eq!(
            fingerprint(&back),
            fingerprint(&m),
            "a snapshot round-trips"
        );
        // Without the stored index (not among the files the tests and the
        // fuzz target write), the index is built from the rows: same model.
        let bare = tempfile::tempdir().unwrap();
        write_snapshot(bare.path(), &files);
        let back = snapshot::read(bare.path(), true).unwrap();
        assert_eq!(
            fingerprint(&back),
            fingerprint(&m),
            "a snapshot without its index file restores"
        );
        Snap {
            files,
            fingerprint: fingerprint(&m),
        }
    })
}

fn write_snapshot(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (n, b) in files {
        std::fs::write(dir.join(n), b).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    /// A snapshot with one file mutated restores the same model or fails,
    /// naming the snapshot's directory.
    #[test]
    fn mutated_snapshots_restore_the_same_model_or_fail(
        which in 0usize..6,
        ms in mutations(),
    ) {
        let s = snap();
        let mut files = s.files.clone();
        files[which].1 = apply(&files[which].1, &ms);
        let dir = tempfile::tempdir().unwrap();
        write_snapshot(dir.path(), &files);
        match snapshot::read(dir.path(), true) {
            Ok(m) => prop_assert_eq!(&fingerprint(&m), &s.fingerprint, "{} mutated", files[which].0),
            Err(e) => {
                let msg = format!("{e:#}");
                prop_assert!(msg.contains(&dir.path().display().to_string()), "{}", msg);
            }
        }
    }
}

// ---------------------------------------------------------------- chunks

/// A change to a chunk set as delivered.
#[derive(Debug, Clone)]
enum ChunkChange {
    Drop(usize),
    Redeliver(usize),
    Index(usize, usize),
    Count(usize, usize),
}

fn chunk_change() -> impl Strategy<Value = ChunkChange> {
    prop_oneof![
        (0usize..64).prop_map(ChunkChange::Drop),
        (0usize..64).prop_map(ChunkChange::Redeliver),
        (0usize..64, 0usize..70).prop_map(|(i, x)| ChunkChange::Index(i, x)),
        (0usize..64, 0usize..70).prop_map(|(i, x)| ChunkChange::Count(i, x)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn chunk_sets_complete_only_as_the_concatenation_of_their_chunks(
        payload in prop::collection::vec(any::<u8>(), 1..600),
        size in 1usize..200,
        changes in prop::collection::vec(chunk_change(), 0..4),
        order in any::<u64>(),
    ) {
        let parts = split(&payload, size);
        let n = parts.len();
        let mut msgs: Vec<Chunk> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| Chunk {
                partition: 0,
                offset: i as i64,
                plate: "P".into(),
                index: i,
                count: n,
                bytes: p.to_vec(),
            })
            .collect();
        let mut intact = true;
        for c in &changes {
            let len = msgs.len();
            if len == 0 {
                break;
            }
            match *c {
                ChunkChange::Drop(i) => {
                    msgs.remove(i % len);
                    intact = false;
                }
                ChunkChange::Redeliver(i) => {
                    let mut m = msgs[i % len].clone();
                    m.offset += 1000;
                    msgs.push(m);
                }
                ChunkChange::Index(i, x) => {
                    intact &= msgs[i % len].index == x;
                    msgs[i % len].index = x;
                }
                ChunkChange::Count(i, x) => {
                    intact &= msgs[i % len].count == x;
                    msgs[i % len].count = x;
                }
            }
        }
        // A deterministic shuffle from `order`.
        let mut k = order;
        for i in (1..msgs.len()).rev() {
            k = k.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            msgs.swap(i, (k >> 33) as usize % (i + 1));
        }
        let mut asm = Assembler::new(1 << 20);
        let now = Instant::now();
        let mut delivered: std::collections::BTreeMap<usize, Vec<u8>> = Default::default();
        let mut completed = Vec::new();
        for m in msgs {
            delivered.entry(m.index).or_insert_with(|| m.bytes.clone());
            match asm.add(m, now) {
                Added::Complete(a) => {
                    let whole: Vec<u8> = delivered.values().flatten().copied().collect();
                    prop_assert_eq!(&a.bytes, &whole);
                    completed.push(a.bytes);
                    delivered.clear();
                }
                Added::Rejected(_) => delivered.clear(),
                Added::Pending | Added::Duplicate => {}
            }
        }
        if intact {
            // At least once: redeliveries arriving after the set completed
            // can form a second whole set (the pipeline then sees a
            // replay), with the same bytes.
            prop_assert!(!completed.is_empty(), "an intact set completes");
            for c in &completed {
                prop_assert_eq!(c, &payload);
            }
        }
        // Whatever is left open expires.
        asm.expire(now + Duration::from_secs(3600), Duration::from_secs(1));
        prop_assert_eq!(asm.pending(), 0);
    }
}

// ---------------------------------------------------------------- fuzz seeds

/// Write the seed corpus of the cargo-fuzz harness (`fuzz/corpus/<target>/`)
/// from the encodings above: `BALANS_FUZZ_SEEDS=fuzz/corpus cargo nextest
/// run --test decode_props --run-ignored only write_fuzz_seeds` (what
/// scripts/fuzz.sh does when a target's corpus is empty). Each input is in
/// the layout its target reads (see the target's doc).
#[test]
#[ignore = "writes files: run by scripts/fuzz.sh"]
fn write_fuzz_seeds() {
    let root = std::path::PathBuf::from(
        std::env::var("BALANS_FUZZ_SEEDS").expect("BALANS_FUZZ_SEEDS=<corpus directory>"),
    );
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let d = root.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    };
    let e = encoded();
    put("ipc_stream", "plate", &e.stream);
    put("ipc_file", "plate", &e.file);
    put("parquet", "plate", &e.parquet);
    put("csv", "plate", &[&[0u8][..], &e.csv].concat());
    put("csv", "plate_gz", &[&[1u8][..], &e.csv_gz].concat());
    // Log: two records, the second with QC figures absent and updates.
    let d = |plate: &str, y: Vec<f32>| PlateDelta {
        plate: plate.into(),
        batch: "B1".into(),
        content_hash: 7,
        version: "g0.p1".into(),
        y,
        coverage_updates: vec![(0, 0.5)],
        plate_coverage: vec![1.0, 0.25],
        qc: None,
        w: vec![],
        control_dev: vec![],
        pooled_controls: 0,
    };
    let mut log = wal::encode(0, &d("P1", vec![0.5, -1.0, 2.0, 3.5])).unwrap();
    log.extend(wal::encode(1, &d("P2", vec![1.5, 0.0, -2.0, 0.125])).unwrap());
    put("wal", "two_records", &log);
    // The same log as format-2 records (JSON bodies), which still restore.
    let mut log = wal::encode_v2(0, &d("P1", vec![0.5, -1.0, 2.0, 3.5])).unwrap();
    log.extend(wal::encode_v2(1, &d("P2", vec![1.5, 0.0, -2.0, 0.125])).unwrap());
    put("wal", "two_records_v2", &log);
    // Snapshot: mode 0 (no manifest), 1 (manifest computed by the target),
    // 2 (the real manifest as the rest), 10 (computed manifest, bit 8: a
    // second row segment; `y.f32` and `w.f32` hold the first half of the
    // rows and `y.<row>.f32`, `w.<row>.f32` the rest, then the figures:
    // rows (u16), dims, plates and the segment's first row - 1).
    let s = snap();
    let prefixed = |parts: &[&[u8]]| {
        let mut out = Vec::new();
        for bytes in parts {
            let len = u16::try_from(bytes.len()).expect("a seed file over 64 KiB");
            out.extend(len.to_le_bytes());
            out.extend(*bytes);
        }
        out
    };
    let whole: Vec<&[u8]> = s.files[..5].iter().map(|(_, b)| b.as_slice()).collect();
    let files = prefixed(&whole);
    let manifest_bytes = &s.files[5].1;
    put("snapshot", "no_manifest", &[&[0u8][..], &files].concat());
    put(
        "snapshot",
        "computed_manifest",
        &[&[1u8][..], &files].concat(),
    );
    put(
        "snapshot",
        "real_manifest",
        &[&[2u8][..], &files, manifest_bytes].concat(),
    );
    let manifest: serde_json::Value = serde_json::from_slice(manifest_bytes).unwrap();
    let figure = |k: &str| {
        manifest[k]
            .as_u64()
            .unwrap_or_else(|| panic!("manifest {k}"))
    };
    let (rows, dims, plates) = (figure("rows"), figure("dims"), figure("plates"));
    let half = rows / 2;
    let nv = s.files[4].1.len() as u64 / (4 * rows);
    let (y0, y1) = s.files[1].1.split_at((half * dims * 4) as usize);
    let (w0, w1) = s.files[4].1.split_at((half * nv * 4) as usize);
    let two = prefixed(&[&s.files[0].1, y0, &s.files[2].1, &s.files[3].1, w0, y1, w1]);
    let figures = [
        &u16::try_from(rows).unwrap().to_le_bytes()[..],
        &[dims as u8, plates as u8, (half - 1) as u8],
    ]
    .concat();
    put(
        "snapshot",
        "two_segments",
        &[&[10u8][..], &two, &figures].concat(),
    );
    // Chunks: two chunks of one plate, a redelivery, a second plate.
    put(
        "chunks",
        "two_plates",
        &[
            &[0u8, 0, 2, 3, 0][..],
            b"abc",
            &[0, 1, 2, 2, 1],
            b"de",
            &[0, 1, 2, 2, 1],
            b"de",
            &[32, 0, 1, 4, 2],
            b"wxyz",
        ]
        .concat(),
    );
}

/// Regression (found by the fuzz target `parquet`, an abort): a file whose
/// footer announces field 1 (`version`, an i32) as a boolean, which takes
/// no bytes. parquet reads a known field by the type the Parquet IDL gives
/// it, whatever its header announces, so it read the next field's header
/// as the version, drifted from the footer's layout and reserved 126 GB
/// for a list count the length check never saw: the allocation failed
/// and the process aborted (for the daemon, a crash loop). The check now
/// walks the footer typed and refuses the field.
#[test]
fn a_parquet_footer_field_announced_with_another_type_is_refused() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz/parquet_footer_field_type_mismatch.parquet");
    let b = std::fs::read(path).unwrap();
    let err = format!("{:#}", decode_table(&b, Format::Parquet).unwrap_err());
    assert!(
        err.contains("field 1 of FileMetaData") && err.contains("parquet reads it as an i32"),
        "{err}"
    );
}
