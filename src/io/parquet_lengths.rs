//! Length checks run before parquet reads outside bytes.
//!
//! parquet 57 decodes a file's footer (the Thrift compact-protocol
//! `FileMetaData`) by allocating each list's announced length before it
//! reads the elements (`Vec::with_capacity` in `read_thrift_vec`): a 1.5 KB
//! file found by the fuzz harness asked for 16.8 GB, and a larger count
//! makes the allocation itself fail, which aborts the process (no
//! `catch_unwind` stops it; for the daemon, a crash loop on one hostile
//! plate). Page headers, read from the column chunks with a reader-based
//! protocol, allocate a binary field's announced length the same way, and a
//! column chunk read from a file allocates the length its footer entry
//! announces.
//!
//! [`check`] walks the footer's Thrift encoding before parquet sees it:
//! every list, set and map announces at most as many elements as there are
//! bytes left in the footer (each element takes at least one byte), every
//! string or binary at most the bytes left, and every element is then
//! walked, so a count is backed by elements present. It then checks that
//! each column chunk lies inside the file and walks the page headers of
//! each chunk by the same rules, against the bytes left in the chunk, with
//! each page's compressed size inside the chunk. Only the framing is parsed;
//! parquet decodes everything again afterwards. [`super::table`] calls it
//! on every Parquet file and buffer it decodes ([`check_footer`], the
//! footer alone, where only the metadata is read).
//!
//! What is left: after the checks parquet reserves at most one element per
//! footer byte (times the element's in-memory size), the allocation a valid
//! footer of that size would make; a page's announced uncompressed size (an
//! `i32`, so at most 2 GiB) is reserved before decompression.

use std::borrow::Cow;

use anyhow::{bail, Result};

/// Nesting deeper than this is refused (honest footers nest about 6 deep;
/// the walk is recursive).
const MAX_DEPTH: u32 = 64;

/// Bytes a page header is first read in (a window that grows if the
/// header is longer, up to the bytes left in the chunk).
const HEADER_WINDOW: usize = 1024;

/// Random access to the bytes of a Parquet file.
pub(crate) trait Source {
    fn size(&self) -> Result<u64>;
    fn read_at(&self, at: u64, len: usize) -> Result<Cow<'_, [u8]>>;
}

impl Source for [u8] {
    fn size(&self) -> Result<u64> {
        Ok(self.len() as u64)
    }
    fn read_at(&self, at: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        let start = usize::try_from(at)?;
        match start.checked_add(len).and_then(|end| self.get(start..end)) {
            Some(b) => Ok(Cow::Borrowed(b)),
            None => bail!(
                "read of {len} bytes at byte {at} past the end ({} bytes)",
                self.len()
            ),
        }
    }
}

impl Source for std::fs::File {
    fn size(&self) -> Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read_at(&self, at: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        use std::io::{Read, Seek, SeekFrom};
        // The callers bound `len` by the file's size before reading.
        let mut f = self;
        f.seek(SeekFrom::Start(at))?;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf)?;
        Ok(Cow::Owned(buf))
    }
}

/// The footer's position: `(start, length)`; `None` when the file is too
/// short or lacks the `PAR1` trailer (parquet reports that itself, without
/// a large allocation).
fn footer_range(src: &(impl Source + ?Sized)) -> Result<Option<(u64, usize)>> {
    let size = src.size()?;
    if size < 12 {
        return Ok(None);
    }
    let tail = src.read_at(size - 8, 8)?;
    if &tail[4..] != b"PAR1" {
        return Ok(None);
    }
    let len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as u64;
    if len > size - 8 {
        bail!("the Parquet footer announces {len} bytes, the file has {size}");
    }
    Ok(Some((size - 8 - len, len as usize)))
}

/// Check the footer's Thrift encoding only (for readers of the metadata).
pub(crate) fn check_footer(src: &(impl Source + ?Sized)) -> Result<()> {
    if let Some((start, len)) = footer_range(src)? {
        let footer = src.read_at(start, len)?;
        walk_footer(&footer, start)?;
    }
    Ok(())
}

fn walk_footer(footer: &[u8], start: u64) -> Result<()> {
    let mut w = Walk {
        buf: footer,
        pos: 0,
        base: start,
    };
    w.structure(0, &mut |_, _| {})
        .map_err(|e| e.into_error("Parquet footer", &w))?;
    Ok(())
}

