//! JSON decoding: pulls exactly the fields a pipeline references out of a record, in one
//! pass, without building a tree. Strings land in the caller's arena.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

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
        let mut de = serde_json::Deserializer::from_slice(json);
        let seed = ObjectSeed {
            level: &self.root,
            arena,
            out,
            top: true,
        };
        match seed.deserialize(&mut de) {
            Ok(true) => {}
            Ok(false) => return Err(DecodeError::NotAnObject),
            Err(e) => return Err(DecodeError::Malformed(e.to_string())),
        }
        de.end().map_err(|e| DecodeError::Malformed(e.to_string()))
    }
}

struct ObjectSeed<'a> {
    level: &'a Level,
    arena: &'a mut Vec<u8>,
    out: &'a mut [Value],
    top: bool,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    /// `true` when the value was an object.
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let ObjectSeed {
            level, arena, out, ..
        } = self;
        while let Some(key) = map.next_key::<KeyName<'de>>()? {
            let name = key.as_str();
            match level.entries.iter().find(|e| e.0 == name) {
                Some((_, slot, child)) => {
                    if let Some(child) = child {
                        // Both a leaf and a prefix is rare; the object form wins for the child.
                        let is_obj = map.next_value_seed(ObjectSeed {
                            level: child,
                            arena,
                            out,
                            top: false,
                        })?;
                        if let (Some(s), false) = (slot, is_obj) {
                            out[*s] = Value::Composite;
                        }
                    } else if let Some(s) = slot {
                        out[*s] = map.next_value_seed(ScalarSeed { arena })?;
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(true)
    }
    // A non-object where an object was expected: at the top this is an error the caller
    // reports; below the top the path simply does not exist.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        let _ = self.top;
        Ok(false)
    }
}

/// A map key, borrowed when the input has no escapes.
enum KeyName<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl KeyName<'_> {
    fn as_str(&self) -> &str {
        match self {
            KeyName::Borrowed(s) => s,
            KeyName::Owned(s) => s,
        }
    }
}

impl<'de> de::Deserialize<'de> for KeyName<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyName::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyName::Owned(v.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

struct ScalarSeed<'a> {
    arena: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for ScalarSeed<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScalarSeed<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v)
            .map(Value::Int)
            .unwrap_or(Value::Float(v as f64)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        let start = self.arena.len();
        self.arena.extend_from_slice(v.as_bytes());
        Ok(Value::Str(start as u32, v.len() as u32))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Composite)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Composite)
    }
}

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
