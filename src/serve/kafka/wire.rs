//! The Kafka wire format of plates: header names, content types, and
//! turning a message payload into a table (pure; no broker here).
//!
//! A plate message's value is an Arrow IPC *stream* (the default) or a
//! Parquet file; the `content-type` header says which, and the payload's
//! magic bytes are checked too so a mislabelled message is rejected with a
//! clear reason instead of a decoder panic deep inside.

use arrow_array::RecordBatch;

use crate::serve::outcome::{RejectReason, Rejection};

/// Header: the payload's content type.
pub const H_CONTENT_TYPE: &str = "content-type";
/// Header: the plate schema version (only [`SCHEMA_VERSION`] is accepted).
pub const H_SCHEMA_VERSION: &str = "balans-schema-version";
/// Header: plate id of a chunk.
pub const H_PLATE_ID: &str = "balans-plate-id";
/// Header: 0-based chunk index.
pub const H_CHUNK_INDEX: &str = "balans-chunk-index";
/// Header: number of chunks of the plate.
pub const H_CHUNK_COUNT: &str = "balans-chunk-count";
/// Header (outputs): model version the plate was corrected with.
pub const H_MODEL_VERSION: &str = "balans-model-version";
/// Header (outputs): whether this is a re-publication of a plate already
/// incorporated (same key and version as the first publication).
pub const H_REPLAY: &str = "balans-replay";
/// Header (outputs, DLQ): topic of the input message.
pub const H_SOURCE_TOPIC: &str = "balans-source-topic";
/// Header (outputs, DLQ): partition of the input message.
pub const H_SOURCE_PARTITION: &str = "balans-source-partition";
/// Header (outputs, DLQ): offset of the input message (the first chunk's
/// for a chunked plate).
pub const H_SOURCE_OFFSET: &str = "balans-source-offset";
/// Header (DLQ): why the message was rejected.
pub const H_DLQ_REASON: &str = "balans-dlq-reason";

/// Content type of an Arrow IPC stream.
pub const CT_ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";
/// Content type of a Parquet file.
pub const CT_PARQUET: &str = "application/vnd.apache.parquet";
/// Content type of the QC records.
pub const CT_JSON: &str = "application/json";
/// The plate schema version this daemon reads and writes.
pub const SCHEMA_VERSION: &str = "1";

/// How a payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Arrow IPC stream.
    ArrowStream,
    /// Parquet file.
    Parquet,
}

/// The encoding named by a content-type header (None = not given:
/// Arrow IPC stream). Parameters after `;` are ignored.
pub fn encoding_of(content_type: Option<&str>) -> Result<Encoding, Rejection> {
    let Some(ct) = content_type else {
        return Ok(Encoding::ArrowStream);
    };
    let base = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match base.as_str() {
        CT_ARROW_STREAM | "application/vnd.apache.arrow" | "application/x-arrow-stream" => {
            Ok(Encoding::ArrowStream)
        }
        CT_PARQUET | "application/x-parquet" | "application/parquet" => Ok(Encoding::Parquet),
        _ => Err(Rejection::new(
            RejectReason::Unreadable,
            format!("unsupported content type {ct:?} (expected {CT_ARROW_STREAM} or {CT_PARQUET})"),
        )),
    }
}

/// Check the schema-version header (absent = current).
pub fn check_schema_version(v: Option<&str>) -> Result<(), Rejection> {
    match v {
        None => Ok(()),
        Some(v) if v.trim() == SCHEMA_VERSION => Ok(()),
        Some(v) => Err(Rejection::new(
            RejectReason::Schema,
            format!("unsupported schema version {v:?} (this daemon reads {SCHEMA_VERSION})"),
        )),
    }
}

