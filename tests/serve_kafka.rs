//! `balans serve` in Kafka mode against a real Kafka-protocol broker (tansu,
//! in-memory storage; installed and started by `scripts/broker.sh`).
//!
//! Run through `bash scripts/test.sh`, which starts the broker and exports
//! its address as `BALANS_TEST_BROKERS`. Without it these tests fail loudly
//! (they never pass silently). The broker-restart test starts a private
//! broker of its own with `scripts/broker.sh`, so restarting it does not
//! disturb the tests running in parallel.
//!
//! Every test uses its own topics and consumer groups, and fast group
//! settings (session.timeout.ms=2000, heartbeat.interval.ms=200): tansu
//! completes a group join after about half the session timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use balans::io::profile::text_column;
use balans::io::table::{encode_ipc_stream, encode_parquet};
use balans::serve::kafka::chunks::{Added, Assembler, Chunk};
use balans::serve::kafka::wire::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

mod common;
use common::*;

// The crash drill and the soak (scripts/crash.sh, scripts/soak.sh).
#[path = "serve_kafka/drills.rs"]
mod drills;
// `balans realign` beside the live generation.
#[path = "serve_kafka/realign.rs"]
mod realign;

const TIMEOUT: Duration = Duration::from_secs(120);

fn start_daemon(d: &Data, brokers: &str, config: &Path, state: &Path, tag: &str) -> Daemon {
    let log = d.dir.path().join(format!("daemon-{tag}.log"));
    Daemon::spawn(&kafka_args(d, brokers, config, state), log, false)
}

/// A received output message.
#[derive(Debug, Clone)]
struct Got {
    key: String,
    headers: BTreeMap<String, String>,
    payload: Vec<u8>,
}

/// Reads the output topics from the beginning (its own group), reassembling
/// chunked aligned plates.
struct Reader {
    c: BaseConsumer,
    t: Topics,
    asm: Assembler,
    aligned: Vec<Got>,
    qc: Vec<Got>,
    dlq: Vec<Got>,
}

impl Reader {
    fn new(brokers: &str, t: &Topics) -> Reader {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", unique("reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "2000")
            .set("heartbeat.interval.ms", "200")
            .create()
            .unwrap();
        c.subscribe(&[&t.aligned, &t.qc, &t.dlq]).unwrap();
        Reader {
            c,
            t: t.clone(),
            asm: Assembler::new(usize::MAX),
            aligned: Vec::new(),
            qc: Vec::new(),
            dlq: Vec::new(),
        }
    }

    /// Poll until `done(self)`, restarting the daemon with `restart` if it
    /// exits, at most once, as its supervisor would (systemd
    /// `Restart=on-failure`): when the broker loses or recreates a topic,
    /// tansu and librdkafka 2.12.1 can crash it with SIGSEGV
    /// (`kafka_plates_topic_recreated_under_a_running_daemon` below,
    /// docs/reliability.md). Panics at the timeout, or when the restarted
    /// daemon exits too.
    fn until_supervised(
        &mut self,
        what: &str,
        daemon: &mut Daemon,
        restart: impl Fn() -> Daemon,
        done: impl Fn(&Reader) -> bool,
    ) {
        let deadline = Instant::now() + TIMEOUT;
        let mut restarts = 0;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: aligned {:?}\ndaemon log:\n{}",
                self.aligned_keys(),
                daemon.log()
            );
            self.read_for(Duration::from_millis(500));
            if let Some(status) = daemon.child.try_wait().unwrap() {
                assert_eq!(
                    restarts,
                    0,
                    "the restarted daemon exited too ({status}):\n{}",
                    daemon.log()
                );
                eprintln!("daemon exited ({status}) while waiting for {what}; restarting it");
                restarts += 1;
                *daemon = restart();
            }
        }
    }

    /// Poll until `done(self)` or the timeout (then panic with `what`).
    fn until(&mut self, what: &str, daemon: Option<&Daemon>, done: impl Fn(&Reader) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !done(self) {
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}: aligned {:?}, dlq {:?}\ndaemon{} log:\n{}",
                    self.aligned_keys(),
                    self.dlq
                        .iter()
                        .map(|g| (g.key.clone(), g.headers.get(H_DLQ_REASON).cloned()))
                        .collect::<Vec<_>>(),
                    if daemon.is_some_and(Daemon::exited) {
                        " (exited)"
                    } else {
                        ""
                    },
                    daemon.map(|d| d.log()).unwrap_or_default()
                );
            }
            let Some(r) = self.c.poll(Duration::from_millis(100)) else {
                continue;
            };
            let Ok(m) = r else { continue };
            let mut headers = BTreeMap::new();
            if let Some(h) = m.headers() {
                for hd in h.iter() {
                    headers.insert(
                        hd.key.to_string(),
                        String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            let got = Got {
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                headers,
                payload: m.payload().unwrap_or_default().to_vec(),
            };
            let topic = m.topic().to_string();
            if topic == self.t.aligned {
                if let Some(count) = got.headers.get(H_CHUNK_COUNT) {
                    let chunk = Chunk {
                        partition: m.partition(),
                        offset: m.offset(),
                        plate: got.key.clone(),
                        index: got.headers[H_CHUNK_INDEX].parse().unwrap(),
                        count: count.parse().unwrap(),
                        bytes: got.payload.clone(),
                    };
                    match self.asm.add(chunk, Instant::now()) {
                        Added::Complete(a) => {
                            let mut whole = got.clone();
                            whole.payload = a.bytes;
                            whole.headers.insert("chunks".into(), count.clone());
                            self.aligned.push(whole);
                        }
                        Added::Pending | Added::Duplicate => {}
                        Added::Rejected(r) => panic!("bad output chunks: {}", r.reason),
                    }
                } else {
                    self.aligned.push(got);
                }
            } else if topic == self.t.qc {
                self.qc.push(got);
            } else if topic == self.t.dlq {
                self.dlq.push(got);
            }
        }
    }

    /// Keep reading for `d` (to check that nothing more arrives).
    fn read_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        self.until("nothing (time-boxed read)", None, |_| Instant::now() > end);
    }

    fn aligned_keys(&self) -> BTreeSet<String> {
        self.aligned.iter().map(|g| g.key.clone()).collect()
    }
}