/// Check the footer, the column chunks' ranges and their page headers.
pub(crate) fn check(src: &(impl Source + ?Sized)) -> Result<()> {
    let Some((start, len)) = footer_range(src)? else {
        return Ok(());
    };
    let footer = src.read_at(start, len)?;
    walk_footer(&footer, start)?;
    // Safe to decode now; a footer parquet refuses is reported by the
    // reader itself.
    let Ok(meta) = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&footer) else {
        return Ok(());
    };
    for (g, group) in meta.row_groups().iter().enumerate() {
        for (c, col) in group.columns().iter().enumerate() {
            let first = col
                .dictionary_page_offset()
                .unwrap_or(col.data_page_offset());
            let size = col.compressed_size();
            let end = u64::try_from(first)
                .ok()
                .zip(u64::try_from(size).ok())
                .and_then(|(a, n)| a.checked_add(n).map(|e| (a, e)));
            let Some((from, to)) = end.filter(|&(_, e)| e <= start) else {
                bail!(
                    "Parquet column chunk {c} of row group {g} announces {size} bytes at byte \
                     {first}, outside the file's data (which ends at byte {start})"
                );
            };
            walk_pages(src, from, to)
                .map_err(|e| e.context(format!("column chunk {c} of row group {g}")))?;
        }
    }
    Ok(())
}

/// Walk the page headers of the chunk `[from, to)`: each header by the
/// footer's rules (against the bytes left in the chunk), each page's
/// compressed size inside the chunk.
fn walk_pages(src: &(impl Source + ?Sized), mut from: u64, to: u64) -> Result<()> {
    while from < to {
        let left = usize::try_from(to - from).unwrap_or(usize::MAX);
        let mut window = HEADER_WINDOW.min(left);
        let (header_len, page_size) = loop {
            let bytes = src.read_at(from, window)?;
            let mut w = Walk {
                buf: &bytes,
                pos: 0,
                base: from,
            };
            let mut page_size = None;
            let walked = w.structure(0, &mut |id, v| {
                if id == 3 {
                    page_size = Some(v); // PageHeader.compressed_page_size
                }
            });
            match walked {
                Ok(()) => break (w.pos, page_size),
                // A window shorter than the chunk: read more of it.
                Err(Stop::Eof) if window < left => window = window.saturating_mul(4).min(left),
                Err(e) => return Err(e.into_error("Parquet page header", &w)),
            }
        };
        let data_at = from + header_len as u64;
        let left = to - data_at;
        match page_size.and_then(|s| u64::try_from(s).ok()) {
            Some(s) if s <= left => from = data_at + s,
            _ => bail!(
                "the Parquet page at byte {from} announces {} compressed bytes, {left} left in \
                 its column chunk",
                page_size.map_or("no".to_string(), |s| s.to_string())
            ),
        }
    }
    Ok(())
}

/// Why a walk stopped.
enum Stop {
    /// The bytes ended inside a value.
    Eof,
    /// A length or a type the decoder must not be given.
    Bad(String),
}

impl Stop {
    fn into_error(self, what: &str, w: &Walk) -> anyhow::Error {
        match self {
            Stop::Eof => anyhow::anyhow!(
                "{what} ends inside a value (at byte {})",
                w.base + w.buf.len() as u64
            ),
            Stop::Bad(m) => anyhow::anyhow!("{what}: {m}"),
        }
    }
}

/// A cursor over Thrift compact-protocol bytes; `base` is the file offset
/// of `buf[0]`, for messages.
struct Walk<'a> {
    buf: &'a [u8],
    pos: usize,
    base: u64,
}

