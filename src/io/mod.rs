//! Reading and writing profile tables: file formats ([`table`]) and the
//! pycytominer layout of a table — `Metadata_*` columns, numeric feature
//! columns, control rows ([`profile`]).

pub mod profile;
pub mod table;