/// Every aligned message of a plate has the same model version (duplicates
/// are identifiable by key + version); returns key -> version.
fn versions(r: &Reader) -> BTreeMap<String, String> {
    let mut v: BTreeMap<String, String> = BTreeMap::new();
    for g in &r.aligned {
        let ver = g.headers[H_MODEL_VERSION].clone();
        if let Some(prev) = v.insert(g.key.clone(), ver.clone()) {
            assert_eq!(prev, ver, "plate {} published under two versions", g.key);
        }
    }
    v
}

/// Send `plates` to the plates topic and read until each has an aligned
/// output: the reader, and each plate's model version.
fn publish(
    p: &rdkafka::producer::BaseProducer,
    addr: &str,
    t: &Topics,
    plates: &[(String, RecordBatch)],
    daemon: &Daemon,
) -> (Reader, BTreeMap<String, String>) {
    for (id, table) in plates {
        send_plate(p, &t.plates, id, table);
    }
    let mut r = Reader::new(addr, t);
    r.until("the first plates", Some(daemon), |r| {
        plates.iter().all(|(id, _)| r.aligned_keys().contains(id))
    });
    let v = versions(&r);
    (r, v)
}

fn check_same_layout(input: &RecordBatch, output_bytes: &[u8], plate: &str) {
    let out = balans::io::table::decode_ipc_stream(output_bytes).unwrap();
    assert_eq!(out.num_rows(), input.num_rows(), "{plate}: rows");
    assert_eq!(out.schema(), input.schema(), "{plate}: columns");
    let wells_in = text_column(input, "Metadata_Well", plate).unwrap();
    let wells_out = text_column(&out, "Metadata_Well", plate).unwrap();
    assert_eq!(wells_in, wells_out, "{plate}: row order");
}

/// A copy of `t` with one feature value replaced.
fn set_value(t: &RecordBatch, col: &str, row: usize, value: f64) -> RecordBatch {
    let mut cols = t.columns().to_vec();
    let j = t.schema().index_of(col).unwrap();
    let v: Vec<f64> = cols[j]
        .as_any()
        .downcast_ref::<arrow_array::Float64Array>()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, x)| if i == row { value } else { x.unwrap() })
        .collect();
    cols[j] = std::sync::Arc::new(arrow_array::Float64Array::from(v));
    RecordBatch::try_new(t.schema(), cols).unwrap()
}

