//! How deep a `log_open` corpus gets: counts the inputs by outcome.
//!
//! ```text
//! cd fuzz && cargo run --release --example corpus_stats -- corpus/log_open
//! ```

use std::collections::BTreeMap;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "corpus/log_open".into());
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        let o = onceflow_fuzz::log_open::run_outcome(&data);
        let key = format!(
            "reader before: {:5} | writer opened: {:5} | committed: {:5} | reader after: {:5}",
            o.read_before.is_some(),
            o.writer_opened,
            o.committed,
            o.read_after.is_some()
        );
        *by.entry(key).or_default() += 1;
    }
    for (k, n) in by {
        println!("{n:6}  {k}");
    }
}
