//! The single writer of a store: recovery on open, topics, transactions, commits and
//! journal compaction.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::format::{
    self, BATCH_HEADER_LEN, BATCH_TARGET_PAYLOAD, BatchHeader, JOURNAL_FILE, JOURNAL_HEADER_LEN,
    JOURNAL_TMP, KIND_CHECKPOINT, KIND_COMMIT, LOCK_FILE, MAX_PARTITIONS, MAX_RECORD_BYTES,
    META_FILE, META_TMP, RECORD_OVERHEAD, TOPICS_DIR,
};
use super::journal::{self, Tail};
use super::{CommitInfo, CommitMarker, FsyncPolicy, LogError, LogOptions, TopicId};

/// What [`LogWriter::open`] repaired while recovering the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes of a torn journal tail that were truncated.
    pub journal_truncated_bytes: u64,
    /// Bytes of uncommitted segment data truncated (segment tails).
    pub segment_truncated_bytes: u64,
    /// Segment files deleted because they held only uncommitted data.
    pub segments_deleted: u64,
    /// Whether the journal was compacted at open.
    pub journal_compacted: bool,
}

/// The active (last) segment of a partition.
struct Segment {
    len: u64,
    path: PathBuf,
    file: File,
    /// Written by the transaction being committed (needs an fdatasync).
    dirty: bool,
}

/// Records buffered by the open transaction for one partition.
#[derive(Default)]
struct Pending {
    /// Encoded records (`key_len | value_len | key | value`)*.
    buf: Vec<u8>,
    /// Closed batches: (end index in `buf`, record count).
    splits: Vec<(usize, u32)>,
    /// Payload bytes and records of the open (last) batch.
    cur_bytes: usize,
    cur_count: u32,
    /// Total records buffered.
    records: u64,
}

/// Pending buffers larger than this are released after a transaction instead of
/// being kept for reuse.
const PENDING_KEEP_BYTES: usize = 16 << 20;

impl Pending {
    fn clear(&mut self) {
        if self.buf.capacity() > PENDING_KEEP_BYTES {
            self.buf = Vec::new();
        }
        self.buf.clear();
        self.splits.clear();
        self.cur_bytes = 0;
        self.cur_count = 0;
        self.records = 0;
    }
}

struct PartState {
    dir: PathBuf,
    /// Committed end offset.
    end: u64,
    seg: Option<Segment>,
    pending: Pending,
}

struct TopicState {
    name: String,
    parts: Vec<PartState>,
}

/// The single writer of a log store.
///
/// Holds an exclusive `flock(2)` on `DIR/LOCK` for its lifetime. All writes go through
/// transactions ([`LogWriter::begin`]).
pub struct LogWriter {
    dir: PathBuf,
    opts: LogOptions,
    _lock: File,
    journal_path: PathBuf,
    journal: File,
    journal_len: u64,
    /// Journal size right after the last compaction (0 if none).
    compacted_len: u64,
    /// Indexed by topic id.
    topics: Vec<Option<TopicState>>,
    by_name: HashMap<String, TopicId>,
    last_txn: u64,
    last_marker: Option<CommitMarker>,
    inputs: BTreeMap<String, BTreeMap<u32, u64>>,
    poisoned: Option<String>,
    recovery: RecoveryReport,
    /// Scratch buffers reused across commits.
    entry_buf: Vec<u8>,
    ends_buf: Vec<(TopicId, u32, u64)>,
    touched_buf: Vec<(TopicId, u32)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Takes the store lock; on success the pid is written into the lock file.
fn lock_store(dir: &Path) -> Result<File, LogError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| LogError::io(&path, "open lock file", e))?;
    loop {
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        match err.kind() {
            ErrorKind::Interrupted => continue,
            ErrorKind::WouldBlock => {
                let holder = fs::read_to_string(&path)
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .map(|pid| format!("pid {pid}"))
                    .unwrap_or_else(|| "unknown pid".into());
                return Err(LogError::Locked {
                    path: dir.to_path_buf(),
                    holder,
                });
            }
            _ => return Err(LogError::io(&path, "flock", err)),
        }
    }
    file.set_len(0)
        .map_err(|e| LogError::io(&path, "truncate lock file", e))?;
    file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
        .map_err(|e| LogError::io(&path, "write lock file", e))?;
    Ok(file)
}