#[test]
fn streams_every_plate_once_with_chunks_and_parquet() {
    let b = brokers();
    let d = data();
    let t = Topics::new("stream");
    create_topics(&b, &t, 2);
    // A small message limit so aligned plates (~30 kB) leave as chunks.
    let cfg = write_config(d.dir.path(), &t, &unique("g"), "max_message_bytes = 16000");
    let state = d.dir.path().join("state");
    let daemon = start_daemon(&d, &b, &cfg, &state, "a");
    let p = producer(&b);
    let n = d.plates.len();
    assert!(n >= 7);
    for (i, (id, table)) in d.plates.iter().enumerate() {
        match i {
            // Parquet-encoded plate.
            1 => send(
                &p,
                &t.plates,
                id,
                &encode_parquet(table).unwrap(),
                &[(H_CONTENT_TYPE, CT_PARQUET)],
            ),
            // Chunked input plate: 3 chunks, interleaved with nothing else.
            4 => {
                let bytes = encode_ipc_stream(table).unwrap();
                let size = bytes.len().div_ceil(3);
                let parts: Vec<&[u8]> = bytes.chunks(size).collect();
                assert_eq!(parts.len(), 3);
                for (k, part) in parts.iter().enumerate() {
                    send(
                        &p,
                        &t.plates,
                        id,
                        part,
                        &[
                            (H_CONTENT_TYPE, CT_ARROW_STREAM),
                            (H_PLATE_ID, id),
                            (H_CHUNK_INDEX, &k.to_string()),
                            (H_CHUNK_COUNT, "3"),
                        ],
                    )
                }
            }
            _ => send_plate(&p, &t.plates, id, table),
        }
    }
    let mut r = Reader::new(&b, &t);
    r.until("every plate aligned and its QC", Some(&daemon), |r| {
        r.aligned_keys().len() == n && r.qc.len() >= n
    });
    let want: BTreeSet<String> = d.plates.iter().map(|p| p.0.clone()).collect();
    assert_eq!(r.aligned_keys(), want);
    let vers = versions(&r);
    // One version per plate, all distinct (each plate moved the model on).
    let distinct: BTreeSet<&String> = vers.values().collect();
    assert_eq!(distinct.len(), n, "{vers:?}");
    for g in &r.aligned {
        let input = &d.plates.iter().find(|p| p.0 == g.key).unwrap().1;
        check_same_layout(input, &g.payload, &g.key);
        assert!(
            g.headers.contains_key("chunks"),
            "aligned output was chunked"
        );
        assert_eq!(g.headers[H_SOURCE_TOPIC], t.plates);
        assert!(g.headers[H_SOURCE_OFFSET].parse::<i64>().unwrap() >= 0);
    }
    // QC: JSON per plate; the first batch-4 plate opened a new batch.
    let mut new_batch = 0;
    for q in &r.qc {
        let v: serde_json::Value = serde_json::from_slice(&q.payload).unwrap();
        assert_eq!(v["plate"], q.key.as_str());
        assert_eq!(v["model_version"], vers[&q.key].as_str());
        if v["qc"]["new_batch"] == true {
            new_batch += 1;
            assert!(q.key.starts_with("Batch04"), "{v}");
        }
    }
    assert_eq!(new_batch, 1, "exactly one plate opened the unseen batch");
    assert!(r.dlq.is_empty(), "{:?}", r.dlq);
    assert!(daemon.term(), "SIGTERM exits 0");
    // Offsets were committed: a restart with the same group and state
    // publishes nothing new.
    assert!(state.join("snapshot").join("meta.json").exists());
    let n_out = r.aligned.len();
    let daemon = start_daemon(&d, &b, &cfg, &state, "b");
    r.read_for(Duration::from_secs(6));
    assert_eq!(r.aligned.len(), n_out, "re-published after a clean restart");
    assert!(daemon.log().contains("state restored"), "{}", daemon.log());
    assert!(daemon.term());
}

