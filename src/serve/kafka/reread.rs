//! Re-read the plates topic for `balans realign` in Kafka mode: every
//! partition from its earliest retained offset up to its high watermark at
//! the start, with a consumer of its own group that is assigned the
//! partitions (it joins no group and commits nothing, so the daemon's
//! position is untouched). Chunked plates are reassembled as the daemon
//! does; each plate is decoded and checked like a live input and handed to
//! `visit` with its position. Inputs that do not decode are skipped (the
//! daemon dead-lettered them). [`emit`] produces the refitted plates' new
//! outputs to the aligned and QC topics.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::chunks::{Added, Assembler, Chunk};
use super::client;
use super::sink::KafkaSink;
use super::source::KafkaInput;
use super::wire::{H_CHUNK_COUNT, H_CHUNK_INDEX, H_PLATE_ID};
use crate::config::Config;
use crate::serve::pipeline::{Delivery, Input, Sink};
use crate::serve::plate::{self, Corrected, DecodedPlate};

/// Read the plates topic (see the module doc); `visit` gets each decoded
/// plate and its `topic/partition@offset`, and returns `true` to stop
/// early. Gives up after `timeout` without progress.
pub fn read_plates(
    cfg: &Config,
    timeout: Duration,
    visit: &mut dyn FnMut(DecodedPlate, String) -> bool,
) -> Result<usize> {
    let mut k = cfg.kafka.clone();
    k.group_id = format!("{}-realign-{}", k.group_id, std::process::id());
    let topic = k.plates_topic.clone();
    let consumer = client::consumer(&k)?;
    let md = consumer
        .fetch_metadata(Some(&topic), timeout)
        .with_context(|| format!("cannot read the metadata of {topic}"))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    let mut end: HashMap<i32, i64> = HashMap::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&topic, p, timeout)
            .with_context(|| format!("cannot read the offsets of {topic}/{p}"))?;
        if high > low {
            end.insert(p, high);
            tpl.add_partition_offset(&topic, p, Offset::Offset(low))?;
        }
    }
    if end.is_empty() {
        return Ok(0);
    }
    consumer
        .assign(&tpl)
        .with_context(|| format!("cannot assign the partitions of {topic}"))?;
    let mut asm = Assembler::new(k.max_plate_bytes);
    let mut done: HashMap<i32, bool> = end.keys().map(|&p| (p, false)).collect();
    let mut read = 0usize;
    let mut last_progress = Instant::now();
    while done.values().any(|d| !d) {
        anyhow::ensure!(
            last_progress.elapsed() < timeout,
            "reading {topic} again: no message for {} s before its end (partitions left: {:?})",
            timeout.as_secs(),
            done.iter()
                .filter(|(_, d)| !**d)
                .map(|(p, _)| *p)
                .collect::<Vec<_>>()
        );
        let Some(r) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = match r {
            Ok(m) => m.detach(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the plates topic again");
                continue;
            }
        };
        last_progress = Instant::now();
        let (p, off) = (m.partition(), m.offset());
        if let Some(&high) = end.get(&p) {
            if off + 1 >= high {
                done.insert(p, true);
            }
            if off >= high {
                continue;
            }
        }
        let headers = super::source::header_map(&m);
        let mut input = KafkaInput {
            plate_key: m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            partition: p,
            offsets: vec![off],
            bytes: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
            consumed: Instant::now(),
            source: format!("{topic}/{p}@{off}"),
        };
        if let Some(count) = input.headers.get(H_CHUNK_COUNT).cloned() {
            let (Ok(index), Ok(count)) = (
                input
                    .headers
                    .get(H_CHUNK_INDEX)
                    .map_or("", String::as_str)
                    .trim()
                    .parse::<usize>(),
                count.trim().parse::<usize>(),
            ) else {
                continue;
            };
            let id = input
                .headers
                .get(H_PLATE_ID)
                .cloned()
                .unwrap_or_else(|| input.plate_key.clone());
            let chunk = Chunk {
                partition: p,
                offset: off,
                plate: id,
                index,
                count,
                bytes: std::mem::take(&mut input.bytes),
            };
            match asm.add(chunk, Instant::now()) {
                Added::Complete(a) => {
                    input.bytes = a.bytes;
                    input.plate_key = a.plate;
                    for h in [H_CHUNK_INDEX, H_CHUNK_COUNT, H_PLATE_ID] {
                        input.headers.remove(h);
                    }
                }
                _ => continue,
            }
        }
        let decoded = input.table().map_err(|r| r.to_string()).and_then(|t| {
            let d = plate::decode(
                t,
                input.bytes(),
                &input.fallback_id(),
                &cfg.correct,
                input.source(),
            )
            .map_err(|r| r.to_string())?;
            input.check(&d, &cfg.correct).map_err(|r| r.to_string())?;
            Ok(d)
        });
        match decoded {
            Ok(d) => {
                read += 1;
                if visit(d, input.source.clone()) {
                    break;
                }
            }
            Err(why) => tracing::debug!(source = %input.source, %why, "not a plate: skipped"),
        }
    }
    Ok(read)
}

/// `topic/partition@offset` -> (partition, offset); (-1, -1) for another
/// source (a file).
fn position(source: &str) -> (i32, i64) {
    source
        .rsplit_once('/')
        .and_then(|(_, po)| po.split_once('@'))
        .and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)))
        .unwrap_or((-1, -1))
}

/// Produce the refitted plates' outputs under the new generation (`balans
/// realign`) to the aligned and QC topics, as the daemon publishes (key =
/// plate id, `balans-model-version`, `balans-replay: true`, the source
/// position the plate was read at), waiting for the broker's
/// acknowledgements.
pub fn emit(cfg: &Config, outputs: &[(&DecodedPlate, &Corrected, &str)]) -> Result<()> {
    let mut sink = KafkaSink::open(&cfg.kafka)?;
    let stop = AtomicBool::new(false);
    for (d, out, source) in outputs {
        let (partition, offset) = position(source);
        let input = KafkaInput {
            plate_key: d.plate.clone(),
            partition,
            offsets: vec![offset],
            bytes: Vec::new(),
            headers: HashMap::new(),
            consumed: Instant::now(),
            source: source.to_string(),
        };
        if sink.publish(&input, d, out, &stop)? != Delivery::Durable {
            anyhow::bail!(
                "{source}: the new output of plate {} was not acknowledged",
                d.plate
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn positions_of_sources() {
        assert_eq!(super::position("balans.plates/3@42"), (3, 42));
        assert_eq!(super::position("a/b/c.plates/0@7"), (0, 7));
        assert_eq!(super::position("/data/done/P1.arrow"), (-1, -1));
    }
}
