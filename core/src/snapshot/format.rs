//! On-disk format of snapshots, version 1.
//!
//! All integers are little endian. Checksums are CRC-32C (Castagnoli).
//!
//! # Layout of a snapshot root directory
//!
//! ```text
//! ROOT/snapshot-<epoch:020>/shard-<i:05>.snap   one file per shard (i = 0 .. shards)
//! ROOT/snapshot-<epoch:020>/MANIFEST            written last: its presence marks the
//!                                               snapshot complete
//! ```
//!
//! Every file is written as `<name>.tmp`, fsynced, renamed into place, and its directory
//! fsynced; a file is never modified after its rename (the reader maps it).
//!
//! # Shard file
//!
//! A 64-byte header followed by the body, an rkyv archive (root object at its end).
//!
//! ```text
//! off  size  field
//!   0     8  magic "OFSNAPSH"
//!   8     2  format version (1)
//!  10     2  rkyv format code (see `RkyvFormat::code`)
//!  12     4  shard index
//!  16     4  shard count
//!  20     4  crc32c of the body
//!  24     8  epoch
//!  32     8  body length B (the file is exactly 64 + B bytes)
//!  40     8  key count
//!  48     8  extra count
//!  56     4  reserved (0)
//!  60     4  crc32c of bytes 0 .. 60
//!  64     B  body
//! ```
//!
//! The body is the archive of `BodyModel`, written in the order rkyv's validator
//! expects (every object's children before the object, in field order):
//!
//! ```text
//! for each chunk of up to 2^CHUNK_SHIFT entries:
//!     for each entry: key bytes | state bytes
//!     the chunk's entry array: [ArchivedEntry]          24 bytes each
//! chunks:  [ArchivedVec<ArchivedEntry>]                  8 bytes per chunk
//! index:   [ArchivedSlot]                                8 bytes per slot
//! extras:  for each: kind, key, source, data bytes; then [ArchivedExtra]
//! root:    ArchivedBody
//! ```
//!
//! `ArchivedEntry = { key: ArchivedVec<u8>, state: ArchivedVec<u8>, seq: u64 }`; entry
//! `i` is element `i % 2^CHUNK_SHIFT` of chunk `i >> CHUNK_SHIFT` (chunks let the writer
//! stream: it keeps one chunk of entry positions in memory, not one per key).
//!
//! The index is an open-addressing hash table with linear probing over
//! `h = hash::stable_hash(key)`: a power-of-two number of slots (more than one and a
//! half times the key count, so at least a third are empty), slot `{ tag: (h >> 32) as
//! u32, entry: u32 }`, empty slots hold `entry = u32::MAX`. A key's probe starts at
//! slot `h & (slots - 1)`; a lookup compares the tag first and the key bytes only on a
//! tag match, and stops at the first empty slot.
//!
//! # What the reader trusts
//!
//! The header checksum, then the body checksum, then `rkyv::access` (bytecheck) over the
//! whole body: every relative pointer and length is in bounds, objects do not overlap,
//! strings are UTF-8. After that the reader uses the archive without re-validating it.
//! Indexes *inside* the archive that rkyv does not know about (a slot's entry number)
//! are bounds-checked at every use, so a crafted file can give wrong answers but
//! never a panic or an out-of-bounds read.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use rkyv::munge::munge;
use rkyv::rancor::Fallible;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place, Serialize};

use super::SnapshotError;

/// Format version of shard files and manifests written by this build (the only one it
/// reads).
pub const FORMAT_VERSION: u16 = 1;
/// Magic bytes at the start of every shard file.
pub const SHARD_MAGIC: [u8; 8] = *b"OFSNAPSH";
/// Size of the shard file header; the body starts here.
pub const HEADER_LEN: usize = 64;
/// Entries per chunk: `1 << CHUNK_SHIFT`.
pub const CHUNK_SHIFT: u32 = 16;
/// Largest body: relative pointers are 32-bit signed (`pointer_width_32`).
pub const MAX_BODY_BYTES: u64 = i32::MAX as u64;
/// Most keys in one shard file (entry numbers are `u32`, `u32::MAX` marks empty slots).
pub const MAX_KEYS: u64 = u32::MAX as u64 - 1;
/// Largest shard count a snapshot may have.
pub const MAX_SHARDS: u32 = 1 << 16;
/// Largest manifest file accepted.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// An empty index slot.
pub(crate) const EMPTY_SLOT: u32 = u32::MAX;

