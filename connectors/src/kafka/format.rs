//! Record formats at the Kafka edge.
//!
//! - **CloudEvents Kafka binary mode** (inputs): a record with a `ce_specversion`
//!   header carries its attributes as `ce_<attribute>` headers, its content type as
//!   `content-type`, and its data as the value. A source of `format = "cloudevents"`
//!   turns such a record into the structured-mode envelope (`{"specversion": ..., "id":
//!   ..., "data": ...}`) before the engine sees it, so both modes meet the same checks
//!   and field names (`type`, `subject`, `data.amount`). A record without the header is
//!   taken as structured mode, as the Kafka protocol binding says a receiver should.
//! - **CloudEvents Kafka binary mode** (outputs, `events_format = "cloudevents_binary"`):
//!   the aggregate writes the structured envelope as everywhere; the commit target
//!   turns it into binary mode as it produces ([`structured_to_binary`]): each
//!   attribute a `ce_<name>` header, `datacontenttype` the `content-type` header, the
//!   data the value. A `format = "cloudevents"` source reads it back as the same
//!   envelope, so a read side works with either mode.
//! - **Correlation ids** (outputs): an aggregate's events carry `correlation_id`; the
//!   Kafka commit target also sets it as the `correlation_id` header, so consumers can
//!   trace a command's events without parsing them.
//! - **Headers carried** (inputs to outputs): an input record's headers (trace context,
//!   tenant, anything its producer set) go on every output derived from it
//!   ([`carried_headers`] picks them; `onceflow_core::headers` says which outputs get
//!   them). Not carried: `ce_*` and `content-type`, which describe the input record's
//!   own encoding (an output has its own, or none: carried, they would make a JSON output
//!   look like a binary-mode CloudEvent with another event's attributes).

use rdkafka::message::{Headers, Message};

/// The header that marks binary mode.
pub const CE_SPECVERSION: &str = "ce_specversion";

/// Encodes the headers of a record (`headers`) that outputs derived from it carry (all
/// but `ce_*` and `content-type`, see the [module docs](self)) into `out`, as
/// [`onceflow_core::headers`] encodes them. Writes nothing when none are carried.
pub fn carried_headers<H: Headers>(headers: &H, out: &mut Vec<u8>) {
    for h in headers.iter() {
        if h.key.starts_with("ce_") || h.key.eq_ignore_ascii_case("content-type") {
            continue;
        }
        onceflow_core::headers::push(out, h.key.as_bytes(), h.value);
    }
}

/// Writes the structured-mode envelope of `m` into `out` if `m` is a binary-mode
/// CloudEvent (it has a `ce_specversion` header); false (and `out` untouched) if not.
///
/// Attributes are the `ce_` headers (their values as UTF-8 strings, invalid bytes
/// replaced); `content-type` becomes `datacontenttype`. The value becomes `data` when it
/// is JSON (a JSON content type, or none, and the value parses), else `data_base64`. An
/// empty value means no data.
pub fn binary_to_structured<M: Message>(m: &M, out: &mut Vec<u8>) -> bool {
    let Some(headers) = m.headers() else {
        return false;
    };
    if !headers.iter().any(|h| h.key == CE_SPECVERSION) {
        return false;
    }
    out.clear();
    out.push(b'{');
    let mut content_type: Option<String> = None;
    let mut first = true;
    for h in headers.iter() {
        let value = String::from_utf8_lossy(h.value.unwrap_or_default());
        let name = if let Some(attr) = h.key.strip_prefix("ce_") {
            if attr.is_empty() || attr == "data" || attr == "data_base64" {
                continue;
            }
            attr
        } else if h.key.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.to_string());
            "datacontenttype"
        } else {
            continue;
        };
        if !first {
            out.push(b',');
        }
        first = false;
        json_str(out, name);
        out.push(b':');
        json_str(out, &value);
    }
    let data = m.payload().unwrap_or_default();
    if !data.is_empty() {
        let json_type = content_type.as_deref().is_none_or(|t| {
            let t = t.split(';').next().unwrap_or("").trim();
            t == "application/json" || t.ends_with("+json") || t == "text/json"
        });
        if json_type && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok() {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(data);
        } else {
            out.extend_from_slice(b",\"data_base64\":\"");
            base64(out, data);
            out.push(b'"');
        }
    }
    out.push(b'}');
    true
}

