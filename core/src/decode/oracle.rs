//! The reference decoder for tests: the same extraction done through serde_json's
//! deserializer. The scanner must agree with it on every input.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::{DecodeError, Level, Value};

/// Extracts like `Extractor::extract`, through serde_json.
pub(super) fn extract(
    root: &Level,
    json: &[u8],
    arena: &mut Vec<u8>,
    out: &mut [Value],
) -> Result<(), DecodeError> {
    out.fill(Value::Missing);
    let mut de = serde_json::Deserializer::from_slice(json);
    let seed = ObjectSeed {
        level: root,
        arena,
        out,
        top: true,
    };
    let is_obj = seed
        .deserialize(&mut de)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    de.end()
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if is_obj {
        Ok(())
    } else {
        Err(DecodeError::NotAnObject)
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
                        child.clear(out);
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
