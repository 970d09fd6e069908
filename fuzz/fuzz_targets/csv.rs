//! CSV: `io::table::decode_table` (type inference, the text-cell scan,
//! duplicate names) as the directory daemon calls it on a `.csv` plate, then
//! the loaders. The first byte picks plain or gzipped CSV.
#![no_main]
use balans::io::table::{decode_table, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let format = if mode & 1 == 1 {
        Format::CsvGz
    } else {
        Format::Csv
    };
    if let Ok(t) = decode_table(rest, format) {
        balans_fuzz::load(t, rest);
    }
});