/// The string value of top-level field `key` in a JSON object rendered by onceflow
/// (`"key":"value"`, no space), without unescaping; `None` if absent or not a string.
/// A scan, not a parse: it runs on every event committed to Kafka.
pub fn string_field<'a>(json: &'a [u8], key: &str) -> Option<&'a [u8]> {
    // hot path: `"key":"` matched in place, nothing allocated
    let key = key.as_bytes();
    let len = key.len() + 4;
    let start = json.windows(len).position(|w| {
        w[0] == b'"' && &w[1..=key.len()] == key && &w[key.len() + 1..] == b"\":\""
    })? + len;
    let rest = &json[start..];
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            b'\\' => i += 2,
            b'"' => return Some(&rest[..i]),
            _ => i += 1,
        }
    }
    None
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json writes a valid JSON string for any &str.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(out: &mut Vec<u8>, data: &[u8]) {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(A[(n >> 18) as usize & 63]);
        out.push(A[(n >> 12) as usize & 63]);
        out.push(if c.len() > 1 {
            A[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        out.push(if c.len() > 2 {
            A[n as usize & 63]
        } else {
            b'='
        });
    }
}

/// The CloudEvents Kafka binary mode of a structured-mode envelope (a JSON object):
/// `headers` gets `ce_<attribute>` for every attribute but `data`, `data_base64` and
/// `datacontenttype` (string values as they are, numbers and booleans as their JSON
/// text), and `content-type` from `datacontenttype` (`application/json` when the
/// envelope has JSON `data` and names no type); `value` gets the data: `data` as JSON
/// text, or `data_base64` decoded. Both are cleared first. `Err` (and nothing to rely
/// on in the outputs) if the envelope is not a JSON object of such values.
pub fn structured_to_binary(
    envelope: &[u8],
    headers: &mut Vec<(String, Vec<u8>)>,
    value: &mut Vec<u8>,
) -> Result<(), String> {
    use serde_json::value::RawValue;
    headers.clear();
    value.clear();
    // Attribute names are lowercase letters and digits (CloudEvents 1.0), so they borrow:
    // a name with an escape is no attribute, and the envelope goes out as it is.
    let fields = serde_json::from_slice::<std::collections::BTreeMap<&str, &RawValue>>(envelope)
        .map_err(|e| format!("not a CloudEvents envelope: {e}"))?;
    let mut content_type = None;
    let mut has_data = false;
    for (&name, raw) in &fields {
        let text = raw.get();
        match name {
            "data" => {
                value.extend_from_slice(text.as_bytes());
                has_data = true;
                continue;
            }
            "data_base64" => {
                let b64: String = serde_json::from_str(text)
                    .map_err(|_| "data_base64 is not a string".to_string())?;
                unbase64(b64.as_bytes(), value)?;
                continue;
            }
            _ => {}
        }
        let v: Vec<u8> = match text.as_bytes().first() {
            Some(b'"') => serde_json::from_str::<String>(text)
                .map_err(|e| format!("attribute {name}: {e}"))?
                .into_bytes(),
            Some(b'{' | b'[') | None => {
                return Err(format!(
                    "attribute {name} is not a string, number or boolean"
                ));
            }
            Some(_) if text == "null" => continue,
            Some(_) => text.as_bytes().to_vec(),
        };
        if name == "datacontenttype" {
            content_type = Some(v);
        } else {
            headers.push((format!("ce_{name}"), v));
        }
    }
    match content_type {
        Some(t) => headers.push(("content-type".into(), t)),
        None if has_data => headers.push(("content-type".into(), b"application/json".to_vec())),
        None => {}
    }
    Ok(())
}

/// Decodes standard base64 (padding optional) onto `out`.
fn unbase64(text: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in text {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return Err("data_base64 is not base64".into()),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(())
}