/// Name of the manifest file inside a snapshot directory.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// First word of a manifest file.
pub(crate) const MANIFEST_MAGIC: &str = "onceflow-snapshot-manifest";
const DIR_PREFIX: &str = "snapshot-";
const SHARD_PREFIX: &str = "shard-";
const SHARD_SUFFIX: &str = ".snap";
/// Suffix of files being written (left behind by a crash mid-write).
pub const TMP_SUFFIX: &str = ".tmp";

// ---------------------------------------------------------------------------------
// rkyv format features

/// The rkyv format features this build archives with (chosen in the workspace
/// `Cargo.toml`; probed here from the compiled rkyv, not restated, so a change of
/// features changes what is recorded and checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RkyvFormat {
    /// Multi-byte integers are little endian (`little_endian`), else big endian.
    pub little_endian: bool,
    /// Archived primitives are naturally aligned (`aligned`), else unaligned.
    pub aligned: bool,
    /// Width of relative pointers and archived lengths in bits (`pointer_width_*`).
    pub pointer_width: u8,
}

impl RkyvFormat {
    /// The format of this build.
    pub fn current() -> RkyvFormat {
        let probe = rkyv::primitive::ArchivedU32::from_native(0x0102_0304);
        RkyvFormat {
            little_endian: probe.to_native().to_le_bytes() == as_bytes_u32(probe),
            aligned: align_of::<rkyv::primitive::ArchivedU64>() == 8,
            pointer_width: rkyv::primitive::FixedUsize::BITS as u8,
        }
    }

    /// The 16-bit code stored in shard headers: bit 0 big endian, bit 1 unaligned,
    /// bits 8..16 pointer width in bits.
    pub fn code(self) -> u16 {
        (!self.little_endian as u16)
            | ((!self.aligned as u16) << 1)
            | (self.pointer_width as u16) << 8
    }

    /// Decodes a header code (`None` if it is not one).
    pub fn from_code(code: u16) -> Option<RkyvFormat> {
        let width = (code >> 8) as u8;
        if code & 0xfc != 0 || !matches!(width, 16 | 32 | 64) {
            return None;
        }
        Some(RkyvFormat {
            little_endian: code & 1 == 0,
            aligned: code & 2 == 0,
            pointer_width: width,
        })
    }
}

/// The in-memory bytes of an archived `u32` (to learn the archive's byte order).
fn as_bytes_u32(v: rkyv::primitive::ArchivedU32) -> [u8; 4] {
    // Serializing through rkyv writes exactly the archived representation.
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&v.to_native()).expect("serialize a u32");
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

impl std::fmt::Display for RkyvFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rkyv-0.8 {} {} pointer_width_{}",
            if self.little_endian {
                "little_endian"
            } else {
                "big_endian"
            },
            if self.aligned { "aligned" } else { "unaligned" },
            self.pointer_width
        )
    }
}

// ---------------------------------------------------------------------------------
// Archived types

/// One key's entry. Only its archived form, [`ArchivedEntry`], is used: the writer
/// resolves entries from [`WrittenEntry`] positions.
#[derive(Archive)]
#[rkyv(archived = ArchivedEntry)]
#[allow(dead_code)] // never constructed: it only defines the archived layout
pub(crate) struct EntryModel {
    pub key: Vec<u8>,
    pub state: Vec<u8>,
    pub seq: u64,
}

/// A slot of the key index.
#[derive(Archive, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(archived = ArchivedSlot)]
pub(crate) struct Slot {
    pub tag: u32,
    pub entry: u32,
}

impl Slot {
    pub const EMPTY: Slot = Slot {
        tag: 0,
        entry: EMPTY_SLOT,
    };
}

