//! The write-ahead log's record format and its scanner.
//!
//! A record (format 2, written since checksummed states):
//!
//! ```text
//! magic "BWL2" | seq: u64 | len: u32 | body hash: u64 | header hash: u64 | body (len bytes of JSON)
//! ```
//!
//! all little-endian; the header hash covers the 24 bytes before it, the
//! body hash the body ([`content_hash`], FNV-1a: any single changed byte
//! changes it). `seq` is the plate's index in the model: the number of
//! plates the model held before it (so record `i` after a snapshot of `n`
//! plates says `n + i`). A record removed from the middle of the log leaves
//! a gap in the sequence, which the restore refuses.
//!
//! Logs written before format 2 hold `len: u32 | hash: u64 | body`
//! records (format 1, no sequence); they are read as before and may be
//! followed by format-2 records appended after an upgrade.
//!
//! [`scan`] reads records until the first one that does not decode. It
//! then looks for any intact record after that point: if there is one, the
//! damage is in the middle of the log ([`Damage::Corrupt`]: never dropped
//! silently); if not, the bad bytes are a torn tail ([`Damage::TornTail`],
//! what a crash mid-append leaves), which may be truncated.

use anyhow::Result;

use crate::method::model::{content_hash, PlateDelta};

/// Magic of a format-2 record.
pub const MAGIC: [u8; 4] = *b"BWL2";
/// Bytes of a format-2 record header.
const HEADER: usize = 32;
/// Bytes of a format-1 record header.
const V1_HEADER: usize = 12;

/// One intact record.
#[derive(Debug, Clone)]
pub struct Record {
    /// Byte offset of the record in the log.
    pub offset: u64,
    /// The plate's index in the model (`None`: a format-1 record).
    pub seq: Option<u64>,
    /// The state change.
    pub delta: PlateDelta,
}

/// Damage found by [`scan`].
#[derive(Debug, Clone, PartialEq)]
pub enum Damage {
    /// The bytes from `offset` to the end of the log are not a record and
    /// no intact record follows: an interrupted append. Safe to truncate.
    TornTail {
        /// Offset of the first bad byte.
        offset: u64,
        /// Why the record there does not decode.
        reason: String,
    },
    /// The record at `offset` does not decode but an intact record starts
    /// at `next_valid`: damage inside the log. Never dropped silently.
    Corrupt {
        /// Offset of the bad record.
        offset: u64,
        /// Why it does not decode.
        reason: String,
        /// Offset of the next intact record.
        next_valid: u64,
    },
}

impl Damage {
    /// Offset of the first bad byte.
    pub fn offset(&self) -> u64 {
        match self {
            Damage::TornTail { offset, .. } | Damage::Corrupt { offset, .. } => *offset,
        }
    }
}

/// What [`scan`] found in a log.
#[derive(Debug, Clone)]
pub struct Scan {
    /// Intact records up to the first damage, in order.
    pub records: Vec<Record>,
    /// Bytes spanned by `records` (where the damage starts).
    pub valid_len: u64,
    /// Total bytes of the log.
    pub file_len: u64,
    /// The first damage, if any.
    pub damage: Option<Damage>,
}

/// Encode one format-2 record.
pub fn encode(seq: u64, delta: &PlateDelta) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(delta)?;
    let len = u32::try_from(body.len())
        .map_err(|_| anyhow::anyhow!("a log record of {} bytes is too large", body.len()))?;
    let mut rec = Vec::with_capacity(body.len() + HEADER);
    rec.extend_from_slice(&MAGIC);
    rec.extend_from_slice(&seq.to_le_bytes());
    rec.extend_from_slice(&len.to_le_bytes());
    rec.extend_from_slice(&content_hash(&body).to_le_bytes());
    let h = content_hash(&rec);
    rec.extend_from_slice(&h.to_le_bytes());
    rec.extend_from_slice(&body);
    Ok(rec)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Decode the record starting at `pos`: the record and its end offset, or