impl Walk<'_> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn at(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn byte(&mut self) -> Result<u8, Stop> {
        let b = *self.buf.get(self.pos).ok_or(Stop::Eof)?;
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<(), Stop> {
        if n > self.left() {
            return Err(Stop::Eof);
        }
        self.pos += n;
        Ok(())
    }

    fn varint(&mut self) -> Result<u64, Stop> {
        let at = self.at();
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Stop::Bad(format!(
            "a varint at byte {at} is longer than 10 bytes"
        )))
    }

    fn zigzag(&mut self) -> Result<i64, Stop> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// An announced count or length `n` at `at`, refused when more than
    /// the bytes left.
    fn bounded(&self, what: &str, at: u64, n: u64) -> Result<usize, Stop> {
        let left = self.left();
        if n > left as u64 {
            return Err(Stop::Bad(format!(
                "a {what} at byte {at} announces {n}, only {left} bytes are left \
                 (parquet would allocate it before reading)"
            )));
        }
        Ok(n as usize)
    }

    /// A struct's fields up to its stop byte; `field` sees each integer
    /// field's id and value.
    fn structure(&mut self, depth: u32, field: &mut dyn FnMut(i16, i64)) -> Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(Stop::Bad(format!(
                "values nested more than {MAX_DEPTH} deep at byte {}",
                self.at()
            )));
        }
        let mut last = 0i16;
        loop {
            let head = self.byte()?;
            let ty = head & 0x0f;
            if ty == 0 {
                return Ok(());
            }
            let delta = head >> 4;
            let id = if delta == 0 {
                self.zigzag()? as i16
            } else {
                last.wrapping_add(i16::from(delta))
            };
            last = id;
            match ty {
                // Booleans carry their value in the type.
                1 | 2 => {}
                _ => {
                    if let Some(v) = self.value(ty, depth)? {
                        field(id, v);
                    }
                }
            }
        }
    }

    /// One value of compact type `ty` (outside a field header: a boolean
    /// takes a byte). Integers are returned.
    fn value(&mut self, ty: u8, depth: u32) -> Result<Option<i64>, Stop> {
        match ty {
            1..=3 => self.skip(1)?,
            4..=6 => return self.zigzag().map(Some),
            7 => self.skip(8)?,
            8 => {
                let at = self.at();
                let n = self.varint()?;
                let n = self.bounded("string or binary", at, n)?;
                self.skip(n)?;
            }
            9 | 10 => {
                let at = self.at();
                let head = self.byte()?;
                let n = match head >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                let n = self.bounded("list or set", at, n)?;
                let elem = head & 0x0f;
                // parquet 57 skips the elements of a list of booleans
                // without reading their bytes (`skip_till_depth`), so its
                // reading drifts from this walk; then it can meet a list
                // announcing 2^31 booleans this walk never saw and loop
                // over it (the fuzz target `parquet`: a 2 KB file kept it
                // busy for 5 s). No footer or page header has one.
                if n > 0 && (elem == 1 || elem == 2) {
                    return Err(Stop::Bad(format!(
                        "a list of booleans at byte {at}, which no Parquet footer or page \
                         header holds"
                    )));
                }
                for _ in 0..n {
                    self.element(elem, depth)?;
                }
            }
            11 => {
                let at = self.at();
                let n = self.varint()?;
                let n = self.bounded("map", at, n)?;
                if n > 0 {
                    let kv = self.byte()?;
                    for _ in 0..n {
                        self.element(kv >> 4, depth)?;
                        self.element(kv & 0x0f, depth)?;
                    }
                }
            }
            12 => self.structure(depth + 1, &mut |_, _| {})?,
            13 => self.skip(16)?, // UUID
            t => {
                return Err(Stop::Bad(format!(
                    "unknown Thrift type {t} at byte {}",
                    self.at()
                )))
            }
        }
        Ok(None)
    }

    fn element(&mut self, ty: u8, depth: u32) -> Result<(), Stop> {
        if ty == 0 {
            return Err(Stop::Bad(format!(
                "a collection of type 0 at byte {}",
                self.at()
            )));
        }
        self.value(ty, depth + 1).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::table;
    use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
    use std::sync::Arc;

    fn small() -> Vec<u8> {
        let t = RecordBatch::try_from_iter([
            (
                "Metadata_Plate",
                Arc::new(StringArray::from(vec!["p", "q"])) as ArrayRef,
            ),
            (
                "F1",
                Arc::new(Float64Array::from(vec![1.0, 2.5])) as ArrayRef,
            ),
        ])
        .unwrap();
        table::encode_parquet(&t).unwrap()
    }

    /// A file whose footer's first list (the schema) announces `n` elements.
    fn with_list_count(n: u64) -> Vec<u8> {
        let mut out = b"PAR1".to_vec();
        let start = out.len();
        // FileMetaData: field 1 (version, i32 = 1), field 2 (schema, list
        // of structs) announcing n, then one empty struct and stops.
        out.extend([0x15, 0x02, 0x19, 0xfc]);
        let mut v = n;
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend([0x00, 0x00]);
        let len = (out.len() - start) as u32;
        out.extend(len.to_le_bytes());
        out.extend(b"PAR1");
        out
    }

    #[test]
    fn valid_files_pass() {
        let pq = small();
        check(pq.as_slice()).unwrap();
        check_footer(pq.as_slice()).unwrap();
    }

    #[test]
    fn a_list_announcing_more_elements_than_bytes_is_refused() {
        let e = check(with_list_count(2_000_000_000).as_slice()).unwrap_err();
        let m = format!("{e:#}");
        assert!(
            m.contains("list or set at byte 7 announces 2000000000"),
            "{m}"
        );
        // One element present, announced as one: the walk passes (parquet
        // then refuses the empty schema element itself).
        check(with_list_count(1).as_slice()).unwrap();
        // Two announced, one present: refused (the footer ends early).
        assert!(check(with_list_count(2).as_slice()).is_err());
    }

    #[test]
    fn a_huge_binary_length_is_refused() {
        // FileMetaData field 1 as a binary announcing 1e12 bytes.
        let mut out = b"PAR1".to_vec();
        out.extend([0x18, 0x80, 0xa0, 0x94, 0xa5, 0x8d, 0x1d, 0x00]);
        out.extend(8u32.to_le_bytes());
        out.extend(b"PAR1");
        let m = format!("{:#}", check(out.as_slice()).unwrap_err());
        assert!(
            m.contains("string or binary at byte 5 announces 1000000000000"),
            "{m}"
        );
    }

    #[test]
    fn a_footer_longer_than_the_file_is_refused() {
        let mut pq = small();
        let n = pq.len();
        pq[n - 8..n - 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(check(pq.as_slice()).is_err());
    }

    use arrow_array::Int32Array;
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    use proptest::prelude::*;

    /// A random small table: 1-5 columns of f64, i32 or text (with nulls),
    /// 0-300 rows.
    fn random_table() -> impl Strategy<Value = RecordBatch> {
        (
            0usize..300,
            prop::collection::vec(0u8..3, 1..6),
            any::<u64>(),
        )
            .prop_map(|(rows, kinds, seed)| {
                let mut x = seed | 1;
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                let cols = kinds.iter().enumerate().map(|(i, k)| {
                    let col: ArrayRef = match k {
                        0 => Arc::new(Float64Array::from_iter((0..rows).map(|_| {
                            let v = next();
                            (v % 7 != 0).then(|| (v >> 11) as f64 / 1e9 - 4e6)
                        }))),
                        1 => Arc::new(Int32Array::from_iter(
                            (0..rows).map(|_| Some((next() % 50) as i32)),
                        )),
                        _ => Arc::new(StringArray::from_iter((0..rows).map(|_| {
                            let v = next();
                            (v % 5 != 0).then(|| "w".repeat((v % 40) as usize))
                        }))),
                    };
                    (format!("c{i}"), col)
                });
                RecordBatch::try_from_iter(cols).unwrap()
            })
    }

    fn props() -> impl Strategy<Value = WriterProperties> {
        (1usize..200, 16usize..4096, any::<bool>(), 0u8..3, 0u8..3).prop_map(
            |(group, page, dict, stats, codec)| {
                WriterProperties::builder()
                    .set_max_row_group_size(group)
                    .set_data_page_size_limit(page)
                    .set_write_batch_size(16)
                    .set_dictionary_enabled(dict)
                    .set_statistics_enabled(match stats {
                        0 => EnabledStatistics::None,
                        1 => EnabledStatistics::Chunk,
                        _ => EnabledStatistics::Page,
                    })
                    .set_compression(match codec {
                        0 => Compression::UNCOMPRESSED,
                        1 => Compression::SNAPPY,
                        _ => Compression::ZSTD(ZstdLevel::default()),
                    })
                    .build()
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

        /// Whatever parquet's own ArrowWriter writes passes the checks
        /// unchanged (many row groups and pages, dictionaries, page
        /// statistics and indexes, each codec), and decodes to the table.
        #[test]
        fn files_written_by_arrow_writer_pass(t in random_table(), p in props()) {
            let mut w = ArrowWriter::try_new(Vec::new(), t.schema(), Some(p)).unwrap();
            w.write(&t).unwrap();
            let bytes = w.into_inner().unwrap();
            check(bytes.as_slice()).unwrap();
            check_footer(bytes.as_slice()).unwrap();
            prop_assert_eq!(table::decode_parquet(&bytes).unwrap(), t);
        }
    }

    /// Files of another writer (pyarrow; tests/fixtures/parquet/README.md)
    /// pass, as files and as bytes, and read to 300 rows.
    #[test]
    fn files_of_other_writers_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet");
        let mut seen = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_none_or(|x| x != "parquet") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            check(bytes.as_slice()).unwrap();
            let file = std::fs::File::open(&path).unwrap();
            check(&file).unwrap();
            check_footer(&file).unwrap();
            let t = table::read_table(&path).unwrap();
            assert_eq!(t.num_rows(), 300, "{}", path.display());
            assert_eq!(table::decode_parquet(&bytes).unwrap(), t);
            seen += 1;
        }
        assert_eq!(seen, 3);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let mut out = b"PAR1".to_vec();
        // 10,000 nested structs as field 1.
        out.extend(std::iter::repeat_n(0x1c, 10_000));
        out.extend(std::iter::repeat_n(0x00, 10_001));
        let len = (out.len() - 4) as u32;
        out.extend(len.to_le_bytes());
        out.extend(b"PAR1");
        let m = format!("{:#}", check(out.as_slice()).unwrap_err());
        assert!(m.contains("nested more than"), "{m}");
    }
}
