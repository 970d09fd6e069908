//! One plate through the model: decode its table, check it, correct it (or
//! re-derive a replayed plate's output), encode the result.
//!
//! Pure functions of the table, the configuration and the model: no I/O,
//! no telemetry. The order around them (log, publish, apply, acknowledge)
//! is [`super::pipeline`]'s.

use arrow_array::{Array, RecordBatch};
use serde::Serialize;

use crate::config::CorrectConfig;
use crate::io::dataset::{LoadSpec, ProfileTable};
use crate::io::profile::{self, FeatureColumns};
use crate::method::model::{content_hash, Lookup, Model, PlateTimings};
use crate::qc::{OutlierVerdict, PlateQc, QcConfig};
use crate::serve::outcome::{PlateError, RejectReason, Rejection};

/// A plate ready for the model.
pub struct DecodedPlate {
    /// Plate id.
    pub plate: String,
    /// Batch (all rows share it).
    pub batch: String,
    /// The input table.
    pub table: RecordBatch,
    /// Its feature columns.
    pub columns: FeatureColumns,
    /// Feature values, in the table's column order.
    pub x: ndarray::Array2<f64>,
    /// Control rows.
    pub controls: Option<Vec<bool>>,
    /// Hash of the decoded content ([`table_hash`]): the plate's identity,
    /// whatever its encoding.
    pub hash: u64,
    /// Hash of the input bytes: the identity older states recorded (before
    /// the content hash), still recognised as the same plate on lookup.
    pub legacy_hash: u64,
}

/// The QC record published per plate.
#[derive(Debug, Clone, Serialize)]
pub struct QcRecord {
    /// Plate id.
    pub plate: String,
    /// Batch.
    pub batch: String,
    /// Model version the plate was corrected with.
    pub model_version: String,
    /// Whether this is a re-publication of an already incorporated plate.
    pub replay: bool,
    /// Figures (absent for replays).
    pub qc: Option<PlateQc>,
    /// Outlier verdict against the batch's previous plates (absent for replays).
    pub outlier: Option<OutlierVerdict>,
    /// Seconds spent correcting.
    pub seconds: f64,
    /// While a new generation is under evaluation (`balans realign`): how
    /// far its output of this plate is from the live generation's (set by
    /// the pipeline on both generations' records; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_drift: Option<crate::serve::generations::GenerationDrift>,
}

/// Decode and check a plate table. `fallback_id` names the plate when the
/// table has no plate column.
pub fn decode(
    table: RecordBatch,
    bytes: &[u8],
    fallback_id: &str,
    cfg: &CorrectConfig,
    source: &str,
) -> Result<DecodedPlate, Rejection> {
    let spec = LoadSpec::for_plate(cfg)?;
    let t = ProfileTable::from_table(table, &spec, source)?;
    let batch = t.single_batch()?.to_string();
    let plate = t.single_plate()?.unwrap_or(fallback_id).to_string();
    let hash = table_hash(&t.table);
    Ok(DecodedPlate {
        plate,
        batch,
        table: t.table,
        columns: t.columns,
        x: t.x,
        controls: t.controls,
        hash,
        legacy_hash: content_hash(bytes),
    })
}

