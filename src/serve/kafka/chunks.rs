//! Plates larger than the broker's message limit travel as numbered chunks.
//!
//! The chunks of a plate are consecutive byte ranges of its encoded payload
//! (Arrow IPC stream or Parquet), sent as separate messages with the same
//! key and the headers `balans-plate-id`, `balans-chunk-index` (0-based) and
//! `balans-chunk-count`. The [`Assembler`] collects them per (partition,
//! plate id) and hands back the whole payload with the offsets it spans, so
//! the caller commits none of those offsets before the plate is done (see
//! [`super::offsets`]). Bad chunk sets — index out of range, disagreeing
//! counts, the same index with different bytes, more bytes than the plate
//! limit (redelivered duplicates count: they are held too), a new set when
//! [`MAX_OPEN_SETS`] are already open, or a set still incomplete after a
//! timeout — are returned as rejections with every chunk's bytes, for the
//! dead-letter topic. What the assembler holds is so bounded by
//! `MAX_OPEN_SETS x max_plate_bytes`.
//!
//! [`split`] is the producer side: the daemon splits an aligned plate larger
//! than its own message limit the same way. Pure: no broker, no clock (the
//! caller passes `now`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Chunk sets held open at once, at most. A producer interleaving more
/// chunked plates than this (or abandoning sets faster than
/// `chunk_timeout_ms` expires them) gets the chunks of each further set
/// dead-lettered instead of growing the daemon's memory.
pub const MAX_OPEN_SETS: usize = 64;

/// One chunk message as received.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Partition it came from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Plate id (header).
    pub plate: String,
    /// 0-based index (header).
    pub index: usize,
    /// Number of chunks (header).
    pub count: usize,
    /// The chunk's bytes.
    pub bytes: Vec<u8>,
}

/// A reassembled plate.
#[derive(Debug, Clone)]
pub struct Assembled {
    /// Plate id.
    pub plate: String,
    /// Partition.
    pub partition: i32,
    /// Offsets of all its chunks (sorted).
    pub offsets: Vec<i64>,
    /// The whole payload.
    pub bytes: Vec<u8>,
}

/// A rejected chunk set: the reason and every chunk received for it (their
/// original bytes go to the dead-letter topic, one message each).
#[derive(Debug, Clone)]
pub struct Rejected {
    /// Why.
    pub reason: String,
    /// The chunks.
    pub chunks: Vec<Chunk>,
}

/// What adding a chunk did.
#[derive(Debug)]
pub enum Added {
    /// More chunks are needed.
    Pending,
    /// The plate is complete.
    Complete(Assembled),
    /// The set is bad.
    Rejected(Rejected),
    /// An exact duplicate of a chunk already held (a redelivery): nothing
    /// to do once its plate is done — the caller treats its offset as part
    /// of the plate.
    Duplicate,
}

#[derive(Debug)]
struct Partial {
    count: usize,
    parts: BTreeMap<usize, Chunk>,
    extra: Vec<Chunk>,
    /// Bytes of the distinct chunks (the payload's size once complete).
    bytes: usize,
    /// Bytes held, redelivered duplicates included (checked against the
    /// plate limit).
    held: usize,
    started: Instant,
}

/// Chunk sets in progress.
#[derive(Debug, Default)]
pub struct Assembler {
    open: BTreeMap<(i32, String), Partial>,
    max_plate_bytes: usize,
    max_open: usize,
}

impl Assembler {
    /// An assembler refusing plates over `max_plate_bytes`.
    pub fn new(max_plate_bytes: usize) -> Self {
        Assembler::with_max_open(max_plate_bytes, MAX_OPEN_SETS)
    }

    /// An assembler refusing plates over `max_plate_bytes` and holding at
    /// most `max_open` sets at once.
    pub fn with_max_open(max_plate_bytes: usize, max_open: usize) -> Self {
        Assembler {
            open: BTreeMap::new(),
            max_plate_bytes,
            max_open,
        }
    }