#[test]
fn kill_nine_mid_stream_then_restart_loses_nothing() {
    let b = brokers();
    let d = data();
    let t = Topics::new("kill9");
    create_topics(&b, &t, 1);
    let group = unique("g");
    let cfg = write_config(d.dir.path(), &t, &group, "");
    let state = d.dir.path().join("state");
    let daemon = start_daemon(&d, &b, &cfg, &state, "a");
    let p = producer(&b);
    let (first, rest) = d.plates.split_at(4);
    for (id, table) in first {
        send_plate(&p, &t.plates, id, table);
    }
    let mut r = Reader::new(&b, &t);
    // Kill as soon as the first plate is out: the others are in flight,
    // unprocessed, or processed and not yet committed.
    r.until("a first plate out", Some(&daemon), |r| {
        !r.aligned.is_empty()
    });
    daemon.kill9();
    for (id, table) in rest {
        send_plate(&p, &t.plates, id, table);
    }
    let daemon = start_daemon(&d, &b, &cfg, &state, "b");
    let n = d.plates.len();
    r.until("every plate after the restart", Some(&daemon), |r| {
        r.aligned_keys().len() == n
    });
    // Duplicates (re-published after the crash) carry the same key and
    // version as the first publication.
    let vers = versions(&r);
    assert_eq!(vers.len(), n);
    let distinct: BTreeSet<&String> = vers.values().collect();
    assert_eq!(distinct.len(), n, "no plate incorporated twice: {vers:?}");
    for g in &r.aligned {
        let input = &d.plates.iter().find(|p| p.0 == g.key).unwrap().1;
        check_same_layout(input, &g.payload, &g.key);
    }
    // The restarted daemon continued from its state (snapshot + log), not
    // from a fresh warm start.
    assert!(daemon.log().contains("state restored"), "{}", daemon.log());
    assert!(daemon.term());
}

