//! JSON decoding: pulls exactly the fields a pipeline references out of a record, in one
//! pass, without building a tree. Strings land in the caller's arena.

use std::fmt;

use crate::config::FieldPath;

/// A decoded field value; strings point into the batch arena.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Value {
    /// The field is not in the record.
    #[default]
    Missing,
    /// JSON null.
    Null,
    /// JSON boolean.
    Bool(bool),
    /// JSON integer that fits in i64.
    Int(i64),
    /// Any other JSON number.
    Float(f64),
    /// JSON string: `start..start+len` in the arena.
    Str(u32, u32),
    /// A JSON object or array (not usable as a scalar).
    Composite,
}

impl Value {
    /// What a person calls this kind of value, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Missing => "missing",
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(..) => "a string",
            Value::Composite => "an object or array",
        }
    }
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    /// Not valid JSON (message from the parser, with the column).
    Malformed(String),
    /// Valid JSON, but not an object.
    NotAnObject,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed(m) => write!(f, "malformed JSON: {m}"),
            DecodeError::NotAnObject => f.write_str("record is not a JSON object"),
        }
    }
}

/// A trie level: the field names wanted at one depth.
#[derive(Debug, Clone, Default)]
struct Level {
    /// (name, slot if a leaf, child level if a prefix of a deeper path)
    entries: Vec<(String, Option<usize>, Option<Box<Level>>)>,
}

impl Level {
    /// Forgets every value found below this level: when an object key repeats, the last
    /// occurrence wins, for nested paths as for plain fields.
    fn clear(&self, out: &mut [Value]) {
        for (_, slot, child) in &self.entries {
            if let Some(s) = slot {
                out[*s] = Value::Missing;
            }
            if let Some(c) = child {
                c.clear(out);
            }
        }
    }
}

/// Extracts a fixed list of field paths from JSON objects.
///
/// ```
/// use onceflow_core::config::FieldPath;
/// use onceflow_core::decode::{Extractor, Value};
/// let ex = Extractor::new(&[FieldPath::parse("id").unwrap(), FieldPath::parse("data.n").unwrap()]);
/// let mut arena = Vec::new();
/// let mut out = [Value::Missing; 2];
/// ex.extract(br#"{"id":"a","data":{"n":3}}"#, &mut arena, &mut out).unwrap();
/// assert_eq!(out[1], Value::Int(3));
/// ```
#[derive(Debug, Clone)]
pub struct Extractor {
    root: Level,
    slots: usize,
}

impl Extractor {
    /// Builds an extractor; `paths[i]` lands in `out[i]`.
    pub fn new(paths: &[FieldPath]) -> Self {
        let mut root = Level::default();
        for (slot, path) in paths.iter().enumerate() {
            let mut level = &mut root;
            for (depth, name) in path.0.iter().enumerate() {
                let last = depth + 1 == path.0.len();
                let idx = match level.entries.iter().position(|e| &e.0 == name) {
                    Some(i) => i,
                    None => {
                        level.entries.push((name.clone(), None, None));
                        level.entries.len() - 1
                    }
                };
                let entry = &mut level.entries[idx];
                if last {
                    entry.1 = Some(slot);
                    break;
                }
                level = entry.2.get_or_insert_with(Default::default);
            }
        }
        Extractor {
            root,
            slots: paths.len(),
        }
    }

    /// Number of output slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Decodes `json` and fills `out` (length = `slots()`); strings are appended to `arena`.
    /// On error `out` and `arena` may hold partial results.
    pub fn extract(
        &self,
        json: &[u8],
        arena: &mut Vec<u8>,
        out: &mut [Value],
    ) -> Result<(), DecodeError> {
        // hot path
        out.fill(Value::Missing);
        if let Err(e) = std::str::from_utf8(json) {
            return Err(DecodeError::Malformed(format!(
                "invalid UTF-8 at byte {}",
                e.valid_up_to()
            )));
        }
        match scan::Scanner::new(json).document(&self.root, arena, out) {
            Ok(true) => Ok(()),
            Ok(false) => Err(DecodeError::NotAnObject),
            Err(e) => Err(DecodeError::Malformed(e)),
        }
    }
}