/// Refuses to turn a directory holding anything but leftovers of an interrupted
/// store creation into a store.
fn check_creatable(dir: &Path) -> Result<(), LogError> {
    let rd = fs::read_dir(dir).map_err(|e| LogError::io(dir, "list directory", e))?;
    for ent in rd {
        let ent = ent.map_err(|e| LogError::io(dir, "list directory", e))?;
        let name = ent.file_name();
        let ok = match name.to_str() {
            Some(LOCK_FILE) | Some(JOURNAL_TMP) => true,
            // An empty topics dir is left by an interrupted creation.
            Some(TOPICS_DIR) => fs::read_dir(ent.path())
                .map(|mut d| d.next().is_none())
                .unwrap_or(false),
            _ => false,
        };
        if !ok {
            return Err(LogError::NotALog {
                dir: dir.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Creates the journal (and topics directory) of a new store.
fn create_store(dir: &Path) -> Result<(), LogError> {
    check_creatable(dir)?;
    let tdir = dir.join(TOPICS_DIR);
    fs::create_dir_all(&tdir).map_err(|e| LogError::io(&tdir, "create directory", e))?;
    format::write_atomic(dir, JOURNAL_TMP, JOURNAL_FILE, &format::journal_header())
}

/// Journal state rebuilt from the entries.
#[derive(Default)]
struct JournalState {
    ends: HashMap<(TopicId, u32), u64>,
    last_txn: u64,
    last_marker: Option<CommitMarker>,
    inputs: BTreeMap<String, BTreeMap<u32, u64>>,
}

fn merge_inputs(into: &mut BTreeMap<String, BTreeMap<u32, u64>>, inputs: &[(String, u32, u64)]) {
    for (name, p, o) in inputs {
        match into.get_mut(name.as_str()) {
            Some(m) => {
                m.insert(*p, *o);
            }
            None => {
                into.insert(name.clone(), BTreeMap::from([(*p, *o)]));
            }
        }
    }
}

/// Reads the journal, truncating a torn tail. Returns the state and the valid length.
fn recover_journal(
    path: &Path,
    report: &mut RecoveryReport,
) -> Result<(JournalState, u64), LogError> {
    let bytes = fs::read(path).map_err(|e| LogError::io(path, "read", e))?;
    format::check_journal_header(&bytes).map_err(|r| LogError::corrupt(path, 0, r))?;
    let body = &bytes[JOURNAL_HEADER_LEN..];
    let mut st = JournalState::default();
    let tail = journal::scan(body, |pos, payload| {
        let at = (JOURNAL_HEADER_LEN + pos) as u64;
        let e = format::decode_entry(payload).map_err(|r| LogError::corrupt(path, at, r))?;
        if e.txn_id <= st.last_txn && st.last_marker.is_some() {
            return Err(LogError::corrupt(
                path,
                at,
                format!("transaction id {} after {}", e.txn_id, st.last_txn),
            ));
        }
        if e.kind == KIND_CHECKPOINT {
            st.ends.clear();
            st.inputs.clear();
            merge_inputs(&mut st.inputs, &e.merged);
        } else {
            merge_inputs(&mut st.inputs, &e.inputs);
        }
        for &(t, p, end) in &e.ends {
            st.ends.insert((t, p), end);
        }
        st.last_txn = e.txn_id;
        st.last_marker = Some(CommitMarker {
            epoch: e.epoch,
            inputs: e.inputs,
        });
        Ok(())
    })?;
    let valid = match tail {
        Tail::Clean => bytes.len() as u64,
        Tail::Corrupt { pos, reason } => {
            return Err(LogError::corrupt(
                path,
                (JOURNAL_HEADER_LEN + pos) as u64,
                format!("{reason} (valid entries follow, so this is not a torn write)"),
            ));
        }
        Tail::Incomplete { pos } => {
            let valid = (JOURNAL_HEADER_LEN + pos) as u64;
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| LogError::io(path, "open", e))?;
            f.set_len(valid)
                .map_err(|e| LogError::io(path, "truncate torn tail of", e))?;
            f.sync_all().map_err(|e| LogError::io(path, "fsync", e))?;
            report.journal_truncated_bytes += bytes.len() as u64 - valid;
            valid
        }
    };
    Ok((st, valid))
}

/// Recovers one partition: deletes segments that start at or after the committed end,
/// scans the last remaining one up to the end and truncates what follows.
fn recover_partition(
    part_dir: &Path,
    end: u64,
    report: &mut RecoveryReport,
) -> Result<Option<Segment>, LogError> {
    if !part_dir.is_dir() {
        if end > 0 {
            return Err(LogError::corrupt(
                part_dir,
                0,
                format!("partition directory missing but offsets 0..{end} are committed"),
            ));
        }
        fs::create_dir_all(part_dir).map_err(|e| LogError::io(part_dir, "create directory", e))?;
        return Ok(None);
    }
    let bases = format::list_segments(part_dir)?;
    let mut deleted = false;
    for &b in bases.iter().filter(|&&b| b >= end) {
        let p = part_dir.join(format::segment_file_name(b));
        fs::remove_file(&p).map_err(|e| LogError::io(&p, "remove uncommitted segment", e))?;
        report.segments_deleted += 1;
        deleted = true;
    }
    if deleted {
        format::fsync_dir(part_dir)?;
    }
    let kept: Vec<u64> = bases.into_iter().filter(|&b| b < end).collect();
    let Some(&last) = kept.last() else {
        if end > 0 {
            return Err(LogError::corrupt(
                part_dir,
                0,
                format!("no segment files but offsets 0..{end} are committed"),
            ));
        }
        return Ok(None);
    };
    if kept[0] != 0 {
        let p = part_dir.join(format::segment_file_name(kept[0]));
        return Err(LogError::corrupt(
            p,
            0,
            format!("first segment starts at offset {} instead of 0", kept[0]),
        ));
    }
    let path = part_dir.join(format::segment_file_name(last));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| LogError::io(&path, "open", e))?;
    let file_len = file
        .metadata()
        .map_err(|e| LogError::io(&path, "stat", e))?
        .len();
    let mut pos = 0u64;
    let mut next = last;
    let mut hdr = [0u8; BATCH_HEADER_LEN];
    let mut payload = Vec::new();
    while next < end {
        let n = format::read_at_most(&file, pos, &mut hdr)
            .map_err(|e| LogError::io(&path, "read", e))?;
        if n < BATCH_HEADER_LEN {
            return Err(LogError::corrupt(
                &path,
                pos,
                format!(
                    "committed offsets {next}..{end} missing (segment ends at byte {file_len})"
                ),
            ));
        }
        let h = BatchHeader::parse(&hdr).map_err(|r| LogError::corrupt(&path, pos, r))?;
        if pos + h.total_len() > file_len {
            return Err(LogError::corrupt(
                &path,
                pos,
                format!(
                    "committed batch at offset {next} truncated: needs {} bytes, segment ends at byte {file_len}",
                    h.total_len()
                ),
            ));
        }
        payload.resize(h.payload_len as usize, 0);
        let n = format::read_at_most(&file, pos + BATCH_HEADER_LEN as u64, &mut payload)
            .map_err(|e| LogError::io(&path, "read", e))?;
        if n < payload.len() {
            return Err(LogError::corrupt(
                &path,
                pos,
                format!(
                    "committed batch at offset {next} truncated (segment ends at byte {file_len})"
                ),
            ));
        }
        if format::batch_crc(&hdr, &payload) != h.crc {
            return Err(LogError::corrupt(
                &path,
                pos,
                format!("checksum mismatch in committed batch at offset {next}"),
            ));
        }
        if h.base_offset != next {
            return Err(LogError::corrupt(
                &path,
                pos,
                format!(
                    "batch has base offset {} but {next} was expected",
                    h.base_offset
                ),
            ));
        }
        next += h.count as u64;
        if next > end {
            return Err(LogError::corrupt(
                &path,
                pos,
                format!(
                    "batch {}..{next} crosses the committed end {end}",
                    h.base_offset
                ),
            ));
        }
        pos += h.total_len();
    }
    if file_len > pos {
        file.set_len(pos)
            .map_err(|e| LogError::io(&path, "truncate uncommitted tail of", e))?;
        file.sync_all()
            .map_err(|e| LogError::io(&path, "fsync", e))?;
        report.segment_truncated_bytes += file_len - pos;
    }
    Ok(Some(Segment {
        len: pos,
        path,
        file,
        dirty: false,
    }))
}

impl LogWriter {
    /// Opens (creating if missing) the store in `dir` as its single writer and
    /// recovers it: truncates a torn journal tail and uncommitted segment data, and
    /// compacts the journal if it exceeds `opts.journal_compact_bytes`.
    ///
    /// Fails with [`LogError::Locked`] if another writer has the store open,
    /// [`LogError::NotALog`] if `dir` is a non-empty directory that is not a store, and
    /// [`LogError::Corrupt`] if committed data is missing or damaged.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<Self, LogError> {
        let journal_path = dir.join(JOURNAL_FILE);
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(|e| LogError::io(dir, "create directory", e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                format::fsync_dir(parent)?;
            }
        } else if !journal_path.exists() {
            // Check before creating the lock file in a foreign directory.
            check_creatable(dir)?;
        }
        let lock = lock_store(dir)?;
        if !journal_path.exists() {
            create_store(dir)?;
        }
        let tmp = dir.join(JOURNAL_TMP);
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(|e| LogError::io(&tmp, "remove", e))?;
        }
        let mut report = RecoveryReport::default();
        let (st, journal_len) = recover_journal(&journal_path, &mut report)?;

        // Topics.
        let tdir = dir.join(TOPICS_DIR);
        fs::create_dir_all(&tdir).map_err(|e| LogError::io(&tdir, "create directory", e))?;
        let metas = format::read_topics(dir)?;
        let mut topics: Vec<Option<TopicState>> = Vec::new();
        for (name, id, _) in &metas {
            if *id as usize >= topics.len() {
                topics.resize_with(*id as usize + 1, || None);
            }
            if let Some(other) = &topics[*id as usize] {
                return Err(LogError::corrupt(
                    tdir.join(name).join(META_FILE),
                    0,
                    format!("topic id {id} is also used by topic {:?}", other.name),
                ));
            }
            topics[*id as usize] = Some(TopicState {
                name: name.clone(),
                parts: Vec::new(),
            });
        }
        // Check the journal against the topics before touching any file.
        for &(t, p) in st.ends.keys() {
            let known = metas.iter().any(|&(_, id, n)| id == t && p < n);
            if !known {
                return Err(LogError::corrupt(
                    &journal_path,
                    0,
                    format!(
                        "journal references topic id {t} partition {p}, which has no topic meta file"
                    ),
                ));
            }
        }
        let mut by_name = HashMap::new();
        for (name, id, nparts) in metas {
            let topic_dir = tdir.join(&name);
            let stale = topic_dir.join(META_TMP);
            if stale.exists() {
                fs::remove_file(&stale).map_err(|e| LogError::io(&stale, "remove", e))?;
            }
            let ts = topics[id as usize]
                .as_mut()
                .expect("topic registered above");
            ts.parts.reserve(nparts as usize);
            for p in 0..nparts {
                let pdir = format::partition_dir(&topic_dir, p);
                let end = st.ends.get(&(id, p)).copied().unwrap_or(0);
                let seg = recover_partition(&pdir, end, &mut report)?;
                ts.parts.push(PartState {
                    dir: pdir,
                    end,
                    seg,
                    pending: Pending::default(),
                });
            }
            by_name.insert(name, id);
        }

        let journal = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&journal_path)
            .map_err(|e| LogError::io(&journal_path, "open", e))?;
        let mut w = LogWriter {
            dir: dir.to_path_buf(),
            opts,
            _lock: lock,
            journal_path,
            journal,
            journal_len,
            compacted_len: 0,
            topics,
            by_name,
            last_txn: st.last_txn,
            last_marker: st.last_marker,
            inputs: st.inputs,
            poisoned: None,
            recovery: report,
            entry_buf: Vec::new(),
            ends_buf: Vec::new(),
            touched_buf: Vec::new(),
        };
        if w.journal_len > w.opts.journal_compact_bytes {
            w.compact_journal()?;
            w.recovery.journal_compacted = true;
        }
        Ok(w)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What recovery repaired when this writer opened the store.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    fn check_poisoned(&self) -> Result<(), LogError> {
        match &self.poisoned {
            Some(reason) => Err(LogError::Poisoned {
                dir: self.dir.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Creates topic `name` with `partitions` partitions (durably: meta file and
    /// directories are fsynced) or, if it exists, checks its partition count
    /// ([`LogError::PartitionMismatch`]). Returns its id.
    pub fn ensure_topic(&mut self, name: &str, partitions: u32) -> Result<TopicId, LogError> {
        format::validate_topic_name(name).map_err(|reason| LogError::InvalidTopic {
            name: name.into(),
            reason,
        })?;
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(LogError::InvalidTopic {
                name: name.into(),
                reason: format!("partition count must be 1..={MAX_PARTITIONS}, got {partitions}"),
            });
        }
        if let Some(&id) = self.by_name.get(name) {
            let existing = self.topics[id as usize]
                .as_ref()
                .map_or(0, |t| t.parts.len() as u32);
            if existing != partitions {
                return Err(LogError::PartitionMismatch {
                    topic: name.into(),
                    existing,
                    requested: partitions,
                });
            }
            return Ok(id);
        }
        self.check_poisoned()?;
        if self.topics.len() as u32 >= format::MAX_TOPICS {
            return Err(LogError::InvalidTopic {
                name: name.to_string(),
                reason: format!("a store holds at most {} topics", format::MAX_TOPICS),
            });
        }
        let id = self.topics.len() as TopicId;
        let tdir = self.dir.join(TOPICS_DIR);
        let topic_dir = tdir.join(name);
        fs::create_dir_all(&topic_dir)
            .map_err(|e| LogError::io(&topic_dir, "create directory", e))?;
        let mut parts = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let pdir = format::partition_dir(&topic_dir, p);
            fs::create_dir_all(&pdir).map_err(|e| LogError::io(&pdir, "create directory", e))?;
            // Leftovers of an interrupted creation can only hold uncommitted data.
            for b in format::list_segments(&pdir)? {
                let sp = pdir.join(format::segment_file_name(b));
                fs::remove_file(&sp).map_err(|e| LogError::io(&sp, "remove stale segment", e))?;
            }
            parts.push(PartState {
                dir: pdir,
                end: 0,
                seg: None,
                pending: Pending::default(),
            });
        }
        format::write_atomic(
            &topic_dir,
            META_TMP,
            META_FILE,
            format::encode_meta(id, partitions).as_bytes(),
        )?;
        format::fsync_dir(&tdir)?;
        self.topics.push(Some(TopicState {
            name: name.into(),
            parts,
        }));
        self.by_name.insert(name.into(), id);
        Ok(id)
    }

    /// Id and partition count of topic `name`, if it exists.
    pub fn topic(&self, name: &str) -> Option<(TopicId, u32)> {
        let id = *self.by_name.get(name)?;
        Some((id, self.topics[id as usize].as_ref()?.parts.len() as u32))
    }

    /// All topics: `(name, id, partitions)` sorted by name.
    pub fn topics(&self) -> Vec<(String, TopicId, u32)> {
        let mut v: Vec<_> = self
            .topics
            .iter()
            .enumerate()
            .filter_map(|(id, t)| {
                t.as_ref()
                    .map(|t| (t.name.clone(), id as TopicId, t.parts.len() as u32))
            })
            .collect();
        v.sort();
        v
    }

    /// Committed end offset of a partition (0 for unknown topics/partitions).
    pub fn end_offset(&self, topic: TopicId, partition: u32) -> u64 {
        self.topics
            .get(topic as usize)
            .and_then(Option::as_ref)
            .and_then(|t| t.parts.get(partition as usize))
            .map_or(0, |p| p.end)
    }

    /// The latest commit marker (after a journal compaction: the marker of the last
    /// transaction before it, with its own inputs). `None` if nothing was committed.
    pub fn last_marker(&self) -> Option<&CommitMarker> {
        self.last_marker.as_ref()
    }

    /// Id of the last committed transaction (0 if none).
    pub fn last_txn_id(&self) -> u64 {
        self.last_txn
    }

    /// Input offsets of `source` merged over all markers (latest wins per partition):
    /// `(partition, next offset to read)` sorted by partition; empty if none.
    pub fn committed_inputs(&self, source: &str) -> Vec<(u32, u64)> {
        self.inputs
            .get(source)
            .map(|m| m.iter().map(|(&p, &o)| (p, o)).collect())
            .unwrap_or_default()
    }

    /// Starts a transaction. Records appended to it become visible atomically on
    /// [`Txn::commit`]; dropping it aborts.
    pub fn begin(&mut self) -> Txn<'_> {
        let touched = std::mem::take(&mut self.touched_buf);
        Txn {
            w: self,
            touched,
            records: 0,
            error: None,
        }
    }

    /// Rewrites the journal as a single checkpoint entry holding all committed ends and
    /// merged inputs (temp file, fsync, rename, fsync directory). Done automatically
    /// when the journal exceeds `journal_compact_bytes`. On failure the writer is
    /// poisoned.
    pub fn compact_journal(&mut self) -> Result<(), LogError> {
        self.check_poisoned()?;
        let r = self.compact_inner();
        if let Err(e) = &r {
            self.poisoned = Some(format!("journal compaction failed: {e}"));
        }
        r
    }

    fn compact_inner(&mut self) -> Result<(), LogError> {
        let Some(marker) = &self.last_marker else {
            return Ok(()); // no entries at all
        };
        let mut ends = Vec::new();
        for (id, t) in self.topics.iter().enumerate() {
            if let Some(t) = t {
                for (p, ps) in t.parts.iter().enumerate() {
                    if ps.end > 0 {
                        ends.push((id as TopicId, p as u32, ps.end));
                    }
                }
            }
        }
        let merged: Vec<(&str, u32, u64)> = self
            .inputs
            .iter()
            .flat_map(|(name, m)| m.iter().map(move |(&p, &o)| (name.as_str(), p, o)))
            .collect();
        let mut entry = Vec::new();
        format::encode_entry(
            &mut entry,
            KIND_CHECKPOINT,
            self.last_txn,
            marker.epoch,
            &ends,
            marker.inputs.iter().map(|(n, p, o)| (n.as_str(), *p, *o)),
            Some(merged),
        );
        let mut data = Vec::with_capacity(JOURNAL_HEADER_LEN + entry.len());
        data.extend_from_slice(&format::journal_header());
        data.extend_from_slice(&entry);
        format::write_atomic(&self.dir, JOURNAL_TMP, JOURNAL_FILE, &data)?;
        self.journal = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.journal_path)
            .map_err(|e| LogError::io(&self.journal_path, "open", e))?;
        self.journal_len = data.len() as u64;
        self.compacted_len = self.journal_len;
        Ok(())
    }

    /// Writes a transaction's batches and marker. Any error leaves the writer to be
    /// poisoned by the caller.
    fn write_txn(
        &mut self,
        touched: &[(TopicId, u32)],
        marker: &CommitMarker,
        timestamp_ms: u64,
    ) -> Result<CommitInfo, LogError> {
        let sync = self.opts.fsync == FsyncPolicy::EveryCommit;
        let segment_bytes = self.opts.segment_bytes;
        let mut ends = std::mem::take(&mut self.ends_buf);
        ends.clear();
        let mut new_dirs: Vec<PathBuf> = Vec::new();
        let mut records = 0u64;
        let mut bytes = 0u64;

        for &(t, p) in touched {
            let ps = &mut self.topics[t as usize]
                .as_mut()
                .expect("touched topic exists")
                .parts[p as usize];
            let pend = &ps.pending;
            let mut next = ps.end;
            let mut start = 0usize;
            let last = (pend.buf.len(), pend.cur_count);
            for &(stop, count) in pend.splits.iter().chain(std::iter::once(&last)) {
                if count == 0 {
                    continue;
                }
                let payload = &pend.buf[start..stop];
                start = stop;
                let batch_len = (BATCH_HEADER_LEN + payload.len()) as u64;
                let roll = match &ps.seg {
                    None => true,
                    Some(s) => s.len > 0 && s.len + batch_len > segment_bytes,
                };
                if roll {
                    if let Some(old) = ps.seg.take()
                        && old.dirty
                        && sync
                    {
                        old.file
                            .sync_data()
                            .map_err(|e| LogError::io(&old.path, "fdatasync", e))?;
                    }
                    let path = ps.dir.join(format::segment_file_name(next));
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .map_err(|e| LogError::io(&path, "create segment", e))?;
                    ps.seg = Some(Segment {
                        len: 0,
                        path,
                        file,
                        dirty: false,
                    });
                    if sync && !new_dirs.contains(&ps.dir) {
                        new_dirs.push(ps.dir.clone());
                    }
                }
                let seg = ps.seg.as_mut().expect("active segment");
                let file = &seg.file;
                let header = format::encode_batch_header(next, count, timestamp_ms, payload);
                file.write_all_at(&header, seg.len)
                    .map_err(|e| LogError::io(&seg.path, "write", e))?;
                file.write_all_at(payload, seg.len + BATCH_HEADER_LEN as u64)
                    .map_err(|e| LogError::io(&seg.path, "write", e))?;
                seg.len += batch_len;
                seg.dirty = true;
                next += count as u64;
                records += count as u64;
                bytes += batch_len;
            }
            ends.push((t, p, next));
        }

        if sync {
            let dirty: Vec<&Segment> = touched
                .iter()
                .filter_map(|&(t, p)| {
                    let ps = &self.topics[t as usize]
                        .as_ref()
                        .expect("touched topic exists")
                        .parts[p as usize];
                    ps.seg.as_ref().filter(|seg| seg.dirty)
                })
                .collect();
            sync_segments(&dirty)?;
            for d in &new_dirs {
                format::fsync_dir(d)?;
            }
        }

        let txn_id = self.last_txn + 1;
        format::encode_entry(
            &mut self.entry_buf,
            KIND_COMMIT,
            txn_id,
            marker.epoch,
            &ends,
            marker.inputs.iter().map(|(n, p, o)| (n.as_str(), *p, *o)),
            None,
        );
        self.journal
            .write_all_at(&self.entry_buf, self.journal_len)
            .map_err(|e| LogError::io(&self.journal_path, "append to", e))?;
        if sync {
            self.journal
                .sync_data()
                .map_err(|e| LogError::io(&self.journal_path, "fdatasync", e))?;
        }

        // Committed: publish the new state.
        self.journal_len += self.entry_buf.len() as u64;
        for &(t, p, end) in &ends {
            let ps = &mut self.topics[t as usize]
                .as_mut()
                .expect("touched topic exists")
                .parts[p as usize];
            ps.end = end;
            if let Some(seg) = &mut ps.seg {
                seg.dirty = false;
            }
        }
        self.last_txn = txn_id;
        merge_inputs(&mut self.inputs, &marker.inputs);
        self.last_marker = Some(marker.clone());
        self.ends_buf = ends;
        Ok(CommitInfo {
            txn_id,
            records,
            bytes,
            timestamp_ms,
        })
    }
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("dir", &self.dir)
            .field("topics", &self.by_name.len())
            .field("last_txn", &self.last_txn)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

/// fdatasyncs the segments a transaction wrote, concurrently when there are several: each
/// fdatasync has a fixed cost (~0.4 ms here) that overlaps when they run side by side
/// (median commit 6.3 → 5.7 ms for the bank view's 4 partitions; `docs/benchmarks.md`).
/// The journal entry is written only after all of them returned.
fn sync_segments(segs: &[&Segment]) -> Result<(), LogError> {
    let sync = |seg: &Segment| {
        seg.file
            .sync_data()
            .map_err(|e| LogError::io(&seg.path, "fdatasync", e))
    };
    if segs.len() < 2 {
        return segs.iter().try_for_each(|s| sync(s));
    }
    std::thread::scope(|s| {
        let (head, rest) = segs.split_first().expect("two or more");
        let handles: Vec<_> = rest.iter().map(|seg| s.spawn(move || sync(seg))).collect();
        let mut result = sync(head);
        for h in handles {
            let r = h.join().expect("fdatasync thread panicked");
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// An open transaction of a [`LogWriter`].
///
/// Records are buffered in memory by [`Txn::append`] and written by [`Txn::commit`].
/// Dropping a `Txn` without committing aborts it: nothing becomes visible.
pub struct Txn<'a> {
    w: &'a mut LogWriter,
    touched: Vec<(TopicId, u32)>,
    records: usize,
    /// First invalid append (reported by `commit`).
    error: Option<LogError>,
}

impl Txn<'_> {
    /// Buffers a record for `partition` of `topic`. Invalid topic/partition ids and
    /// oversized records are reported by [`Txn::commit`] (which then commits nothing).
    #[inline]
    pub fn append(&mut self, topic: TopicId, partition: u32, key: &[u8], value: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let rec_len = RECORD_OVERHEAD + key.len() + value.len();
        if rec_len as u64 > MAX_RECORD_BYTES {
            self.error = Some(LogError::RecordTooLarge {
                size: rec_len as u64,
                max: MAX_RECORD_BYTES,
            });
            return;
        }
        let Some(ps) = self
            .w
            .topics
            .get_mut(topic as usize)
            .and_then(Option::as_mut)
            .and_then(|t| t.parts.get_mut(partition as usize))
        else {
            self.error = Some(LogError::NoSuchPartition { topic, partition });
            return;
        };
        let pend = &mut ps.pending;
        if pend.records == 0 {
            self.touched.push((topic, partition));
        }
        if pend.cur_count > 0 && pend.cur_bytes + rec_len > BATCH_TARGET_PAYLOAD {
            pend.splits.push((pend.buf.len(), pend.cur_count));
            pend.cur_bytes = 0;
            pend.cur_count = 0;
        }
        format::encode_record(&mut pend.buf, key, value);
        pend.cur_bytes += rec_len;
        pend.cur_count += 1;
        pend.records += 1;
        self.records += 1;
    }

    /// Number of records appended so far.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether no record was appended.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Commits: writes one batch per touched partition (rolling segments as needed),
    /// syncs them (per policy), appends `marker` to the journal and syncs it. A
    /// transaction without records still commits its marker.
    ///
    /// On an I/O error the commit is not reported as successful and the writer is
    /// poisoned (later calls fail with [`LogError::Poisoned`]); reopening the store
    /// recovers it. (After a failed fsync the transaction may or may not turn out to
    /// be committed; the journal is the truth.)
    pub fn commit(mut self, marker: &CommitMarker) -> Result<CommitInfo, LogError> {
        self.w.check_poisoned()?;
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let touched = std::mem::take(&mut self.touched);
        let res = self.w.write_txn(&touched, marker, now_ms());
        self.touched = touched;
        match res {
            Ok(info) => {
                // Compact when over the threshold, but not again before the journal
                // has at least doubled (a checkpoint may itself exceed the threshold).
                let w = &mut *self.w;
                if w.journal_len > w.opts.journal_compact_bytes
                    && w.journal_len > 2 * w.compacted_len
                {
                    // The commit is durable; a compaction failure poisons the writer
                    // for later calls but does not undo this commit.
                    let _ = w.compact_journal();
                }
                Ok(info)
            }
            Err(e) => {
                self.w.poisoned = Some(e.to_string());
                Err(e)
            }
        }
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        for &(t, p) in &self.touched {
            if let Some(ps) = self.w.topics[t as usize]
                .as_mut()
                .and_then(|ts| ts.parts.get_mut(p as usize))
            {
                ps.pending.clear();
            }
        }
        self.touched.clear();
        self.w.touched_buf = std::mem::take(&mut self.touched);
    }
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn")
            .field("records", &self.records)
            .field("partitions", &self.touched.len())
            .finish()
    }
}
