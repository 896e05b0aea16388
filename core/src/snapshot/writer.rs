//! Writing snapshots: one [`ShardWriter`] per shard (each may run on its own thread),
//! then [`SnapshotWriter::commit`] writes the manifest.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rkyv::api::serialize_using;
use rkyv::rancor::Strategy;
use rkyv::rancor::{self, Source};
use rkyv::ser::allocator::Arena;
use rkyv::ser::sharing::Unshare;
use rkyv::ser::{Positional, Serializer, Writer};
use rkyv::traits::SerializeUnsized;

use super::fingerprint::Fingerprint;
use super::format::{
    self, ArchivedBody, BodyModel, CHUNK_SHIFT, ExtraModel, FORMAT_VERSION, HEADER_LEN, Header,
    MANIFEST_FILE, MAX_BODY_BYTES, MAX_KEYS, MAX_SHARDS, RkyvFormat, TMP_SUFFIX, WrittenChunk,
    WrittenEntry,
};
use super::manifest::{InputOffset, Manifest, ShardFileInfo};
use super::{EntryRef, Extra, SnapshotError};
use crate::hash::stable_hash;

/// Options for writing snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// fsync every file and directory (default). Off only for tests and benchmarks:
    /// without it, an OS crash may leave a manifest whose shard files are incomplete
    /// (the reader then reports them as truncated or corrupt).
    pub fsync: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions { fsync: true }
    }
}

/// Starts the snapshot of one epoch: creates `root/snapshot-<epoch:020>/`, hands out
/// one [`ShardWriter`] per shard, and writes the manifest last ([`commit`](Self::commit)).
///
/// # Examples
///
/// ```
/// use onceflow_core::snapshot::{Fingerprint, InputOffset, SnapshotWriter, WriteOptions};
///
/// let root = tempfile::tempdir().unwrap();
/// let set = SnapshotWriter::create(root.path(), 7, 1, WriteOptions::default()).unwrap();
/// let mut w = set.shard(0).unwrap();
/// w.push(b"ACC-1", 3, b"state of ACC-1").unwrap();
/// let info = w.finish().unwrap();
/// let inputs = vec![InputOffset { source: "commands".into(), partition: 0, next_offset: 3 }];
/// let fp = Fingerprint::new().with("key field", "account");
/// let manifest = set.commit(vec![info], &fp, inputs).unwrap();
/// assert_eq!(manifest.keys(), 1);
/// ```
#[derive(Debug)]
pub struct SnapshotWriter {
    dir: PathBuf,
    root: PathBuf,
    epoch: u64,
    shards: u32,
    options: WriteOptions,
}

impl SnapshotWriter {
    /// Creates the snapshot directory of `epoch` under `root` (created if missing). A
    /// complete snapshot of that epoch is an error ([`SnapshotError::AlreadyExists`]);
    /// an incomplete one (left by a crash) is removed first.
    pub fn create(
        root: &Path,
        epoch: u64,
        shards: u32,
        options: WriteOptions,
    ) -> Result<SnapshotWriter, SnapshotError> {
        if shards == 0 || shards > MAX_SHARDS {
            return Err(SnapshotError::InvalidArgument(format!(
                "a snapshot has 1..={MAX_SHARDS} shards, not {shards}"
            )));
        }
        fs::create_dir_all(root).map_err(|e| SnapshotError::io(root, "create directory", e))?;
        let dir = root.join(format::snapshot_dir_name(epoch));
        if Manifest::exists(&dir.join(MANIFEST_FILE))? {
            return Err(SnapshotError::AlreadyExists { path: dir });
        }
        if dir.exists() {
            fs::remove_dir_all(&dir)
                .map_err(|e| SnapshotError::io(&dir, "remove incomplete snapshot", e))?;
        }
        fs::create_dir(&dir).map_err(|e| SnapshotError::io(&dir, "create directory", e))?;
        if options.fsync {
            format::fsync_dir(root)?;
        }
        Ok(SnapshotWriter {
            dir,
            root: root.to_path_buf(),
            epoch,
            shards,
            options,
        })
    }

    /// The snapshot's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The epoch being written.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A writer for shard `shard`'s file. Writers are independent (`Send`): each shard
    /// thread may write its own.
    pub fn shard(&self, shard: u32) -> Result<ShardWriter, SnapshotError> {
        if shard >= self.shards {
            return Err(SnapshotError::InvalidArgument(format!(
                "shard {shard} of a snapshot of {} shards",
                self.shards
            )));
        }
        ShardWriter::create(&self.dir, shard, self.shards, self.epoch, self.options)
    }

