//! Reading snapshots: a shard file is memory-mapped, checked (sizes, checksums, rkyv
//! validation) once at open, and then served straight from the map.

use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};
use rkyv::rancor;
use rkyv::util::AlignedVec;

use super::fingerprint::Fingerprint;
use super::format::{
    ArchivedBody, ArchivedEntry, CHUNK_SHIFT, EMPTY_SLOT, HEADER_LEN, Header, MANIFEST_FILE,
    index_slots, slot_home, slot_tag,
};
use super::manifest::{InputOffset, Manifest, ShardFileInfo};
use super::{EntryRef, Extra, SnapshotError};
use crate::hash::stable_hash;

/// The bytes of a shard file.
enum Bytes {
    /// The file, mapped read-only.
    Map(Mmap),
    /// A copy (for [`ShardSnapshot::from_bytes`]), aligned like a map.
    Owned(AlignedVec<16>),
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// One shard's snapshot file, open and verified: lookups and iteration read the
/// mapped file directly (nothing is copied or deserialized).
///
/// # Examples
///
/// ```
/// use onceflow_core::snapshot::{ShardSnapshot, SnapshotWriter, WriteOptions};
///
/// let root = tempfile::tempdir().unwrap();
/// let set = SnapshotWriter::create(root.path(), 1, 1, WriteOptions::default()).unwrap();
/// let mut w = set.shard(0).unwrap();
/// w.push(b"ACC-1", 3, b"balance=10").unwrap();
/// let info = w.finish().unwrap();
///
/// let shard = ShardSnapshot::open(&set.dir().join(&info.file)).unwrap();
/// let e = shard.get(b"ACC-1").unwrap();
/// assert_eq!((e.seq, e.state), (3, &b"balance=10"[..]));
/// assert!(shard.get(b"ACC-2").is_none());
/// ```
pub struct ShardSnapshot {
    path: PathBuf,
    bytes: Bytes,
    header: Header,
}

impl std::fmt::Debug for ShardSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardSnapshot")
            .field("path", &self.path)
            .field("header", &self.header)
            .finish()
    }
}

impl ShardSnapshot {
    /// Maps and verifies a shard file on its own (no manifest): header, sizes, body
    /// checksum and rkyv validation.
    pub fn open(path: &Path) -> Result<ShardSnapshot, SnapshotError> {
        let file = File::open(path).map_err(|e| SnapshotError::io(path, "open", e))?;
        let len = file
            .metadata()
            .map_err(|e| SnapshotError::io(path, "stat", e))?
            .len();
        if len < HEADER_LEN as u64 {
            return Err(SnapshotError::Truncated {
                path: path.to_path_buf(),
                expected: HEADER_LEN as u64,
                actual: len,
            });
        }
        // SAFETY: a mapped file must not change while mapped. Snapshot files are
        // written under a temporary name and never modified after their rename into
        // place; retention only unlinks them, which leaves existing maps intact. (A
        // process that truncates a mapped snapshot file by hand breaks this: the
        // reader may then fault with SIGBUS.)
        let map = unsafe { MmapOptions::new().map(&file) }
            .map_err(|e| SnapshotError::io(path, "mmap", e))?;
        ShardSnapshot::verify(path.to_path_buf(), Bytes::Map(map))
    }

    /// Verifies a shard file's content held in memory (copied; `path` names it in
    /// errors).
    pub fn from_bytes(
        path: impl Into<PathBuf>,
        bytes: &[u8],
    ) -> Result<ShardSnapshot, SnapshotError> {
        let mut v = AlignedVec::<16>::with_capacity(bytes.len());
        v.extend_from_slice(bytes);
        ShardSnapshot::verify(path.into(), Bytes::Owned(v))
    }

