//! The manifest of a snapshot: what it covers and how to check its shard files.
//!
//! # File format
//!
//! ```text
//! onceflow-snapshot-manifest <format version> crc32c=<8 hex digits>\n
//! <JSON object: Manifest>\n
//! ```
//!
//! The checksum covers every byte after the first line. The JSON object has exactly
//! the fields of [`Manifest`] (unknown fields are refused).

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::SnapshotError;
use super::fingerprint::Fingerprint;
use super::format::{
    FORMAT_VERSION, MANIFEST_MAGIC, MAX_MANIFEST_BYTES, MAX_SHARDS, RkyvFormat, shard_file_name,
};

/// The input position a snapshot's state covers: records of `(source, partition)`
/// before `next_offset` are in the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputOffset {
    /// Source (topic) name.
    pub source: String,
    /// Partition.
    pub partition: u32,
    /// Next offset to read.
    pub next_offset: u64,
}

/// What the manifest records about one shard file (returned by
/// [`ShardWriter::finish`](super::ShardWriter::finish)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardFileInfo {
    /// Shard index.
    pub shard: u32,
    /// File name inside the snapshot directory.
    pub file: String,
    /// File size in bytes (header included).
    pub bytes: u64,
    /// Keys (entries) in the file.
    pub keys: u64,
    /// Extra records in the file.
    pub extras: u64,
    /// crc32c of the file's body (also in its header).
    pub body_crc32c: u32,
}

/// A snapshot's manifest (`snapshot-<epoch>/MANIFEST`), written after all shard files:
/// its presence marks the snapshot complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Snapshot format version (also in the first line and in every shard header).
    pub format_version: u16,
    /// The rkyv format features the shard files were archived with, e.g.
    /// `rkyv-0.8 little_endian aligned pointer_width_32`.
    pub rkyv_format: String,
    /// The epoch whose end state the snapshot holds. It may be restored only once this
    /// epoch is committed.
    pub epoch: u64,
    /// [`Fingerprint::digest`] of `fingerprint` (a quick equality check).
    pub fingerprint_digest: u64,
    /// What the state depends on (see [`Fingerprint`]).
    pub fingerprint: Fingerprint,
    /// Input offsets the state covers (replay starts here).
    pub inputs: Vec<InputOffset>,
    /// One entry per shard, in shard order.
    pub shards: Vec<ShardFileInfo>,
}

impl Manifest {
    /// Total keys over all shards.
    pub fn keys(&self) -> u64 {
        self.shards.iter().map(|s| s.keys).sum()
    }

    /// Encodes the manifest file.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = serde_json::to_vec_pretty(self).expect("a manifest serializes");
        body.push(b'\n');
        let crc = crc32c::crc32c(&body);
        let mut out = format!(
            "{MANIFEST_MAGIC} {} crc32c={crc:08x}\n",
            self.format_version
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    }

    /// Decodes and checks a manifest file's bytes (`path` names it in errors).
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Manifest, SnapshotError> {
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| SnapshotError::corrupt(path, 0, "manifest has no header line"))?;
        let line = std::str::from_utf8(&bytes[..nl])
            .map_err(|_| SnapshotError::corrupt(path, 0, "manifest header line is not UTF-8"))?;
        let mut words = line.split(' ');
        if words.next() != Some(MANIFEST_MAGIC) {
            return Err(SnapshotError::corrupt(
                path,
                0,
                "not a snapshot manifest (bad first word)",
            ));
        }
        let version: u32 = words.next().and_then(|v| v.parse().ok()).ok_or_else(|| {
            SnapshotError::corrupt(path, 0, "manifest header line lacks a version")
        })?;
        if version != FORMAT_VERSION as u32 {
            return Err(SnapshotError::WrongVersion {
                path: path.to_path_buf(),
                found: version,
                supported: FORMAT_VERSION as u32,
            });
        }
        let stored = words
            .next()
            .and_then(|w| w.strip_prefix("crc32c="))
            .filter(|h| h.len() == 8)
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| {
                SnapshotError::corrupt(path, 0, "manifest header line lacks crc32c=<8 hex digits>")
            })?;
        if words.next().is_some() {
            return Err(SnapshotError::corrupt(
                path,
                0,
                "manifest header line has extra words",
            ));
        }
        let body = &bytes[nl + 1..];
        let computed = crc32c::crc32c(body);
        if stored != computed {
            return Err(SnapshotError::Checksum {
                path: path.to_path_buf(),
                region: "manifest",
                start: nl as u64 + 1,
                end: bytes.len() as u64,
                stored,
                computed,
            });
        }
        let m: Manifest = serde_json::from_slice(body).map_err(|e| {
            SnapshotError::corrupt(path, nl as u64 + 1, format!("manifest JSON: {e}"))
        })?;
        m.check(path)?;
        Ok(m)
    }

    /// Reads and checks a manifest file.
    pub fn read(path: &Path) -> Result<Manifest, SnapshotError> {
        let f = File::open(path).map_err(|e| SnapshotError::io(path, "open", e))?;
        let mut bytes = Vec::new();
        f.take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| SnapshotError::io(path, "read", e))?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(SnapshotError::corrupt(
                path,
                MAX_MANIFEST_BYTES,
                format!("manifest larger than {MAX_MANIFEST_BYTES} bytes"),
            ));
        }
        Manifest::decode(path, &bytes)
    }

    /// Whether a manifest file exists at `path`.
    pub(crate) fn exists(path: &Path) -> Result<bool, SnapshotError> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) if e.kind() == ErrorKind::NotADirectory => Ok(false),
            Err(e) => Err(SnapshotError::io(path, "stat", e)),
        }
    }

    /// Consistency of the decoded fields.
    fn check(&self, path: &Path) -> Result<(), SnapshotError> {
        if self.format_version != FORMAT_VERSION {
            return Err(SnapshotError::corrupt(
                path,
                0,
                format!(
                    "manifest JSON says format version {} but its header line says {FORMAT_VERSION}",
                    self.format_version
                ),
            ));
        }
        let current = RkyvFormat::current().to_string();
        if self.rkyv_format != current {
            return Err(SnapshotError::WrongRkyvFormat {
                path: path.to_path_buf(),
                found: self.rkyv_format.clone(),
                expected: current,
            });
        }
        if self.fingerprint.digest() != self.fingerprint_digest {
            return Err(SnapshotError::corrupt(
                path,
                0,
                "manifest fingerprint digest does not match its components",
            ));
        }
        let n = self.shards.len();
        if n == 0 || n > MAX_SHARDS as usize {
            return Err(SnapshotError::corrupt(
                path,
                0,
                format!("manifest lists {n} shards; 1..={MAX_SHARDS} are allowed"),
            ));
        }
        for (i, s) in self.shards.iter().enumerate() {
            if s.shard as usize != i || s.file != shard_file_name(i as u32) {
                return Err(SnapshotError::corrupt(
                    path,
                    0,
                    format!(
                        "manifest shard entry {i} is shard {} in {:?}; expected shard {i} in {:?}",
                        s.shard,
                        s.file,
                        shard_file_name(i as u32)
                    ),
                ));
            }
        }
        Ok(())
    }
}
