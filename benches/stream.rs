//! Streaming bench: plates of 384 rows x 300 features through a real broker
//! (tansu, started with `scripts/broker.sh`) into a Kafka-mode daemon
//! warm-started with N indexed rows.
//!
//! Run: `cargo bench --bench stream` (N = 100k) or
//! `BALANS_BENCH_ROWS=20000,100000,1000000 cargo bench --bench stream`.
//! Other knobs: `BALANS_BENCH_PLATES` (plates per phase, default 20),
//! `BALANS_BENCH_BROKERS` (use a running broker instead of starting one),
//! `BALANS_BENCH_KEEP_STATE` (keep each size's state directory, printed as
//! `STATE`, to profile a restart with `balans state check --state-dir`).
//!
//! Warm start: an offline fit of 1M rows takes about an hour here, so the
//! model is seeded cheaply instead: normalisation and PCA basis from
//! [`Model::bootstrap`] on reference rows, then every reference row projected
//! plate-wise with [`Model::project`] (not aligned) and indexed with
//! [`Model::restore`]. Beyond 100k generated rows the projected rows are
//! replicated with small jitter. Correction cost depends on index sizes,
//! batches and plate size, not on whether the reference was aligned, so the
//! figures stand for a fitted model of the same size.
//!
//! Two phases per size: closed loop (send a plate, wait for its aligned
//! output: latency) and open loop (send all plates at once: sustained
//! rows/s). Latency = the daemon's consume -> outputs acknowledged -> offset
//! committed time (telemetry hook), and the end-to-end produce -> aligned
//! received time. Then restart-to-ready: the state directory the run left
//! (snapshot + log) restored as a restarted daemon does, once with the
//! stored batch indices and once rebuilding them from the rows. Figures are
//! printed, never asserted.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use balans::config::Config;
use balans::method::model::Model;
use balans::serve::hooks::{PlateEvent, PlateHooks};
use balans::serve::kafka::wire::*;
use balans::serve::kafka::KafkaServer;
use balans::serve::state::StateDir;
use balans::synth::{generate, to_record_batch, SynthSpec, CONTROL_LABEL};
use ndarray::Axis;
use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const PLATE_ROWS: usize = 384;
const FEATURES: usize = 300;
const BATCHES: usize = 10;
const MAX_REF_GENERATED: usize = 100_000;
const MAX_MESSAGE: usize = 4_000_000;

