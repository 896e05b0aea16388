//! `decode` target: `Extractor::extract` on arbitrary bytes.
//!
//! Must not panic. When `serde_json` parses the input as an object, `extract` must
//! succeed and every extracted field must agree with what `serde_json::Value` holds at
//! that path: the same scalar, `Composite` for an array or object, `Missing` when
//! absent. Floats may differ in the last bit or two (serde_json's default float parser
//! is not always correctly rounded). One exception:
//!
//! * a path that is both a leaf and the prefix of a longer path (`data` next to
//!   `data.x`) is `Missing` when it holds an object ("the object form wins");
//!
//! Duplicate keys are checked like any input: like `Value`, the extractor keeps the last
//! occurrence, for nested paths too (`{"data":{"x":1},"data":2}` has no `data.x`).

use onceflow_core::config::FieldPath;
use onceflow_core::decode::{DecodeError, Extractor, Value};
use serde_json::Value as J;

/// The extracted paths. `data` is both a leaf and a prefix on purpose; `seq` and
/// `data.y.seq` share a leaf name at different depths.
pub const PATHS: &[&str] = &["id", "seq", "data.x", "data.y.seq", "data", "k"];

thread_local! {
    static EXTRACTOR: Extractor = Extractor::new(
        &PATHS.iter().map(|p| FieldPath::parse(p).unwrap()).collect::<Vec<_>>(),
    );
}

/// Runs one input.
pub fn run(data: &[u8]) {
    EXTRACTOR.with(|ex| check(ex, data));
}

fn check(ex: &Extractor, data: &[u8]) {
    // Garbage from an earlier record in the arena must not matter.
    let mut arena = b"previous record".to_vec();
    let mut out = vec![Value::Int(-1); PATHS.len()];
    let got = ex.extract(data, &mut arena, &mut out);
    let reference = serde_json::from_slice::<J>(data);

    match (&reference, &got) {
        (Ok(J::Object(_)), Err(e)) => {
            panic!("serde_json accepts the object but extract fails: {e}")
        }
        (Ok(J::Object(_)), Ok(())) => {}
        (Ok(_), Err(DecodeError::NotAnObject)) => return,
        (Ok(v), r) => panic!("non-object JSON {v} gave {r:?}, expected NotAnObject"),
        // Both reject it; fine.
        (Err(_), Err(_)) => return,
        // Skipped values are checked less than `Value` checks them (no recursion limit,
        // no number range), so extract may accept what `Value` rejects; but it must
        // still be JSON to serde_json's own skipping parser.
        (Err(e), Ok(())) => {
            assert!(
                serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok(),
                "extract accepts input that serde_json rejects even when skipping it: {e}"
            );
            return;
        }
    }
    let root = reference.unwrap();
    for (i, path) in PATHS.iter().enumerate() {
        let mut at = Some(&root);
        for seg in path.split('.') {
            at = at.and_then(|v| v.as_object()).and_then(|m| m.get(seg));
        }
        let ok = match (at, out[i]) {
            (None, Value::Missing) => true,
            (Some(J::Null), Value::Null) => true,
            (Some(J::Bool(a)), Value::Bool(b)) => *a == b,
            (Some(J::Number(n)), Value::Int(b)) => n.as_i64() == Some(b),
            (Some(J::Number(n)), Value::Float(b)) => {
                n.as_i64().is_none() && n.as_f64().is_some_and(|a| close(a, b))
            }
            (Some(J::String(s)), Value::Str(start, len)) => {
                let (start, len) = (start as usize, len as usize);
                arena.get(start..start + len) == Some(s.as_bytes())
            }
            (Some(J::Array(_)), Value::Composite) => true,
            // An object is a composite value, also where the path is the prefix of
            // other wanted paths (it used to read as missing there).
            (Some(J::Object(_)), Value::Composite) => true,
            _ => false,
        };
        assert!(
            ok,
            "path {path}: extract gave {:?}, serde_json has {:?} (input {:?})",
            out[i],
            at,
            String::from_utf8_lossy(data)
        );
    }
}

/// Equal, or at most 2 units in the last place apart (same sign).
fn close(a: f64, b: f64) -> bool {
    a == b
        || (a.is_sign_negative() == b.is_sign_negative() && a.to_bits().abs_diff(b.to_bits()) <= 2)
}
