//! The write-ahead log: `wal::scan` over the whole input (every record a
//! restart would replay) and `wal::records_after` from an offset (what
//! `balans state check/repair` counts past damage).
//!
//! Oracles: the intact records start at 0 and at strictly increasing
//! offsets inside `valid_len`, `valid_len` never passes the end, damage
//! starts exactly at `valid_len`, and a log without damage is read to its
//! end; `records_after` finds records only at or after its start.
#![no_main]
use balans::serve::state::wal::{records_after, scan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = scan(data);
    assert_eq!(s.file_len as usize, data.len());
    assert!(s.valid_len <= s.file_len);
    let mut prev: Option<u64> = None;
    for r in &s.records {
        match prev {
            None => assert_eq!(r.offset, 0),
            Some(p) => assert!(r.offset > p),
        }
        assert!(r.offset < s.valid_len);
        prev = Some(r.offset);
    }
    match &s.damage {
        Some(d) => assert_eq!(d.offset(), s.valid_len),
        None => assert_eq!(s.valid_len, s.file_len),
    }
    let from = data.first().map(|&b| b as usize % (data.len() + 1)).unwrap_or(0);
    for r in records_after(data, from) {
        assert!(r.offset as usize >= from);
    }
});
