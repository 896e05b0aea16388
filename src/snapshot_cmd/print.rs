//! `snapshot inspect` output: text for people, one JSON object for tools.

use std::fmt::Write as _;
use std::time::SystemTime;

use onceflow_core::snapshot::Manifest;
use onceflow_core::snapshot::format::{FORMAT_VERSION, RkyvFormat};
use serde_json::{Value, json};

use super::check::Check;
use super::inspect::{EntryOut, Inspection, Lookup};
use super::ls::inputs_summary;
use super::text::{
    Table, hex, human_bytes, indent, plural, printable, shown, size_exact, unix_seconds, when,
};
use crate::thousands;

/// Width of the `label:` column.
const LABEL_WIDTH: usize = 13;
/// Most characters of a key (or bytes of a binary key) shown in text.
const KEY_SHOWN: usize = 40;
/// Most characters of a state (or bytes of a binary state) shown in a table.
const STATE_SHOWN: usize = 60;
/// … and for the one state `--key` prints.
const LOOKUP_STATE_SHOWN: usize = 400;

fn field(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{:<LABEL_WIDTH$}{value}", format!("{label}:"));
}

/// The text report.
pub(super) fn render(
    ins: &Inspection,
    entries: Option<&[EntryOut]>,
    lookup: Option<&Lookup>,
) -> String {
    let mut out = String::new();
    let what = if ins.is_dir { "snapshot" } else { "shard file" };
    let _ = writeln!(out, "{what} {}", ins.path.display());
    field(
        &mut out,
        "epoch",
        ins.epoch.map_or("unknown".into(), |e| e.to_string()),
    );
    if ins.format_known() {
        field(
            &mut out,
            "format",
            format!("version {FORMAT_VERSION}, {}", RkyvFormat::current()),
        );
    }
    if let Some(t) = ins.written {
        field(&mut out, "written", when(t, SystemTime::now()));
    }
    if let Some(m) = &ins.manifest {
        render_manifest(&mut out, m);
    }
    match &ins.shards[..] {
        [s] if !ins.is_dir => {
            // One file: its header, field by field.
            if let (Some(shard), Some(of)) = (s.shard, s.of) {
                field(&mut out, "shard", format!("{shard} of {of}"));
            }
            if let Some(k) = s.keys {
                field(&mut out, "keys", thousands(k));
            }
            if let Some(x) = s.extras {
                field(&mut out, "extras", thousands(x));
            }
            if let Some(b) = s.bytes {
                field(&mut out, "size", size_exact(b));
            }
            if let Some(c) = s.crc {
                field(&mut out, "crc32c", format!("{c:08x} (body)"));
            }
        }
        _ => render_shards(&mut out, ins),
    }
    if let Some(c) = &ins.checked {
        field(&mut out, "checked", c);
    }
    if !ins.temps.is_empty() {
        field(&mut out, "temp files", ins.temps.join(", "));
    }
    if let Some(m) = ins.error() {
        field(&mut out, "problem", m);
    }
    let verdict = if ins.valid() {
        "yes".to_string()
    } else if ins.is_dir && ins.problem.is_none() {
        format!(
            "no ({} of {} shard files invalid)",
            ins.invalid_shards(),
            ins.shards.len()
        )
    } else {
        "no".to_string()
    };
    field(&mut out, "valid", verdict);
    if let Some(entries) = entries {
        render_entries(&mut out, entries);
    }
    if let Some(l) = lookup {
        render_lookup(&mut out, l);
    }
    out
}

