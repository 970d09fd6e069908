//! A snapshot directory: the input is split into `meta.json`, `y.f32`,
//! `batch.u32`, `coverage.f32`, `w.f32` (each a u16 length + bytes) and
//! written to a temporary directory, with a manifest chosen by the first
//! byte: none (a snapshot predating checksums), one with the right
//! checksums computed here (so the fuzzer reaches the consistency checks
//! behind them), or the rest of the input as `manifest.json`. With bit 8 of
//! the first byte set, the input also holds a second row segment,
//! `y.<row>.f32` and `w.<row>.f32` (each a u16 length + bytes; the row from
//! the byte after the manifest figures), and the computed manifest lists it
//! under `segments`. Then `state::snapshot::read`. The seeds
//! (`fuzz/corpus/snapshot/`) are a 96-row model in each layout.
#![no_main]
use balans::method::model::content_hash;
use balans::serve::state::snapshot::{read, segment_file, FILES, MANIFEST, PROFILES};
use libfuzzer_sys::fuzz_target;

/// The next u16-length-prefixed run of bytes (shorter when the input ends).
fn take_prefixed<'a>(rest: &mut &'a [u8]) -> &'a [u8] {
    let len = if rest.len() >= 2 {
        let l = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        *rest = &rest[2..];
        l.min(rest.len())
    } else {
        0
    };
    let (bytes, tail) = rest.split_at(len);
    *rest = tail;
    bytes
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir_in(
        std::env::var_os("BALANS_FUZZ_TMP").unwrap_or_else(|| "/dev/shm".into()),
    )
    .or_else(|_| tempfile::tempdir())
    .expect("temp dir");
    let mut sums = Vec::new();
    for name in FILES.into_iter().chain([PROFILES]) {
        let bytes = take_prefixed(&mut rest);
        std::fs::write(dir.path().join(name), bytes).expect("write");
        sums.push(format!(
            "{{\"name\":\"{name}\",\"len\":{},\"hash\":{}}}",
            bytes.len(),
            content_hash(bytes)
        ));
    }
    let mut segments = String::new();
    if mode & 8 == 8 {
        let y = take_prefixed(&mut rest);
        let w = take_prefixed(&mut rest);
        let row = 1 + rest.get(4).copied().unwrap_or(0) as u64;
        for (stem, bytes) in [("y", y), ("w", w)] {
            let name = segment_file(stem, row);
            std::fs::write(dir.path().join(&name), bytes).expect("write");
            sums.push(format!(
                "{{\"name\":\"{name}\",\"len\":{},\"hash\":{}}}",
                bytes.len(),
                content_hash(bytes)
            ));
        }
        segments = format!(",\"segments\":[{row}]");
    }
    let require = mode & 4 == 4;
    match mode % 3 {
        0 => {}
        1 => {
            // Rows, dims and plates from the next bytes.
            let n = |i: usize| rest.get(i).copied().unwrap_or(0) as u64;
            let manifest = format!(
                "{{\"format\":2,\"rows\":{},\"dims\":{},\"plates\":{},\"files\":[{}]{segments}}}",
                n(0) | n(1) << 8,
                n(2),
                n(3),
                sums.join(",")
            );
            std::fs::write(dir.path().join(MANIFEST), manifest).expect("write");
        }
        _ => std::fs::write(dir.path().join(MANIFEST), rest).expect("write"),
    }
    let _ = read(dir.path(), require);
});
