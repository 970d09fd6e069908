//! The write-ahead log's record format and its scanner.
//!
//! A record (format 3, written since the binary bodies):
//!
//! ```text
//! magic "BWL3" | seq: u64 | len: u32 | body hash: u64 | header hash: u64 | body (len bytes)
//! body = head len: u32 | head (JSON: the delta's scalar fields, its arrays empty)
//!      | y | w | control_dev | coverage row ids | coverage amounts | plate_coverage
//! each array = count: u64 | count values (f32, or u64 for the row ids)
//! ```
//!
//! all little-endian; the header hash covers the 24 bytes before it, the
//! body hash the body ([`content_hash`], FNV-1a: any single changed byte
//! changes it). `seq` is the plate's index in the model: the number of
//! plates the model held before it (so record `i` after a snapshot of `n`
//! plates says `n + i`). A record removed from the middle of the log leaves
//! a gap in the sequence, which the restore refuses.
//!
//! The arrays are the values' own bytes, so a record is well under half of
//! its JSON form (a 384-row plate with 300 profile features and 10,000
//! coverage updates: 0.66 MB against 1.56 MB) and costs no float
//! formatting; the scalar fields stay
//! JSON, so a field is added to [`PlateDelta`] as before (with
//! `#[serde(default)]`).
//!
//! Older records are read as before: format 2 (magic `"BWL2"`, the same
//! header, the whole delta as JSON) and format 1 (`len: u32 | hash: u64 |
//! body`, JSON, no sequence), which may be followed by newer records
//! appended after an upgrade.
//!
//! [`scan`] reads records until the first one that does not decode. It
//! then looks for any intact record after that point: if there is one, the
//! damage is in the middle of the log ([`Damage::Corrupt`]: never dropped
//! silently); if not, the bad bytes are a torn tail ([`Damage::TornTail`],
//! what a crash mid-append leaves), which may be truncated.

use anyhow::Result;

use crate::method::model::{content_hash, PlateDelta};

/// Magic of a format-3 record (what [`encode`] writes).
pub const MAGIC: [u8; 4] = *b"BWL3";
/// Magic of a format-2 record (JSON body; read, no longer written).
pub const MAGIC_2: [u8; 4] = *b"BWL2";
/// Bytes of a format-2 or format-3 record header.
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

/// Encode one format-3 record.
pub fn encode(seq: u64, delta: &PlateDelta) -> Result<Vec<u8>> {
    frame(MAGIC, seq, &encode_body(delta)?)
}

/// Encode one format-2 record (JSON body): what builds before format 3
/// wrote, kept for the tests that check such logs still restore.
pub fn encode_v2(seq: u64, delta: &PlateDelta) -> Result<Vec<u8>> {
    frame(MAGIC_2, seq, &serde_json::to_vec(delta)?)
}

/// A record of either format: the header (magic, seq, length, body hash,
/// header hash), then the body.
fn frame(magic: [u8; 4], seq: u64, body: &[u8]) -> Result<Vec<u8>> {
    let len = u32::try_from(body.len())
        .map_err(|_| anyhow::anyhow!("a log record of {} bytes is too large", body.len()))?;
    let mut rec = Vec::with_capacity(body.len() + HEADER);
    rec.extend_from_slice(&magic);
    rec.extend_from_slice(&seq.to_le_bytes());
    rec.extend_from_slice(&len.to_le_bytes());
    rec.extend_from_slice(&content_hash(body).to_le_bytes());
    let h = content_hash(&rec);
    rec.extend_from_slice(&h.to_le_bytes());
    rec.extend_from_slice(body);
    Ok(rec)
}

