//! Why a profile table could not be loaded, classified.
//!
//! The offline commands print the message and exit; the daemon must also
//! *classify* a rejected plate (the `reason` label of
//! `balans_plates_dead_lettered_total`, the dead-letter header). So every
//! failure of the loader ([`crate::io::dataset`]) and of the column helpers
//! ([`crate::io::profile`]) is a [`LoadError`]: a [`LoadErrorKind`] for
//! machines and a message for people that names the source (file or
//! message), the column and, for values, the 1-based data row.

use std::fmt;

/// The class of a [`LoadError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoadErrorKind {
    /// The bytes are not a table: missing or unreadable file, unknown
    /// extension, corrupt Parquet/IPC/CSV.
    Unreadable,
    /// The table (or what it is read with) does not fit: a missing or null
    /// metadata column, no feature column, a bad control selector or
    /// exclude regex, no control row, several batches or plates in a plate.
    Schema,
    /// A null, NaN or infinite feature value the [non-finite
    /// policy](crate::io::profile::NonFinitePolicy) refuses (or cannot
    /// repair).
    NonFinite,
    /// The table has no rows.
    Empty,
    /// A finite feature value beyond the magnitude bound
    /// ([`ValueRules::max_abs_value`](crate::io::profile::ValueRules)).
    OutOfRange,
}

impl LoadErrorKind {
    /// Lower-case name, for logs and tests.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadErrorKind::Unreadable => "unreadable",
            LoadErrorKind::Schema => "schema",
            LoadErrorKind::NonFinite => "non_finite",
            LoadErrorKind::Empty => "empty",
            LoadErrorKind::OutOfRange => "out_of_range",
        }
    }
}

impl fmt::Display for LoadErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A table that could not be loaded: its [`kind`](LoadError::kind) and a
/// message naming file, column and row. `Display` is the message alone, so
/// `anyhow` callers print exactly what they printed before the errors were
/// typed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LoadError {
    kind: LoadErrorKind,
    message: String,
}

impl LoadError {
    /// An error of `kind` with `message`.
    pub fn new(kind: LoadErrorKind, message: impl Into<String>) -> LoadError {
        LoadError {
            kind,
            message: message.into(),
        }
    }

    /// [`LoadErrorKind::Unreadable`], with the whole context chain of an
    /// I/O or decoding error as the message.
    pub fn unreadable(e: &anyhow::Error) -> LoadError {
        LoadError::new(LoadErrorKind::Unreadable, format!("{e:#}"))
    }

    /// [`LoadErrorKind::Schema`].
    pub fn schema(message: impl Into<String>) -> LoadError {
        LoadError::new(LoadErrorKind::Schema, message)
    }

    /// [`LoadErrorKind::NonFinite`].
    pub fn non_finite(message: impl Into<String>) -> LoadError {
        LoadError::new(LoadErrorKind::NonFinite, message)
    }

    /// [`LoadErrorKind::Empty`].
    pub fn empty(message: impl Into<String>) -> LoadError {
        LoadError::new(LoadErrorKind::Empty, message)
    }

    /// [`LoadErrorKind::OutOfRange`].
    pub fn out_of_range(message: impl Into<String>) -> LoadError {
        LoadError::new(LoadErrorKind::OutOfRange, message)
    }

    /// The class of the failure.
    pub fn kind(&self) -> LoadErrorKind {
        self.kind
    }

    /// The message for people.
    pub fn message(&self) -> &str {
        &self.message
    }
}
