//! Reading and writing profile tables: file formats ([`table`]), the
//! pycytominer layout of a table — `Metadata_*` columns, numeric feature
//! columns, control rows ([`profile`]) — and the one loader every command
//! and the daemon use to turn a table into a feature matrix with its batch,
//! plate, control and label columns ([`dataset`]), whose failures are
//! classified ([`error`]); the `[correct]` configuration section that
//! describes a table's layout ([`layout`]).

pub mod dataset;
pub mod error;
pub mod files;
mod ipc_lengths;
pub mod layout;
mod parquet_lengths;
pub mod profile;
pub mod table;