    /// Writes the manifest (atomically, last): the snapshot is complete once this
    /// returns. `files` holds the [`ShardWriter::finish`] result of every shard, in any
    /// order; `inputs` are the input offsets the state covers.
    pub fn commit(
        self,
        mut files: Vec<ShardFileInfo>,
        fingerprint: &Fingerprint,
        inputs: Vec<InputOffset>,
    ) -> Result<Manifest, SnapshotError> {
        files.sort_by_key(|f| f.shard);
        let complete = files.len() == self.shards as usize
            && files.iter().enumerate().all(|(i, f)| f.shard as usize == i);
        if !complete {
            let have: Vec<u32> = files.iter().map(|f| f.shard).collect();
            return Err(SnapshotError::InvalidArgument(format!(
                "a manifest needs the files of shards 0..{} exactly once; got shards {have:?}",
                self.shards
            )));
        }
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            rkyv_format: RkyvFormat::current().to_string(),
            epoch: self.epoch,
            fingerprint_digest: fingerprint.digest(),
            fingerprint: fingerprint.clone(),
            inputs,
            shards: files,
        };
        format::write_atomic(
            &self.dir,
            MANIFEST_FILE,
            &manifest.encode(),
            self.options.fsync,
        )?;
        if self.options.fsync {
            format::fsync_dir(&self.root)?;
        }
        crate::fault::point(crate::fault::SNAPSHOT_MANIFEST_AFTER_RENAME);
        Ok(manifest)
    }
}

/// The rkyv writer under a shard file: counts positions (relative to the body
/// start), checksums what it writes, and keeps the I/O error for the caller.
struct Sink {
    /// `None` once `finish` has taken the file.
    out: Option<BufWriter<File>>,
    pos: usize,
    crc: u32,
    failed: Option<std::io::Error>,
    /// With fsync: body bytes handed to the kernel whose writeback was started.
    writeback_from: Option<usize>,
}

/// With fsync, writeback of a snapshot file is started every this many bytes as it is
/// written (`sync_file_range`, not waiting), so its dirty pages never pile up: a large
/// backlog flushed at once by the final fsync would stall the state log's commit fsyncs
/// behind it (ext4 orders data before the journal commit they share). Measured in
/// docs/benchmarks.md.
const WRITEBACK_EVERY: usize = 4 << 20;

impl Sink {
    /// Starts writeback of what was written since the last call, once that is at least
    /// [`WRITEBACK_EVERY`] bytes.
    fn start_writeback(&mut self) {
        let (Some(from), Some(out)) = (self.writeback_from, self.out.as_ref()) else {
            return;
        };
        let handed = self.pos - out.buffer().len();
        if handed - from < WRITEBACK_EVERY {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on an open descriptor; it reads no memory of ours.
            // Failure only means the final fsync has more to do.
            unsafe {
                libc::sync_file_range(
                    out.get_ref().as_raw_fd(),
                    (HEADER_LEN + from) as libc::off64_t,
                    (handed - from) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        self.writeback_from = Some(handed);
    }
}

/// The error rkyv sees when the sink's I/O failed (the real one is in `Sink::failed`).
#[derive(Debug)]
struct SinkFailed;

impl std::fmt::Display for SinkFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("snapshot file write failed")
    }
}

impl std::error::Error for SinkFailed {}

impl Positional for Sink {
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E: Source> Writer<E> for Sink {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let Some(out) = self.out.as_mut().filter(|_| self.failed.is_none()) else {
            return Err(E::new(SinkFailed));
        };
        if let Err(e) = out.write_all(bytes) {
            self.failed = Some(e);
            return Err(E::new(SinkFailed));
        }
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.pos += bytes.len();
        self.start_writeback();
        Ok(())
    }
}

/// Streams one shard's entries into its snapshot file.
///
/// Memory: 8 bytes per key (its hash, for the index) plus one chunk of entry
/// positions (`2^CHUNK_SHIFT` × 24 bytes); at [`finish`](Self::finish) the index
/// (8 bytes per slot, 1.5 to 3 slots per key) is built in memory and written.
/// Keys pushed to one writer must be distinct.
pub struct ShardWriter {
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    sink: Sink,
    arena: Arena,
    header: Header,
    hashes: Vec<u64>,
    chunk: Vec<WrittenEntry>,
    chunks: Vec<WrittenChunk>,
    extras: Vec<ExtraModel>,
    /// What the extras will take in the body (bytes and archived records).
    extra_bytes: u64,
    /// Largest body allowed: [`MAX_BODY_BYTES`] (lowered by tests).
    pub(super) max_body_bytes: u64,
    fsync: bool,
    finished: bool,
}

impl std::fmt::Debug for ShardWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardWriter")
            .field("path", &self.path)
            .field("keys", &self.hashes.len())
            .field("bytes", &self.sink.pos)
            .finish()
    }
}