    /// Add a chunk.
    pub fn add(&mut self, c: Chunk, now: Instant) -> Added {
        let key = (c.partition, c.plate.clone());
        let where_ = format!(
            "chunk {}/{} of plate {} (partition {}, offset {})",
            c.index + 1,
            c.count,
            c.plate,
            c.partition,
            c.offset
        );
        if c.count == 0 || c.index >= c.count {
            return self.reject(&key, c, format!("{where_}: chunk index out of range"));
        }
        if !self.open.contains_key(&key) && self.open.len() >= self.max_open {
            let reason = format!(
                "{where_}: too many chunked plates open at once ({} held; the limit is {})",
                self.open.len(),
                self.max_open
            );
            // Only this chunk: the open sets are not its.
            return Added::Rejected(Rejected {
                reason,
                chunks: vec![c],
            });
        }
        let p = self.open.entry(key.clone()).or_insert_with(|| Partial {
            count: c.count,
            parts: BTreeMap::new(),
            extra: Vec::new(),
            bytes: 0,
            held: 0,
            started: now,
        });
        if p.count != c.count {
            let reason = format!(
                "{where_}: chunk count disagrees with earlier chunks ({})",
                p.count
            );
            return self.reject(&key, c, reason);
        }
        let duplicate = match p.parts.get(&c.index) {
            Some(prev) if prev.bytes == c.bytes => true,
            Some(_) => {
                let reason =
                    format!("{where_}: the same chunk index arrived twice with different bytes");
                return self.reject(&key, c, reason);
            }
            None => false,
        };
        // Everything held counts against the limit, redelivered duplicates
        // included.
        p.held += c.bytes.len();
        if p.held > self.max_plate_bytes {
            let reason = format!(
                "{where_}: oversized plate: chunks held{} exceed max_plate_bytes ({} > {})",
                if duplicate {
                    ", redelivered duplicates included,"
                } else {
                    ""
                },
                p.held,
                self.max_plate_bytes
            );
            return self.reject(&key, c, reason);
        }
        if duplicate {
            p.extra.push(c);
            return Added::Duplicate;
        }
        p.bytes += c.bytes.len();
        p.parts.insert(c.index, c);
        if p.parts.len() < p.count {
            return Added::Pending;
        }
        let Some(p) = self.open.remove(&key) else {
            return Added::Pending;
        };
        let mut offsets: Vec<i64> = p.parts.values().map(|c| c.offset).collect();
        offsets.extend(p.extra.iter().map(|c| c.offset));
        offsets.sort_unstable();
        offsets.dedup();
        let mut bytes = Vec::with_capacity(p.bytes);
        for c in p.parts.values() {
            bytes.extend_from_slice(&c.bytes);
        }
        Added::Complete(Assembled {
            plate: key.1,
            partition: key.0,
            offsets,
            bytes,
        })
    }

    /// Reject the set `key` with every chunk held for it, plus `c`.
    fn reject(&mut self, key: &(i32, String), c: Chunk, reason: String) -> Added {
        let mut chunks = self.take(key);
        chunks.push(c);
        Added::Rejected(Rejected { reason, chunks })
    }

    fn take(&mut self, key: &(i32, String)) -> Vec<Chunk> {
        self.open
            .remove(key)
            .map(|p| p.parts.into_values().chain(p.extra).collect())
            .unwrap_or_default()
    }

    /// Chunk sets older than `timeout`, removed and returned as rejections.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<Rejected> {
        let stale: Vec<(i32, String)> = self
            .open
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.started) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        stale
            .into_iter()
            .map(|k| {
                let (have, count) = self
                    .open
                    .get(&k)
                    .map_or((0, 0), |p| (p.parts.len(), p.count));
                Rejected {
                    reason: format!(
                        "incomplete chunked plate {} (partition {}): {have} of {count} chunks after {:.1} s",
                        k.1,
                        k.0,
                        timeout.as_secs_f64()
                    ),
                    chunks: self.take(&k),
                }
            })
            .collect()
    }

    /// Drop the sets of a partition (revoked by a rebalance; the broker
    /// redelivers them to whoever owns the partition next).
    pub fn forget_partition(&mut self, partition: i32) {
        self.open.retain(|k, _| k.0 != partition);
    }

    /// Drop everything.
    pub fn clear(&mut self) {
        self.open.clear();
    }

    /// Number of plates in progress.
    pub fn pending(&self) -> usize {
        self.open.len()
    }
}

