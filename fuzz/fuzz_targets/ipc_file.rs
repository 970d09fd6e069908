//! Arrow IPC file (Feather v2): `io::table::decode_table` as the directory
//! daemon calls it on a `.arrow` plate, then the loaders.
#![no_main]
use balans::io::table::{decode_table, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = decode_table(data, Format::ArrowIpc) {
        balans_fuzz::load(t, data);
    }
});
