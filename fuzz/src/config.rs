//! `config` target: `Pipeline::parse` on arbitrary UTF-8 text must not panic.

use std::path::Path;

use onceflow_core::config::Pipeline;
use onceflow_core::decode::{Extractor, Value};

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Pipeline::parse(text, Path::new("/fuzz-base")) {
        Ok(p) => {
            // What the engine does next with a valid pipeline, minus the I/O.
            let fields = p.referenced_fields();
            let ex = Extractor::new(&fields);
            assert_eq!(ex.slots(), fields.len());
            let mut out = vec![Value::Missing; fields.len()];
            let mut arena = Vec::new();
            let _ = ex.extract(br#"{"a":1,"data":{"b":"x"}}"#, &mut arena, &mut out);
            let _ = format!("{p:?}");
        }
        Err(errors) => {
            assert!(
                !errors.is_empty(),
                "parse failed without reporting an error"
            );
            let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
            for e in &errors {
                if let Some(l) = e.line {
                    assert!(
                        (1..=lines).contains(&l),
                        "error {e} points at line {l} of a {lines}-line file"
                    );
                }
                let _ = e.to_string();
            }
        }
    }
}