/// A format-3 body: the JSON head (the delta without its arrays), then the
/// arrays' bytes.
fn encode_body(delta: &PlateDelta) -> Result<Vec<u8>> {
    let head = PlateDelta {
        y: Vec::new(),
        w: Vec::new(),
        control_dev: Vec::new(),
        coverage_updates: Vec::new(),
        plate_coverage: Vec::new(),
        plate: delta.plate.clone(),
        batch: delta.batch.clone(),
        content_hash: delta.content_hash,
        version: delta.version.clone(),
        pooled_controls: delta.pooled_controls,
        qc: delta.qc,
    };
    let head = serde_json::to_vec(&head)?;
    let head_len = u32::try_from(head.len())
        .map_err(|_| anyhow::anyhow!("a log record head of {} bytes is too large", head.len()))?;
    let floats = delta.y.len()
        + delta.w.len()
        + delta.control_dev.len()
        + delta.plate_coverage.len()
        + delta.coverage_updates.len();
    let mut b =
        Vec::with_capacity(4 + head.len() + 6 * 8 + 4 * floats + 8 * delta.coverage_updates.len());
    b.extend_from_slice(&head_len.to_le_bytes());
    b.extend_from_slice(&head);
    let put_f32 = |b: &mut Vec<u8>, v: &mut dyn ExactSizeIterator<Item = f32>| {
        b.extend_from_slice(&(v.len() as u64).to_le_bytes());
        for x in v {
            b.extend_from_slice(&x.to_le_bytes());
        }
    };
    put_f32(&mut b, &mut delta.y.iter().copied());
    put_f32(&mut b, &mut delta.w.iter().copied());
    put_f32(&mut b, &mut delta.control_dev.iter().copied());
    b.extend_from_slice(&(delta.coverage_updates.len() as u64).to_le_bytes());
    for &(id, _) in &delta.coverage_updates {
        b.extend_from_slice(&id.to_le_bytes());
    }
    put_f32(&mut b, &mut delta.coverage_updates.iter().map(|&(_, a)| a));
    put_f32(&mut b, &mut delta.plate_coverage.iter().copied());
    Ok(b)
}

