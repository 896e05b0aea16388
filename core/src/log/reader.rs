//! Lock-free readers: journal tailing, cursors and record buffers.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::format::{
    self, BATCH_HEADER_LEN, BatchHeader, JOURNAL_FILE, JOURNAL_HEADER_LEN, META_FILE,
    RECORD_OVERHEAD, TOPICS_DIR,
};
use super::journal::{self, Tail};
use super::{LogError, TopicId};

/// Largest read-ahead of a cursor (more only for bigger batches).
const READ_CHUNK: usize = 1 << 20;
/// Journal read buffer capacity kept between refreshes.
const JOURNAL_KEEP_BYTES: usize = 1 << 20;
/// Initial size of a cursor's read buffer (doubles up to `READ_CHUNK`).
const INITIAL_CHUNK: usize = 64 << 10;

/// Lists the topics of the store in `dir` as `(name, partitions)` sorted by name.
pub fn list_topics(dir: &Path) -> Result<Vec<(String, u32)>, LogError> {
    if !dir.join(JOURNAL_FILE).is_file() {
        return Err(LogError::NotALog {
            dir: dir.to_path_buf(),
        });
    }
    Ok(format::read_topics(dir)?
        .into_iter()
        .map(|(n, _, p)| (n, p))
        .collect())
}

/// A reader of one topic of a store. Needs no lock; any number may exist in any
/// process, concurrently with the writer. It only ever returns committed records.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    topic: String,
    topic_id: TopicId,
    topic_dir: PathBuf,
    ends: Vec<u64>,
    journal_path: PathBuf,
    journal: File,
    /// (device, inode) of the open journal file.
    journal_ino: (u64, u64),
    /// Journal file position up to which entries have been applied.
    consumed: u64,
    /// Scratch: journal bytes read after `consumed`.
    pending: Vec<u8>,
}

/// Opens the journal and checks its header; returns the file and its (dev, inode).
fn open_journal(path: &Path, dir: &Path) -> Result<(File, (u64, u64)), LogError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(LogError::NotALog {
                dir: dir.to_path_buf(),
            });
        }
        Err(e) => return Err(LogError::io(path, "open", e)),
    };
    let md = file.metadata().map_err(|e| LogError::io(path, "stat", e))?;
    if !md.is_file() {
        return Err(LogError::NotALog {
            dir: dir.to_path_buf(),
        });
    }
    let mut hdr = [0u8; JOURNAL_HEADER_LEN];
    let n = format::read_at_most(&file, 0, &mut hdr).map_err(|e| LogError::io(path, "read", e))?;
    if format::check_journal_header(&hdr[..n]).is_err() {
        return Err(LogError::NotALog {
            dir: dir.to_path_buf(),
        });
    }
    Ok((file, (md.dev(), md.ino())))
}