/// Split a payload into chunks of at most `max_chunk_bytes` (at least one
/// chunk, even for an empty payload).
pub fn split(bytes: &[u8], max_chunk_bytes: usize) -> Vec<&[u8]> {
    if bytes.is_empty() {
        return vec![bytes];
    }
    bytes.chunks(max_chunk_bytes.max(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: i64, index: usize, count: usize, bytes: &[u8]) -> Chunk {
        Chunk {
            partition: 0,
            offset,
            plate: "P1".into(),
            index,
            count,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn reassembles_out_of_order_and_lists_offsets() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let parts = split(&payload, 300);
        assert_eq!(parts.len(), 4);
        let now = Instant::now();
        let mut a = Assembler::new(10_000);
        let order = [2usize, 0, 3];
        for (k, &i) in order.iter().enumerate() {
            assert!(matches!(
                a.add(chunk(10 + k as i64, i, 4, parts[i]), now),
                Added::Pending
            ));
        }
        assert!(matches!(
            a.add(chunk(11, 0, 4, parts[0]), now),
            Added::Duplicate
        ));
        match a.add(chunk(20, 1, 4, parts[1]), now) {
            Added::Complete(p) => {
                assert_eq!(p.bytes, payload);
                assert_eq!(p.offsets, vec![10, 11, 12, 20]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn bad_sets_are_rejected_with_all_their_chunks() {
        let now = Instant::now();
        let mut a = Assembler::new(100);
        assert!(matches!(a.add(chunk(1, 0, 3, b"aa"), now), Added::Pending));
        match a.add(chunk(2, 1, 4, b"bb"), now) {
            Added::Rejected(r) => {
                assert!(r.reason.contains("count disagrees"), "{}", r.reason);
                assert_eq!(r.chunks.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        match a.add(chunk(3, 5, 4, b"cc"), now) {
            Added::Rejected(r) => assert!(r.reason.contains("out of range")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            a.add(chunk(4, 0, 2, &[0; 60]), now),
            Added::Pending
        ));
        match a.add(chunk(5, 1, 2, &[0; 60]), now) {
            Added::Rejected(r) => assert!(r.reason.contains("oversized"), "{}", r.reason),
            other => panic!("{other:?}"),
        }
        assert!(matches!(a.add(chunk(6, 0, 2, b"x"), now), Added::Pending));
        match a.add(chunk(7, 0, 2, b"y"), now) {
            Added::Rejected(r) => assert!(r.reason.contains("different bytes")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn incomplete_sets_expire() {
        let t0 = Instant::now();
        let mut a = Assembler::new(100);
        assert!(matches!(a.add(chunk(1, 0, 2, b"aa"), t0), Added::Pending));
        assert!(a.expire(t0, Duration::from_secs(5)).is_empty());
        let r = a.expire(t0 + Duration::from_secs(6), Duration::from_secs(5));
        assert_eq!(r.len(), 1);
        assert!(r[0].reason.contains("1 of 2"), "{}", r[0].reason);
        assert_eq!(r[0].chunks[0].offset, 1);
        assert_eq!(a.pending(), 0);
    }

    /// Redelivered duplicates are held too, so they count against the plate
    /// limit: a producer (or a broker) repeating one chunk cannot grow the
    /// held bytes past `max_plate_bytes`.
    #[test]
    fn duplicates_count_against_the_plate_limit() {
        let now = Instant::now();
        let mut a = Assembler::new(100);
        assert!(matches!(
            a.add(chunk(1, 0, 3, &[1; 40]), now),
            Added::Pending
        ));
        assert!(matches!(
            a.add(chunk(2, 0, 3, &[1; 40]), now),
            Added::Duplicate
        ));
        match a.add(chunk(3, 0, 3, &[1; 40]), now) {
            Added::Rejected(r) => {
                assert!(r.reason.contains("duplicates included"), "{}", r.reason);
                assert_eq!(r.chunks.len(), 3);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.pending(), 0);
    }

    /// At most `max_open` sets are held: the first chunk of a further set
    /// is rejected alone, the open sets are untouched and still complete.
    #[test]
    fn open_sets_are_capped() {
        let now = Instant::now();
        let mut a = Assembler::with_max_open(1_000, 2);
        let c = |plate: &str, offset: i64, index: usize| Chunk {
            partition: 0,
            offset,
            plate: plate.into(),
            index,
            count: 2,
            bytes: vec![7; 10],
        };
        assert!(matches!(a.add(c("A", 1, 0), now), Added::Pending));
        assert!(matches!(a.add(c("B", 2, 0), now), Added::Pending));
        match a.add(c("C", 3, 0), now) {
            Added::Rejected(r) => {
                assert!(r.reason.contains("too many chunked plates"), "{}", r.reason);
                assert_eq!(r.chunks.len(), 1);
                assert_eq!(r.chunks[0].offset, 3);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.pending(), 2);
        assert!(matches!(a.add(c("A", 4, 1), now), Added::Complete(_)));
        assert!(matches!(a.add(c("C", 5, 0), now), Added::Pending));
        assert_eq!(Assembler::new(1).max_open, MAX_OPEN_SETS);
    }
}