struct Events(mpsc::Sender<PlateEvent>, Arc<std::sync::Mutex<Vec<f64>>>);
impl PlateHooks for Events {
    fn plate(&self, e: &PlateEvent) {
        let _ = self.0.send(e.clone());
    }
    /// The daemon's checkpoints (every `snapshot_every` plates, and at
    /// shutdown): each one is inside the consume-to-commit time of the
    /// plate it follows.
    fn checkpoint(&self, seconds: f64, _ok: bool) {
        if let Ok(mut v) = self.1.lock() {
            v.push(seconds);
        }
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    pct(&mut v, 0.5)
}

/// Stream plates: (plate id, table).
type Plates = Vec<(String, RecordBatch)>;

/// Reference model + stream plates for `n` indexed rows.
fn build(
    n: usize,
    plates: usize,
    params: &balans::method::params::Params,
) -> Result<(Model, Plates)> {
    let per_batch_stream = plates.div_ceil(BATCHES) * PLATE_ROWS;
    let ref_generated = n.min(MAX_REF_GENERATED);
    let spec = SynthSpec {
        rows: ref_generated + BATCHES * per_batch_stream + BATCHES * PLATE_ROWS,
        batches: BATCHES,
        features: FEATURES,
        plates_per_batch: 8,
        seed: 7,
        ..SynthSpec::default()
    };
    let t0 = Instant::now();
    let table = generate(&spec)?;
    let rb = to_record_batch(&table)?;
    let names = table.feature_names();
    let batch_names: Vec<String> = {
        let mut b = table.batch.clone();
        b.dedup();
        b
    };
    anyhow::ensure!(batch_names.len() == BATCHES, "synth batches");
    let controls: Vec<bool> = table.label.iter().map(|l| l == CONTROL_LABEL).collect();
    // Rows per batch; the last `per_batch_stream` of each are streamed.
    let mut rows_of: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, b) in table.batch.iter().enumerate() {
        rows_of.entry(b.as_str()).or_default().push(i);
    }
    let mut reference: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut stream_pool: Vec<Vec<usize>> = Vec::new();
    for (bi, b) in batch_names.iter().enumerate() {
        let rows = &rows_of[b.as_str()];
        anyhow::ensure!(
            rows.len() > per_batch_stream + PLATE_ROWS,
            "batch {b} too small"
        );
        let cut = rows.len() - per_batch_stream;
        reference.push((bi, rows[..cut].to_vec()));
        stream_pool.push(rows[cut..].to_vec());
    }
    // Basis from the first reference plates of every batch.
    let boot: Vec<usize> = reference
        .iter()
        .flat_map(|(_, r)| r.iter().take(PLATE_ROWS).copied())
        .collect();
    let xb = table.features.select(Axis(0), &boot);
    let cb: Vec<bool> = boot.iter().map(|&i| controls[i]).collect();
    let seed = Model::bootstrap(xb.view(), Some(&cb), names.clone(), params)?;
    let p = seed.meta().dims;
    let nv = seed.meta().varying.len();
    let keeps_profiles = seed.meta().feature_rows;
    let mut y: Vec<f32> = Vec::with_capacity(n * p);
    let mut w: Vec<f32> = Vec::new();
    let mut batch_of: Vec<u32> = Vec::with_capacity(n);
    for (bi, rows) in &reference {
        for block in rows.chunks(PLATE_ROWS) {
            let x = table.features.select(Axis(0), block);
            let c: Vec<bool> = block.iter().map(|&i| controls[i]).collect();
            let (wb, yb) = seed.project_profiles(x.view(), Some(&c), None);
            y.extend(yb.iter().copied());
            if keeps_profiles {
                w.extend(wb.iter().copied());
            }
            batch_of.extend(std::iter::repeat_n(*bi as u32, block.len()));
        }
    }
    // Replicate (with jitter) up to n rows.
    let base = batch_of.len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    while batch_of.len() < n {
        let i = batch_of.len() % base;
        for t in 0..p {
            let v = y[i * p + t] + rng.gen_range(-0.05f32..0.05);
            y.push(v);
        }
        if keeps_profiles {
            for t in 0..nv {
                let v = w[i * nv + t] + rng.gen_range(-0.05f32..0.05);
                w.push(v);
            }
        }
        batch_of.push(batch_of[i]);
    }
    y.truncate(n * p);
    w.truncate(if keeps_profiles { n * nv } else { 0 });
    batch_of.truncate(n);
    let mut meta = seed.meta().clone();
    meta.batches = batch_names.clone();
    let gen_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let model = Model::restore(meta, y, batch_of, vec![1.0; n])?;
    let model = if keeps_profiles {
        model.with_feature_rows(w)?
    } else {
        model
    };
    let index_s = t1.elapsed().as_secs_f64();
    println!(
        "  n={n}: data {gen_s:.1}s, index build {index_s:.1}s ({} rows indexed)",
        model.len()
    );
    // Stream plates: batch i % 10, 384 held-out rows each, one plate id.
    let plate_col = rb.schema().index_of("Metadata_Plate")?;
    let mut out = Vec::new();
    let mut used = [0usize; BATCHES];
    for i in 0..2 * plates {
        let b = i % BATCHES;
        let pool = &stream_pool[b];
        let start = (used[b] * PLATE_ROWS) % (pool.len() - PLATE_ROWS + 1);
        used[b] += 1;
        let idx = UInt32Array::from(
            pool[start..start + PLATE_ROWS]
                .iter()
                .map(|&r| r as u32)
                .collect::<Vec<u32>>(),
        );
        let t = arrow_select::take::take_record_batch(&rb, &idx)?;
        let id = format!("S{n}-{i:04}");
        let mut cols = t.columns().to_vec();
        cols[plate_col] = Arc::new(StringArray::from(vec![id.as_str(); PLATE_ROWS])) as ArrayRef;
        out.push((id, RecordBatch::try_new(t.schema(), cols)?));
    }
    Ok((model, out))
}

