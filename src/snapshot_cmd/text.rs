//! Text for a terminal: aligned tables, sizes, dates, bytes.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::thousands;

/// Columns padded to their widest cell; each row may carry indented note lines.
pub(super) struct Table {
    heads: Vec<(&'static str, bool)>,
    rows: Vec<(Vec<String>, Vec<String>)>,
}

impl Table {
    /// Columns as (heading, right-aligned).
    pub(super) fn new(heads: &[(&'static str, bool)]) -> Table {
        Table {
            heads: heads.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(super) fn row(&mut self, cells: Vec<String>, notes: Vec<String>) {
        debug_assert_eq!(cells.len(), self.heads.len());
        self.rows.push((cells, notes));
    }

    pub(super) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.heads.iter().map(|(h, _)| h.chars().count()).collect();
        for (cells, _) in &self.rows {
            for (w, c) in widths.iter_mut().zip(cells) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |out: &mut String, cells: &[&str]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = widths[i].saturating_sub(c.chars().count());
                if i > 0 {
                    s.push_str("  ");
                }
                if self.heads[i].1 {
                    s.extend(std::iter::repeat_n(' ', pad));
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    s.extend(std::iter::repeat_n(' ', pad));
                }
            }
            // No padding after the last column.
            out.push_str(s.trim_end());
            out.push('\n');
        };
        let mut out = String::new();
        let heads: Vec<&str> = self.heads.iter().map(|(h, _)| *h).collect();
        line(&mut out, &heads);
        for (cells, notes) in &self.rows {
            let cells: Vec<&str> = cells.iter().map(String::as_str).collect();
            line(&mut out, &cells);
            for note in notes {
                let _ = writeln!(out, "  {note}");
            }
        }
        out
    }
}

/// Every line two spaces in.
pub(super) fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

pub(super) fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `980 B`, `1.2 KiB`, `3.4 MiB`, `5.6 GiB`.
pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut x = n as f64 / 1024.0;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    format!("{x:.1} {}", UNITS[unit])
}

/// Exact bytes, and the rounded size when it helps: `1,234 B (1.2 KiB)`.
pub(super) fn size_exact(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else {
        format!("{} B ({})", thousands(n), human_bytes(n))
    }
}

/// Bytes as text when they are printable UTF-8.
pub(super) fn printable(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b)
        .ok()
        .filter(|s| !s.chars().any(char::is_control))
}

pub(super) fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// Bytes for a terminal: `"text"` (quoted, escaped) when printable, else `0x…` hex;
/// at most `max` characters (or bytes) shown, then `…`.
pub(super) fn shown(b: &[u8], max: usize) -> String {
    match printable(b) {
        Some(s) if s.chars().count() > max => {
            let cut: String = s.chars().take(max).collect();
            format!("{cut:?}…")
        }
        Some(s) => format!("{s:?}"),
        None if b.len() > max / 2 => format!("0x{}…", hex(&b[..max / 2])),
        None => format!("0x{}", hex(b)),
    }
}

pub(super) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `2026-05-04 10:11:12Z (3m ago)`.
pub(super) fn when(t: SystemTime, now: SystemTime) -> String {
    let age = match now.duration_since(t) {
        Ok(d) => {
            let s = d.as_secs();
            match s {
                0..60 => format!("{s}s ago"),
                60..3_600 => format!("{}m ago", s / 60),
                3_600..86_400 => format!("{}h ago", s / 3_600),
                _ => format!("{}d ago", s / 86_400),
            }
        }
        Err(_) => "in the future".into(),
    };
    format!("{} ({age})", utc(unix_seconds(t)))
}

/// Seconds since the Unix epoch as `YYYY-MM-DD hh:mm:ssZ`.
fn utc(secs: u64) -> String {
    onceflow_core::expr::rfc3339_from_unix_secs(i64::try_from(secs).unwrap_or(i64::MAX))
        .replacen('T', " ", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(utc(951_868_799), "2000-02-29 23:59:59Z");
        assert_eq!(utc(951_868_800), "2000-03-01 00:00:00Z");
        assert_eq!(utc(1_777_593_600), "2026-05-01 00:00:00Z");
        assert_eq!(utc(4_102_444_800), "2100-01-01 00:00:00Z");
    }

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(shown(b"ACC-1", 10), "\"ACC-1\"");
        assert_eq!(shown(b"abcdefghijkl", 4), "\"abcd\"…");
        assert_eq!(shown(&[0, 1, 0xff], 10), "0x0001ff");
        assert_eq!(shown(&[7; 8], 4), "0x0707…");
        assert_eq!(shown(b"a\nb", 10), "0x610a62");
    }
}