/// A per-shard extra record (e.g. an out-of-order record the shard holds).
#[derive(Archive, Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(archived = ArchivedExtra)]
pub(crate) struct ExtraModel {
    pub kind: String,
    pub key: Vec<u8>,
    pub seq: u64,
    pub source: String,
    pub partition: u32,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// The root object of a shard file's body.
#[derive(Archive, Serialize)]
#[rkyv(archived = ArchivedBody)]
pub(crate) struct BodyModel {
    pub chunk_shift: u32,
    pub chunks: Vec<WrittenChunk>,
    pub index: Vec<Slot>,
    pub extras: Vec<ExtraModel>,
}

/// An entry whose key and state bytes are already written at known body positions.
pub(crate) struct WrittenEntry {
    pub key_pos: u32,
    pub key_len: u32,
    pub state_pos: u32,
    pub state_len: u32,
    pub seq: u64,
}

impl Archive for WrittenEntry {
    type Archived = ArchivedEntry;
    type Resolver = ();

    fn resolve(&self, _: (), out: Place<ArchivedEntry>) {
        munge!(let ArchivedEntry { key, state, seq } = out);
        ArchivedVec::<u8>::resolve_from_len(
            self.key_len as usize,
            VecResolver::from_pos(self.key_pos as usize),
            key,
        );
        ArchivedVec::<u8>::resolve_from_len(
            self.state_len as usize,
            VecResolver::from_pos(self.state_pos as usize),
            state,
        );
        self.seq.resolve((), seq);
    }
}

impl<S: Fallible + ?Sized> Serialize<S> for WrittenEntry {
    fn serialize(&self, _: &mut S) -> Result<(), S::Error> {
        // The bytes are written already.
        Ok(())
    }
}

/// A chunk whose entry array is already written at a known body position.
pub(crate) struct WrittenChunk {
    pub pos: u32,
    pub len: u32,
}

impl Archive for WrittenChunk {
    type Archived = ArchivedVec<ArchivedEntry>;
    type Resolver = ();