/// Decode a plate payload into one table. `source` names the message
/// (topic/partition@offset) in the reason.
pub fn decode_payload(
    bytes: &[u8],
    encoding: Encoding,
    source: &str,
) -> Result<RecordBatch, Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::new(
            RejectReason::Empty,
            format!("{source}: empty message (no bytes)"),
        ));
    }
    let looks_parquet = bytes.len() >= 8 && bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1");
    let r = match encoding {
        Encoding::Parquet => {
            if !looks_parquet {
                return Err(Rejection::new(
                    RejectReason::Unreadable,
                    format!(
                        "{source}: not a Parquet file (content type says Parquet; no PAR1 magic)"
                    ),
                ));
            }
            crate::io::table::decode_parquet(bytes)
        }
        Encoding::ArrowStream => {
            if looks_parquet {
                return Err(Rejection::new(
                    RejectReason::Unreadable,
                    format!(
                        "{source}: payload is Parquet but the content type says Arrow IPC stream"
                    ),
                ));
            }
            check_ipc_prefix(bytes, source)?;
            crate::io::table::decode_ipc_stream(bytes)
        }
    };
    r.map_err(|e| {
        // A readable table with a bad layout (a column name twice) is a
        // schema rejection, as in the directory mode.
        if crate::io::table::is_layout_error(&e) {
            return Rejection::new(RejectReason::Schema, format!("{source}: {e:#}"));
        }
        Rejection::new(
            RejectReason::Unreadable,
            format!(
                "{source}: not a readable {} plate: {e:#}",
                match encoding {
                    Encoding::ArrowStream => "Arrow IPC stream",
                    Encoding::Parquet => "Parquet",
                }
            ),
        )
    })
}

/// An Arrow IPC stream starts with `0xFFFFFFFF` (continuation marker) and
/// the little-endian length of its schema message (or, in the legacy format,
/// with the length alone). Refuse a prefix that cannot be a stream before
/// the decoder trusts a garbage length.
fn check_ipc_prefix(bytes: &[u8], source: &str) -> Result<(), Rejection> {
    let word = |at: usize| -> Option<u32> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (len, body) = match word(0) {
        Some(0xFFFF_FFFF) => (word(4), 8),
        w => (w, 4),
    };
    match len {
        Some(l) if l > 0 && (l as usize) <= bytes.len().saturating_sub(body) => Ok(()),
        _ => Err(Rejection::new(
            RejectReason::Unreadable,
            format!(
                "{source}: not an Arrow IPC stream (no valid schema message at the start; {} bytes)",
                bytes.len()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn table() -> RecordBatch {
        let a = arrow_array::Float64Array::from(vec![1.0, 2.0]);
        RecordBatch::try_from_iter(vec![("x", Arc::new(a) as arrow_array::ArrayRef)]).unwrap()
    }

    #[test]
    fn round_trips_both_encodings() {
        let t = table();
        let ipc = crate::io::table::encode_ipc_stream(&t).unwrap();
        assert_eq!(decode_payload(&ipc, Encoding::ArrowStream, "m").unwrap(), t);
        let pq = crate::io::table::encode_parquet(&t).unwrap();
        assert_eq!(decode_payload(&pq, Encoding::Parquet, "m").unwrap(), t);
        let e = decode_payload(&pq, Encoding::ArrowStream, "m").unwrap_err();
        assert!(e.message.contains("Parquet"), "{e:?}");
    }

    #[test]
    fn garbage_is_rejected_with_the_source() {
        let e = decode_payload(b"hello, not arrow", Encoding::ArrowStream, "t/0@5").unwrap_err();
        assert!(
            e.message.contains("t/0@5") && e.message.contains("Arrow"),
            "{e:?}"
        );
        let e = decode_payload(b"", Encoding::ArrowStream, "t/0@5").unwrap_err();
        assert!(e.message.contains("empty"), "{e:?}");
        assert!(encoding_of(Some("text/csv")).is_err());
        assert_eq!(
            encoding_of(Some("application/vnd.apache.parquet; v=1")).unwrap(),
            Encoding::Parquet
        );
        assert!(check_schema_version(Some("2")).is_err());
        assert!(check_schema_version(Some("1")).is_ok());
    }

    /// A payload whose table names a column twice is a `schema` rejection
    /// (as in the directory mode), naming the column and the message.
    #[test]
    fn duplicate_column_names_are_a_schema_rejection() {
        let a = Arc::new(arrow_array::Float64Array::from(vec![1.0, 2.0])) as arrow_array::ArrayRef;
        let schema = Arc::new(arrow_schema::Schema::new(vec![
            arrow_schema::Field::new("x", arrow_schema::DataType::Float64, false),
            arrow_schema::Field::new("x", arrow_schema::DataType::Float64, false),
        ]));
        let t = RecordBatch::try_new(schema, vec![a.clone(), a]).unwrap();
        let ipc = crate::io::table::encode_ipc_stream(&t).unwrap();
        let e = decode_payload(&ipc, Encoding::ArrowStream, "t/0@9").unwrap_err();
        assert_eq!(e.reason, RejectReason::Schema, "{e:?}");
        assert!(
            e.message.contains("t/0@9") && e.message.contains('x'),
            "{e:?}"
        );
    }
}
