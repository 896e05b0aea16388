//! CloudEvents 1.0 in structured JSON mode: checking envelopes on input and writing them
//! on output.
//!
//! An envelope is a JSON object with the context attributes at the top and the payload
//! under `data`: `{"specversion":"1.0","id":"…","source":"/bank","type":"Deposited",
//! "subject":"ACC-1","time":"2026-01-01T00:00:00Z","datacontenttype":"application/json",
//! "data":{…}}`. [`Attributes`] is the transport-free form: the structured writer
//! here puts them into the JSON object; the Kafka binary mode maps the same attributes to
//! `ce_` headers and the data to the record value.

use crate::batch::{write_json_str, write_uint};
use crate::config::FieldPath;
use crate::decode::Value;

/// The only CloudEvents version spoken.
pub const SPEC_VERSION: &str = "1.0";

/// Envelope fields the decoder extracts to check an input record, in this order.
pub const CHECKED_FIELDS: [&str; 9] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data_base64",
];

/// Checks input envelopes: `slots[i]` is the decoder slot of `CHECKED_FIELDS[i]`, and
/// `data` the slot of `data`.
#[derive(Debug, Clone)]
pub struct EnvelopeCheck {
    slots: [usize; 9],
    data: usize,
}

impl EnvelopeCheck {
    /// The field paths to extract (add them to the decoder's list).
    pub fn fields() -> impl Iterator<Item = FieldPath> {
        CHECKED_FIELDS
            .iter()
            .chain(std::iter::once(&"data"))
            .map(|f| FieldPath::parse(f).expect("valid"))
    }

    /// Binds to the decoder's field order.
    pub fn new(slots: &[FieldPath]) -> Self {
        let pos = |name: &str| {
            slots
                .iter()
                .position(|s| s.0.len() == 1 && s.0[0] == name)
                .expect("envelope fields are referenced")
        };
        EnvelopeCheck {
            slots: CHECKED_FIELDS.map(pos),
            data: pos("data"),
        }
    }

    /// `Ok` for a valid envelope, else what is wrong with it.
    pub fn check(&self, vals: &[Value], arena: &[u8]) -> Result<(), String> {
        let s = |v: Value| match v {
            Value::Str(a, l) => std::str::from_utf8(&arena[a as usize..(a + l) as usize]).ok(),
            _ => None,
        };
        let [
            specversion,
            id,
            source,
            ty,
            subject,
            time,
            content_type,
            schema,
            data_base64,
        ] = self.slots.map(|i| vals[i]);
        match specversion {
            Value::Missing => return Err("the required attribute 'specversion' is missing".into()),
            v if s(v) == Some(SPEC_VERSION) => {}
            v => {
                return Err(format!(
                    "'specversion' must be \"{SPEC_VERSION}\", got {}",
                    s(v).map_or_else(|| v.kind().to_string(), |t| format!("\"{t}\""))
                ));
            }
        }
        for (name, v) in [("id", id), ("source", source), ("type", ty)] {
            match v {
                Value::Missing => {
                    return Err(format!("the required attribute '{name}' is missing"));
                }
                v if s(v).is_some_and(|t| !t.is_empty()) => {}
                v => {
                    return Err(format!(
                        "'{name}' must be a non-empty string, got {}",
                        if matches!(v, Value::Str(..)) {
                            "an empty string"
                        } else {
                            v.kind()
                        }
                    ));
                }
            }
        }
        for (name, v) in [
            ("subject", subject),
            ("datacontenttype", content_type),
            ("dataschema", schema),
        ] {
            if v != Value::Missing && s(v).is_none_or(str::is_empty) {
                return Err(format!(
                    "'{name}' must be a non-empty string when present, got {}",
                    v.kind()
                ));
            }
        }
        if time != Value::Missing {
            let t = s(time).ok_or_else(|| {
                format!(
                    "'time' must be an RFC 3339 timestamp string, got {}",
                    time.kind()
                )
            })?;
            crate::expr::parse_timestamp(t)
                .map_err(|e| format!("'time' is not an RFC 3339 timestamp: {e}"))?;
        }
        if data_base64 != Value::Missing && vals[self.data] != Value::Missing {
            return Err("an event has 'data' or 'data_base64', not both".into());
        }
        Ok(())
    }
}

/// Context attributes of one event to write.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// `id`: unique per `source`.
    pub id: &'a str,
    /// `source`: a URI reference naming the producer.
    pub source: &'a str,
    /// `type`.
    pub ty: &'a str,
    /// `subject`: here, the aggregate id.
    pub subject: Option<&'a str>,
    /// Extension attributes (lower-case letters and digits) with string values.
    pub extensions: &'a [(&'a str, &'a str)],
    /// Integer extension attributes.
    pub int_extensions: &'a [(&'a str, u64)],
}

