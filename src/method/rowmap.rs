//! Hash maps keyed by row ids, with a multiplicative hasher.
//!
//! The sampling round keeps small maps keyed by row ids and `(row, batch)`
//! pairs (a landmark's candidate distances, the candidates' scales): tens
//! of thousands of inserts and lookups per plate. The standard library's
//! SipHash resists collision attacks on untrusted keys, which row ids
//! (positions the method assigns, never input data) do not need, and
//! costs several times a multiply-rotate per key. [`RowHasher`] is the
//! Fx hash (rustc's): one rotate, xor and multiply per written word.
//! Only lookups go through these maps, never iteration into an output,
//! so the hasher changes no result.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by row ids with [`RowHasher`].
pub type RowMap<K, V> = HashMap<K, V, BuildHasherDefault<RowHasher>>;

/// The Fx hash over the words written (integers as themselves, bytes in
/// 8-byte words).
#[derive(Default, Clone, Copy)]
pub struct RowHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl RowHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for RowHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_ids_round_trip_and_spread() {
        let mut m: RowMap<(u32, u32), f32> = RowMap::default();
        for i in 0..20_000u32 {
            m.insert((i, i % 11), i as f32);
        }
        assert_eq!(m.len(), 20_000);
        for i in 0..20_000u32 {
            assert_eq!(m.get(&(i, i % 11)), Some(&(i as f32)));
            assert_eq!(m.get(&(i, (i + 1) % 11)), None);
        }
        // Consecutive ids hash to distinct values (no degenerate buckets).
        let hashes: std::collections::BTreeSet<u64> = (0..10_000u32)
            .map(|i| {
                let mut h = RowHasher::default();
                h.write_u32(i);
                h.finish()
            })
            .collect();
        assert_eq!(hashes.len(), 10_000);
        // Bytes are hashed whole, the tail included.
        let (mut a, mut b) = (RowHasher::default(), RowHasher::default());
        a.write(b"abcdefghi");
        b.write(b"abcdefghj");
        assert_ne!(a.finish(), b.finish());
    }
}