/// Bytes reserved for what [`ShardWriter::finish`] writes after the entries, per key
/// (index slots) and in total (chunk table, root), when checking the size limit.
const FINISH_BYTES_PER_KEY: u64 = 24;
const FINISH_BYTES_FIXED: u64 = 1 << 16;
/// Bytes reserved per extra record besides its strings and bytes (its archived record
/// and alignment).
const EXTRA_OVERHEAD_BYTES: u64 = 96;

impl ShardWriter {
    fn create(
        dir: &Path,
        shard: u32,
        shards: u32,
        epoch: u64,
        options: WriteOptions,
    ) -> Result<ShardWriter, SnapshotError> {
        let name = format::shard_file_name(shard);
        let path = dir.join(&name);
        let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| SnapshotError::io(&tmp, "create", e))?;
        // Room for the header, written last.
        file.write_all(&[0u8; HEADER_LEN])
            .map_err(|e| SnapshotError::io(&tmp, "write", e))?;
        Ok(ShardWriter {
            sink: Sink {
                out: Some(BufWriter::with_capacity(1 << 20, file)),
                pos: 0,
                crc: 0,
                failed: None,
                writeback_from: options.fsync.then_some(0),
            },
            tmp,
            path,
            dir: dir.to_path_buf(),
            arena: Arena::new(),
            header: Header {
                version: FORMAT_VERSION,
                rkyv_code: RkyvFormat::current().code(),
                shard,
                shards,
                body_crc: 0,
                epoch,
                body_len: 0,
                keys: 0,
                extras: 0,
            },
            hashes: Vec::new(),
            chunk: Vec::with_capacity(1 << CHUNK_SHIFT),
            chunks: Vec::new(),
            extras: Vec::new(),
            extra_bytes: 0,
            max_body_bytes: MAX_BODY_BYTES,
            fsync: options.fsync,
            finished: false,
        })
    }

    /// Keys pushed so far.
    pub fn keys(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// Appends one key's entry: its bytes, its sequence/version number and its
    /// state as encoded by the stage.
    pub fn push(&mut self, key: &[u8], seq: u64, state: &[u8]) -> Result<(), SnapshotError> {
        self.push_hashed(stable_hash(key), key, seq, state)
    }

    /// [`push`](Self::push) with the key's hash already known; `hash` must be
    /// `hash::stable_hash(key)` (what the router computed), else lookups miss the key.
    pub fn push_hashed(
        &mut self,
        hash: u64,
        key: &[u8],
        seq: u64,
        state: &[u8],
    ) -> Result<(), SnapshotError> {
        debug_assert_eq!(hash, stable_hash(key), "push_hashed with a foreign hash");
        let keys = self.hashes.len() as u64 + 1;
        if keys > MAX_KEYS {
            return Err(self.too_large(format!("more than {MAX_KEYS} keys")));
        }
        if self.body_bound(keys, key.len() as u64 + state.len() as u64 + 32) > self.max_body_bytes {
            return Err(self.too_large(format!(
                "body would exceed {} bytes at key {keys}",
                self.max_body_bytes
            )));
        }
        let key_pos = self.sink.pos as u32;
        self.write(key)?;
        let state_pos = self.sink.pos as u32;
        self.write(state)?;
        self.chunk.push(WrittenEntry {
            key_pos,
            key_len: key.len() as u32,
            state_pos,
            state_len: state.len() as u32,
            seq,
        });
        self.hashes.push(hash);
        crate::fault::point(crate::fault::SNAPSHOT_SHARD_WRITE);
        if self.chunk.len() == 1 << CHUNK_SHIFT {
            self.flush_chunk()?;
        }
        Ok(())
    }

    /// Pushes every entry of `entries` (see [`push`](Self::push)).
    pub fn push_all<'a>(
        &mut self,
        entries: impl IntoIterator<Item = EntryRef<'a>>,
    ) -> Result<(), SnapshotError> {
        for e in entries {
            self.push(e.key, e.seq, e.state)?;
        }
        Ok(())
    }

    /// An upper bound of the body's final size if `more` bytes are written now and the
    /// file ends up with `keys` keys: what is written, plus what `finish` will add.
    /// Keeping it within [`MAX_BODY_BYTES`] keeps every rkyv relative pointer in range.
    fn body_bound(&self, keys: u64, more: u64) -> u64 {
        self.sink.pos as u64
            + more
            + self.extra_bytes
            + keys * FINISH_BYTES_PER_KEY
            + FINISH_BYTES_FIXED
    }

    /// Adds an extra record (kept in memory until [`finish`](Self::finish): meant for
    /// the few records a shard holds besides its keys' state, such as out-of-order
    /// records waiting for a gap).
    pub fn push_extra(&mut self, extra: Extra<'_>) -> Result<(), SnapshotError> {
        let size = EXTRA_OVERHEAD_BYTES
            + (extra.kind.len() + extra.key.len() + extra.source.len() + extra.data.len()) as u64;
        if self.body_bound(self.hashes.len() as u64, size) > self.max_body_bytes {
            return Err(self.too_large(format!(
                "body would exceed {} bytes at extra record {}",
                self.max_body_bytes,
                self.extras.len() + 1
            )));
        }
        self.extra_bytes += size;
        self.extras.push(ExtraModel {
            kind: extra.kind.to_string(),
            key: extra.key.to_vec(),
            seq: extra.seq,
            source: extra.source.to_string(),
            partition: extra.partition,
            offset: extra.offset,
            data: extra.data.to_vec(),
        });
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        Writer::<rancor::Error>::write(&mut self.sink, bytes).map_err(|e| self.rkyv_error(e))
    }

    fn too_large(&self, reason: String) -> SnapshotError {
        SnapshotError::TooLarge {
            path: self.path.clone(),
            reason,
        }
    }

    /// The error of a failed rkyv serialization: the sink's I/O error if it has one.
    fn rkyv_error(&mut self, e: rancor::Error) -> SnapshotError {
        match self.sink.failed.take() {
            Some(io) => SnapshotError::io(&self.tmp, "write", io),
            None => SnapshotError::TooLarge {
                path: self.path.clone(),
                reason: format!("rkyv serialization failed: {e}"),
            },
        }
    }

    /// Writes the open chunk's entry array.
    fn flush_chunk(&mut self) -> Result<(), SnapshotError> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let mut ser = Serializer::new(&mut self.sink, self.arena.acquire(), Unshare);
        let res = self.chunk[..].serialize_unsized(Strategy::<_, rancor::Error>::wrap(&mut ser));
        let pos = match res {
            Ok(pos) => pos,
            Err(e) => return Err(self.rkyv_error(e)),
        };
        self.chunks.push(WrittenChunk {
            pos: pos as u32,
            len: self.chunk.len() as u32,
        });
        self.chunk.clear();
        Ok(())
    }

    /// Writes the index, the extras and the root; then the header; fsyncs, renames
    /// the file into place and fsyncs its directory.
    pub fn finish(mut self) -> Result<ShardFileInfo, SnapshotError> {
        self.flush_chunk()?;
        let keys = self.hashes.len() as u64;
        let body = BodyModel {
            chunk_shift: CHUNK_SHIFT,
            chunks: std::mem::take(&mut self.chunks),
            index: format::build_index(&self.hashes),
            extras: std::mem::take(&mut self.extras),
        };
        let extras = body.extras.len() as u64;
        let mut ser = Serializer::new(&mut self.sink, self.arena.acquire(), Unshare);
        let root = serialize_using::<_, rancor::Error>(&body, &mut ser);
        drop(body);
        let root = match root {
            Ok(r) => r,
            Err(e) => return Err(self.rkyv_error(e)),
        };
        let body_len = self.sink.pos as u64;
        assert_eq!(
            root as u64 + size_of::<ArchivedBody>() as u64,
            body_len,
            "the root must end the body"
        );
        assert!(
            body_len <= self.max_body_bytes,
            "body of {body_len} bytes: body_bound is not an upper bound"
        );
        let file = self
            .sink
            .out
            .take()
            .expect("the sink holds the file until finish")
            .into_inner()
            .map_err(|e| SnapshotError::io(&self.tmp, "write", e.into_error()))?;
        self.header.body_crc = self.sink.crc;
        self.header.body_len = body_len;
        self.header.keys = keys;
        self.header.extras = extras;
        file.write_all_at(&self.header.encode(), 0)
            .map_err(|e| SnapshotError::io(&self.tmp, "write header", e))?;
        if self.fsync {
            file.sync_all()
                .map_err(|e| SnapshotError::io(&self.tmp, "fsync", e))?;
        }
        drop(file);
        crate::fault::point(crate::fault::SNAPSHOT_SHARD_BEFORE_RENAME);
        fs::rename(&self.tmp, &self.path)
            .map_err(|e| SnapshotError::io(&self.path, "rename into place", e))?;
        crate::fault::point(crate::fault::SNAPSHOT_SHARD_AFTER_RENAME);
        self.finished = true;
        if self.fsync {
            format::fsync_dir(&self.dir)?;
        }
        Ok(ShardFileInfo {
            shard: self.header.shard,
            file: format::shard_file_name(self.header.shard),
            bytes: HEADER_LEN as u64 + body_len,
            keys,
            extras,
            body_crc32c: self.header.body_crc,
        })
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if !self.finished {
            // An abandoned file is never renamed into place; remove its temp file.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}