impl LogReader {
    /// Opens `topic` of the store in `dir` and reads the journal.
    ///
    /// Fails with [`LogError::NotALog`] if `dir` is not a store and
    /// [`LogError::NoSuchTopic`] (listing the existing topics) if the topic is missing.
    pub fn open(dir: &Path, topic: &str) -> Result<Self, LogError> {
        let journal_path = dir.join(JOURNAL_FILE);
        let (journal, journal_ino) = open_journal(&journal_path, dir)?;
        let topic_dir = dir.join(TOPICS_DIR).join(topic);
        let meta = if format::validate_topic_name(topic).is_ok() {
            format::read_meta(&topic_dir.join(META_FILE))?
        } else {
            None
        };
        let Some((topic_id, partitions)) = meta else {
            let available = format::read_topics(dir)?
                .into_iter()
                .map(|(n, _, _)| n)
                .collect();
            return Err(LogError::NoSuchTopic {
                dir: dir.to_path_buf(),
                topic: topic.into(),
                available,
            });
        };
        let mut r = LogReader {
            dir: dir.to_path_buf(),
            topic: topic.into(),
            topic_id,
            topic_dir,
            ends: vec![0; partitions as usize],
            journal_path,
            journal,
            journal_ino,
            consumed: JOURNAL_HEADER_LEN as u64,
            pending: Vec::new(),
        };
        r.refresh()?;
        Ok(r)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic id.
    pub fn topic_id(&self) -> TopicId {
        self.topic_id
    }

    /// Number of partitions of the topic.
    pub fn partitions(&self) -> u32 {
        self.ends.len() as u32
    }

    /// Committed end offset of `partition` as of the last [`LogReader::refresh`]
    /// (0 for an unknown partition).
    pub fn committed_end(&self, partition: u32) -> u64 {
        self.ends.get(partition as usize).copied().unwrap_or(0)
    }

    /// Reads journal entries appended since the last call (a `stat` and nothing else
    /// when nothing changed). Copes with compaction (the journal replaced by rename).
    /// An entry still being written is simply not seen yet.
    pub fn refresh(&mut self) -> Result<(), LogError> {
        let md = match fs::metadata(&self.journal_path) {
            Ok(md) => md,
            // Between rename steps the path always exists; treat a vanished journal as
            // "no news" rather than failing a reader spuriously.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(LogError::io(&self.journal_path, "stat", e)),
        };
        let len = if (md.dev(), md.ino()) != self.journal_ino {
            let (file, ino) = open_journal(&self.journal_path, &self.dir)?;
            self.journal = file;
            self.journal_ino = ino;
            self.consumed = JOURNAL_HEADER_LEN as u64;
            self.journal
                .metadata()
                .map_err(|e| LogError::io(&self.journal_path, "stat", e))?
                .len()
        } else if md.len() == self.consumed {
            return Ok(());
        } else {
            md.len()
        };
        // Bytes after `consumed` are re-read every time: an incomplete tail may be a
        // torn write that a recovering writer truncates and overwrites.
        self.read_new(len)?;
        match self.apply_pending()? {
            Tail::Corrupt { .. } => {
                // Re-read the unconsumed bytes once before calling it corruption, in
                // case a concurrent write was observed half-way.
                let len = self
                    .journal
                    .metadata()
                    .map_err(|e| LogError::io(&self.journal_path, "stat", e))?
                    .len();
                self.read_new(len)?;
                if let Tail::Corrupt { pos, reason } = self.apply_pending()? {
                    return Err(LogError::corrupt(
                        &self.journal_path,
                        self.consumed + pos as u64,
                        format!(
                            "{reason} (valid entries follow, so this is not a write in progress)"
                        ),
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Reads the journal bytes from `consumed` up to `file_len` into `pending`.
    fn read_new(&mut self, file_len: u64) -> Result<(), LogError> {
        let want = file_len.saturating_sub(self.consumed) as usize;
        self.pending.clear();
        self.pending.resize(want, 0);
        let n = format::read_at_most(&self.journal, self.consumed, &mut self.pending)
            .map_err(|e| LogError::io(&self.journal_path, "read", e))?;
        // A shorter read means the file was truncated meanwhile (torn tail removed).
        self.pending.truncate(n);
        Ok(())
    }

    /// Applies the complete entries in `pending` and drops them from it.
    fn apply_pending(&mut self) -> Result<Tail, LogError> {
        let topic_id = self.topic_id;
        let ends = &mut self.ends;
        let mut applied = 0usize;
        let base = self.consumed;
        let path = &self.journal_path;
        let tail = journal::scan(&self.pending, |pos, payload| {
            format::decode_ends(payload, |t, p, e| {
                if t == topic_id
                    && let Some(slot) = ends.get_mut(p as usize)
                {
                    // Committed ends never move backwards.
                    *slot = (*slot).max(e);
                }
            })
            .map_err(|r| LogError::corrupt(path, base + pos as u64, r))?;
            applied = pos + format::ENTRY_HEADER_LEN + payload.len();
            Ok::<_, LogError>(())
        })?;
        self.pending.drain(..applied);
        if self.pending.capacity() > JOURNAL_KEEP_BYTES {
            // Do not keep the size of a whole journal read at open.
            self.pending.shrink_to(JOURNAL_KEEP_BYTES);
        }
        self.consumed += applied as u64;
        Ok(match tail {
            Tail::Clean => Tail::Clean,
            Tail::Incomplete { pos } => Tail::Incomplete { pos: pos - applied },
            Tail::Corrupt { pos, reason } => Tail::Corrupt {
                pos: pos - applied,
                reason,
            },
        })
    }

    /// A cursor over `partition` starting at `from_offset`, which may equal the
    /// committed end (the cursor then waits for new data) but not exceed it.
    pub fn cursor(&self, partition: u32, from_offset: u64) -> Result<Cursor, LogError> {
        if partition >= self.partitions() {
            return Err(LogError::NoSuchPartition {
                topic: self.topic_id,
                partition,
            });
        }
        let end = self.committed_end(partition);
        if from_offset > end {
            return Err(LogError::OffsetOutOfRange {
                partition,
                offset: from_offset,
                end,
            });
        }
        Ok(Cursor {
            topic_dir: self.topic_dir.clone(),
            part_dir: format::partition_dir(&self.topic_dir, partition),
            partition,
            pos: from_offset,
            bases: Vec::new(),
            seg: None,
            buf: Vec::new(),
            buf_off: 0,
            rd: 0,
            fill: 0,
            stamp: 0,
            expect: 0,
            chunk: INITIAL_CHUNK,
            rec: 0,
            batch_end: 0,
            left: 0,
            batch_ts: 0,
        })
    }
}

/// An open segment file of a cursor.
#[derive(Debug)]
struct OpenSeg {
    base: u64,
    path: PathBuf,
    file: File,
}

/// A position in one partition; reads committed records in order.
///
/// Reads segment files in large chunks with `pread` and validates each batch's
/// checksum before returning any of its records.
#[derive(Debug)]
pub struct Cursor {
    topic_dir: PathBuf,
    part_dir: PathBuf,
    partition: u32,
    /// Next offset to return.
    pos: u64,
    /// Cached sorted segment base offsets of the partition.
    bases: Vec<u64>,
    seg: Option<OpenSeg>,
    /// Read-ahead buffer: `buf[..fill]` holds file bytes `buf_off ..`.
    buf: Vec<u8>,
    buf_off: u64,
    /// Index in `buf` of the next batch (after the current one).
    rd: usize,
    fill: usize,
    /// Buffered bytes are trusted only for batches below this offset (the committed
    /// end when the oldest buffered bytes were read); anything after may have been
    /// uncommitted, possibly torn and rewritten since.
    stamp: u64,
    /// Base offset the next batch of the open segment must have.
    expect: u64,
    /// Current read-ahead size.
    chunk: usize,
    /// Current batch: index of the next record in `buf`, end of the batch, records
    /// left, timestamp.
    rec: usize,
    batch_end: usize,
    left: u32,
    batch_ts: u64,
}

impl Cursor {
    /// The next offset this cursor returns.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The partition this cursor reads.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Appends up to `max_records` committed records (never beyond
    /// `reader.committed_end(partition)`) to `out` and returns how many; 0 means
    /// caught up. `reader` must be the reader (or one of the same topic) that made
    /// this cursor.
    pub fn read(
        &mut self,
        reader: &LogReader,
        max_records: usize,
        out: &mut RecordBuf,
    ) -> Result<usize, LogError> {
        if reader.topic_dir != self.topic_dir {
            return Err(LogError::CursorMismatch {
                path: self.part_dir.clone(),
            });
        }
        let end = reader.committed_end(self.partition);
        let mut n = 0;
        while n < max_records && self.pos < end {
            if self.left == 0 {
                self.load_batch(end)?;
            }
            while self.left > 0 && n < max_records && self.pos < end {
                let Some((k, v)) = format::record_len(&self.buf, self.rec, self.batch_end) else {
                    return Err(self.corrupt_at(self.rec, "record overruns its batch"));
                };
                let start = self.rec + RECORD_OVERHEAD;
                out.push_raw(
                    self.partition,
                    self.pos,
                    self.batch_ts,
                    &self.buf[start..start + k + v],
                    k,
                );
                self.rec = start + k + v;
                self.left -= 1;
                self.pos += 1;
                n += 1;
            }
            if self.left == 0 && self.rec != self.batch_end {
                return Err(self.corrupt_at(self.rec, "batch has bytes after its last record"));
            }
        }
        Ok(n)
    }

    fn corrupt_at(&self, idx: usize, reason: &str) -> LogError {
        let path = self
            .seg
            .as_ref()
            .map_or_else(|| self.part_dir.clone(), |s| s.path.clone());
        LogError::corrupt(path, self.buf_off + idx as u64, reason)
    }

    /// Opens the segment that holds `self.pos` (the one with the largest base <= pos,
    /// or exactly `pos` when `exact`).
    fn open_segment(&mut self, exact: bool) -> Result<(), LogError> {
        // `exact`: the open segment ended, so the next one must start at `pos`; it can
        // never be the segment that just ended (an empty or short segment file would
        // otherwise be reopened forever).
        let current = self.seg.as_ref().map(|s| s.base);
        let pick = |bases: &[u64], pos: u64| -> Option<u64> {
            let i = bases.partition_point(|&b| b <= pos);
            let b = *bases.get(i.checked_sub(1)?)?;
            (!exact || (b == pos && Some(b) != current)).then_some(b)
        };
        let mut base = pick(&self.bases, self.pos);
        if base.is_none() || base.is_some_and(|b| self.bases.last() == Some(&b)) {
            // Unknown or possibly stale listing: new segments may have appeared.
            self.bases = format::list_segments(&self.part_dir)?;
            base = pick(&self.bases, self.pos);
        }
        let Some(base) = base else {
            let (path, position, reason) = match &self.seg {
                Some(s) if exact => (
                    s.path.clone(),
                    self.buf_off + self.fill as u64,
                    format!(
                        "committed offset {} missing: segment ends here and no segment starts at it",
                        self.pos
                    ),
                ),
                _ => (
                    self.part_dir.clone(),
                    0,
                    format!("no segment file holds committed offset {}", self.pos),
                ),
            };
            return Err(LogError::corrupt(path, position, reason));
        };
        let path = self.part_dir.join(format::segment_file_name(base));
        let file = File::open(&path).map_err(|e| LogError::io(&path, "open segment", e))?;
        self.seg = Some(OpenSeg { base, path, file });
        self.buf_off = 0;
        self.rd = 0;
        self.fill = 0;
        self.stamp = 0;
        self.expect = base;
        Ok(())
    }

    /// Makes at least `need` bytes available at `buf[rd..]` unless the file ends
    /// first; returns how many are available.
    fn ensure(&mut self, need: usize, end: u64) -> Result<usize, LogError> {
        let avail = self.fill - self.rd;
        if avail >= need {
            return Ok(avail);
        }
        if self.rd > 0 {
            self.buf.copy_within(self.rd..self.fill, 0);
            self.buf_off += self.rd as u64;
            self.fill -= self.rd;
            self.rd = 0;
        }
        if self.fill == 0 {
            // Everything buffered from now on is read after `end` was committed.
            self.stamp = end;
        }
        let want = need.max(self.chunk);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let seg = self.seg.as_ref().expect("open segment");
        let space = self.buf.len() - self.fill;
        let n = format::read_at_most(
            &seg.file,
            self.buf_off + self.fill as u64,
            &mut self.buf[self.fill..],
        )
        .map_err(|e| LogError::io(&seg.path, "read", e))?;
        if n == space {
            // Data keeps coming: read bigger chunks.
            self.chunk = (self.chunk * 2).min(READ_CHUNK);
        }
        self.fill += n;
        Ok(self.fill)
    }

    /// Loads the batch holding `self.pos` (validating it) and positions on the record.
    fn load_batch(&mut self, end: u64) -> Result<(), LogError> {
        if self.seg.is_none() {
            self.open_segment(false)?;
        }
        loop {
            if self.pos >= self.stamp {
                // Drop read-ahead that may predate the commit of this batch.
                self.fill = self.rd;
            }
            let avail = self.ensure(BATCH_HEADER_LEN, end)?;
            if avail == 0 {
                self.open_segment(true)?;
                continue;
            }
            if avail < BATCH_HEADER_LEN {
                return Err(self.corrupt_at(
                    self.rd,
                    "committed batch header truncated (end of segment file)",
                ));
            }
            let h = BatchHeader::parse(&self.buf[self.rd..self.rd + BATCH_HEADER_LEN])
                .map_err(|r| self.corrupt_at(self.rd, &r))?;
            if h.base_offset != self.expect {
                return Err(self.corrupt_at(
                    self.rd,
                    &format!(
                        "batch has base offset {} but {} was expected",
                        h.base_offset, self.expect
                    ),
                ));
            }
            let total = h.total_len() as usize;
            let batch_next = h.base_offset + h.count as u64;
            self.expect = batch_next;
            if batch_next <= self.pos {
                // Entirely before the wanted offset: skip without reading the payload.
                if self.fill - self.rd >= total {
                    self.rd += total;
                } else {
                    self.buf_off += (self.rd + total) as u64;
                    self.rd = 0;
                    self.fill = 0;
                }
                continue;
            }
            debug_assert!(h.base_offset <= self.pos);
            // Never allocate what a (possibly corrupt) header claims before checking that
            // the file holds that many bytes.
            let seg = self.seg.as_ref().expect("open segment");
            let at = self.buf_off + self.rd as u64;
            let buffered = self.fill - self.rd;
            let file_len = if buffered >= total {
                u64::MAX
            } else {
                seg.file
                    .metadata()
                    .map_err(|e| LogError::io(&seg.path, "stat segment", e))?
                    .len()
            };
            if at + total as u64 > file_len {
                return Err(self.corrupt_at(
                    self.rd,
                    &format!(
                        "committed batch truncated: needs {total} bytes, segment has {}",
                        file_len.saturating_sub(at)
                    ),
                ));
            }
            let avail = self.ensure(total, end)?;
            if avail < total {
                return Err(self.corrupt_at(
                    self.rd,
                    &format!("committed batch truncated: needs {total} bytes, segment has {avail}"),
                ));
            }
            let b = &self.buf[self.rd..self.rd + total];
            if format::batch_crc(b, &b[BATCH_HEADER_LEN..]) != h.crc {
                return Err(self.corrupt_at(
                    self.rd,
                    &format!(
                        "checksum mismatch in committed batch at offset {}",
                        h.base_offset
                    ),
                ));
            }
            self.rec = self.rd + BATCH_HEADER_LEN;
            self.batch_end = self.rd + total;
            self.left = h.count;
            self.batch_ts = h.timestamp_ms;
            self.rd += total;
            // Skip leading records when starting in the middle of the batch.
            for _ in h.base_offset..self.pos {
                let Some((k, v)) = format::record_len(&self.buf, self.rec, self.batch_end) else {
                    return Err(self.corrupt_at(self.rec, "record overruns its batch"));
                };
                self.rec += RECORD_OVERHEAD + k + v;
                self.left -= 1;
            }
            return Ok(());
        }
    }
}

/// Per-record metadata inside a [`RecordBuf`].
#[derive(Debug, Clone, Copy)]
struct RecMeta {
    offset: u64,
    timestamp_ms: u64,
    start: usize,
    key_len: u32,
    value_len: u32,
    partition: u32,
    /// Encoded headers ([`crate::headers`]) after the value; 0 for none.
    headers_len: u32,
}

/// A reusable buffer of records: keys, values (and headers, if any) are stored back to
/// back in one byte buffer, so once warmed up, filling it does not allocate per record.
#[derive(Debug, Default, Clone)]
pub struct RecordBuf {
    data: Vec<u8>,
    recs: Vec<RecMeta>,
}

/// One record borrowed from a [`RecordBuf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Partition the record was read from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// Commit timestamp of its batch (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// Key bytes.
    pub key: &'a [u8],
    /// Value bytes.
    pub value: &'a [u8],
    /// Headers, encoded ([`crate::headers`]); empty for none (always, on the embedded log).
    pub headers: &'a [u8],
}

impl RecordBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes all records (keeps the allocations).
    pub fn clear(&mut self) {
        self.data.clear();
        self.recs.clear();
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.recs.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// Total key, value and header bytes held.
    pub fn data_bytes(&self) -> usize {
        self.data.len()
    }

    /// Record `i`; panics if `i >= len()`.
    #[inline]
    pub fn get(&self, i: usize) -> RecordRef<'_> {
        let m = &self.recs[i];
        let k = m.start + m.key_len as usize;
        let v = k + m.value_len as usize;
        RecordRef {
            partition: m.partition,
            offset: m.offset,
            timestamp_ms: m.timestamp_ms,
            key: &self.data[m.start..k],
            value: &self.data[k..v],
            headers: &self.data[v..v + m.headers_len as usize],
        }
    }

    /// Iterates the records in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = RecordRef<'_>> + '_ {
        (0..self.recs.len()).map(move |i| self.get(i))
    }

    /// Appends a record.
    pub fn push(
        &mut self,
        partition: u32,
        offset: u64,
        timestamp_ms: u64,
        key: &[u8],
        value: &[u8],
    ) {
        self.recs.push(RecMeta {
            offset,
            timestamp_ms,
            start: self.data.len(),
            key_len: key.len() as u32,
            value_len: value.len() as u32,
            partition,
            headers_len: 0,
        });
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value);
    }

    /// Appends a record with headers: `headers` writes them, encoded with
    /// [`crate::headers::push`], into the buffer it is given (after the value).
    pub fn push_with_headers(
        &mut self,
        partition: u32,
        offset: u64,
        timestamp_ms: u64,
        key: &[u8],
        value: &[u8],
        headers: impl FnOnce(&mut Vec<u8>),
    ) {
        self.push(partition, offset, timestamp_ms, key, value);
        let before = self.data.len();
        headers(&mut self.data);
        let m = self.recs.last_mut().expect("just pushed");
        m.headers_len = (self.data.len() - before) as u32;
    }

    /// Appends a record whose key and value are contiguous in `kv` (key first).
    #[inline]
    fn push_raw(
        &mut self,
        partition: u32,
        offset: u64,
        timestamp_ms: u64,
        kv: &[u8],
        key_len: usize,
    ) {
        self.recs.push(RecMeta {
            offset,
            timestamp_ms,
            start: self.data.len(),
            key_len: key_len as u32,
            value_len: (kv.len() - key_len) as u32,
            partition,
            headers_len: 0,
        });
        self.data.extend_from_slice(kv);
    }
}