/// Reads a format-3 body front to back; every length is checked against
/// the bytes left before anything is allocated.
struct BodyReader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> BodyReader<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let left = self.b.len() - self.at;
        if n > left {
            return Err(format!(
                "undecodable record: {what} needs {n} bytes, {left} are left"
            ));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn count(&mut self, width: usize, what: &str) -> std::result::Result<usize, String> {
        let c = u64_at(self.take(8, what)?, 0);
        let left = (self.b.len() - self.at) as u64;
        if c > left / width as u64 {
            return Err(format!(
                "undecodable record: {what} announces {c} values, {left} bytes are left"
            ));
        }
        Ok(c as usize)
    }
    fn f32s(&mut self, what: &str) -> std::result::Result<Vec<f32>, String> {
        let n = self.count(4, what)?;
        Ok(self
            .take(4 * n, what)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    fn u64s(&mut self, what: &str) -> std::result::Result<Vec<u64>, String> {
        let n = self.count(8, what)?;
        Ok(self
            .take(8 * n, what)?
            .chunks_exact(8)
            .map(|c| u64_at(c, 0))
            .collect())
    }
}

/// Decode a format-3 body.
fn decode_body(body: &[u8]) -> std::result::Result<PlateDelta, String> {
    let mut r = BodyReader { b: body, at: 0 };
    let head_len = u32_at(r.take(4, "the head length")?, 0) as usize;
    let head = r.take(head_len, "the head")?;
    let mut d: PlateDelta =
        serde_json::from_slice(head).map_err(|e| format!("undecodable record head: {e}"))?;
    d.y = r.f32s("y")?;
    d.w = r.f32s("w")?;
    d.control_dev = r.f32s("control_dev")?;
    let ids = r.u64s("coverage row ids")?;
    let amounts = r.f32s("coverage amounts")?;
    if ids.len() != amounts.len() {
        return Err(format!(
            "undecodable record: {} coverage row ids, {} amounts",
            ids.len(),
            amounts.len()
        ));
    }
    d.coverage_updates = ids.into_iter().zip(amounts).collect();
    d.plate_coverage = r.f32s("plate_coverage")?;
    if r.at != body.len() {
        return Err(format!(
            "undecodable record: {} bytes after the last array",
            body.len() - r.at
        ));
    }
    Ok(d)
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
    let binary = b[pos..].starts_with(&MAGIC);
    let (seq, body_at, len, hash) = if binary || b[pos..].starts_with(&MAGIC_2) {
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
    let delta: PlateDelta = if binary {
        decode_body(body)?
    } else {
        serde_json::from_slice(body).map_err(|e| format!("undecodable record: {e}"))?
    };
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
        let plausible = b[q..].starts_with(&MAGIC)
            || b[q..].starts_with(&MAGIC_2)
            || (q + V1_HEADER < b.len() && b[q + V1_HEADER] == b'{');
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

    fn full_delta() -> PlateDelta {
        PlateDelta {
            plate: "P \"1\"".into(),
            batch: "Week 2".into(),
            content_hash: u64::MAX - 7,
            version: "g3.p12".into(),
            y: vec![1.0, -0.0, f32::MIN_POSITIVE, 3.5e-42, -7.25],
            w: (0..12).map(|i| i as f32 * 0.1 - 0.55).collect(),
            control_dev: vec![0.25, -0.125],
            pooled_controls: 17,
            coverage_updates: vec![(0, 0.5), (9, 1.25), (u64::MAX, 2.0)],
            plate_coverage: vec![1.0, 0.0, 3.0],
            qc: Some(crate::method::model::QcFigures {
                mean_offset: Some(0.3),
                mixing_after: None,
                ..Default::default()
            }),
        }
    }

    /// Format 3 gives back every field bit for bit, and is smaller than the
    /// JSON record of the same delta.
    #[test]
    fn format_3_round_trips_every_field() {
        let d = full_delta();
        let rec = encode(4, &d).unwrap();
        assert!(rec.starts_with(b"BWL3"));
        let s = scan(&rec);
        assert_eq!(s.damage, None);
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.records[0].seq, Some(4));
        let got = &s.records[0].delta;
        assert_eq!(got.plate, d.plate);
        assert_eq!(got.qc, d.qc);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got.y), bits(&d.y));
        assert_eq!(bits(&got.w), bits(&d.w));
        assert_eq!(got, &d);
        // A plate-sized delta: the binary record is well under its JSON form.
        let big = PlateDelta {
            y: (0..384 * 50).map(|i| (i as f32).sin()).collect(),
            w: (0..384 * 300).map(|i| (i as f32).cos() * 3.0).collect(),
            coverage_updates: (0..10_000u64).map(|i| (i * 97, 0.37)).collect(),
            ..full_delta()
        };
        let (v3, v2) = (encode(0, &big).unwrap(), encode_v2(0, &big).unwrap());
        assert!(v3.len() * 2 < v2.len(), "{} vs {}", v3.len(), v2.len());
        assert_eq!(scan(&v3).records[0].delta, big);
    }

    /// Logs of every format read together, in order: an upgraded daemon
    /// appends format-3 records after older ones.
    #[test]
    fn format_2_and_3_records_read_together() {
        let mut log = encode_v2(0, &delta("A")).unwrap();
        log.extend(encode(1, &full_delta()).unwrap());
        log.extend(encode_v2(2, &delta("C")).unwrap());
        let s = scan(&log);
        assert_eq!(s.damage, None);
        let plates: Vec<&str> = s.records.iter().map(|r| r.delta.plate.as_str()).collect();
        assert_eq!(plates, ["A", "P \"1\"", "C"]);
        assert_eq!(s.records[1].delta, full_delta());
    }

    /// An array count larger than the body is refused before any
    /// allocation, with the body hash valid (a record written by a bug, not
    /// damage): the record is refused, not decoded.
    #[test]
    fn a_count_beyond_the_body_is_refused() {
        let mut body = encode_body(&delta("A")).unwrap();
        let head_len = u32_at(&body, 0) as usize;
        // The y count sits right after the head.
        body[4 + head_len..4 + head_len + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        let err = decode_body(&body).unwrap_err();
        assert!(err.contains("y announces"), "{err}");
        let mut trailing = encode_body(&delta("A")).unwrap();
        trailing.push(0);
        assert!(decode_body(&trailing)
            .unwrap_err()
            .contains("after the last array"));
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