#[test]
fn malformed_plates_go_to_the_dlq_and_good_plates_keep_flowing() {
    let b = brokers();
    let d = data();
    let t = Topics::new("dlq");
    create_topics(&b, &t, 1);
    let (good_a, ta) = &d.plates[0];
    let (good_b, tb) = &d.plates[3];
    let (_, tc) = &d.plates[5];
    // Plates up to twice the size of a normal one are accepted.
    let limit = 2 * encode_ipc_stream(ta).unwrap().len();
    let cfg = write_config(
        d.dir.path(),
        &t,
        &unique("g"),
        &format!("max_plate_bytes = {limit}\nchunk_timeout_ms = 1500"),
    );
    let state = d.dir.path().join("state");
    let log = d.dir.path().join("daemon-a.log");
    let daemon = Daemon::spawn(&kafka_args(&d, &b, &cfg, &state), log, true);
    let p = producer(&b);
    send_plate(&p, &t.plates, good_a, ta);
    // 1. not Arrow at all
    send(&p, &t.plates, "junk", b"this is not an arrow stream", &[]);
    // 2. wrong schema: a model feature column missing
    let t1 = &d.plates[1].1;
    let f0 = t1.schema().index_of("Feature_000").unwrap();
    let mut no_feat = t1.clone();
    no_feat.remove_column(f0);
    send_plate(&p, &t.plates, &d.plates[1].0, &no_feat);
    // 3. NaN feature at row 3
    let nan = set_value(&d.plates[2].1, "Feature_005", 2, f64::NAN);
    send_plate(&p, &t.plates, &d.plates[2].0, &nan);
    // 4. missing batch column
    let mut no_batch = tc.clone();
    no_batch.remove_column(tc.schema().index_of("Metadata_Batch").unwrap());
    send_plate(&p, &t.plates, &d.plates[5].0, &no_batch);
    // 5. empty plate
    send_plate(&p, &t.plates, "empty", &ta.slice(0, 0));
    // 6. duplicate plate id (good_a) with different content
    send_plate(
        &p,
        &t.plates,
        good_a,
        &set_value(ta, "Feature_001", 0, 123.0),
    );
    // 7. oversized: four plates' rows in one message (> max_plate_bytes)
    let big = arrow_select::concat::concat_batches(&ta.schema(), [ta, ta, ta, ta]).unwrap();
    send_plate(&p, &t.plates, good_a, &big);
    // 8. unsupported schema version
    send(
        &p,
        &t.plates,
        "v9",
        &encode_ipc_stream(ta).unwrap(),
        &[(H_SCHEMA_VERSION, "9")],
    );
    // 9. incomplete chunk set (1 of 2 chunks; times out after 1.5 s)
    send(
        &p,
        &t.plates,
        "half",
        b"first half",
        &[
            (H_PLATE_ID, "half"),
            (H_CHUNK_INDEX, "0"),
            (H_CHUNK_COUNT, "2"),
        ],
    );
    // ... and a good plate after all of them still flows.
    send_plate(&p, &t.plates, good_b, tb);
    let mut r = Reader::new(&b, &t);
    r.until("9 dead letters and 2 good plates", Some(&daemon), |r| {
        r.dlq.len() >= 9 && r.aligned_keys().len() >= 2
    });
    let want_aligned: BTreeSet<String> = [good_a.clone(), good_b.clone()].into();
    assert_eq!(r.aligned_keys(), want_aligned);
    let reasons: Vec<(String, String)> = r
        .dlq
        .iter()
        .map(|g| (g.key.clone(), g.headers[H_DLQ_REASON].clone()))
        .collect();
    let has = |key: &str, needle: &str| {
        assert!(
            reasons
                .iter()
                .any(|(k, why)| k == key && why.contains(needle)),
            "no DLQ entry for {key} mentioning {needle:?}: {reasons:#?}"
        )
    };
    has("junk", "not an Arrow IPC stream");
    has(&d.plates[1].0, "Feature_000");
    has(&d.plates[2].0, "Feature_005");
    has(&d.plates[2].0, "row 3");
    has(&d.plates[5].0, "Metadata_Batch");
    has("empty", "empty plate");
    has(good_a, "duplicate plate id");
    has(good_a, "oversized");
    has("v9", "schema version");
    has("half", "incomplete chunked plate");
    // The Prometheus endpoint counts the Kafka path too.
    let scrape = daemon.metrics();
    assert!(
        scrape.contains("balans_plates_published_total{replay=\"false\"} 2"),
        "{scrape}"
    );
    assert!(
        scrape.contains("balans_plates_dead_lettered_total{reason=\"duplicate\"} 1"),
        "{scrape}"
    );
    // Stage split, QC verdicts and offset commits are reported in Kafka
    // mode as in the directory mode.
    for series in [
        "balans_stage_duration_seconds_count{stage=\"sampling\"}",
        "balans_stage_duration_seconds_count{stage=\"qc\"}",
        "balans_stage_duration_seconds_count{stage=\"produce\"}",
        "balans_commit_duration_seconds_count",
        "balans_qc_last_plate{",
    ] {
        let line = scrape
            .lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("no {series} in {scrape}"));
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            series.starts_with("balans_qc_last_plate") || v >= 1.0,
            "{line}"
        );
    }
    assert_eq!(http_get(daemon.addr(), "/readyz").unwrap().0, 200);
    // Dead letters keep the original bytes and name their source.
    let junk = r.dlq.iter().find(|g| g.key == "junk").unwrap();
    assert_eq!(junk.payload, b"this is not an arrow stream");
    assert_eq!(junk.headers[H_SOURCE_TOPIC], t.plates);
    assert!(daemon.term());
}

