//! The point a temporal query asks about (`--at`), as written and as it applies to a
//! pipeline's inputs.

use std::fmt;
use std::str::FromStr;

/// A point of a pipeline's inputs: the state of a key is asked for as it was once the
/// inputs were read up to here. Offsets are *next* offsets, as in commit markers and
/// snapshot manifests: offset `N` of a partition means its records `0..N` (the first
/// `N`), not record `N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// The last commit: every input up to its committed offset.
    LastCommit,
    /// Offset `N` of the partition that holds the key's records (`--at 120`): the
    /// partition that `log append --key`, `load` and the engine's own outputs put
    /// records of that key in, or partition 0 of a one-partition source. Other
    /// partitions are read up to the last commit. Only for a pipeline with one source.
    Offset(u64),
    /// Explicit positions (`--at 2:120` or `--at commands:2:120,commands:3:7`): each
    /// named partition up to its offset, every other partition up to the last commit.
    Positions(Vec<Position>),
    /// Every record appended at or before this time (`--at 2026-01-01T10:00:00Z`):
    /// in each partition, the records before the first one appended later, up to the
    /// last commit. Append times are the commit times of the input log's transactions.
    Time {
        /// Nanoseconds since the Unix epoch.
        ns: i64,
        /// As written.
        text: String,
    },
}

/// One partition's position in [`Point::Positions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The source; `None`: the pipeline's only source.
    pub source: Option<String>,
    /// Its partition.
    pub partition: u32,
    /// Next offset: records `0..offset` of the partition are included.
    pub offset: u64,
}

const FORMS: &str = "an offset (120), positions (PARTITION:OFFSET or SOURCE:PARTITION:OFFSET, comma-separated) or an RFC 3339 time (2026-01-01T10:00:00Z)";

impl FromStr for Point {
    type Err = String;

    /// Parses `--at`: `120`, `2:120`, `commands:2:120,commands:3:7`, or an RFC 3339
    /// time. An empty string is an error (no `--at` is [`Point::LastCommit`]).
    fn from_str(s: &str) -> Result<Point, String> {
        let s = s.trim();
        let bad = |why: String| format!("--at '{s}': {why}");
        if s.is_empty() {
            return Err(bad(format!("empty; expected {FORMS}")));
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(Point::Offset)
                .map_err(|_| bad("the offset is too large".into()));
        }
        // A time starts with a date: four digits and a dash.
        if s.len() >= 5
            && s.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && s.as_bytes()[4] == b'-'
        {
            return crate::expr::parse_timestamp(s)
                .map(|ns| Point::Time {
                    ns,
                    text: s.to_string(),
                })
                .map_err(bad);
        }
        let mut out = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            let parts: Vec<&str> = item.split(':').collect();
            let (source, partition, offset) = match parts.as_slice() {
                [p, o] => (None, *p, *o),
                [src, p, o] if !src.is_empty() => (Some(src.to_string()), *p, *o),
                _ => return Err(bad(format!("cannot read '{item}'; expected {FORMS}"))),
            };
            let partition: u32 = partition.parse().map_err(|_| {
                bad(format!(
                    "'{partition}' in '{item}' is not a partition number"
                ))
            })?;
            let offset: u64 = offset
                .parse()
                .map_err(|_| bad(format!("'{offset}' in '{item}' is not an offset")))?;
            let p = Position {
                source,
                partition,
                offset,
            };
            if out
                .iter()
                .any(|q: &Position| q.source == p.source && q.partition == p.partition)
            {
                return Err(bad(format!("partition {partition} is given twice")));
            }
            out.push(p);
        }
        Ok(Point::Positions(out))
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Point::LastCommit => f.write_str("the last commit"),
            Point::Offset(n) => write!(f, "offset {n}"),
            Point::Positions(ps) => {
                for (i, p) in ps.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    if let Some(s) = &p.source {
                        write!(f, "{s}:")?;
                    }
                    write!(f, "{}:{}", p.partition, p.offset)?;
                }
                Ok(())
            }
            Point::Time { text, .. } => f.write_str(text),
        }
    }
}

/// RFC 3339 text (UTC, milliseconds) of a log timestamp.
pub fn format_ms(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let whole = crate::expr::rfc3339_from_unix_secs(secs);
    match whole.strip_suffix('Z') {
        Some(s) if !ms.is_multiple_of(1000) => format!("{s}.{:03}Z", ms % 1000),
        _ => whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!("120".parse(), Ok(Point::Offset(120)));
        assert_eq!(
            " 2:120 ".parse(),
            Ok(Point::Positions(vec![Position {
                source: None,
                partition: 2,
                offset: 120
            }]))
        );
        assert_eq!(
            "commands:2:120,refunds:0:7"
                .parse::<Point>()
                .unwrap()
                .to_string(),
            "commands:2:120,refunds:0:7"
        );
        match "2026-01-01T10:00:00.5+01:00".parse::<Point>().unwrap() {
            Point::Time { ns, .. } => assert_eq!(ns, 1_767_258_000_500_000_000),
            other => panic!("{other:?}"),
        }
        for bad in [
            "",
            "x",
            "-1",
            "2:",
            ":2:3",
            "1:2:3:4",
            "a:b",
            "2:1,2:3",
            "2026-01-01",
            "2026-13-01T00:00:00Z",
            "99999999999999999999999",
        ] {
            let e = bad.parse::<Point>().unwrap_err();
            assert!(e.starts_with("--at '"), "{bad}: {e}");
        }
    }

    #[test]
    fn log_times() {
        assert_eq!(format_ms(1_767_225_600_000), "2026-01-01T00:00:00Z");
        assert_eq!(format_ms(1_767_225_600_037), "2026-01-01T00:00:00.037Z");
    }
}