    /// Opens shard `info.shard` of a snapshot and checks it against its manifest
    /// (shard index and count, epoch, key and extra counts, size, body crc32c): what
    /// [`Snapshot::open`] does for each shard, for tools that report every shard's
    /// verdict rather than the first failure.
    pub fn open_listed(
        path: &Path,
        info: &ShardFileInfo,
        manifest: &Manifest,
    ) -> Result<ShardSnapshot, SnapshotError> {
        let len = std::fs::metadata(path)
            .map_err(|e| SnapshotError::io(path, "stat", e))?
            .len();
        if len < info.bytes {
            return Err(SnapshotError::Truncated {
                path: path.to_path_buf(),
                expected: info.bytes,
                actual: len,
            });
        }
        let s = ShardSnapshot::open(path)?;
        let h = &s.header;
        let mismatch = |what: &str, file: u64, listed: u64| SnapshotError::Mismatch {
            path: path.to_path_buf(),
            reason: format!("{what} is {file} in the file but {listed} in the manifest"),
        };
        let checks = [
            ("shard index", h.shard as u64, info.shard as u64),
            ("shard count", h.shards as u64, manifest.shards.len() as u64),
            ("epoch", h.epoch, manifest.epoch),
            ("key count", h.keys, info.keys),
            ("extra count", h.extras, info.extras),
            ("file size", s.bytes.len() as u64, info.bytes),
            ("body crc32c", h.body_crc as u64, info.body_crc32c as u64),
        ];
        for (what, file, listed) in checks {
            if file != listed {
                return Err(mismatch(what, file, listed));
            }
        }
        Ok(s)
    }

    fn verify(path: PathBuf, bytes: Bytes) -> Result<ShardSnapshot, SnapshotError> {
        let len = bytes.len() as u64;
        if len < HEADER_LEN as u64 {
            return Err(SnapshotError::Truncated {
                path,
                expected: HEADER_LEN as u64,
                actual: len,
            });
        }
        let header = Header::decode(&path, &bytes[..HEADER_LEN])?;
        let expected = HEADER_LEN as u64 + header.body_len;
        if len < expected {
            return Err(SnapshotError::Truncated {
                path,
                expected,
                actual: len,
            });
        }
        if len > expected {
            return Err(SnapshotError::corrupt(
                &path,
                expected,
                format!("{} bytes after the end of the body", len - expected),
            ));
        }
        let body = &bytes[HEADER_LEN..];
        let computed = crc32c::crc32c(body);
        if computed != header.body_crc {
            return Err(SnapshotError::Checksum {
                path,
                region: "body",
                start: HEADER_LEN as u64,
                end: expected,
                stored: header.body_crc,
                computed,
            });
        }
        let archived = rkyv::access::<ArchivedBody, rancor::Error>(body).map_err(|e| {
            SnapshotError::corrupt(
                &path,
                HEADER_LEN as u64,
                format!("rkyv validation failed: {e}"),
            )
        })?;
        check_shape(&path, &header, archived)?;
        Ok(ShardSnapshot {
            path,
            bytes,
            header,
        })
    }

    /// The validated archive.
    #[inline]
    fn body(&self) -> &ArchivedBody {
        // SAFETY: `verify` checked these exact bytes with `rkyv::access` (full bytecheck
        // validation) before `self` existed, and they cannot change afterwards: an owned
        // copy is never mutated, and a mapped file is never modified (see `open`).
        unsafe { rkyv::api::access_unchecked::<ArchivedBody>(&self.bytes[HEADER_LEN..]) }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Shard index.
    pub fn shard(&self) -> u32 {
        self.header.shard
    }

    /// Shard count of the snapshot the file belongs to.
    pub fn shards(&self) -> u32 {
        self.header.shards
    }

    /// Epoch of the snapshot.
    pub fn epoch(&self) -> u64 {
        self.header.epoch
    }

    /// Number of keys.
    pub fn len(&self) -> u64 {
        self.header.keys
    }

    /// Whether the shard has no keys.
    pub fn is_empty(&self) -> bool {
        self.header.keys == 0
    }

    /// File size in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// crc32c of the body, as stored in the header (and checked at open).
    pub fn body_crc32c(&self) -> u32 {
        self.header.body_crc
    }

    /// The entry of `key`, borrowed from the file.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<EntryRef<'_>> {
        self.get_hashed(stable_hash(key), key)
    }