fn render_manifest(out: &mut String, m: &Manifest) {
    let components = m.fingerprint.components();
    field(
        out,
        "fingerprint",
        format!(
            "digest {:016x}, {} component{}",
            m.fingerprint_digest,
            components.len(),
            plural(components.len() as u64)
        ),
    );
    let mut t = Table::new(&[("NAME", false), ("DIGEST", false), ("VALUE", false)]);
    for c in components {
        let digest = format!("{:016x}", c.digest);
        t.row(vec![c.name.clone(), digest, c.shown.clone()], Vec::new());
    }
    if !components.is_empty() {
        out.push_str(&indent(&t.render()));
    }
    field(out, "inputs", inputs_summary(&m.inputs));
    let mut t = Table::new(&[
        ("SOURCE", false),
        ("PARTITION", true),
        ("NEXT OFFSET", true),
    ]);
    for i in &m.inputs {
        let cells = vec![
            i.source.clone(),
            i.partition.to_string(),
            thousands(i.next_offset),
        ];
        t.row(cells, Vec::new());
    }
    if !m.inputs.is_empty() {
        out.push_str(&indent(&t.render()));
    }
}

/// The shard table of a snapshot directory.
fn render_shards(out: &mut String, ins: &Inspection) {
    let keys: u64 = ins.shards.iter().filter_map(|s| s.keys).sum();
    let extras: u64 = ins.shards.iter().filter_map(|s| s.extras).sum();
    let bytes: u64 = ins.shards.iter().filter_map(|s| s.bytes).sum();
    let n = ins.shards.len();
    let count = if ins.manifest.is_some() {
        n.to_string()
    } else {
        format!("{n} file{} present", plural(n as u64))
    };
    field(
        out,
        "shards",
        format!(
            "{count}, {} key{}, {} extra{}, {}",
            thousands(keys),
            plural(keys),
            thousands(extras),
            plural(extras),
            human_bytes(bytes)
        ),
    );
    if ins.shards.is_empty() {
        return;
    }
    let mut t = Table::new(&[
        ("SHARD", true),
        ("FILE", false),
        ("KEYS", true),
        ("EXTRAS", true),
        ("SIZE", true),
        ("CRC32C", false),
        ("CHECK", false),
    ]);
    let opt = |v: Option<u64>| v.map_or("-".into(), thousands);
    for s in &ins.shards {
        let cells = vec![
            s.shard.map_or("-".into(), |x| x.to_string()),
            s.file.clone(),
            opt(s.keys),
            opt(s.extras),
            s.bytes.map_or("-".into(), human_bytes),
            s.crc.map_or("-".into(), |c| format!("{c:08x}")),
            s.check.word().into(),
        ];
        let notes = s
            .check
            .message()
            .map(|m| vec![format!("{}: {m}", s.check.word())])
            .unwrap_or_default();
        t.row(cells, notes);
    }
    out.push_str(&indent(&t.render()));
}

fn render_entries(out: &mut String, entries: &[EntryOut]) {
    let _ = writeln!(out, "entries (first {}):", entries.len());
    if entries.is_empty() {
        return;
    }
    let mut t = Table::new(&[
        ("SHARD", true),
        ("KEY", false),
        ("SEQ", true),
        ("BYTES", true),
        ("STATE", false),
    ]);
    for e in entries {
        let cells = vec![
            e.shard.to_string(),
            shown(&e.key, KEY_SHOWN),
            e.seq.to_string(),
            thousands(e.state.len() as u64),
            shown(&e.state, STATE_SHOWN),
        ];
        t.row(cells, Vec::new());
    }
    out.push_str(&indent(&t.render()));
}

fn render_lookup(out: &mut String, l: &Lookup) {
    let key = shown(&l.key, KEY_SHOWN);
    if l.found.is_empty() {
        let _ = writeln!(out, "key {key}: absent");
    }
    for e in &l.found {
        let _ = writeln!(
            out,
            "key {key}: shard {}, seq {}, state {}: {}",
            e.shard,
            e.seq,
            size_exact(e.state.len() as u64),
            shown(&e.state, LOOKUP_STATE_SHOWN)
        );
    }
    if !l.skipped.is_empty() {
        let _ = writeln!(out, "(not looked up in {}: invalid)", l.skipped.join(", "));
    }
}

// ---------------------------------------------------------------------------------
// JSON