/// Restarting the broker mid-stream. tansu runs with in-memory storage, so a
/// restart loses every topic and committed offset: this checks that the
/// daemon reconnects and recovers (its own state is on disk), not broker
/// durability. The test recreates the topics after the restart, as an
/// operator would.
#[test]
fn broker_restart_mid_stream_daemon_reconnects() {
    let _ = brokers(); // run under scripts/test.sh like the others
    let d = data();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/broker.sh");
    let start = Command::new("bash")
        .arg(&script)
        .arg("start")
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    let out = String::from_utf8(start.stdout).unwrap();
    let mut it = out.split_whitespace();
    let (addr, pid) = (
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
    );
    struct Stop(PathBuf, String);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("bash")
                .arg(&self.0)
                .args(["stop", &self.1])
                .status();
        }
    }
    let mut guard = Stop(script.clone(), pid.clone());
    let t = Topics::new("restart");
    create_topics(&addr, &t, 1);
    let cfg = write_config(d.dir.path(), &t, &unique("g"), "");
    let state = d.dir.path().join("state");
    let mut daemon = start_daemon(&d, &addr, &cfg, &state, "a");
    let p = producer(&addr);
    let (first, rest) = d.plates.split_at(3);
    let (r, before) = publish(&p, &addr, &t, first, &daemon);
    drop(r);
    // Restart the broker on the same port.
    let re = Command::new("bash")
        .arg(&script)
        .args(["restart", &addr, &pid])
        .output()
        .unwrap();
    assert!(
        re.status.success(),
        "{}",
        String::from_utf8_lossy(&re.stderr)
    );
    let new_pid = String::from_utf8(re.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    guard.1 = new_pid;
    create_topics(&addr, &t, 1);
    // tansu's memory storage lost every topic, message and committed
    // offset with the restart (a real broker keeps them; this test is about
    // the daemon's reconnection and state, not broker durability). The feed
    // is replayed from its start, as an operator would after losing a
    // topic, so the new plates sit at the offsets after the old ones
    // whether the daemon resumes at its previous position (3) or resets to
    // the earliest offset (then the first plates come back as replays).
    // A topic deleted under a running daemon can kill it (librdkafka,
    // tansu): `kafka_plates_topic_recreated_under_a_running_daemon` and
    // docs/reliability.md, "A topic deleted and recreated under a running
    // daemon".
    let p = producer(&addr);
    for (id, table) in first.iter().chain(rest) {
        send_plate(&p, &t.plates, id, table);
    }
    // The topics vanished with the restart: the daemon may die of the
    // SIGSEGV described below, and its supervisor starts it again.
    let mut r = Reader::new(&addr, &t);
    r.until_supervised(
        "the plates sent after the restart",
        &mut daemon,
        || start_daemon(&d, &addr, &cfg, &state, "b"),
        |r| rest.iter().all(|(id, _)| r.aligned_keys().contains(id)),
    );
    // The model kept its state across the broker restart: the new plates
    // continue the version sequence instead of starting over.
    let after = versions(&r);
    for (id, _) in rest {
        assert!(
            !before.values().any(|v| v == &after[id]),
            "{before:?} {after:?}"
        );
    }
    assert!(daemon.term());
}

/// The plates topic deleted and created again under a running daemon, then
/// given fewer plates than the daemon had read (so they sit below its
/// position in the old topic). With tansu, librdkafka 2.12.1 (the bundled
/// one) then dies of SIGSEGV: the broker answers a fetch of the deleted
/// topic with a leader-change tag, the fetch was made by topic name (tansu
/// gives no topic ids), and the metadata update built from the tag has
/// neither a name nor an id, which `rd_kafka_metadata_update_op` looks up by
/// name (`strcmp(NULL)`; docs/reliability.md). What the daemon guarantees
/// either way: started again as its supervisor would (systemd
/// `Restart=on-failure`), it reads the recreated topic from its start, and
/// the new plates come out continuing the model's version sequence, with
/// no plate incorporated twice.
#[test]
fn kafka_plates_topic_recreated_under_a_running_daemon() {
    let addr = brokers();
    let d = data();
    let t = Topics::new("recreate");
    create_topics(&addr, &t, 1);
    let cfg = write_config(d.dir.path(), &t, &unique("g"), "");
    // The config ends in [kafka.properties]: librdkafka sees a recreated
    // topic at its next metadata refresh (5 min by default).
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\"topic.metadata.refresh.interval.ms\" = \"1000\"\n");
    std::fs::write(&cfg, text).unwrap();
    let state = d.dir.path().join("state");
    let mut daemon = start_daemon(&d, &addr, &cfg, &state, "a");
    let p = producer(&addr);
    let (first, rest) = d.plates.split_at(3);
    let (mut r, before) = publish(&p, &addr, &t, first, &daemon);
    recreate_topic(&addr, &t.plates, 1);
    let new = &rest[..3];
    for (id, table) in new {
        send_plate(&p, &t.plates, id, table);
    }
    r.until_supervised(
        "the plates sent to the recreated topic",
        &mut daemon,
        || start_daemon(&d, &addr, &cfg, &state, "b"),
        |r| new.iter().all(|(id, _)| r.aligned_keys().contains(id)),
    );
    // Continued, not started over: the new plates get the next versions,
    // and the first plates kept theirs.
    let after = versions(&r);
    for (id, v) in &before {
        assert_eq!(&after[id], v, "{id}");
    }
    let mut new_versions: Vec<&String> = new.iter().map(|(id, _)| &after[id]).collect();
    new_versions.sort();
    assert_eq!(new_versions, ["g1.p3", "g1.p4", "g1.p5"], "{after:?}");
    assert!(daemon.term());
}