/// FNV-1a hash of a table's content: column names, types and every value
/// (nulls marked), independent of the file format, compression, row-group
/// or batch layout. The same plate re-encoded (Parquet instead of Arrow, a
/// different compression) hashes the same; a changed value, name or type
/// does not.
pub fn table_hash(t: &RecordBatch) -> u64 {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    use arrow_schema::DataType;

    let mut h = Fnv::new();
    h.bytes(&(t.num_columns() as u64).to_le_bytes());
    h.bytes(&(t.num_rows() as u64).to_le_bytes());
    for (f, col) in t.schema().fields().iter().zip(t.columns()) {
        h.bytes(f.name().as_bytes());
        h.bytes(&[0xff]);
        h.bytes(f.data_type().to_string().as_bytes());
        h.bytes(&[0xff]);
        macro_rules! prim {
            ($t:ty) => {{
                let a = col.as_primitive::<$t>();
                for i in 0..a.len() {
                    if a.is_null(i) {
                        h.bytes(&[0]);
                    } else {
                        h.bytes(&[1]);
                        h.bytes(&a.value(i).to_le_bytes());
                    }
                }
            }};
        }
        match f.data_type() {
            DataType::Float64 => prim!(Float64Type),
            DataType::Float32 => prim!(Float32Type),
            DataType::Int64 => prim!(Int64Type),
            DataType::Int32 => prim!(Int32Type),
            DataType::Int16 => prim!(Int16Type),
            DataType::Int8 => prim!(Int8Type),
            DataType::UInt64 => prim!(UInt64Type),
            DataType::UInt32 => prim!(UInt32Type),
            DataType::UInt16 => prim!(UInt16Type),
            DataType::UInt8 => prim!(UInt8Type),
            _ => {
                // Text and anything else: the rendered value, length-prefixed.
                let opts = arrow_cast::display::FormatOptions::default();
                let fmt = arrow_cast::display::ArrayFormatter::try_new(col.as_ref(), &opts).ok();
                for i in 0..col.len() {
                    match (&fmt, col.is_null(i)) {
                        (_, true) => h.bytes(&[0]),
                        (Some(fmt), false) => {
                            let v = fmt.value(i).to_string();
                            h.bytes(&[1]);
                            h.bytes(&(v.len() as u64).to_le_bytes());
                            h.bytes(v.as_bytes());
                        }
                        (None, false) => h.bytes(&[2]),
                    }
                }
            }
        }
    }
    h.0
}

/// FNV-1a, the same function as [`content_hash`], fed in pieces.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf29ce484222325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for x in b {
            self.0 ^= u64::from(*x);
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

/// Outcome of running a plate through the model.
pub struct Corrected {
    /// Output table (same layout as the input).
    pub table: RecordBatch,
    /// QC record.
    pub qc: QcRecord,
    /// The state change to log and apply (None for replays).
    pub delta: Option<crate::method::model::PlateDelta>,
    /// Seconds per stage of the core (zero for replays), plus the encode
    /// stage in [`Corrected::encode_seconds`].
    pub timings: PlateTimings,
    /// Seconds spent building the output table.
    pub encode_seconds: f64,
    /// The corrected feature values (plate column order, before the
    /// output's integer rounding): what generations are compared on.
    pub values: ndarray::Array2<f64>,
}

