//! Set-up shared by the daemon's integration tests (tests/serve_dir.rs,
//! tests/serve_kafka.rs, tests/ops.rs): the synthetic data split into a
//! reference table and streamed plates, the daemon process, HTTP, and the
//! Kafka test broker's topics and producer.
//!
//! Kafka tests need `BALANS_TEST_BROKERS` (set by `bash scripts/test.sh`,
//! which starts tansu with `scripts/broker.sh`); without it they fail loudly
//! rather than pass silently.

// Each test binary uses a part of this module.
#![allow(dead_code)]

pub mod scrape;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::{BooleanArray, RecordBatch};
use balans::io::profile::text_column;
use balans::io::table::{encode_ipc_stream, read_table, write_table};
use balans::serve::kafka::wire::{
    CT_ARROW_STREAM, H_CONTENT_TYPE, H_SCHEMA_VERSION, SCHEMA_VERSION,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_balans"))
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A name unique to this process and moment (topics, groups).
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

// ---------------------------------------------------------------- data

/// The synthetic data (2400 rows, 4 batches, 20 features): a reference
/// table and the plates to stream.
pub struct Data {
    pub dir: tempfile::TempDir,
    pub reference: PathBuf,
    /// (plate id, table), in name order: the last plate of batches 1-3,
    /// then every plate of batch 4 (unseen at start). The reference holds
    /// every other row of batches 1-3.
    pub plates: Vec<(String, RecordBatch)>,
}

impl Data {
    /// `state/`, `inbox/` (created) and `outbox/` under the test's directory.
    pub fn dirs(&self) -> (PathBuf, PathBuf, PathBuf) {
        let d = self.dir.path();
        std::fs::create_dir_all(d.join("inbox")).unwrap();
        (d.join("state"), d.join("inbox"), d.join("outbox"))
    }

    /// The streamed plates of the batch unseen at start.
    pub fn new_batch(&self) -> Vec<(String, RecordBatch)> {
        self.pick(|p| p.starts_with("Batch04"))
    }

    /// The streamed plates of batches the reference knows.
    pub fn known(&self) -> Vec<(String, RecordBatch)> {
        self.pick(|p| !p.starts_with("Batch04"))
    }

    fn pick(&self, f: impl Fn(&str) -> bool) -> Vec<(String, RecordBatch)> {
        self.plates.iter().filter(|p| f(&p.0)).cloned().collect()
    }
}

pub fn data() -> Data {
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all.parquet");
    let o = bin()
        .args([
            "-q",
            "synth",
            "--rows",
            "2400",
            "--batches",
            "4",
            "--features",
            "20",
            "--seed",
            "9",
            "--output",
            s(&all),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = read_table(&all).unwrap();
    let batch = text_column(&t, "Metadata_Batch", "all").unwrap();
    let plate = text_column(&t, "Metadata_Plate", "all").unwrap();
    let mut names: Vec<String> = plate.clone();
    names.sort();
    names.dedup();
    let streamed: Vec<String> = names
        .iter()
        .filter(|p| p.starts_with("Batch04") || p.ends_with("Plate04"))
        .cloned()
        .collect();
    let keep = |f: &dyn Fn(usize) -> bool| -> RecordBatch {
        let mask = BooleanArray::from((0..t.num_rows()).map(f).collect::<Vec<bool>>());
        arrow_select::filter::filter_record_batch(&t, &mask).unwrap()
    };
    let reference = dir.path().join("reference.parquet");
    write_table(
        &reference,
        &keep(&|i| !streamed.contains(&plate[i]) && batch[i] != "Batch04"),
    )
    .unwrap();
    let plates = streamed
        .iter()
        .map(|p| (p.clone(), keep(&|i| plate[i] == *p)))
        .collect();
    Data {
        dir,
        reference,
        plates,
    }
}

/// Drop a plate file into the inbox atomically (write aside, rename in).
pub fn drop_plate(inbox: &Path, name: &str, t: &RecordBatch) {
    let tmp = inbox.parent().unwrap().join(format!("staging-{name}"));
    write_table(&tmp, t).unwrap();
    std::fs::rename(&tmp, inbox.join(name)).unwrap();
}

/// Directory-mode arguments of `balans serve` (snapshot every 3 plates).
pub fn dir_args(d: &Data, state: &Path, inbox: &Path, outbox: &Path) -> Vec<String> {
    [
        "serve",
        "--reference",
        s(&d.reference),
        "--state-dir",
        s(state),
        "--inbox",
        s(inbox),
        "--outbox",
        s(outbox),
        "--batch-col",
        "Metadata_Batch",
        "--control",
        "Metadata_Label=DMSO",
        "--poll-ms",
        "50",
        "--snapshot-every",
        "3",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

/// Kafka-mode arguments of `balans serve` (topics etc. in `config`).
pub fn kafka_args(d: &Data, brokers: &str, config: &Path, state: &Path) -> Vec<String> {
    [
        "serve",
        "--config",
        s(config),
        "--brokers",
        brokers,
        "--reference",
        s(&d.reference),
        "--state-dir",
        s(state),
        "--batch-col",
        "Metadata_Batch",
        "--control",
        "Metadata_Label=DMSO",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

// ---------------------------------------------------------------- HTTP

/// `GET path`: status code and body (None when the listener is not up).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut c = std::net::TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    let code = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((code, body))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- daemon

/// A daemon process, its log file, and its metrics address if any.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    pub addr: Option<String>,
}

impl Daemon {
    /// `balans <args>` with stderr to `log`. With `metrics`, listens on a
    /// free port (`--metrics-addr`) and waits until `/healthz` answers.
    pub fn spawn(args: &[String], log: PathBuf, metrics: bool) -> Daemon {
        Daemon::spawn_env(args, &[], log, metrics)
    }

    /// [`Daemon::spawn`] with extra environment variables.
    pub fn spawn_env(args: &[String], env: &[(&str, &str)], log: PathBuf, metrics: bool) -> Daemon {
        let addr = metrics.then(|| format!("127.0.0.1:{}", free_port()));
        let mut cmd = bin();
        cmd.args(args).envs(env.iter().copied());
        if let Some(a) = &addr {
            cmd.args(["--metrics-addr", a.as_str()]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon { child, log, addr };
        if let Some(a) = &d.addr {
            wait_until("/healthz", 120, || {
                matches!(http_get(a, "/healthz"), Some((200, _)))
            });
        }
        d
    }

    /// The metrics address.
    pub fn addr(&self) -> &str {
        self.addr.as_deref().expect("started without metrics")
    }

    /// `GET /metrics` (200 expected).
    pub fn metrics(&self) -> String {
        let (code, body) = http_get(self.addr(), "/metrics").expect("scrape");
        assert_eq!(code, 200);
        body
    }

    /// Wait until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        wait_until("/readyz 200", 120, || {
            matches!(http_get(self.addr(), "/readyz"), Some((200, _)))
        });
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process has exited (a zombie not yet waited for, or
    /// gone), for timeout messages: a daemon that died says nothing more
    /// in its log.
    pub fn exited(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) {
            // pid (comm) state ...: the state follows the last ')'.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
            Err(_) => true,
        }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }

    /// SIGTERM; returns whether it exited with success.
    pub fn term(mut self) -> bool {
        assert!(Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("daemon did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- Kafka

/// The test broker's address (`BALANS_TEST_BROKERS`); panics with how to
/// get one when unset.
pub fn brokers() -> String {
    std::env::var("BALANS_TEST_BROKERS").unwrap_or_else(|_| {
        panic!(
            "BALANS_TEST_BROKERS is not set: the Kafka integration tests need a broker. \
             Run them with `bash scripts/test.sh` (it installs and starts tansu via \
             scripts/broker.sh), or start one with `scripts/broker.sh start` and export \
             BALANS_TEST_BROKERS=<printed address>."
        )
    })
}

/// Topic names of one test.
#[derive(Clone)]
pub struct Topics {
    pub plates: String,
    pub aligned: String,
    pub qc: String,
    pub dlq: String,
}

impl Topics {
    pub fn new(test: &str) -> Topics {
        let u = unique(test);
        Topics {
            plates: format!("{u}.plates"),
            aligned: format!("{u}.aligned"),
            qc: format!("{u}.qc"),
            dlq: format!("{u}.dlq"),
        }
    }
}

pub fn create_topics(brokers: &str, t: &Topics, plate_partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let news = [
        NewTopic::new(&t.plates, plate_partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&t.aligned, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&t.qc, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&t.dlq, 1, TopicReplication::Fixed(1)),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let res = rt
        .block_on(admin.create_topics(&news, &AdminOptions::new()))
        .unwrap();
    for r in res {
        if let Err((name, e)) = r {
            panic!("cannot create topic {name}: {e}");
        }
    }
}

/// Delete `topic` and create it again, empty, with `partitions` (as an
/// operator recreating a feed's topic does; the broker restarts offsets at
/// 0). Retries the creation while the deletion is still in progress.
pub fn recreate_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in rt.block_on(admin.delete_topics(&[topic], &opts)).unwrap() {
        if let Err((name, e)) = r {
            panic!("cannot delete topic {name}: {e}");
        }
    }
    let new = [NewTopic::new(topic, partitions, TopicReplication::Fixed(1))];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match rt
            .block_on(admin.create_topics(&new, &opts))
            .unwrap()
            .remove(0)
        {
            Ok(_) => return,
            Err((name, e)) if std::time::Instant::now() > deadline => {
                panic!("cannot create topic {name} again: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Config file of a test's Kafka daemon: its topics and group, fast group
/// settings (tansu completes a join after about half the session timeout),
/// snapshot every 3 plates, and `extra` lines of `[kafka]`.
pub fn write_config(dir: &Path, t: &Topics, group: &str, extra: &str) -> PathBuf {
    let p = dir.join(format!("{group}.toml"));
    std::fs::write(
        &p,
        format!(
            "[serve]\nsnapshot_every = 3\n\n[kafka]\ngroup_id = \"{group}\"\nplates_topic = \"{}\"\n\
             aligned_topic = \"{}\"\nqc_topic = \"{}\"\ndlq_topic = \"{}\"\npoll_ms = 50\n\
             delivery_timeout_ms = 10000\n{extra}\n\n[kafka.properties]\n\
             \"session.timeout.ms\" = \"2000\"\n\"heartbeat.interval.ms\" = \"200\"\n",
            t.plates, t.aligned, t.qc, t.dlq
        ),
    )
    .unwrap();
    p
}

pub fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "10000000")
        .set("linger.ms", "0")
        .create()
        .unwrap()
}

pub fn send(p: &BaseProducer, topic: &str, key: &str, payload: &[u8], headers: &[(&str, &str)]) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    p.send(BaseRecord::to(topic).key(key).payload(payload).headers(h))
        .map_err(|(e, _)| e)
        .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Send a plate as an Arrow IPC stream message keyed by `key`.
pub fn send_plate(p: &BaseProducer, topic: &str, key: &str, t: &RecordBatch) {
    let bytes = encode_ipc_stream(t).unwrap();
    send(
        p,
        topic,
        key,
        &bytes,
        &[
            (H_CONTENT_TYPE, CT_ARROW_STREAM),
            (H_SCHEMA_VERSION, SCHEMA_VERSION),
        ],
    );
}