    /// [`get`](Self::get) with the key's `hash::stable_hash` already known.
    #[inline]
    pub fn get_hashed(&self, hash: u64, key: &[u8]) -> Option<EntryRef<'_>> {
        self.get_numbered(hash, key).map(|(_, e)| e)
    }

    /// [`get_hashed`](Self::get_hashed), with the entry's number: its position in
    /// [`iter`](Self::iter) (`0..len()`).
    #[inline]
    pub fn get_numbered(&self, hash: u64, key: &[u8]) -> Option<(u32, EntryRef<'_>)> {
        // hot path
        let body = self.body();
        let slots = body.index.as_slice();
        let mask = slots.len() - 1; // `check_shape`: a power of two, at least 4
        let tag = slot_tag(hash);
        let mut at = slot_home(hash, mask);
        // At least a third of the slots are empty; the bound only guards crafted files.
        for _ in 0..slots.len() {
            let s = &slots[at];
            let entry = s.entry.to_native();
            if entry == EMPTY_SLOT {
                return None;
            }
            if s.tag.to_native() == tag
                && let Some(e) = self.entry(entry)
                && e.key.as_slice() == key
            {
                return Some((entry, entry_ref(e)));
            }
            at = (at + 1) & mask;
        }
        None
    }

    /// Entry number `i`, if it exists.
    #[inline]
    fn entry(&self, i: u32) -> Option<&ArchivedEntry> {
        let chunks = &self.body().chunks;
        chunks
            .get((i >> CHUNK_SHIFT) as usize)?
            .get((i & ((1 << CHUNK_SHIFT) - 1)) as usize)
    }

    /// Entry number `i` (`0..len()`), in [`iter`](Self::iter)'s order.
    #[inline]
    pub fn entry_at(&self, i: u32) -> Option<EntryRef<'_>> {
        self.entry(i).map(entry_ref)
    }

    /// Lets the kernel drop this process's references to the mapped pages (they stay in
    /// the page cache and fault back in when read): after the open's checks read the
    /// whole file, the resident set then counts only the pages used since. No effect on
    /// a copy held in memory.
    pub fn release_pages(&self) {
        if let Bytes::Map(m) = &self.bytes {
            // SAFETY: the map is read-only and file-backed: dropped pages are read back
            // from the file unchanged on the next access, so no reference into the map
            // sees different bytes.
            let _ = unsafe { m.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }

    /// Every entry, in the order they were written.
    pub fn iter(&self) -> impl Iterator<Item = EntryRef<'_>> + '_ {
        self.body()
            .chunks
            .iter()
            .flat_map(|c| c.iter())
            .map(entry_ref)
    }

    /// The extra records, in the order they were written.
    pub fn extras(&self) -> impl Iterator<Item = Extra<'_>> + '_ {
        self.body().extras.iter().map(|x| Extra {
            kind: x.kind.as_str(),
            key: x.key.as_slice(),
            seq: x.seq.to_native(),
            source: x.source.as_str(),
            partition: x.partition.to_native(),
            offset: x.offset.to_native(),
            data: x.data.as_slice(),
        })
    }

    /// Checks the index against the entries (every slot points at an entry, every
    /// entry is found by its key, keys are distinct). O(keys) random reads: for tests,
    /// fuzzing and tools, not for restore (which relies on the checksums).
    pub fn verify_index(&self) -> Result<(), SnapshotError> {
        let body = self.body();
        let keys = self.header.keys;
        let mut used = 0u64;
        for (i, s) in body.index.iter().enumerate() {
            let e = s.entry.to_native();
            if e == EMPTY_SLOT {
                continue;
            }
            if e as u64 >= keys {
                return Err(self.index_error(format!("slot {i} points at entry {e} of {keys}")));
            }
            used += 1;
        }
        if used != keys {
            return Err(self.index_error(format!("{used} slots in use for {keys} keys")));
        }
        for (i, e) in self.iter().enumerate() {
            match self.get(e.key) {
                Some(found) if std::ptr::eq(found.key, e.key) => {}
                Some(_) => {
                    return Err(self.index_error(format!("entry {i}'s key is stored twice")));
                }
                None => return Err(self.index_error(format!("entry {i} is not in the index"))),
            }
        }
        Ok(())
    }

    fn index_error(&self, reason: String) -> SnapshotError {
        SnapshotError::corrupt(&self.path, HEADER_LEN as u64, format!("index: {reason}"))
    }
}

#[inline]
fn entry_ref(e: &ArchivedEntry) -> EntryRef<'_> {
    EntryRef {
        key: e.key.as_slice(),
        seq: e.seq.to_native(),
        state: e.state.as_slice(),
    }
}