/// The JSON report. Digests and checksums are hex strings (a `u64` does not survive
/// every JSON reader); `fingerprint`, `inputs`, `manifest_modified_unix_s` and
/// `temp_files` are there for a snapshot directory only.
pub(super) fn to_json(
    ins: &Inspection,
    entries: Option<&[EntryOut]>,
    lookup: Option<&Lookup>,
) -> Value {
    let known = ins.format_known();
    let mut o = serde_json::Map::new();
    o.insert("path".into(), json!(ins.path.display().to_string()));
    let kind = if ins.is_dir { "snapshot" } else { "shard_file" };
    o.insert("kind".into(), json!(kind));
    o.insert("valid".into(), json!(ins.valid()));
    o.insert("error".into(), json!(ins.error()));
    o.insert("epoch".into(), json!(ins.epoch));
    o.insert(
        "format_version".into(),
        json!(known.then_some(FORMAT_VERSION)),
    );
    o.insert(
        "rkyv_format".into(),
        json!(known.then(|| RkyvFormat::current().to_string())),
    );
    if ins.is_dir {
        o.insert(
            "manifest_modified_unix_s".into(),
            json!(ins.written.map(unix_seconds)),
        );
        let m = ins.manifest.as_ref();
        o.insert(
            "fingerprint".into(),
            m.map_or(Value::Null, fingerprint_json),
        );
        o.insert(
            "inputs".into(),
            m.map_or(Value::Null, |m| {
                let inputs = m.inputs.iter().map(|i| {
                    json!({"source": i.source, "partition": i.partition, "next_offset": i.next_offset})
                });
                Value::Array(inputs.collect())
            }),
        );
        o.insert("temp_files".into(), json!(ins.temps));
    }
    let shards = ins.shards.iter().map(|s| {
        json!({
            "shard": s.shard,
            "shards": s.of,
            "file": s.file,
            "bytes": s.bytes,
            "keys": s.keys,
            "extras": s.extras,
            "body_crc32c": s.crc.map(|c| format!("{c:08x}")),
            "valid": matches!(s.check, Check::Ok),
            "error": s.check.message(),
        })
    });
    o.insert("shards".into(), Value::Array(shards.collect()));
    if let Some(entries) = entries {
        o.insert(
            "entries".into(),
            Value::Array(entries.iter().map(entry_json).collect()),
        );
    }
    if let Some(l) = lookup {
        let mut v = serde_json::Map::new();
        bytes_json(&mut v, "key", &l.key);
        v.insert("found".into(), json!(!l.found.is_empty()));
        v.insert(
            "entries".into(),
            Value::Array(l.found.iter().map(entry_json).collect()),
        );
        v.insert("not_searched".into(), json!(l.skipped));
        o.insert("lookup".into(), Value::Object(v));
    }
    Value::Object(o)
}

fn fingerprint_json(m: &Manifest) -> Value {
    let components =
        m.fingerprint.components().iter().map(
            |c| json!({"name": c.name, "digest": format!("{:016x}", c.digest), "value": c.shown}),
        );
    json!({
        "digest": format!("{:016x}", m.fingerprint_digest),
        "components": Value::Array(components.collect()),
    })
}

/// An entry in JSON; key and state are text when they are printable UTF-8, else hex
/// (`key_hex`, `state_hex`), never truncated.
fn entry_json(e: &EntryOut) -> Value {
    let mut v = serde_json::Map::new();
    v.insert("shard".into(), e.shard.into());
    bytes_json(&mut v, "key", &e.key);
    v.insert("seq".into(), e.seq.into());
    v.insert("state_bytes".into(), (e.state.len() as u64).into());
    bytes_json(&mut v, "state", &e.state);
    Value::Object(v)
}

fn bytes_json(v: &mut serde_json::Map<String, Value>, name: &str, b: &[u8]) {
    match printable(b) {
        Some(s) => v.insert(name.into(), s.into()),
        None => v.insert(format!("{name}_hex"), hex(b).into()),
    };
}
