//! A small walker over a spanned TOML document that collects *every* error with its
//! TOML path and line, instead of stopping at the first one like `serde` does.

use std::collections::BTreeSet;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{ConfigError, FieldPath};

/// Collects errors while the document is walked.
pub(crate) struct Cx<'s> {
    src: &'s str,
    pub(crate) errors: Vec<ConfigError>,
}

impl<'s> Cx<'s> {
    pub(crate) fn new(src: &'s str) -> Self {
        Cx {
            src,
            errors: Vec::new(),
        }
    }

    /// 1-based line of a byte offset in the source.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.src.len());
        self.src.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    pub(crate) fn error(
        &mut self,
        path: &str,
        span: Option<std::ops::Range<usize>>,
        msg: impl Into<String>,
    ) {
        let line = span.map(|s| self.line_of(s.start));
        self.errors.push(ConfigError {
            path: path.to_string(),
            line,
            message: msg.into(),
        });
    }
}

/// One TOML table being read; keys not taken are reported as unknown by [`Table::finish`].
pub(crate) struct Table<'a, 'i> {
    pub(crate) path: String,
    table: Option<&'a DeTable<'i>>,
    span: Option<std::ops::Range<usize>>,
    taken: BTreeSet<String>,
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'a, 'i> Table<'a, 'i> {
    pub(crate) fn root(table: &'a DeTable<'i>) -> Self {
        Table {
            path: String::new(),
            table: Some(table),
            span: None,
            taken: BTreeSet::new(),
        }
    }

    /// An absent table: every getter returns `None`, `finish` reports nothing.
    pub(crate) fn absent(path: String) -> Self {
        Table {
            path,
            table: None,
            span: None,
            taken: BTreeSet::new(),
        }
    }

    pub(crate) fn is_present(&self) -> bool {
        self.table.is_some()
    }

    pub(crate) fn span(&self) -> Option<std::ops::Range<usize>> {
        self.span.clone()
    }

    /// Raw access to a key (marks it as known).
    pub(crate) fn raw(&mut self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.taken.insert(key.to_string());
        self.table?.get(key)
    }

    pub(crate) fn keys(&self) -> Vec<String> {
        self.table
            .map(|t| t.keys().map(|k| k.get_ref().to_string()).collect())
            .unwrap_or_default()
    }

    fn wrong_type(&self, cx: &mut Cx<'_>, key: &str, v: &Spanned<DeValue<'_>>, want: &str) {
        cx.error(
            &join(&self.path, key),
            Some(v.span()),
            format!("expected {want}, found {}", type_name(v.get_ref())),
        );
    }

    /// A sub-table; an absent key gives an absent table.
    pub(crate) fn table(&mut self, cx: &mut Cx<'_>, key: &str) -> Table<'a, 'i> {
        let path = join(&self.path, key);
        match self.raw(key) {
            None => Table::absent(path),
            Some(v) => match v.get_ref() {
                DeValue::Table(t) => Table {
                    path,
                    table: Some(t),
                    span: Some(v.span()),
                    taken: BTreeSet::new(),
                },
                _ => {
                    self.wrong_type(cx, key, v, "a table");
                    Table::absent(path)
                }
            },
        }
    }

    /// An array of tables (`[[key]]`); each element comes with its path `key[i]`.
    pub(crate) fn tables(&mut self, cx: &mut Cx<'_>, key: &str) -> Vec<Table<'a, 'i>> {
        let path = join(&self.path, key);
        let Some(v) = self.raw(key) else {
            return Vec::new();
        };
        match v.get_ref() {
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    match item.get_ref() {
                        DeValue::Table(t) => out.push(Table {
                            path: p,
                            table: Some(t),
                            span: Some(item.span()),
                            taken: BTreeSet::new(),
                        }),
                        other => cx.error(
                            &p,
                            Some(item.span()),
                            format!("expected a table, found {}", type_name(other)),
                        ),
                    }
                }
                out
            }
            _ => {
                self.wrong_type(cx, key, v, "an array of tables ([[...]])");
                Vec::new()
            }
        }
    }

    pub(crate) fn string(&mut self, cx: &mut Cx<'_>, key: &str) -> Option<String> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.wrong_type(cx, key, v, "a string");
                None
            }
        }
    }

    pub(crate) fn required_string(&mut self, cx: &mut Cx<'_>, key: &str) -> Option<String> {
        if self.is_present() && self.table.is_some_and(|t| t.get(key).is_none()) {
            cx.error(&join(&self.path, key), self.span.clone(), "is required");
            self.taken.insert(key.to_string());
            return None;
        }
        self.string(cx, key).filter(|s| {
            if s.is_empty() {
                cx.errors.push(ConfigError {
                    path: join(&self.path, key),
                    line: None,
                    message: "must not be empty".into(),
                });
            }
            !s.is_empty()
        })
    }

    /// A boolean.
    pub(crate) fn bool(&mut self, cx: &mut Cx<'_>, key: &str) -> Option<bool> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(cx, key, v, "true or false");
                None
            }
        }
    }

    /// An array of strings.
    pub(crate) fn strings(&mut self, cx: &mut Cx<'_>, key: &str) -> Option<Vec<String>> {
        let v = self.raw(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(cx, key, v, "an array of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(s) => out.push(s.to_string()),
                other => cx.error(
                    &format!("{}[{i}]", join(&self.path, key)),
                    Some(item.span()),
                    format!("expected a string, found {}", type_name(other)),
                ),
            }
        }
        Some(out)
    }

    /// A table of scalars (strings, numbers, booleans), each as its string form: the
    /// shape of pass-through properties such as librdkafka's.
    pub(crate) fn scalar_map(
        &mut self,
        cx: &mut Cx<'_>,
        key: &str,
    ) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        let Some(v) = self.raw(key) else {
            return out;
        };
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type(
                cx,
                key,
                v,
                "a table of properties, e.g. { \"linger.ms\" = 5 }",
            );
            return out;
        };
        for (k, item) in t.iter() {
            let value = match item.get_ref() {
                DeValue::String(s) => s.to_string(),
                DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
                    .map_or_else(|_| i.as_str().to_string(), |n| n.to_string()),
                DeValue::Float(f) => f.as_str().replace('_', ""),
                DeValue::Boolean(b) => b.to_string(),
                other => {
                    cx.error(
                        &format!("{}.\"{}\"", join(&self.path, key), k.get_ref()),
                        Some(item.span()),
                        format!(
                            "expected a string, number or boolean, found {}",
                            type_name(other)
                        ),
                    );
                    continue;
                }
            };
            out.insert(k.get_ref().to_string(), value);
        }
        out
    }

    /// An integer within `min..=max`.
    pub(crate) fn int(&mut self, cx: &mut Cx<'_>, key: &str, min: i64, max: i64) -> Option<i64> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Integer(i) => {
                let digits = i.as_str().replace('_', "");
                match i64::from_str_radix(&digits, i.radix()) {
                    Ok(n) if (min..=max).contains(&n) => Some(n),
                    _ => {
                        cx.error(
                            &join(&self.path, key),
                            Some(v.span()),
                            format!("must be between {min} and {max}, got {i}"),
                        );
                        None
                    }
                }
            }
            _ => {
                self.wrong_type(cx, key, v, "an integer");
                None
            }
        }
    }

    /// A duration string such as `"100ms"` within `min..=max`.
    pub(crate) fn duration(
        &mut self,
        cx: &mut Cx<'_>,
        key: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let v = self.raw(key)?;
        let path = join(&self.path, key);
        match v.get_ref() {
            DeValue::String(s) => match parse_duration(s) {
                Ok(d) if d >= min && d <= max => Some(d),
                Ok(_) => {
                    cx.error(
                        &path,
                        Some(v.span()),
                        format!("must be between {min:?} and {max:?}, got \"{s}\""),
                    );
                    None
                }
                Err(e) => {
                    cx.error(&path, Some(v.span()), e);
                    None
                }
            },
            _ => {
                self.wrong_type(cx, key, v, "a duration string such as \"100ms\"");
                None
            }
        }
    }

    /// A string that must be one of `choices`.
    pub(crate) fn choice(
        &mut self,
        cx: &mut Cx<'_>,
        key: &str,
        choices: &[&str],
    ) -> Option<String> {
        let s = self.string(cx, key)?;
        if choices.contains(&s.as_str()) {
            Some(s)
        } else {
            let span = self.table.and_then(|t| t.get(key)).map(|v| v.span());
            cx.error(
                &join(&self.path, key),
                span,
                format!(
                    "unknown value \"{s}\"; expected one of: {}",
                    choices.join(", ")
                ),
            );
            None
        }
    }

    /// A dotted field path like `"data.account"`.
    pub(crate) fn field_path(&mut self, cx: &mut Cx<'_>, key: &str) -> Option<FieldPath> {
        let s = self.string(cx, key)?;
        match FieldPath::parse(&s) {
            Ok(p) => Some(p),
            Err(e) => {
                let span = self.table.and_then(|t| t.get(key)).map(|v| v.span());
                cx.error(&join(&self.path, key), span, e);
                None
            }
        }
    }

    /// Reports every key that no getter asked for, with a suggestion when one is close.
    pub(crate) fn finish(self, cx: &mut Cx<'_>) {
        let Some(t) = self.table else { return };
        for (k, v) in t.iter() {
            let name = k.get_ref();
            if self.taken.contains(name.as_ref()) {
                continue;
            }
            let hint = closest(name, self.taken.iter().map(String::as_str))
                .map(|c| format!("; did you mean \"{c}\"?"))
                .unwrap_or_else(|| {
                    if self.taken.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; known keys: {}",
                            self.taken.iter().cloned().collect::<Vec<_>>().join(", ")
                        )
                    }
                });
            cx.error(
                &join(&self.path, name),
                Some(k.span().start..v.span().end),
                format!("unknown key{hint}"),
            );
        }
    }
}

/// Parses `"250ms"`, `"1s"`, `"1.5s"`, `"2m"`, `"1h"`, `"500us"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration \"{s}\": expected a number followed by a unit (ns, us, ms, s, m, h), e.g. \"100ms\""))?;
    let secs = match unit.trim() {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "" => {
            return Err(format!(
                "invalid duration \"{s}\": a unit is required (ns, us, ms, s, m, h), e.g. \"{s}ms\""
            ));
        }
        u => {
            return Err(format!(
                "invalid duration \"{s}\": unknown unit \"{u}\" (use ns, us, ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 || secs > 1e9 {
        return Err(format!("invalid duration \"{s}\": out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The candidate within edit distance 2 of `name`, if any.
fn closest<'c>(name: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .map(|c| (levenshtein(name, c), c))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert!(
            parse_duration("100")
                .unwrap_err()
                .contains("unit is required")
        );
        assert!(
            parse_duration("10 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            closest("shard", ["shards", "name"].into_iter()),
            Some("shards")
        );
        assert_eq!(closest("zzzzzz", ["shards"].into_iter()), None);
    }
}
