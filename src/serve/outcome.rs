//! How a plate's trip through the daemon can end.
//!
//! A plate either makes it (corrected, or re-published as a replay) or it
//! does not, and when it does not there are exactly two cases that call for
//! different handling:
//!
//! - the *plate* is bad ([`Rejection`]: unreadable, wrong layout, NaN, a
//!   reused id...): it goes to the dead-letter destination with a reason and
//!   the daemon carries on;
//! - the *daemon* cannot go on (a disk that refuses the write-ahead log, an
//!   output that cannot be written): the error stops the loop, the input
//!   stays unacknowledged and is redone after a restart.
//!
//! [`PlateError`] is that choice as one type, so the steps of the pipeline
//! use `?` for both and the pipeline decides once what each case means.

use serde::{Deserialize, Serialize};

use crate::io::error::{LoadError, LoadErrorKind};

/// Why a plate was dead-lettered: a small fixed set (the `reason` label of
/// the Prometheus families, the first word of a DLQ reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Not a readable table (not Arrow/Parquet/CSV, truncated, wrong content type).
    Unreadable,
    /// Readable, but not a plate of the expected layout (batch column
    /// missing, several batches or plate ids, model features missing, ...).
    Schema,
    /// NaN/inf/null feature values.
    NonFinite,
    /// No rows.
    Empty,
    /// A plate id already incorporated with different content.
    Duplicate,
    /// Larger than the configured limit (`[kafka] max_plate_bytes`, chunk
    /// reassembly; `[serve] max_plate_bytes` for inbox files).
    Oversized,
    /// The model could not take the plate (e.g. cannot bootstrap from it).
    Model,
    /// A feature value beyond `[correct] max_abs_value` in magnitude.
    OutOfRange,
}

impl RejectReason {
    /// Every reason.
    pub const ALL: [RejectReason; 8] = [
        RejectReason::Unreadable,
        RejectReason::Schema,
        RejectReason::NonFinite,
        RejectReason::Empty,
        RejectReason::Duplicate,
        RejectReason::Oversized,
        RejectReason::Model,
        RejectReason::OutOfRange,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Unreadable => "unreadable",
            RejectReason::Schema => "schema",
            RejectReason::NonFinite => "non_finite",
            RejectReason::Empty => "empty",
            RejectReason::Duplicate => "duplicate",
            RejectReason::Oversized => "oversized",
            RejectReason::Model => "model",
            RejectReason::OutOfRange => "out_of_range",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a plate was rejected (it goes to the dead-letter destination): a
/// reason kind (the metric label, the DLQ header) and a message for people.
/// Displayed as `<kind>: <message>`, the DLQ reason format of both modes.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The kind.
    pub reason: RejectReason,
    /// What exactly was wrong (column, row, ...).
    pub message: String,
}

impl Rejection {
    /// A rejection of kind `reason`.
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            message: message.into(),
        }
    }

    /// A rejection from an error, with its context chain as the message.
    pub fn from_error(reason: RejectReason, e: &anyhow::Error) -> Rejection {
        Rejection::new(reason, format!("{e:#}"))
    }

    /// The same rejection with `source` (a file, `topic/partition@offset`)
    /// in front of the message.
    pub fn at(self, source: &str) -> Rejection {
        Rejection::new(self.reason, format!("{source}: {}", self.message))
    }
}

/// A table that failed to load is rejected with the reason of the same
/// kind (the loader's message names the file, column and row).
impl From<LoadError> for Rejection {
    fn from(e: LoadError) -> Rejection {
        let reason = match e.kind() {
            LoadErrorKind::Unreadable => RejectReason::Unreadable,
            LoadErrorKind::Schema => RejectReason::Schema,
            LoadErrorKind::NonFinite => RejectReason::NonFinite,
            LoadErrorKind::Empty => RejectReason::Empty,
            LoadErrorKind::OutOfRange => RejectReason::OutOfRange,
        };
        Rejection::new(reason, e.message())
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// Why a plate did not make it: the plate is bad, or the daemon cannot go on.
#[derive(Debug)]
pub enum PlateError {
    /// The plate goes to the dead-letter destination; the daemon carries on.
    Rejected(Rejection),
    /// Infrastructure failure: the daemon stops, the input stays unacknowledged.
    Fatal(anyhow::Error),
}

impl From<Rejection> for PlateError {
    fn from(r: Rejection) -> PlateError {
        PlateError::Rejected(r)
    }
}

impl From<anyhow::Error> for PlateError {
    fn from(e: anyhow::Error) -> PlateError {
        PlateError::Fatal(e)
    }
}

/// How one input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Corrected and incorporated.
    Corrected,
    /// Re-published from the stored state (already incorporated).
    Replayed,
    /// Dead-lettered, with the kind of rejection.
    Rejected(RejectReason),
}

/// Counts of what the daemon did (both modes).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Plates corrected and incorporated.
    pub corrected: usize,
    /// Plates re-published (already incorporated).
    pub replayed: usize,
    /// Inputs dead-lettered (files; Kafka: messages or chunk sets' chunks).
    pub rejected: usize,
}

impl RunReport {
    /// Count one finished input.
    pub fn count(&mut self, o: Outcome) {
        match o {
            Outcome::Corrected => self.corrected += 1,
            Outcome::Replayed => self.replayed += 1,
            Outcome::Rejected(_) => self.rejected += 1,
        }
    }
}