/// Writes a structured-mode envelope; `data` writes the JSON of the `data` attribute.
pub fn write_structured(out: &mut Vec<u8>, a: &Attributes<'_>, data: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
    write_json_str(out, a.id.as_bytes());
    out.extend_from_slice(b",\"source\":");
    write_json_str(out, a.source.as_bytes());
    out.extend_from_slice(b",\"type\":");
    write_json_str(out, a.ty.as_bytes());
    if let Some(s) = a.subject {
        out.extend_from_slice(b",\"subject\":");
        write_json_str(out, s.as_bytes());
    }
    out.extend_from_slice(b",\"datacontenttype\":\"application/json\"");
    for (k, v) in a.extensions {
        debug_assert!(valid_extension_name(k), "{k}");
        out.push(b',');
        write_json_str(out, k.as_bytes());
        out.push(b':');
        write_json_str(out, v.as_bytes());
    }
    for (k, v) in a.int_extensions {
        debug_assert!(valid_extension_name(k), "{k}");
        out.push(b',');
        write_json_str(out, k.as_bytes());
        out.push(b':');
        write_uint(out, *v);
    }
    out.extend_from_slice(b",\"data\":");
    data(out);
    out.push(b'}');
}

/// CloudEvents attribute names: lower-case ASCII letters and digits, at most 20.
pub fn valid_extension_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 20
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Extractor;

    fn check(json: &str) -> Result<(), String> {
        let fields: Vec<FieldPath> = EnvelopeCheck::fields().collect();
        let ex = Extractor::new(&fields);
        let c = EnvelopeCheck::new(&fields);
        let mut arena = Vec::new();
        let mut vals = vec![Value::Missing; fields.len()];
        ex.extract(json.as_bytes(), &mut arena, &mut vals).unwrap();
        c.check(&vals, &arena)
    }

    #[test]
    fn valid_and_invalid_envelopes() {
        let ok = r#"{"specversion":"1.0","id":"e1","source":"/bank","type":"Deposited","subject":"ACC-1","time":"2026-01-01T10:00:00Z","datacontenttype":"application/json","data":{"amount":5}}"#;
        assert_eq!(check(ok), Ok(()));
        assert_eq!(
            check(r#"{"specversion":"1.0","id":"e1","source":"/s","type":"t"}"#),
            Ok(())
        );
        for (json, want) in [
            (
                r#"{"id":"e1","source":"/s","type":"t"}"#,
                "'specversion' is missing",
            ),
            (
                r#"{"specversion":"0.3","id":"e1","source":"/s","type":"t"}"#,
                "must be \"1.0\", got \"0.3\"",
            ),
            (
                r#"{"specversion":1.0,"id":"e1","source":"/s","type":"t"}"#,
                "must be \"1.0\", got a float",
            ),
            (
                r#"{"specversion":"1.0","source":"/s","type":"t"}"#,
                "'id' is missing",
            ),
            (
                r#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#,
                "'id' must be a non-empty string, got an empty string",
            ),
            (
                r#"{"specversion":"1.0","id":"e","source":7,"type":"t"}"#,
                "'source' must be a non-empty string, got an integer",
            ),
            (
                r#"{"specversion":"1.0","id":"e","source":"/s"}"#,
                "'type' is missing",
            ),
            (
                r#"{"specversion":"1.0","id":"e","source":"/s","type":"t","subject":3}"#,
                "'subject' must be a non-empty string",
            ),
            (
                r#"{"specversion":"1.0","id":"e","source":"/s","type":"t","time":"yesterday"}"#,
                "'time' is not an RFC 3339 timestamp",
            ),
            (
                r#"{"specversion":"1.0","id":"e","source":"/s","type":"t","data":{},"data_base64":"AA=="}"#,
                "not both",
            ),
        ] {
            let err = check(json).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn structured_output_is_a_valid_envelope() {
        let mut out = Vec::new();
        write_structured(
            &mut out,
            &Attributes {
                id: "c-1:0",
                source: "/bank/accounts",
                ty: "Deposited",
                subject: Some("ACC-1"),
                extensions: &[("causationid", "c-1"), ("correlationid", "c-1")],
                int_extensions: &[("aggregateversion", 2)],
            },
            |o| o.extend_from_slice(br#"{"amount":5}"#),
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(check(&text), Ok(()));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["subject"], "ACC-1");
        assert_eq!(v["aggregateversion"], 2);
        assert_eq!(v["data"]["amount"], 5);
    }
}
