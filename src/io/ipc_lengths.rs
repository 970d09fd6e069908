//! Length checks run before arrow-ipc reads outside bytes.
//!
//! arrow-ipc 57 allocates (zeroed) whatever length a message or a file's
//! footer announces before it reads the bytes: a stream whose message says
//! its body is 7e18 bytes aborts the process ("memory allocation failed"),
//! which no `catch_unwind` stops — for the daemon a crash loop on one
//! hostile plate (found by tests/decode_props.rs). These walks check every
//! announced length against the bytes actually present, before arrow
//! allocates; they parse only the framing and the flatbuffer headers.
//! [`super::table`] calls them on every IPC stream and file it decodes.

use anyhow::{bail, Result};

/// Walk an IPC stream's messages: each metadata length and body length must
/// fit in what is left of the input.
pub(crate) fn check_stream(bytes: &[u8]) -> Result<()> {
    let word = |at: usize| -> Option<u32> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut pos = 0usize;
    // Too few bytes for a length: arrow reports the truncation itself.
    while let Some(w) = word(pos) {
        let (meta_len, meta_at) = match w {
            0xFFFF_FFFF => match word(pos + 4) {
                Some(l) => (l as usize, pos + 8),
                None => return Ok(()),
            },
            l => (l as usize, pos + 4),
        };
        if meta_len == 0 {
            return Ok(()); // end-of-stream marker
        }
        let left = bytes.len().saturating_sub(meta_at);
        if meta_len > left {
            bail!("message at byte {pos} announces {meta_len} bytes of metadata, {left} present");
        }
        let meta = &bytes[meta_at..meta_at + meta_len];
        let message = arrow_ipc::root_as_message(meta)
            .map_err(|e| anyhow::anyhow!("message at byte {pos}: bad metadata: {e}"))?;
        let body = message.bodyLength();
        let left = left - meta_len;
        if body < 0 || body as u64 > left as u64 {
            bail!("message at byte {pos} announces a body of {body} bytes, {left} present");
        }
        pos = meta_at + meta_len + body as usize;
    }
    Ok(())
}

/// The footer of an IPC file (the flatbuffer before the trailing length
/// and `ARROW1`), its announced length checked against the file's.
pub(crate) fn file_footer<R: std::io::Read + std::io::Seek>(r: &mut R) -> Result<Vec<u8>> {
    use std::io::SeekFrom;
    let len = r.seek(SeekFrom::End(0))?;
    if len < 10 {
        bail!("not an Arrow IPC file ({len} bytes)");
    }
    let mut trailer = [0u8; 10];
    r.seek(SeekFrom::End(-10))?;
    r.read_exact(&mut trailer)?;
    let footer_len = arrow_ipc::reader::read_footer_length(trailer)?;
    if footer_len as u64 > len - 10 {
        bail!("the footer announces {footer_len} bytes, the file has {len}");
    }
    let mut footer = vec![0u8; footer_len];
    r.seek(SeekFrom::End(-10 - footer_len as i64))?;
    r.read_exact(&mut footer)?;
    r.seek(SeekFrom::Start(0))?;
    Ok(footer)
}

/// Every block the footer lists (record batches, dictionaries) must lie
/// inside the file.
pub(crate) fn check_file(footer: &[u8], file_len: u64) -> Result<()> {
    let f = arrow_ipc::root_as_footer(footer)
        .map_err(|e| anyhow::anyhow!("bad Arrow IPC file footer: {e}"))?;
    let blocks = f.recordBatches().into_iter().chain(f.dictionaries());
    for b in blocks.flat_map(|v| v.iter()) {
        let end = u64::try_from(b.offset())
            .ok()
            .zip(u64::try_from(b.metaDataLength()).ok())
            .zip(u64::try_from(b.bodyLength()).ok())
            .and_then(|((o, m), body)| o.checked_add(m)?.checked_add(body));
        match end {
            Some(e) if e <= file_len => {}
            _ => bail!(
                "a block at byte {} announces {} + {} bytes, past the end of the file ({file_len} bytes)",
                b.offset(),
                b.metaDataLength(),
                b.bodyLength()
            ),
        }
    }
    Ok(())
}