/// Correct a decoded plate (pure: the model is not changed) and judge its QC
/// figures against the batch's history with `qc`. Rejects a plate whose
/// features do not match the model or whose id is reused with other content.
pub fn correct(
    model: &Model,
    p: &DecodedPlate,
    qc_cfg: &QcConfig,
) -> Result<Corrected, PlateError> {
    let started = std::time::Instant::now();
    let schema = |e: anyhow::Error| Rejection::from_error(RejectReason::Schema, &e);
    let bad = |e: anyhow::Error| Rejection::from_error(RejectReason::Model, &e);
    // Model feature order -> plate columns.
    let pos = model.feature_positions(&p.columns.names).map_err(schema)?;
    let x = p.x.select(ndarray::Axis(1), &pos);
    let mut timings = PlateTimings::default();
    let mut outlier = None;
    // A plate logged by an older version was recorded under its byte hash:
    // the same bytes again are still a replay.
    let lookup = match model.lookup(&p.plate, p.hash) {
        Lookup::Clash(r) if r.content_hash == p.legacy_hash => Lookup::Replay(r),
        other => other,
    };
    let (values, qc, delta, version, replay) = match lookup {
        Lookup::Clash(r) => {
            return Err(PlateError::Rejected(Rejection::new(
                RejectReason::Duplicate,
                format!(
                "duplicate plate id {}: already incorporated (version {}) with different content",
                p.plate, r.version
            ),
            )))
        }
        Lookup::Replay(r) => {
            let v = model
                .replay_plate(&r, x.view(), p.controls.as_deref())
                .map_err(schema)?;
            (v, None, None, r.version.clone(), true)
        }
        Lookup::New => {
            let pc = crate::qc::correct_plate_with(
                model,
                &p.plate,
                &p.batch,
                x.view(),
                p.controls.as_deref(),
                p.hash,
                qc_cfg,
            )
            .map_err(bad)?;
            timings = pc.timings;
            let t = std::time::Instant::now();
            let history = model.qc_history(&p.batch);
            outlier = Some(crate::qc::assess_plate(&history, &pc.qc, qc_cfg));
            timings.qc += t.elapsed().as_secs_f64();
            let v = pc.delta.version.clone();
            (pc.corrected, Some(pc.qc), Some(pc.delta), v, false)
        }
    };
    let t_encode = std::time::Instant::now();
    // Back to the plate's column order.
    let mut out = p.x.clone();
    for (model_j, &plate_j) in pos.iter().enumerate() {
        out.column_mut(plate_j).assign(&values.column(model_j));
    }
    // Cannot fail on a table that decoded: an error here is a bug, not a
    // bad plate, so it stops the daemon.
    let table = profile::replace_features(&p.table, &p.columns, out.view(), &[])?;
    Ok(Corrected {
        table,
        qc: QcRecord {
            plate: p.plate.clone(),
            batch: p.batch.clone(),
            model_version: version,
            replay,
            qc,
            outlier,
            seconds: started.elapsed().as_secs_f64(),
            generation_drift: None,
        },
        delta,
        timings,
        encode_seconds: t_encode.elapsed().as_secs_f64(),
        values: out,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Float64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;
    use crate::io::table;

    fn plate(v: f64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("Metadata_Plate", DataType::Utf8, true),
            Field::new("F1", DataType::Float64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["P", "P"])),
                Arc::new(Float64Array::from(vec![1.0, v])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn table_hash_follows_content_not_encoding() {
        let t = plate(2.0);
        let from_ipc = table::decode_ipc_stream(&table::encode_ipc_stream(&t).unwrap()).unwrap();
        let from_parquet = table::decode_parquet(&table::encode_parquet(&t).unwrap()).unwrap();
        assert_ne!(
            table::encode_ipc_stream(&t).unwrap(),
            table::encode_parquet(&t).unwrap()
        );
        assert_eq!(table_hash(&t), table_hash(&from_ipc));
        assert_eq!(table_hash(&t), table_hash(&from_parquet));
        assert_ne!(table_hash(&t), table_hash(&plate(2.5)), "a value");
        let renamed = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("Metadata_Plate", DataType::Utf8, true),
                Field::new("F2", DataType::Float64, true),
            ])),
            t.columns().to_vec(),
        )
        .unwrap();
        assert_ne!(table_hash(&t), table_hash(&renamed), "a name");
    }

    /// 40 rows, one batch, one plate, 4 features.
    fn wide_plate() -> RecordBatch {
        let n = 40;
        let mut fields = vec![
            Field::new("Metadata_Batch", DataType::Utf8, true),
            Field::new("Metadata_Plate", DataType::Utf8, true),
        ];
        let mut cols: Vec<arrow_array::ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["B1"; n])),
            Arc::new(StringArray::from(vec!["P1"; n])),
        ];
        for j in 0..4 {
            fields.push(Field::new(format!("F{j}"), DataType::Float64, true));
            let v: Vec<f64> = (0..n)
                .map(|i| ((i * (j + 3) + j * 7) % 17) as f64 + 0.1 * j as f64)
                .collect();
            cols.push(Arc::new(Float64Array::from(v)));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
    }

    #[test]
    fn a_plate_logged_under_its_byte_hash_is_still_a_replay() {
        let cfg = CorrectConfig {
            batch_col: Some("Metadata_Batch".into()),
            ..CorrectConfig::default()
        };
        let qc = QcConfig::default();
        let dec = |bytes: &[u8]| decode(wide_plate(), bytes, "f", &cfg, "p.arrow").unwrap();
        let first = dec(b"old bytes");
        let params = crate::method::params::Params {
            threads: 1,
            ..Default::default()
        };
        let mut model =
            Model::bootstrap(first.x.view(), None, first.columns.names.clone(), &params).unwrap();
        // An older daemon recorded the hash of the bytes.
        let old = DecodedPlate {
            hash: first.legacy_hash,
            ..dec(b"old bytes")
        };
        let out = correct(&model, &old, &qc).unwrap();
        model.apply(out.delta.as_ref().unwrap()).unwrap();
        // The same bytes again: a replay, recognised by either hash.
        let again = correct(&model, &first, &qc).unwrap();
        assert!(again.qc.replay && again.delta.is_none());
        // Other bytes: with only the byte hash on record, it cannot be told
        // apart from other content, so it is still a clash.
        match correct(&model, &dec(b"other bytes"), &qc) {
            Err(PlateError::Rejected(r)) => assert_eq!(r.reason, RejectReason::Duplicate),
            _ => panic!("expected a duplicate"),
        }
    }
}