fn create_topics(brokers: &str, names: &[&str]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let mx = (2 * MAX_MESSAGE).to_string();
    let news: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(1)).set("max.message.bytes", &mx))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    for r in rt.block_on(admin.create_topics(&news, &AdminOptions::new()))? {
        r.map_err(|(n, e)| anyhow::anyhow!("create topic {n}: {e}"))?;
    }
    Ok(())
}

fn run(brokers: &str, n: usize, plates: usize) -> Result<()> {
    let mut cfg = Config::load(None)?;
    cfg.correct.batch_col = Some("Metadata_Batch".into());
    cfg.correct.control = Some(format!("Metadata_Label={CONTROL_LABEL}"));
    let (model, stream) = build(n, plates, &cfg.method)?;
    let tag = format!("bench{n}-{}", std::process::id());
    let topics = [
        format!("{tag}.plates"),
        format!("{tag}.aligned"),
        format!("{tag}.qc"),
        format!("{tag}.dlq"),
    ];
    create_topics(
        brokers,
        &topics.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let state = tempfile::tempdir()?;
    let k = &mut cfg.kafka;
    k.brokers = brokers.into();
    k.group_id = format!("{tag}-daemon");
    k.plates_topic = topics[0].clone();
    k.aligned_topic = topics[1].clone();
    k.qc_topic = topics[2].clone();
    k.dlq_topic = topics[3].clone();
    k.max_message_bytes = MAX_MESSAGE;
    k.poll_ms = 20;
    for (a, b) in [
        ("session.timeout.ms", "2000"),
        ("heartbeat.interval.ms", "200"),
    ] {
        k.properties.insert(a.into(), b.into());
    }
    cfg.serve.state_dir = state.path().join("state");
    if std::env::var_os("BALANS_BENCH_KEEP_STATE").is_some() {
        // Kept for profiling a restart (`balans state check --state-dir`).
        println!("STATE n={n} kept in {}", cfg.serve.state_dir.display());
        std::mem::forget(state);
    }
    let snapshot_every = cfg.serve.snapshot_every;
    let state_dir = cfg.serve.state_dir.clone();
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    // with_model writes the first snapshot: the one step whose cost grows
    // with the model (every `snapshot_every` plates), timed here.
    let t_snap = Instant::now();
    let mut server = KafkaServer::with_model(cfg, model)?;
    println!(
        "  n={n}: daemon start incl. full snapshot {:.2}s",
        t_snap.elapsed().as_secs_f64()
    );
    let checkpoints = Arc::new(std::sync::Mutex::new(Vec::new()));
    server.set_hooks(Box::new(Events(tx, Arc::clone(&checkpoints))));
    let stop2 = Arc::clone(&stop);
    let daemon = std::thread::spawn(move || server.run(stop2));

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", (2 * MAX_MESSAGE).to_string())
        .set("linger.ms", "0")
        .create()?;
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{tag}-reader"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "2000")
        .set("heartbeat.interval.ms", "200")
        // The broker answers a fetch with no new data after its full wait
        // (tansu does not end the wait when data arrives), so the reader
        // asks often: the end-to-end time is then the daemon's, not the
        // reader's wait (500 ms by default, 253 ms p50 added).
        .set("fetch.wait.max.ms", "20")
        .set("fetch.max.bytes", (4 * MAX_MESSAGE).to_string())
        .set(
            "receive.message.max.bytes",
            (4 * MAX_MESSAGE + 1024).to_string(),
        )
        .create()?;
    reader.subscribe(&[&topics[1]])?;
    let encoded: Vec<(String, Vec<u8>)> = stream
        .iter()
        .map(|(id, t)| Ok((id.clone(), balans::io::table::encode_ipc_stream(t)?)))
        .collect::<Result<_>>()?;
    // Queued, not flushed: librdkafka's `flush` polls in 100 ms steps, which
    // would put a floor of 100 ms under the end-to-end time, and flushing
    // each plate of the open loop made the producer the bottleneck
    // (40 plates in 4.0 s).
    let send = |id: &str, bytes: &[u8]| -> Result<()> {
        let h = OwnedHeaders::new().insert(Header {
            key: H_CONTENT_TYPE,
            value: Some(CT_ARROW_STREAM),
        });
        producer
            .send(BaseRecord::to(&topics[0]).key(id).payload(bytes).headers(h))
            .map_err(|(e, _)| e)?;
        producer.poll(Duration::ZERO);
        Ok(())
    };
    let mut sent_at: BTreeMap<String, Instant> = BTreeMap::new();
    let mut e2e: Vec<f64> = Vec::new();
    let wait_for =
        |want: usize, sent_at: &BTreeMap<String, Instant>, e2e: &mut Vec<f64>| -> Result<Instant> {
            let deadline = Instant::now() + Duration::from_secs(1800);
            let mut got = 0;
            while got < want {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "timed out waiting for aligned plates"
                );
                if let Some(m) = reader.poll(Duration::from_millis(20)) {
                    let m = m?;
                    let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                    if let Some(t) = sent_at.get(&key) {
                        e2e.push(t.elapsed().as_secs_f64());
                        got += 1;
                    }
                }
            }
            Ok(Instant::now())
        };
    // Warm-up plate (group joins, first fetch).
    let (wid, wb) = &encoded[0];
    sent_at.insert(wid.clone(), Instant::now());
    send(wid, wb)?;
    wait_for(1, &sent_at, &mut e2e)?;
    e2e.clear();
    while rx.try_recv().is_ok() {}
    // Closed loop: latency.
    for (id, b) in &encoded[1..plates] {
        sent_at.insert(id.clone(), Instant::now());
        send(id, b)?;
        wait_for(1, &sent_at, &mut e2e)?;
    }
    let closed: Vec<PlateEvent> = rx.try_iter().collect();
    let mut e2e_closed = std::mem::take(&mut e2e);
    // Open loop: throughput.
    let t0 = Instant::now();
    for (id, b) in &encoded[plates..] {
        sent_at.insert(id.clone(), Instant::now());
        send(id, b)?;
    }
    producer.flush(Duration::from_secs(60))?;
    let produced_s = t0.elapsed().as_secs_f64();
    let done = wait_for(encoded.len() - plates, &sent_at, &mut e2e)?;
    let secs = (done - t0).as_secs_f64();
    let rows_per_s = ((encoded.len() - plates) * PLATE_ROWS) as f64 / secs;
    let open: Vec<PlateEvent> = rx.try_iter().collect();
    stop.store(true, Ordering::SeqCst);
    let report = daemon
        .join()
        .map_err(|_| anyhow::anyhow!("daemon thread panicked"))??;
    // The plates' consume-to-commit times over the open loop: the share the
    // daemon spent on plates (above 100% when one plate's correction
    // overlaps the previous one's acknowledgement).
    let busy = 100.0
        * open
            .iter()
            .map(|e| e.stages.total.as_secs_f64())
            .sum::<f64>()
        / secs;
    let ms = |v: Vec<f64>| v.into_iter().map(|s| s * 1000.0).collect::<Vec<f64>>();
    let mut total: Vec<f64> = ms(closed
        .iter()
        .map(|e| e.stages.total.as_secs_f64())
        .collect());
    let mut e2e_ms = ms(std::mem::take(&mut e2e_closed));
    let stage = |f: &dyn Fn(&PlateEvent) -> Duration| {
        median(closed.iter().map(|e| f(e).as_secs_f64() * 1000.0).collect())
    };
    println!(
        "RESULT n={n} plates={} consume_to_commit_ms p50={:.0} p99={:.0} e2e_ms p50={:.0} p99={:.0} \
         sustained_rows_per_s={rows_per_s:.0} (open loop {} plates in {secs:.1}s, produced in {produced_s:.1}s, daemon p50 {:.0} ms, busy {busy:.0}%) \
         stage_p50_ms decode={:.0} correct={:.0} wal={:.0} publish={:.0} apply={:.0} commit={:.0} \
         corrected={} rejected={}",
        closed.len(),
        pct(&mut total, 0.5),
        pct(&mut total, 0.99),
        pct(&mut e2e_ms, 0.5),
        pct(&mut e2e_ms, 0.99),
        encoded.len() - plates,
        median(ms(open.iter().map(|e| e.stages.total.as_secs_f64()).collect())),
        stage(&|e| e.stages.decode),
        stage(&|e| e.stages.correct),
        stage(&|e| e.stages.wal),
        stage(&|e| e.stages.publish),
        stage(&|e| e.stages.apply),
        stage(&|e| e.stages.commit),
        report.corrected,
        report.rejected,
    );
    // The correct stage split by the core's own timings (closed loop).
    let core = |f: &dyn Fn(&balans::method::model::PlateTimings) -> f64| {
        median(
            closed
                .iter()
                .filter_map(|e| e.timings.as_ref().map(|t| f(t) * 1000.0))
                .collect(),
        )
    };
    println!(
        "CORE n={n} p50_ms sampling={:.1} correction={:.1} qc={:.1}",
        core(&|t| t.sampling),
        core(&|t| t.correction),
        core(&|t| t.qc),
    );
    let cps: Vec<String> = checkpoints
        .lock()
        .map(|v| v.iter().map(|s| format!("{:.0}", s * 1000.0)).collect())
        .unwrap_or_default();
    println!(
        "CHECKPOINT n={n} every={} plates, incl. the one at shutdown: ms [{}]",
        snapshot_every,
        cps.join(", ")
    );
    restart(&state_dir, n)
}

