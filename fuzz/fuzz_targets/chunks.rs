//! Kafka chunk reassembly: an arbitrary sequence of chunk messages (plate
//! id, index and count headers, bytes) into an `Assembler` with a small
//! plate limit and open-set cap, with expiries in between.
//!
//! Oracles: a completed plate is exactly the concatenation of its distinct
//! chunks in index order, and never over the plate limit.
#![no_main]
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use balans::serve::kafka::chunks::{Added, Assembler, Chunk};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut asm = Assembler::with_max_open(LIMIT, 4);
    let t0 = Instant::now();
    // What the test sent, per (partition, plate): index -> bytes (first copy).
    let mut sent: BTreeMap<(i32, String), BTreeMap<usize, Vec<u8>>> = BTreeMap::new();
    let mut rest = data;
    let mut offset = 0i64;
    while rest.len() >= 5 {
        let (h, tail) = rest.split_at(5);
        let partition = (h[0] & 1) as i32;
        let plate = format!("p{}", h[0] >> 5);
        let index = h[1] as usize;
        // Counts up to 255, or a huge one (a hostile header).
        let count = if h[2] == 255 { usize::MAX } else { h[2] as usize };
        let len = (h[3] as usize).min(tail.len());
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        let now = t0 + Duration::from_millis(h[4] as u64 * 100);
        if h[0] & 2 == 2 {
            for r in asm.expire(now, Duration::from_secs(10)) {
                for c in &r.chunks {
                    sent.remove(&(c.partition, c.plate.clone()));
                }
            }
        }
        let key = (partition, plate.clone());
        sent.entry(key.clone())
            .or_default()
            .entry(index)
            .or_insert_with(|| bytes.to_vec());
        let c = Chunk {
            partition,
            offset,
            plate,
            index,
            count,
            bytes: bytes.to_vec(),
        };
        offset += 1;
        match asm.add(c, now) {
            Added::Complete(a) => {
                assert!(a.bytes.len() <= LIMIT);
                let parts = sent.remove(&key).unwrap_or_default();
                let whole: Vec<u8> = parts.values().flatten().copied().collect();
                assert_eq!(a.bytes, whole, "reassembled bytes differ from the chunks sent");
            }
            Added::Rejected(r) => {
                for c in &r.chunks {
                    sent.remove(&(c.partition, c.plate.clone()));
                }
                sent.remove(&key);
            }
            Added::Pending | Added::Duplicate => {}
        }
    }
});