#[cfg(test)]
mod oracle;
mod scan;

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(paths: &[&str]) -> Extractor {
        Extractor::new(
            &paths
                .iter()
                .map(|p| FieldPath::parse(p).unwrap())
                .collect::<Vec<_>>(),
        )
    }

    fn s<'a>(arena: &'a [u8], v: Value) -> &'a str {
        match v {
            Value::Str(a, l) => std::str::from_utf8(&arena[a as usize..(a + l) as usize]).unwrap(),
            other => panic!("not a string: {other:?}"),
        }
    }

    #[test]
    fn extracts_scalars_and_nested_fields() {
        let e = ex(&["account", "seq", "data.amount", "data.note", "missing"]);
        let mut arena = Vec::new();
        let mut out = vec![Value::Missing; 5];
        e.extract(
            br#"{"junk":[1,{"a":2}],"account":"A\u00e9","seq":7,"data":{"amount":-12.5,"note":null,"x":{}}}"#,
            &mut arena,
            &mut out,
        )
        .unwrap();
        assert_eq!(s(&arena, out[0]), "Aé");
        assert_eq!(out[1], Value::Int(7));
        assert_eq!(out[2], Value::Float(-12.5));
        assert_eq!(out[3], Value::Null);
        assert_eq!(out[4], Value::Missing);
    }

    #[test]
    fn errors() {
        let e = ex(&["a"]);
        let mut arena = Vec::new();
        let mut out = vec![Value::Missing; 1];
        assert!(matches!(
            e.extract(b"{\"a\":", &mut arena, &mut out),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            e.extract(b"[1,2]", &mut arena, &mut out),
            Err(DecodeError::NotAnObject)
        ));
        assert!(matches!(
            e.extract(b"{} x", &mut arena, &mut out),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            e.extract(b"\xff", &mut arena, &mut out),
            Err(DecodeError::Malformed(_))
        ));
        e.extract(b"{\"a\":{\"b\":1}}", &mut arena, &mut out)
            .unwrap();
        assert_eq!(out[0], Value::Composite);
        e.extract(b"{\"a\":18446744073709551615}", &mut arena, &mut out)
            .unwrap();
        assert!(matches!(out[0], Value::Float(_)));
    }

    #[test]
    fn non_object_parent_means_missing() {
        let e = ex(&["data.amount"]);
        let mut arena = Vec::new();
        let mut out = vec![Value::Missing; 1];
        e.extract(br#"{"data":5}"#, &mut arena, &mut out).unwrap();
        assert_eq!(out[0], Value::Missing);
    }
}

#[cfg(test)]
mod differential {
    //! The scanner against the serde_json oracle: same acceptance, same values.
    use super::*;
    use proptest::prelude::*;

    fn paths() -> Extractor {
        let p = ["a", "b", "k", "data.x", "data.y.z", "é"];
        Extractor::new(
            &p.iter()
                .map(|s| FieldPath::parse(s).unwrap())
                .collect::<Vec<_>>(),
        )
    }

    fn resolve(arena: &[u8], v: Value) -> String {
        match v {
            Value::Str(s, l) => format!(
                "str:{}",
                String::from_utf8_lossy(&arena[s as usize..(s + l) as usize])
            ),
            // Compared apart (see `same`): serde_json's default float parser may differ
            // from the correctly rounded one in the last bits.
            Value::Float(_) => "float".to_string(),
            other => format!("{other:?}"),
        }
    }

    fn agree(input: &[u8]) {
        let ex = paths();
        let (mut a1, mut a2) = (Vec::new(), Vec::new());
        let (mut o1, mut o2) = (
            vec![Value::Missing; ex.slots()],
            vec![Value::Missing; ex.slots()],
        );
        let fast = ex.extract(input, &mut a1, &mut o1);
        if std::str::from_utf8(input).is_err() {
            // Stricter than serde_json, which skips ignored strings without checking them:
            // JSON text must be UTF-8 (RFC 8259 §8.1), so such a record is malformed.
            assert!(matches!(fast, Err(DecodeError::Malformed(_))), "{fast:?}");
            return;
        }
        let slow = oracle::extract(&ex.root, input, &mut a2, &mut o2);
        match (&fast, &slow) {
            (Ok(()), Ok(())) => {
                let f: Vec<String> = o1.iter().map(|v| resolve(&a1, *v)).collect();
                let s: Vec<String> = o2.iter().map(|v| resolve(&a2, *v)).collect();
                assert_eq!(
                    f,
                    s,
                    "values differ for {:?}",
                    String::from_utf8_lossy(input)
                );
            }
            (Err(DecodeError::NotAnObject), Err(DecodeError::NotAnObject)) => {}
            (Err(DecodeError::Malformed(_)), Err(DecodeError::Malformed(_))) => {}
            _ => panic!(
                "scanner {fast:?} but serde_json {slow:?} for {:?}",
                String::from_utf8_lossy(input)
            ),
        }
    }