/// Restart-to-ready: what a restarted daemon does before it consumes again
/// (open the state directory, verify and load the snapshot, replay the
/// log of the plates streamed above). Timed twice: with the batch indices
/// loaded from the snapshot, then with their files removed, so every index
/// is rebuilt from the rows (a snapshot whose index files are damaged or
/// missing, and what every restart did before the indices were stored).
fn restart(state_dir: &std::path::Path, n: usize) -> Result<()> {
    let ready = |what: &str| -> Result<(f64, usize, usize)> {
        let t = Instant::now();
        let mut sd = StateDir::open(state_dir)?;
        let (model, replayed) = sd
            .restore()?
            .with_context(|| format!("{what}: no state to restore"))?;
        Ok((t.elapsed().as_secs_f64(), model.len(), replayed))
    };
    let (stored_s, rows, replayed) = ready("stored indices")?;
    let snap = state_dir.join("snapshot");
    let mut removed = 0;
    for e in std::fs::read_dir(&snap)? {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "usearch") {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    let (rebuilt_s, _, _) = ready("rebuilt indices")?;
    println!(
        "RESTART n={n} rows={rows} wal_plates={replayed} restart_to_ready_s stored_indices={stored_s:.1} \
         rebuilt_indices={rebuilt_s:.1} (index files: {removed})"
    );
    Ok(())
}

fn main() -> Result<()> {
    // Logs (e.g. RUST_LOG=balans::method::model=debug for correct_plate's stages).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let sizes: Vec<usize> = std::env::var("BALANS_BENCH_ROWS")
        .unwrap_or_else(|_| "100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let plates: usize = std::env::var("BALANS_BENCH_PLATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(2);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/broker.sh");
    let (brokers, pid) = match std::env::var("BALANS_BENCH_BROKERS") {
        Ok(b) => (b, None),
        Err(_) => {
            let o = Command::new("bash").arg(script).arg("start").output()?;
            anyhow::ensure!(
                o.status.success(),
                "scripts/broker.sh start failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let out = String::from_utf8(o.stdout)?;
            let mut it = out.split_whitespace();
            let addr = it
                .next()
                .context("broker.sh printed no address")?
                .to_string();
            (addr, it.next().map(str::to_string))
        }
    };
    println!(
        "balans stream bench: broker {brokers}, {} threads, {PLATE_ROWS} rows x {FEATURES} features per plate, {BATCHES} batches, sizes {sizes:?}, {plates} plates per phase",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut result = Ok(());
    for n in sizes {
        if let Err(e) = run(&brokers, n, plates) {
            println!("n={n}: failed: {e:#}");
            result = Err(e);
            break;
        }
    }
    if let Some(pid) = pid {
        let _ = Command::new("bash")
            .arg(script)
            .args(["stop", &pid])
            .status();
    }
    result
}
