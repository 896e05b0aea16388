//! Scanning of journal entries (shared by the writer's recovery and the readers' tailing).

use super::format::{ENTRY_HEADER_LEN, KIND_CHECKPOINT, KIND_COMMIT, MAX_ENTRY_LEN, le_u32};

/// How a scan of a journal byte range ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Every byte belonged to a complete, valid entry.
    Clean,
    /// From `pos` on there is an incomplete or invalid entry and no valid entry after
    /// it: a torn write (writer: truncate) or a write in progress (reader: not yet).
    Incomplete { pos: usize },
    /// The entry at `pos` is invalid but a valid entry follows it: real corruption.
    Corrupt { pos: usize, reason: String },
}

/// Checks whether a complete, valid-looking entry starts at `buf[pos..]`; returns its
/// total length, or why not (`Err(true)` = ran out of bytes).
fn entry_at(buf: &[u8], pos: usize) -> Result<usize, (bool, String)> {
    let rest = &buf[pos..];
    if rest.len() < ENTRY_HEADER_LEN {
        return Err((true, "entry header truncated".into()));
    }
    let len = le_u32(rest, 0) as usize;
    if len == 0 || len > MAX_ENTRY_LEN {
        return Err((false, format!("implausible entry length {len}")));
    }
    if rest.len() - ENTRY_HEADER_LEN < len {
        return Err((true, format!("entry of {len} bytes truncated")));
    }
    let payload = &rest[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + len];
    let crc = le_u32(rest, 4);
    if crc32c::crc32c(payload) != crc {
        return Err((false, "entry checksum mismatch".into()));
    }
    if payload[0] != KIND_COMMIT && payload[0] != KIND_CHECKPOINT {
        return Err((false, format!("unknown entry kind {}", payload[0])));
    }
    Ok(ENTRY_HEADER_LEN + len)
}

/// Walks the entries in `buf`, calling `f(pos, payload)` for each valid one in order,
/// and classifies what follows the last valid entry. `f` may abort the scan with an
/// error.
pub(crate) fn scan<E>(
    buf: &[u8],
    mut f: impl FnMut(usize, &[u8]) -> Result<(), E>,
) -> Result<Tail, E> {
    let mut pos = 0;
    while pos < buf.len() {
        match entry_at(buf, pos) {
            Ok(total) => {
                f(pos, &buf[pos + ENTRY_HEADER_LEN..pos + total])?;
                pos += total;
            }
            Err((_, reason)) => {
                // A torn write is the last thing in the file. If a valid entry can be
                // found anywhere after this point, the bad entry is corruption.
                let later = (pos + 1..buf.len().saturating_sub(ENTRY_HEADER_LEN))
                    .any(|q| entry_at(buf, q).is_ok());
                return Ok(if later {
                    Tail::Corrupt { pos, reason }
                } else {
                    Tail::Incomplete { pos }
                });
            }
        }
    }
    Ok(Tail::Clean)
}
