//! `config` target: `Pipeline::parse` on arbitrary UTF-8 text must not panic.

use std::path::Path;
use std::sync::Arc;

use onceflow_core::batch::{EventBatch, OutBuf};
use onceflow_core::config::{MAX_UPCAST_PARTS, Pipeline};
use onceflow_core::decode::{Extractor, Value};
use onceflow_core::router::Router;
use onceflow_core::stats::Outcomes;

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
            // The router binds [upcast] and projections to the decoder's fields and
            // runs them (upcasting, splitting) on a record.
            let inputs = Arc::new(p.sources.iter().map(|s| (s.name.clone(), 0)).collect());
            let mut router = Router::new(&p, inputs);
            let mut batches: Vec<EventBatch> =
                (0..p.shards).map(|_| EventBatch::default()).collect();
            let (mut dead, mut o) = (OutBuf::default(), Outcomes::default());
            for rec in [
                &br#"{"a":1,"type":"t","data":{"b":"x"}}"#[..],
                br#"{"schema_version":1}"#,
            ] {
                o.read += 1;
                router.route(0, 0, 0, rec, &[], &mut batches, &mut dead, true, &mut o);
            }
            // At most MAX_UPCAST_PARTS parts a record, each delivered once per projection.
            let routed: usize = batches.iter().map(|b| b.events.len()).sum();
            let per_part = p.projections.as_ref().map_or(1, |ps| ps.list.len());
            assert!(routed <= 2 * MAX_UPCAST_PARTS * per_part, "{routed} events");
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