/// What rkyv cannot know: the chunk layout, the key and extra counts of the header,
/// the index size.
fn check_shape(path: &Path, header: &Header, body: &ArchivedBody) -> Result<(), SnapshotError> {
    let bad = |reason: String| SnapshotError::corrupt(path, HEADER_LEN as u64, reason);
    if body.chunk_shift.to_native() != CHUNK_SHIFT {
        return Err(bad(format!(
            "chunk shift {} (this build writes {CHUNK_SHIFT})",
            body.chunk_shift.to_native()
        )));
    }
    let full = 1u64 << CHUNK_SHIFT;
    let n = body.chunks.len();
    let mut total = 0u64;
    for (i, c) in body.chunks.iter().enumerate() {
        let len = c.len() as u64;
        if len == 0 || len > full || (i + 1 < n && len != full) {
            return Err(bad(format!("chunk {i} of {n} holds {len} entries")));
        }
        total += len;
    }
    if total != header.keys {
        return Err(bad(format!(
            "{total} entries, but the header says {} keys",
            header.keys
        )));
    }
    let slots = body.index.len() as u64;
    if slots != index_slots(header.keys) {
        return Err(bad(format!(
            "index of {slots} slots for {} keys (expected {})",
            header.keys,
            index_slots(header.keys)
        )));
    }
    if body.extras.len() as u64 != header.extras {
        return Err(bad(format!(
            "{} extra records, but the header says {}",
            body.extras.len(),
            header.extras
        )));
    }
    Ok(())
}

/// A complete snapshot, open and verified: its manifest and every shard file.
#[derive(Debug)]
pub struct Snapshot {
    dir: PathBuf,
    manifest: Manifest,
    shards: Vec<ShardSnapshot>,
}

impl Snapshot {
    /// Opens the snapshot in `dir` (a `snapshot-<epoch>` directory): reads and checks
    /// the manifest, refuses a foreign pipeline ([`SnapshotError::ForeignPipeline`]
    /// names the components that differ from `expected`), then opens and verifies
    /// every shard file against the manifest (in parallel, one thread per core).
    pub fn open(dir: &Path, expected: &Fingerprint) -> Result<Snapshot, SnapshotError> {
        let mpath = dir.join(MANIFEST_FILE);
        let manifest = Manifest::read(&mpath)?;
        let changes = expected.changes_from(&manifest.fingerprint);
        if !changes.is_empty() {
            return Err(SnapshotError::ForeignPipeline {
                path: mpath,
                changes,
            });
        }
        let shards = open_shards(dir, &manifest)?;
        Ok(Snapshot {
            dir: dir.to_path_buf(),
            manifest,
            shards,
        })
    }

    /// The snapshot's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The epoch whose end state the snapshot holds.
    pub fn epoch(&self) -> u64 {
        self.manifest.epoch
    }

    /// Input offsets the state covers (replay from here).
    pub fn inputs(&self) -> &[InputOffset] {
        &self.manifest.inputs
    }

    /// The shard files, in shard order.
    pub fn shards(&self) -> &[ShardSnapshot] {
        &self.shards
    }

    /// The shard files, to hand one to each shard thread.
    pub fn into_shards(self) -> Vec<ShardSnapshot> {
        self.shards
    }
}

/// Opens every shard file of a manifest, spread over the available cores; the error
/// of the lowest failing shard wins.
fn open_shards(dir: &Path, manifest: &Manifest) -> Result<Vec<ShardSnapshot>, SnapshotError> {
    let n = manifest.shards.len();
    let threads = std::thread::available_parallelism()
        .map_or(1, |p| p.get())
        .min(n);
    let open = |i: usize| {
        let info = &manifest.shards[i];
        ShardSnapshot::open_listed(&dir.join(&info.file), info, manifest)
    };
    let mut results: Vec<(usize, Result<ShardSnapshot, SnapshotError>)> = if threads <= 1 {
        (0..n).map(|i| (i, open(i))).collect()
    } else {
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|w| {
                    let open = &open;
                    s.spawn(move || {
                        (w..n)
                            .step_by(threads)
                            .map(|i| (i, open(i)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    };
    results.sort_by_key(|r| r.0);
    results.into_iter().map(|(_, r)| r).collect()
}
