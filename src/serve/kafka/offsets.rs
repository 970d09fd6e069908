//! Which input offsets are safe to commit.
//!
//! Kafka commits a single position per partition: "everything below this
//! offset is done". The daemon finishes messages out of order — a chunked
//! plate stays open while later single-message plates complete — so the
//! position it may commit is the *lowest offset still open*, or one past the
//! highest finished offset when nothing is open. Committing anything higher
//! would let a crash skip the open plate.
//!
//! The tracker is pure bookkeeping (no I/O): the Kafka loop reports each
//! message as received, then as done once its outputs are acknowledged and
//! the state is durable, and asks for the positions to commit.

use std::collections::{BTreeMap, BTreeSet};

/// Per-partition bookkeeping.
#[derive(Debug, Default, Clone)]
struct Partition {
    /// Offsets received and not yet done.
    open: BTreeSet<i64>,
    /// Highest offset done (None before the first).
    done_max: Option<i64>,
    /// Last position committed to the broker.
    committed: Option<i64>,
}

/// Commit positions per partition of one topic.
#[derive(Debug, Default, Clone)]
pub struct OffsetTracker {
    parts: BTreeMap<i32, Partition>,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// A message was received. An offset at or below what was already done
    /// means the partition was rewound (rebalance, broker reset): the
    /// bookkeeping above it is forgotten so it is not committed past.
    pub fn received(&mut self, partition: i32, offset: i64) {
        let p = self.parts.entry(partition).or_default();
        if p.done_max.is_some_and(|d| offset <= d) {
            p.done_max = None;
            p.open.retain(|&o| o < offset);
            p.committed = None;
        }
        p.open.insert(offset);
    }

    /// A message is done: its outputs are acknowledged and the state that
    /// depends on it is durable (or it was dead-lettered and acknowledged).
    pub fn done(&mut self, partition: i32, offset: i64) {
        let p = self.parts.entry(partition).or_default();
        p.open.remove(&offset);
        p.done_max = Some(p.done_max.map_or(offset, |d| d.max(offset)));
    }

    /// The position that may be committed for a partition: the lowest open
    /// offset, else one past the highest done. None when nothing is done.
    pub fn safe_position(&self, partition: i32) -> Option<i64> {
        let p = self.parts.get(&partition)?;
        match (p.open.first(), p.done_max) {
            // Everything received below the lowest open offset is done, and
            // nothing below the first received offset is ours to redo, so
            // the lowest open offset is always safe (useful once something
            // is done).
            (Some(&lowest_open), Some(_)) => Some(lowest_open),
            (Some(_), None) => None,
            (None, Some(d)) => Some(d + 1),
            (None, None) => None,
        }
    }

    /// Positions that changed since the last [`OffsetTracker::committed`]:
    /// `(partition, position)` to commit.
    pub fn to_commit(&self) -> Vec<(i32, i64)> {
        self.parts
            .keys()
            .filter_map(|&part| {
                let pos = self.safe_position(part)?;
                let p = &self.parts[&part];
                (p.committed != Some(pos)).then_some((part, pos))
            })
            .collect()
    }

    /// Record that the broker accepted a commit.
    pub fn committed(&mut self, partition: i32, position: i64) {
        if let Some(p) = self.parts.get_mut(&partition) {
            p.committed = Some(position);
        }
    }

    /// Whether the partition has received messages since it was last
    /// forgotten (it is still ours).
    pub fn knows(&self, partition: i32) -> bool {
        self.parts.contains_key(&partition)
    }

    /// Forget a partition (revoked by a rebalance).
    pub fn forget(&mut self, partition: i32) {
        self.parts.remove(&partition);
    }

    /// Forget everything (all partitions revoked).
    pub fn clear(&mut self) {
        self.parts.clear();
    }

    /// Last committed position of a partition (for lag telemetry).
    pub fn committed_position(&self, partition: i32) -> Option<i64> {
        self.parts.get(&partition).and_then(|p| p.committed)
    }

    /// Partitions seen.
    pub fn partitions(&self) -> Vec<i32> {
        self.parts.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_commits_one_past_done() {
        let mut t = OffsetTracker::new();
        t.received(0, 5);
        assert_eq!(t.safe_position(0), None);
        t.done(0, 5);
        assert_eq!(t.to_commit(), vec![(0, 6)]);
        t.committed(0, 6);
        assert!(t.to_commit().is_empty());
    }

    #[test]
    fn open_chunk_holds_back_later_done_offsets() {
        let mut t = OffsetTracker::new();
        t.received(0, 0);
        t.done(0, 0);
        t.received(0, 1); // chunk 1/2 of plate A: open
        t.received(0, 2); // plate B
        t.done(0, 2);
        assert_eq!(t.safe_position(0), Some(1), "must not skip the open chunk");
        t.received(0, 3); // chunk 2/2 of plate A
        t.done(0, 1);
        t.done(0, 3);
        assert_eq!(t.safe_position(0), Some(4));
    }

    #[test]
    fn open_offset_is_never_committed_past() {
        let mut t = OffsetTracker::new();
        t.received(3, 10);
        assert!(t.to_commit().is_empty(), "nothing done yet");
        t.received(3, 11);
        t.done(3, 11);
        assert_eq!(t.safe_position(3), Some(10), "10 is still open");
    }

    #[test]
    fn rewind_forgets_higher_bookkeeping() {
        let mut t = OffsetTracker::new();
        for o in 0..20 {
            t.received(0, o);
            t.done(0, o);
        }
        t.committed(0, 20);
        // Broker lost the topic and the partition restarts at 0.
        t.received(0, 0);
        assert_eq!(t.safe_position(0), None);
        t.done(0, 0);
        assert_eq!(t.to_commit(), vec![(0, 1)]);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::new();
        t.received(0, 0);
        t.received(1, 7);
        t.done(1, 7);
        assert_eq!(t.to_commit(), vec![(1, 8)]);
        t.forget(1);
        assert!(t.to_commit().is_empty());
    }
}
