//! Shared steps of the fuzz targets: what the product does with a table
//! once a decoder has accepted it.
//!
//! A decoded table goes through the same loader as a real input: the
//! offline profile-table loader (`ProfileTable::from_table`, as `balans
//! correct` uses it) and the daemon's plate decoder
//! (`serve::plate::decode`, batch, plate and control checks, content hash).
//! Errors are expected; only a panic, a hang or an allocation past the
//! fuzzer's `-rss_limit_mb` is a finding.

use arrow_array::RecordBatch;
use balans::io::layout::CorrectConfig;
use balans::LoadSpec;
use balans::ProfileTable;

/// Run a decoded table through both loaders (results ignored: only panics
/// matter).
pub fn load(table: RecordBatch, bytes: &[u8]) {
    let spec = LoadSpec::new("Metadata_Batch");
    let _ = ProfileTable::from_table(table.clone(), &spec, "fuzz");
    let cfg = CorrectConfig {
        batch_col: Some("Metadata_Batch".into()),
        control: Some("Metadata_Label=DMSO".into()),
        ..CorrectConfig::default()
    };
    let _ = balans::serve::plate::decode(table, bytes, "fuzz-plate", &cfg, "fuzz");
}