    fn resolve(&self, _: (), out: Place<Self::Archived>) {
        ArchivedVec::<ArchivedEntry>::resolve_from_len(
            self.len as usize,
            VecResolver::from_pos(self.pos as usize),
            out,
        );
    }
}

impl<S: Fallible + ?Sized> Serialize<S> for WrittenChunk {
    fn serialize(&self, _: &mut S) -> Result<(), S::Error> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Index

/// Slots of the index of `keys` keys: a power of two above `1.5 × keys`.
pub(crate) fn index_slots(keys: u64) -> u64 {
    (keys + keys / 2 + 1).next_power_of_two().max(4)
}

/// Tag of a hash (stored in the slot, compared before the key bytes).
#[inline]
pub(crate) fn slot_tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// First slot of a hash's probe sequence.
#[inline]
pub(crate) fn slot_home(hash: u64, mask: usize) -> usize {
    hash as usize & mask
}

/// Builds the index table of entries `0..hashes.len()`.
pub(crate) fn build_index(hashes: &[u64]) -> Vec<Slot> {
    let n = index_slots(hashes.len() as u64) as usize;
    let mask = n - 1;
    let mut slots = vec![Slot::EMPTY; n];
    for (i, &h) in hashes.iter().enumerate() {
        let mut at = slot_home(h, mask);
        while slots[at].entry != EMPTY_SLOT {
            at = (at + 1) & mask;
        }
        slots[at] = Slot {
            tag: slot_tag(h),
            entry: i as u32,
        };
    }
    slots
}

// ---------------------------------------------------------------------------------
// Shard file header

/// The decoded header of a shard file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u16,
    pub rkyv_code: u16,
    pub shard: u32,
    pub shards: u32,
    pub body_crc: u32,
    pub epoch: u64,
    pub body_len: u64,
    pub keys: u64,
    pub extras: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&SHARD_MAGIC);
        h[8..10].copy_from_slice(&self.version.to_le_bytes());
        h[10..12].copy_from_slice(&self.rkyv_code.to_le_bytes());
        h[12..16].copy_from_slice(&self.shard.to_le_bytes());
        h[16..20].copy_from_slice(&self.shards.to_le_bytes());
        h[20..24].copy_from_slice(&self.body_crc.to_le_bytes());
        h[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        h[32..40].copy_from_slice(&self.body_len.to_le_bytes());
        h[40..48].copy_from_slice(&self.keys.to_le_bytes());
        h[48..56].copy_from_slice(&self.extras.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and checks a header: magic, version, checksum, rkyv format. `h` holds
    /// at least [`HEADER_LEN`] bytes.
    pub fn decode(path: &Path, h: &[u8]) -> Result<Header, SnapshotError> {
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        if h[0..8] != SHARD_MAGIC {
            return Err(SnapshotError::corrupt(
                path,
                0,
                "not a snapshot shard file (bad magic)",
            ));
        }
        let version = u16_at(8);
        if version != FORMAT_VERSION {
            return Err(SnapshotError::WrongVersion {
                path: path.to_path_buf(),
                found: version as u32,
                supported: FORMAT_VERSION as u32,
            });
        }
        let stored = u32_at(60);
        let computed = crc32c::crc32c(&h[0..60]);
        if stored != computed {
            return Err(SnapshotError::Checksum {
                path: path.to_path_buf(),
                region: "header",
                start: 0,
                end: 60,
                stored,
                computed,
            });
        }
        let header = Header {
            version,
            rkyv_code: u16_at(10),
            shard: u32_at(12),
            shards: u32_at(16),
            body_crc: u32_at(20),
            epoch: u64_at(24),
            body_len: u64_at(32),
            keys: u64_at(40),
            extras: u64_at(48),
        };
        let current = RkyvFormat::current();
        if header.rkyv_code != current.code() {
            return Err(SnapshotError::WrongRkyvFormat {
                path: path.to_path_buf(),
                found: RkyvFormat::from_code(header.rkyv_code).map_or_else(
                    || format!("unknown code {:#06x}", header.rkyv_code),
                    |f| f.to_string(),
                ),
                expected: current.to_string(),
            });
        }
        if u32_at(56) != 0 {
            return Err(SnapshotError::corrupt(
                path,
                56,
                "reserved header bytes are not zero",
            ));
        }
        if header.shards == 0 || header.shards > MAX_SHARDS || header.shard >= header.shards {
            return Err(SnapshotError::corrupt(
                path,
                12,
                format!(
                    "shard {} of {} is out of range",
                    header.shard, header.shards
                ),
            ));
        }
        if header.body_len > MAX_BODY_BYTES {
            return Err(SnapshotError::corrupt(
                path,
                32,
                format!(
                    "body length {} exceeds the format's {MAX_BODY_BYTES}",
                    header.body_len
                ),
            ));
        }
        if header.keys > MAX_KEYS {
            return Err(SnapshotError::corrupt(
                path,
                40,
                format!("{} keys exceed the format's {MAX_KEYS}", header.keys),
            ));
        }
        Ok(header)
    }
}

// ---------------------------------------------------------------------------------
// Names

/// Directory name of the snapshot of `epoch`.
pub fn snapshot_dir_name(epoch: u64) -> String {
    format!("{DIR_PREFIX}{epoch:020}")
}

/// Epoch of a snapshot directory name, if it is one.
pub fn parse_snapshot_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(DIR_PREFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// File name of shard `shard`'s file.
pub fn shard_file_name(shard: u32) -> String {
    format!("{SHARD_PREFIX}{shard:05}{SHARD_SUFFIX}")
}

// ---------------------------------------------------------------------------------
// File-system helpers

/// fsyncs a directory (makes entries created, renamed or removed in it durable).
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), SnapshotError> {
    let f = File::open(dir).map_err(|e| SnapshotError::io(dir, "open directory", e))?;
    f.sync_all()
        .map_err(|e| SnapshotError::io(dir, "fsync directory", e))
}

/// Writes `data` to `dir/<name>.tmp`, fsyncs it (if `fsync`), renames it to `dir/name`
/// and fsyncs `dir` (if `fsync`).
pub(crate) fn write_atomic(
    dir: &Path,
    name: &str,
    data: &[u8],
    fsync: bool,
) -> Result<PathBuf, SnapshotError> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let fin = dir.join(name);
    let mut f = File::create(&tmp).map_err(|e| SnapshotError::io(&tmp, "create", e))?;
    f.write_all(data)
        .map_err(|e| SnapshotError::io(&tmp, "write", e))?;
    if fsync {
        f.sync_all()
            .map_err(|e| SnapshotError::io(&tmp, "fsync", e))?;
    }
    drop(f);
    crate::fault::point(crate::fault::SNAPSHOT_MANIFEST_BEFORE_RENAME); // only manifests use write_atomic
    fs::rename(&tmp, &fin).map_err(|e| SnapshotError::io(&fin, "rename into place", e))?;
    if fsync {
        fsync_dir(dir)?;
    }
    Ok(fin)
}
