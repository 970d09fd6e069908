//! Arrow IPC stream: the Kafka plate payload (`wire::decode_payload`, with
//! its prefix check) and the bare decoder (`io::table::decode_ipc_stream`).
#![no_main]
use balans::serve::kafka::wire::{decode_payload, Encoding};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = decode_payload(data, Encoding::ArrowStream, "fuzz") {
        balans_fuzz::load(t, data);
    }
    let _ = balans::io::table::decode_ipc_stream(data);
});
