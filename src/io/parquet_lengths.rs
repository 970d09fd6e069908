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
//! each page's compressed size inside the chunk.
//!
//! The walk is typed. parquet decodes a field it knows by its id with the
//! type the Parquet Thrift IDL gives it, whatever wire type the field's
//! header announces (and a typed list's elements by the IDL's element
//! type, whatever the list header says). A field whose wire type differs
//! would make parquet read different bytes than a walk that follows the
//! wire types: the fuzz target `parquet` found a footer whose field 1
//! (`version`, an i32) was announced as a boolean, which carries no bytes,
//! so parquet read the next field's header as the version and then a list
//! count this walk never saw (126 GB reserved, an abort). [`FILE_META_DATA`]
//! and [`PAGE_HEADER`] describe the structs parquet reads, field by field;
//! a known field with another wire type is refused, an unknown one is
//! walked by its wire type (parquet skips it the same way). Only the
//! framing is parsed;
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

/// The type parquet reads a known field (or a typed list's elements) as.
#[derive(Clone, Copy)]
enum Ty {
    Bool,
    I8,
    I16,
    I32,
    I64,
    Double,
    /// `string` and `binary`.
    Bin,
    List(&'static Ty),
    Struct(&'static Schema),
}

impl Ty {
    /// Whether a value announced with compact wire type `wire` is read by
    /// parquet as this type from the same bytes.
    fn matches(self, wire: u8) -> bool {
        match self {
            Ty::Bool => wire == 1 || wire == 2,
            Ty::I8 => wire == 3,
            Ty::I16 => wire == 4,
            Ty::I32 => wire == 5,
            Ty::I64 => wire == 6,
            Ty::Double => wire == 7,
            Ty::Bin => wire == 8,
            Ty::List(_) => wire == 9,
            Ty::Struct(_) => wire == 12,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Ty::Bool => "a boolean",
            Ty::I8 => "an i8",
            Ty::I16 => "an i16",
            Ty::I32 => "an i32",
            Ty::I64 => "an i64",
            Ty::Double => "a double",
            Ty::Bin => "a string or binary",
            Ty::List(_) => "a list",
            Ty::Struct(s) => s.name,
        }
    }
}

/// A Thrift struct (or union) as parquet 57 decodes it: its known fields
/// and their types (src/file/metadata/thrift/mod.rs, src/basic.rs and
/// src/file/metadata/mod.rs of parquet, which follow parquet-format's
/// parquet.thrift). Encryption's fields are unknown here: the `encryption`
/// feature is off, so parquet skips them by their wire type.
struct Schema {
    name: &'static str,
    fields: &'static [(i16, Ty)],
}

impl Schema {
    fn field(&self, id: i16) -> Option<Ty> {
        self.fields.iter().find(|f| f.0 == id).map(|f| f.1)
    }
}

/// A struct parquet reads as empty (a union's member without fields).
static EMPTY: Schema = Schema {
    name: "an empty struct",
    fields: &[],
};

/// The footer: `FileMetaData`.
static FILE_META_DATA: Schema = Schema {
    name: "FileMetaData",
    fields: &[
        (1, Ty::I32),
        (2, Ty::List(&Ty::Struct(&SCHEMA_ELEMENT))),
        (3, Ty::I64),
        (4, Ty::List(&Ty::Struct(&ROW_GROUP))),
        (5, Ty::List(&Ty::Struct(&KEY_VALUE))),
        (6, Ty::Bin),
        (7, Ty::List(&Ty::Struct(&COLUMN_ORDER))),
    ],
};

static SCHEMA_ELEMENT: Schema = Schema {
    name: "SchemaElement",
    fields: &[
        (1, Ty::I32),
        (2, Ty::I32),
        (3, Ty::I32),
        (4, Ty::Bin),
        (5, Ty::I32),
        (6, Ty::I32),
        (7, Ty::I32),
        (8, Ty::I32),
        (9, Ty::I32),
        (10, Ty::Struct(&LOGICAL_TYPE)),
    ],
};

static LOGICAL_TYPE: Schema = Schema {
    name: "LogicalType",
    fields: &[
        (1, Ty::Struct(&EMPTY)),
        (2, Ty::Struct(&EMPTY)),
        (3, Ty::Struct(&EMPTY)),
        (4, Ty::Struct(&EMPTY)),
        (5, Ty::Struct(&DECIMAL_TYPE)),
        (6, Ty::Struct(&EMPTY)),
        (7, Ty::Struct(&TIMESTAMP_TYPE)),
        (8, Ty::Struct(&TIMESTAMP_TYPE)),
        (10, Ty::Struct(&INT_TYPE)),
        (11, Ty::Struct(&EMPTY)),
        (12, Ty::Struct(&EMPTY)),
        (13, Ty::Struct(&EMPTY)),
        (14, Ty::Struct(&EMPTY)),
        (15, Ty::Struct(&EMPTY)),
        (16, Ty::Struct(&VARIANT_TYPE)),
        (17, Ty::Struct(&GEOMETRY_TYPE)),
        (18, Ty::Struct(&GEOGRAPHY_TYPE)),
    ],
};

static DECIMAL_TYPE: Schema = Schema {
    name: "DecimalType",
    fields: &[(1, Ty::I32), (2, Ty::I32)],
};

/// `TimeType` has the same fields.
static TIMESTAMP_TYPE: Schema = Schema {
    name: "TimestampType",
    fields: &[(1, Ty::Bool), (2, Ty::Struct(&TIME_UNIT))],
};

static TIME_UNIT: Schema = Schema {
    name: "TimeUnit",
    fields: &[
        (1, Ty::Struct(&EMPTY)),
        (2, Ty::Struct(&EMPTY)),
        (3, Ty::Struct(&EMPTY)),
    ],
};

static INT_TYPE: Schema = Schema {
    name: "IntType",
    fields: &[(1, Ty::I8), (2, Ty::Bool)],
};

static VARIANT_TYPE: Schema = Schema {
    name: "VariantType",
    fields: &[(1, Ty::I8)],
};

static GEOMETRY_TYPE: Schema = Schema {
    name: "GeometryType",
    fields: &[(1, Ty::Bin)],
};

static GEOGRAPHY_TYPE: Schema = Schema {
    name: "GeographyType",
    fields: &[(1, Ty::Bin), (2, Ty::I32)],
};

static ROW_GROUP: Schema = Schema {
    name: "RowGroup",
    fields: &[
        (1, Ty::List(&Ty::Struct(&COLUMN_CHUNK))),
        (2, Ty::I64),
        (3, Ty::I64),
        (4, Ty::List(&Ty::Struct(&SORTING_COLUMN))),
        (5, Ty::I64),
        (6, Ty::I64),
        (7, Ty::I16),
    ],
};

static COLUMN_CHUNK: Schema = Schema {
    name: "ColumnChunk",
    fields: &[
        (1, Ty::Bin),
        (2, Ty::I64),
        (3, Ty::Struct(&COLUMN_META_DATA)),
        (4, Ty::I64),
        (5, Ty::I32),
        (6, Ty::I64),
        (7, Ty::I32),
    ],
};

static COLUMN_META_DATA: Schema = Schema {
    name: "ColumnMetaData",
    fields: &[
        (1, Ty::I32),
        (2, Ty::List(&Ty::I32)),
        (3, Ty::List(&Ty::Bin)),
        (4, Ty::I32),
        (5, Ty::I64),
        (6, Ty::I64),
        (7, Ty::I64),
        (8, Ty::List(&Ty::Struct(&KEY_VALUE))),
        (9, Ty::I64),
        (10, Ty::I64),
        (11, Ty::I64),
        (12, Ty::Struct(&STATISTICS)),
        (13, Ty::List(&Ty::Struct(&PAGE_ENCODING_STATS))),
        (14, Ty::I64),
        (15, Ty::I32),
        (16, Ty::Struct(&SIZE_STATISTICS)),
        (17, Ty::Struct(&GEOSPATIAL_STATISTICS)),
    ],
};

/// The column chunk's and the page's statistics (`PageStatistics` has the
/// same fields).
static STATISTICS: Schema = Schema {
    name: "Statistics",
    fields: &[
        (1, Ty::Bin),
        (2, Ty::Bin),
        (3, Ty::I64),
        (4, Ty::I64),
        (5, Ty::Bin),
        (6, Ty::Bin),
        (7, Ty::Bool),
        (8, Ty::Bool),
    ],
};

static PAGE_ENCODING_STATS: Schema = Schema {
    name: "PageEncodingStats",
    fields: &[(1, Ty::I32), (2, Ty::I32), (3, Ty::I32)],
};

static SIZE_STATISTICS: Schema = Schema {
    name: "SizeStatistics",
    fields: &[
        (1, Ty::I64),
        (2, Ty::List(&Ty::I64)),
        (3, Ty::List(&Ty::I64)),
    ],
};

static GEOSPATIAL_STATISTICS: Schema = Schema {
    name: "GeospatialStatistics",
    fields: &[(1, Ty::Struct(&BOUNDING_BOX)), (2, Ty::List(&Ty::I32))],
};

static BOUNDING_BOX: Schema = Schema {
    name: "BoundingBox",
    fields: &[
        (1, Ty::Double),
        (2, Ty::Double),
        (3, Ty::Double),
        (4, Ty::Double),
        (5, Ty::Double),
        (6, Ty::Double),
        (7, Ty::Double),
        (8, Ty::Double),
    ],
};

static KEY_VALUE: Schema = Schema {
    name: "KeyValue",
    fields: &[(1, Ty::Bin), (2, Ty::Bin)],
};

static SORTING_COLUMN: Schema = Schema {
    name: "SortingColumn",
    fields: &[(1, Ty::I32), (2, Ty::Bool), (3, Ty::Bool)],
};

static COLUMN_ORDER: Schema = Schema {
    name: "ColumnOrder",
    fields: &[(1, Ty::Struct(&EMPTY))],
};

/// A page's header: `PageHeader`.
static PAGE_HEADER: Schema = Schema {
    name: "PageHeader",
    fields: &[
        (1, Ty::I32),
        (2, Ty::I32),
        (3, Ty::I32),
        (4, Ty::I32),
        (5, Ty::Struct(&DATA_PAGE_HEADER)),
        (6, Ty::Struct(&EMPTY)),
        (7, Ty::Struct(&DICTIONARY_PAGE_HEADER)),
        (8, Ty::Struct(&DATA_PAGE_HEADER_V2)),
    ],
};

static DATA_PAGE_HEADER: Schema = Schema {
    name: "DataPageHeader",
    fields: &[
        (1, Ty::I32),
        (2, Ty::I32),
        (3, Ty::I32),
        (4, Ty::I32),
        (5, Ty::Struct(&STATISTICS)),
    ],
};

static DICTIONARY_PAGE_HEADER: Schema = Schema {
    name: "DictionaryPageHeader",
    fields: &[(1, Ty::I32), (2, Ty::I32), (3, Ty::Bool)],
};

static DATA_PAGE_HEADER_V2: Schema = Schema {
    name: "DataPageHeaderV2",
    fields: &[
        (1, Ty::I32),
        (2, Ty::I32),
        (3, Ty::I32),
        (4, Ty::I32),
        (5, Ty::I32),
        (6, Ty::I32),
        (7, Ty::Bool),
        (8, Ty::Struct(&STATISTICS)),
    ],
};

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
    w.structure(0, Some(&FILE_META_DATA), &mut |_, _| {})
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
            let walked = w.structure(0, Some(&PAGE_HEADER), &mut |id, v| {
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

    /// A struct's fields up to its stop byte, typed by `schema` when
    /// parquet knows the struct; `field` sees each integer field's id and
    /// value.
    fn structure(
        &mut self,
        depth: u32,
        schema: Option<&Schema>,
        field: &mut dyn FnMut(i16, i64),
    ) -> Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(Stop::Bad(format!(
                "values nested more than {MAX_DEPTH} deep at byte {}",
                self.at()
            )));
        }
        let mut last = 0i16;
        loop {
            let at = self.at();
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
            let known = schema.and_then(|s| s.field(id).map(|t| (s, t)));
            match (known, ty) {
                (Some((s, expect)), _) if !expect.matches(ty) => {
                    return Err(Stop::Bad(format!(
                        "field {id} of {} at byte {at} is announced as Thrift type {ty}; \
                         parquet reads it as {} (its bytes would be read as another value)",
                        s.name,
                        expect.name()
                    )))
                }
                // Booleans carry their value in the type.
                (_, 1 | 2) => {}
                (Some((_, expect)), _) => {
                    if let Some(v) = self.typed(expect, depth)? {
                        field(id, v);
                    }
                }
                (None, _) => {
                    if let Some(v) = self.value(ty, depth)? {
                        field(id, v);
                    }
                }
            }
        }
    }

    /// A value of a known field, its wire type already checked against
    /// `ty`: a typed list's elements and a known struct's fields are
    /// checked the same way. Integers are returned.
    fn typed(&mut self, ty: Ty, depth: u32) -> Result<Option<i64>, Stop> {
        match ty {
            Ty::List(elem) => {
                let at = self.at();
                let head = self.byte()?;
                // parquet reads a header byte 0 as an empty list.
                if head == 0 {
                    return Ok(None);
                }
                let n = match head >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                let n = self.bounded("list or set", at, n)?;
                let wire = head & 0x0f;
                if n > 0 && (!elem.matches(wire) || wire == 1 || wire == 2) {
                    return Err(Stop::Bad(format!(
                        "a list at byte {at} announces elements of Thrift type {wire}; \
                         parquet reads them as {}",
                        elem.name()
                    )));
                }
                for _ in 0..n {
                    self.typed(*elem, depth + 1)?;
                }
                Ok(None)
            }
            Ty::Struct(s) => self
                .structure(depth + 1, Some(s), &mut |_, _| {})
                .map(|_| None),
            Ty::Bool => self.value(1, depth),
            Ty::I8 => self.value(3, depth),
            Ty::I16 => self.value(4, depth),
            Ty::I32 => self.value(5, depth),
            Ty::I64 => self.value(6, depth),
            Ty::Double => self.value(7, depth),
            Ty::Bin => self.value(8, depth),
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
            12 => self.structure(depth + 1, None, &mut |_, _| {})?,
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
        // FileMetaData field 15 (unknown to parquet, which skips it) as a
        // binary announcing 1e12 bytes.
        let mut out = b"PAR1".to_vec();
        out.extend([0xf8, 0x80, 0xa0, 0x94, 0xa5, 0x8d, 0x1d, 0x00]);
        out.extend(8u32.to_le_bytes());
        out.extend(b"PAR1");
        let m = format!("{:#}", check(out.as_slice()).unwrap_err());
        assert!(
            m.contains("string or binary at byte 5 announces 1000000000000"),
            "{m}"
        );
    }

    /// A file around `footer`, the footer's bytes.
    fn with_footer(footer: &[u8]) -> Vec<u8> {
        let mut out = b"PAR1".to_vec();
        out.extend(footer);
        out.extend((footer.len() as u32).to_le_bytes());
        out.extend(b"PAR1");
        out
    }

    #[test]
    fn a_known_field_announced_with_another_type_is_refused() {
        // FileMetaData field 1 (version, an i32) announced as a boolean:
        // parquet would read the next byte as the version.
        let m = format!(
            "{:#}",
            check(&with_footer(&[0x11, 0x19, 0x00])[..]).unwrap_err()
        );
        assert!(m.contains("field 1 of FileMetaData at byte 4"), "{m}");
        assert!(m.contains("parquet reads it as an i32"), "{m}");
        // The same field as an i32 passes the walk.
        check(&with_footer(&[0x15, 0x02, 0x00])[..]).unwrap();
        // Nested: the schema's first element with field 4 (name, a
        // string) announced as an i64.
        let m = format!(
            "{:#}",
            check(&with_footer(&[0x15, 0x02, 0x19, 0x1c, 0x46, 0x02, 0x00, 0x00])[..]).unwrap_err()
        );
        assert!(m.contains("field 4 of SchemaElement at byte 8"), "{m}");
        // DataPageHeaderV2's is_compressed (parquet unwraps its boolean
        // value: a panic) announced as an i32, inside a page header.
        let mut w = Walk {
            buf: &[0x8c, 0x75, 0x02, 0x00, 0x00],
            pos: 0,
            base: 0,
        };
        match w.structure(0, Some(&PAGE_HEADER), &mut |_, _| {}) {
            Err(Stop::Bad(m)) => assert!(m.contains("field 7 of DataPageHeaderV2"), "{m}"),
            _ => panic!("the page header passed"),
        }
    }

    #[test]
    fn a_typed_list_announcing_other_elements_is_refused() {
        // The schema (a list of SchemaElement structs) announcing one i32.
        let m = format!(
            "{:#}",
            check(&with_footer(&[0x15, 0x02, 0x19, 0x15, 0x02, 0x00])[..]).unwrap_err()
        );
        assert!(
            m.contains("announces elements of Thrift type 5; parquet reads them as SchemaElement"),
            "{m}"
        );
        // An empty list in the header byte 0 form passes.
        check(&with_footer(&[0x15, 0x02, 0x19, 0x00, 0x00])[..]).unwrap();
    }

    #[test]
    fn a_list_of_booleans_in_a_skipped_field_is_refused() {
        // FileMetaData field 15 (parquet skips it) holding two booleans.
        let m = format!(
            "{:#}",
            check(&with_footer(&[0xf9, 0x21, 0x01, 0x01, 0x00])[..]).unwrap_err()
        );
        assert!(m.contains("a list of booleans"), "{m}");
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
        assert_eq!(seen, 5);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let mut out = b"PAR1".to_vec();
        // 10,000 nested structs, each as field 15 (unknown to parquet).
        out.extend(std::iter::repeat_n(0xfc, 10_000));
        out.extend(std::iter::repeat_n(0x00, 10_001));
        let len = (out.len() - 4) as u32;
        out.extend(len.to_le_bytes());
        out.extend(b"PAR1");
        let m = format!("{:#}", check(out.as_slice()).unwrap_err());
        assert!(m.contains("nested more than"), "{m}");
    }
}
