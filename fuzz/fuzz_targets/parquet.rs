//! Parquet: the directory daemon's `decode_table` and the Kafka payload
//! decoder (`wire::decode_payload`), then the loaders.
#![no_main]
use balans::io::table::{decode_table, Format};
use balans::serve::kafka::wire::{decode_payload, Encoding};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = decode_table(data, Format::Parquet) {
        balans_fuzz::load(t, data);
    }
    let _ = decode_payload(data, Encoding::Parquet, "fuzz");
});