/// why it is not one.
fn parse_at(b: &[u8], pos: usize) -> std::result::Result<(Record, usize), String> {
    let rest = b.len() - pos;
    let (seq, body_at, len, hash) = if b[pos..].starts_with(&MAGIC) {
        if rest < HEADER {
            return Err(format!(
                "incomplete record header ({rest} of {HEADER} bytes)"
            ));
        }
        if content_hash(&b[pos..pos + 24]) != u64_at(b, pos + 24) {
            return Err("record header checksum mismatch".into());
        }
        (
            Some(u64_at(b, pos + 4)),
            pos + HEADER,
            u32_at(b, pos + 12) as usize,
            u64_at(b, pos + 16),
        )
    } else {
        if rest < V1_HEADER {
            return Err(format!(
                "incomplete record header ({rest} bytes, not a record)"
            ));
        }
        (
            None,
            pos + V1_HEADER,
            u32_at(b, pos) as usize,
            u64_at(b, pos + 4),
        )
    };
    let end = body_at
        .checked_add(len)
        .filter(|&e| e <= b.len())
        .ok_or_else(|| {
            format!(
                "incomplete record: {len} bytes announced, {} present",
                b.len() - body_at
            )
        })?;
    let body = &b[body_at..end];
    if seq.is_none() && body.first() != Some(&b'{') {
        return Err("not a record (format 1 body is not JSON)".into());
    }
    if content_hash(body) != hash {
        return Err("record checksum mismatch".into());
    }
    let delta: PlateDelta =
        serde_json::from_slice(body).map_err(|e| format!("undecodable record: {e}"))?;
    Ok((
        Record {
            offset: pos as u64,
            seq,
            delta,
        },
        end,
    ))
}

/// The first offset at or after `from` where an intact record starts.
fn next_valid(b: &[u8], from: usize) -> Option<usize> {
    (from..b.len()).find(|&q| {
        let plausible =
            b[q..].starts_with(&MAGIC) || (q + V1_HEADER < b.len() && b[q + V1_HEADER] == b'{');
        plausible && parse_at(b, q).is_ok()
    })
}

/// Read a whole log (see the module doc).
pub fn scan(b: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut pos = 0usize;
    let mut damage = None;
    while pos < b.len() {
        match parse_at(b, pos) {
            Ok((r, end)) => {
                records.push(r);
                pos = end;
            }
            Err(reason) => {
                damage = Some(match next_valid(b, pos + 1) {
                    Some(q) => Damage::Corrupt {
                        offset: pos as u64,
                        reason,
                        next_valid: q as u64,
                    },
                    None => Damage::TornTail {
                        offset: pos as u64,
                        reason,
                    },
                });
                break;
            }
        }
    }
    Scan {
        records,
        valid_len: pos as u64,
        file_len: b.len() as u64,
        damage,
    }
}

/// Count the intact records from `from` on (what a repair drops): records
/// found by skipping over damage.
pub fn records_after(b: &[u8], from: usize) -> Vec<Record> {
    let mut out = Vec::new();
    let mut pos = from;
    while let Some(q) = next_valid(b, pos) {
        match parse_at(b, q) {
            Ok((r, end)) => {
                out.push(r);
                pos = end;
            }
            Err(_) => pos = q + 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(plate: &str) -> PlateDelta {
        PlateDelta {
            plate: plate.into(),
            batch: "B".into(),
            content_hash: 1,
            version: "g1.p0".into(),
            y: vec![1.0, 2.0],
            coverage_updates: vec![],
            plate_coverage: vec![1.0],
            qc: None,
            w: vec![],
            control_dev: vec![],
            pooled_controls: 0,
        }
    }

    #[test]
    fn single_byte_flips_are_either_a_torn_tail_or_refused() {
        let mut log = Vec::new();
        for (i, p) in ["A", "B", "C"].iter().enumerate() {
            log.extend(encode(i as u64, &delta(p)).unwrap());
        }
        let last = scan(&log).records[2].offset as usize;
        for at in 0..log.len() {
            let mut b = log.clone();
            b[at] ^= 0x5a;
            let s = scan(&b);
            let d = s.damage.expect("a flip is always seen");
            if at >= last {
                assert!(matches!(d, Damage::TornTail { .. }), "at {at}: {d:?}");
                assert_eq!(s.records.len(), 2);
            } else {
                assert!(matches!(d, Damage::Corrupt { .. }), "at {at}: {d:?}");
            }
        }
    }

    #[test]
    fn format_1_records_still_read() {
        let body = serde_json::to_vec(&delta("A")).unwrap();
        let mut log = Vec::new();
        log.extend_from_slice(&(body.len() as u32).to_le_bytes());
        log.extend_from_slice(&content_hash(&body).to_le_bytes());
        log.extend_from_slice(&body);
        log.extend(encode(1, &delta("B")).unwrap());
        let s = scan(&log);
        assert_eq!(s.damage, None);
        assert_eq!(s.records.len(), 2);
        assert_eq!(s.records[0].seq, None);
        assert_eq!(s.records[1].seq, Some(1));
    }
}