    #[test]
    fn hand_picked() {
        for input in [
            r#"{"a":1,"b":"x","k":-0,"data":{"x":1.5e3,"y":{"z":"\u00e9\ud83d\ude00"}}}"#,
            r#"  {"a" : [1, {"b":2}], "b":{}, "k":null, "\u00e9": true}  "#,
            r#"{"a":1,"a":2}"#,
            r#"{"data":{"x":1},"data":{"y":{"z":2}}}"#,
            r#"{"data":{"x":1},"data":[]}"#,
            r#"{"a":9223372036854775807,"b":-9223372036854775808,"k":9223372036854775808}"#,
            r#"{"a":1e400}"#,
            r#"{"a":-1.0E-2,"b":0.1}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00\ud800"}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":tru}"#,
            r#"{"a":1,}"#,
            r#"{,"a":1}"#,
            r#"{"a" 1}"#,
            r#"{"a":1}}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[1 2]}"#,
            r#"{"a\"b":1,"b":"q\"\\\/\b\f\n\r\t"}"#,
            r#"{}"#,
            r#"[]"#,
            r#""str""#,
            "42",
            "",
            "   ",
            "{",
            "nul",
            r#"{"a":{"b":{"c":{}}}}"#,
        ] {
            agree(input.as_bytes());
        }
        agree(b"{\"a\":\"\xff\"}");
        // Deeper than 128 levels is refused (serde_json skips ignored values without a
        // limit; the scanner recurses, so it bounds the depth instead of the stack).
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let ex = paths();
        let err = ex.extract(
            format!("{{\"a\":{deep}}}").as_bytes(),
            &mut Vec::new(),
            &mut vec![Value::Missing; ex.slots()],
        );
        assert!(
            matches!(err, Err(DecodeError::Malformed(m)) if m.contains("nesting deeper than 128"))
        );
        let ok_deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        agree(format!("{{\"a\":{ok_deep}}}").as_bytes());
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|i| serde_json::json!(i)),
            any::<u64>().prop_map(|i| serde_json::json!(i)),
            (-1e12f64..1e12).prop_map(|f| serde_json::json!(f)),
            "[a-z\u{e9}\"\\\\\n\u{1F600} ]{0,8}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![
                            Just("a".to_string()),
                            Just("b".to_string()),
                            Just("data".to_string()),
                            Just("x".to_string()),
                            Just("y".to_string()),
                            Just("z".to_string()),
                            "[a-z]{1,3}"
                        ],
                        inner
                    ),
                    0..5
                )
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn agrees_with_serde_json_on_valid_json(v in json_value(), pretty in any::<bool>()) {
            let text = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { serde_json::to_string(&v).unwrap() };
            agree(text.as_bytes());
        }

        #[test]
        fn agrees_with_serde_json_on_mutated_json(v in json_value(), at in any::<prop::sample::Index>(), op in 0u8..3, c in prop::sample::select(b"{}[]:,\"\\ 0-.eE+tfnu1a".to_vec())) {
            let mut bytes = serde_json::to_vec(&serde_json::json!({"a": v, "data": {"x": 1}})).unwrap();
            let i = at.index(bytes.len());
            match op {
                0 => { bytes.remove(i); }
                1 => bytes.insert(i, c),
                _ => bytes[i] = c,
            }
            agree(&bytes);
        }
    }
}

#[cfg(test)]
mod duplicate_keys {
    use super::*;

    #[test]
    fn the_last_occurrence_wins_for_nested_paths_too() {
        let ex = Extractor::new(&[
            FieldPath::parse("data.x").unwrap(),
            FieldPath::parse("data.y").unwrap(),
            FieldPath::parse("k").unwrap(),
        ]);
        let mut out = vec![Value::Missing; 3];
        ex.extract(
            br#"{"k":1,"data":{"x":1},"data":{"y":2},"k":3}"#,
            &mut Vec::new(),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [Value::Missing, Value::Int(2), Value::Int(3)]);
        ex.extract(br#"{"data":{"x":1},"data":[]}"#, &mut Vec::new(), &mut out)
            .unwrap();
        assert_eq!(out, [Value::Missing, Value::Missing, Value::Missing]);
    }

    #[test]
    fn a_path_wanted_as_value_and_prefix_is_composite_when_an_object() {
        // Found by the decode fuzz target: `data` wanted as a value (CloudEvents checks
        // it) and as the prefix of `data.x`; a scalar `data` followed by an object one.
        let ex = Extractor::new(&[
            FieldPath::parse("data").unwrap(),
            FieldPath::parse("data.x").unwrap(),
        ]);
        let mut out = vec![Value::Missing; 2];
        ex.extract(
            br#"{"data":7,"data":{"x":-1.5e3,"y":{}}}"#,
            &mut Vec::new(),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [Value::Composite, Value::Float(-1500.0)]);
        ex.extract(br#"{"data":{"x":1}}"#, &mut Vec::new(), &mut out)
            .unwrap();
        assert_eq!(out, [Value::Composite, Value::Int(1)]);
        ex.extract(br#"{"data":{"x":1},"data":2}"#, &mut Vec::new(), &mut out)
            .unwrap();
        assert_eq!(out, [Value::Int(2), Value::Missing]);
    }
}
