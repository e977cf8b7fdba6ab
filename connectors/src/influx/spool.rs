//! The disk variant of the sink's outage buffer: lines survive a restart,
//! a kill -9 and, within the fsync policy, a power cut.
//!
//! A spool folder holds:
//! - `LOCK`: held (advisory lock) by the one process using the folder;
//! - segments `<id>.seg` (`id` zero-padded, so names sort in order), each a
//!   sequence of records, appended in acquisition order;
//! - `ack`: the segment and offset up to which the server acknowledged
//!   (2xx) or refused for good; segments wholly before it are deleted;
//! - `quarantine/`: bytes of corrupt records, cut out at start, kept for a
//!   person to look at.
//!
//! A record is `magic (4) | length (u32 LE) | crc32 of length and payload
//! (u32 LE) | payload`, the payload one line of line protocol. The magic
//! lets reading resume after a corrupt record; the checksum tells a record
//! from damage. A record cut short at the end of the newest segment is what
//! a crash mid-write leaves: it is truncated, not quarantined.
//!
//! Policies (README "Durable delivery"): when the spool holds more than
//! `max_bytes`, or the disk is full, the oldest segment is deleted and its
//! lines counted as dropped; the ack is written without fsync (after a crash
//! the last batches may be written twice, which InfluxDB absorbs: same
//! series, same timestamp).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::batch::{BatchOutcome, BatchSettled};

const MAGIC: [u8; 4] = *b"IBsp";
const HEADER: usize = 12;
/// A length beyond this is damage, not a line.
const MAX_PAYLOAD: usize = 16 * 1024 * 1024;
const MIN_SEGMENT_BYTES: u64 = 64 * 1024;
const MAX_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// Bytes read from a segment at a time when taking a batch.
const READ_CHUNK: usize = 1024 * 1024;
const ACK_FILE: &str = "ack";
const LOCK_FILE: &str = "LOCK";
const QUARANTINE_DIR: &str = "quarantine";

/// When written records are forced to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every commit (each batch of records the sink takes from its
    /// queue): a power cut loses at most the batch being committed.
    EveryCommit,
    /// At most this long after a write: a power cut loses at most this
    /// much; a kill -9 loses nothing written (the kernel has it).
    Interval(Duration),
}

/// What the spool found when it opened its folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolRecovery {
    /// Lines waiting to be delivered, in order.
    pub lines: usize,
    /// Corrupt regions cut out and moved to `quarantine/`.
    pub corrupt_regions: usize,
    /// Bytes of a record cut short by a crash, truncated.
    pub torn_bytes: u64,
    /// The ack file was missing or damaged, so delivery restarts at the
    /// oldest segment (lines may be written twice).
    pub ack_lost: bool,
}

/// What a commit could not do.
#[derive(Debug, Default)]
pub struct CommitOutcome {
    /// Lines lost: no room on the disk even after deleting older segments,
    /// or a write error.
    pub dropped: usize,
    /// Older lines deleted to make room on a full disk (already unacked
    /// lines, counted as overflow).
    pub evicted: usize,
    pub error: Option<io::Error>,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    /// Valid bytes in the file.
    bytes: u64,
    /// Records in the file.
    lines: usize,
}

#[derive(Debug)]
struct Batch {
    segment: u64,
    end: u64,
    lines: usize,
    /// The front segment was deleted (full spool) while the batch was out.
    evicted: bool,
    /// The line, for a batch of one (the dead-letter file wants it).
    single: Option<String>,
}

/// The disk spool. Lines are appended with [`DiskSpool::push`] and reach the
/// file on [`DiskSpool::commit`]; batches come from the oldest
/// unacknowledged records, at most one at a time and never across a segment
/// boundary.
#[derive(Debug)]
pub struct DiskSpool {
    dir: PathBuf,
    max_bytes: u64,
    segment_max_bytes: u64,
    fsync: FsyncPolicy,
    /// Oldest first; the last one is written to.
    segments: VecDeque<Segment>,
    /// Bytes of every segment together (kept, not summed per line).
    on_disk: u64,
    write_file: File,
    /// Read handle of the front segment.
    read_file: Option<(u64, File)>,
    ack_file: File,
    /// Acknowledged bytes and lines of the front segment.
    head_offset: u64,
    head_lines: usize,
    /// Records pushed but not yet written.
    pending: Vec<u8>,
    pending_lines: usize,
    /// The line being encoded by `push_with` (its allocation is reused).
    encoding: String,
    /// Unacknowledged lines, pending ones included.
    len: usize,
    batch: Option<Batch>,
    /// Written but not yet forced to disk, since then.
    unsynced_since: Option<Instant>,
    corrupt_regions: u64,
    _lock: File,
}

impl DiskSpool {
    /// Opens (or creates) the spool in `dir`: takes its lock, cuts out
    /// corrupt records into `quarantine/`, truncates a torn last record and
    /// starts a new segment. Fails only if the folder cannot be used
    /// (permissions, another process holds it), never because of its
    /// content.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        fsync: FsyncPolicy,
    ) -> io::Result<(Self, SpoolRecovery)> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "another process uses this spool folder",
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }

        let mut recovery = SpoolRecovery::default();
        let mut ids = segment_ids(dir)?;
        ids.sort_unstable();
        let ack = read_ack(&dir.join(ACK_FILE));
        recovery.ack_lost = ack.is_none() && !ids.is_empty();
        let (ack_segment, mut ack_offset) = ack.unwrap_or((0, 0));

        let mut segments = VecDeque::new();
        let newest = ids.last().copied();
        let mut head_offset = 0;
        let mut head_lines = 0;
        for id in ids {
            let path = segment_path(dir, id);
            if id < ack_segment {
                remove_file(&path)?;
                continue;
            }
            let content = std::fs::read(&path)?;
            let scan = scan(&content, Some(id) == newest);
            if scan.torn_from.is_some() || !scan.corrupt.is_empty() {
                for range in &scan.corrupt {
                    quarantine(dir, id, range.start as u64, &content[range.clone()])?;
                    recovery.corrupt_regions += 1;
                }
                if let Some(from) = scan.torn_from {
                    recovery.torn_bytes += (content.len() - from) as u64;
                }
                // Keep only whole records; move the ack to the same record
                // in the rewritten file.
                let mut kept = Vec::with_capacity(content.len());
                let mut new_ack = None;
                for record in &scan.records {
                    if id == ack_segment && new_ack.is_none() && record.start as u64 >= ack_offset {
                        new_ack = Some(kept.len() as u64);
                    }
                    kept.extend_from_slice(&content[record.clone()]);
                }
                if id == ack_segment {
                    ack_offset = new_ack.unwrap_or(kept.len() as u64);
                }
                rewrite(&path, &kept)?;
            }
            let bytes: u64 = scan.records.iter().map(|r| r.len() as u64).sum();
            if id == ack_segment {
                head_offset = ack_offset.min(bytes);
                let mut at = 0;
                for record in &scan.records {
                    if at >= head_offset {
                        break;
                    }
                    at += record.len() as u64;
                    head_lines += 1;
                }
                // An ack inside a record (damage) rounds up to its end.
                head_offset = at;
            }
            segments.push_back(Segment {
                id,
                bytes,
                lines: scan.records.len(),
            });
        }
        // Segments whose every line was acknowledged are done.
        while segments
            .front()
            .is_some_and(|s| s.id == ack_segment && head_lines == s.lines)
        {
            if let Some(s) = segments.pop_front() {
                remove_file(&segment_path(dir, s.id))?;
            }
            head_offset = 0;
            head_lines = 0;
        }
        if segments.front().is_some_and(|s| s.id != ack_segment) {
            head_offset = 0;
            head_lines = 0;
        }
        let len = segments.iter().map(|s| s.lines).sum::<usize>() - head_lines;
        recovery.lines = len;

        // Always a fresh segment to write to: never append after damage.
        let next_id = segments.back().map_or(ack_segment + 1, |s| s.id + 1);
        let write_file = create_segment(dir, next_id)?;
        segments.push_back(Segment {
            id: next_id,
            bytes: 0,
            lines: 0,
        });
        let ack_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(ACK_FILE))?;
        let on_disk = segments.iter().map(|s| s.bytes).sum();
        let mut spool = Self {
            dir: dir.to_path_buf(),
            on_disk,
            max_bytes: max_bytes.max(1),
            // Several segments per spool, so that deleting the oldest frees
            // a part of it, not all of it; small enough that a full disk
            // (which may come long before max_bytes) costs little at a time.
            segment_max_bytes: (max_bytes / 8).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
            fsync,
            segments,
            write_file,
            read_file: None,
            ack_file,
            head_offset,
            head_lines,
            pending: Vec::new(),
            pending_lines: 0,
            encoding: String::new(),
            len,
            batch: None,
            unsynced_since: None,
            corrupt_regions: recovery.corrupt_regions as u64,
            _lock: lock,
        };
        spool.write_ack()?;
        Ok((spool, recovery))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unacknowledged lines (written or pending).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the spool on disk, and pending.
    pub fn bytes(&self) -> u64 {
        self.on_disk + self.pending.len() as u64
    }

    /// Corrupt regions found so far (at open and while reading).
    pub fn corrupt_regions(&self) -> u64 {
        self.corrupt_regions
    }

    pub fn batch_len(&self) -> usize {
        self.batch
            .as_ref()
            .map_or(0, |b| if b.evicted { 0 } else { b.lines })
    }

    pub fn is_batch_in_flight(&self) -> bool {
        self.batch.is_some()
    }

    /// The line of a batch of one.
    pub fn single_batch_line(&self) -> Option<&str> {
        self.batch.as_ref().and_then(|b| b.single.as_deref())
    }

    /// Appends the line `encode` writes into an empty string (`Ok(false)`:
    /// it has none): `Ok(None)` without a line, else as [`DiskSpool::push`].
    pub fn push_with<E>(
        &mut self,
        encode: impl FnOnce(&mut String) -> Result<bool, E>,
    ) -> Result<Option<usize>, E> {
        let mut line = std::mem::take(&mut self.encoding);
        line.clear();
        let pushed = match encode(&mut line) {
            Ok(true) => Ok(Some(self.push(&line))),
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        };
        self.encoding = line;
        pushed
    }

    /// Appends a line (written on the next commit). Returns how many lines
    /// are now known to be lost to make room (a whole oldest segment).
    pub fn push(&mut self, line: &str) -> usize {
        let payload = line.as_bytes();
        self.pending.extend_from_slice(&MAGIC);
        let len = (payload.len() as u32).to_le_bytes();
        self.pending.extend_from_slice(&len);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len);
        crc.update(payload);
        self.pending
            .extend_from_slice(&crc.finalize().to_le_bytes());
        self.pending.extend_from_slice(payload);
        self.pending_lines += 1;
        self.len += 1;
        let mut dropped = 0;
        while self.bytes() > self.max_bytes {
            match self.evict_oldest() {
                Some(n) => dropped += n,
                None => break,
            }
        }
        dropped
    }

    /// When the written data is due to be forced to disk (interval policy).
    pub fn sync_due_at(&self) -> Option<Instant> {
        match self.fsync {
            FsyncPolicy::EveryCommit => None,
            FsyncPolicy::Interval(every) => self.unsynced_since.map(|at| at + every),
        }
    }

    /// Writes the pending records, forcing them to disk as the policy says.
    /// A full disk deletes the oldest segments to make room; what still
    /// does not fit is dropped and counted.
    pub fn commit(&mut self) -> CommitOutcome {
        let mut outcome = CommitOutcome::default();
        if !self.pending.is_empty() {
            loop {
                match self.write_pending() {
                    Ok(()) => break,
                    Err(e) if is_disk_full(&e) => {
                        if let Some(n) = self.evict_oldest() {
                            outcome.evicted += n;
                            continue;
                        }
                        // Only the segment being written is left: close it
                        // so that it can be deleted in turn.
                        let written = self.segments.back().map_or(0, |s| s.bytes);
                        if written > 0 {
                            if let Some(id) = self.segments.back().map(|s| s.id) {
                                if self.rotate(id).is_ok() {
                                    continue;
                                }
                            }
                        }
                        outcome.error = Some(e);
                    }
                    Err(e) => outcome.error = Some(e),
                }
                outcome.dropped = self.pending_lines;
                self.len = self.len.saturating_sub(self.pending_lines);
                self.pending.clear();
                self.pending_lines = 0;
                break;
            }
        }
        let sync_now = match self.fsync {
            FsyncPolicy::EveryCommit => self.unsynced_since.is_some(),
            FsyncPolicy::Interval(_) => self.sync_due_at().is_some_and(|at| at <= Instant::now()),
        };
        if sync_now {
            if let Err(e) = self.write_file.sync_data() {
                outcome.error.get_or_insert(e);
            }
            self.unsynced_since = None;
        }
        outcome
    }

    /// Marks up to `max_lines` of the oldest unacknowledged lines as the
    /// batch being written and returns their body (lines joined by `\n`),
    /// or `None` if there is nothing to write or a batch is already out.
    /// Corrupt records met on the way are quarantined and skipped.
    pub fn start_batch(&mut self, max_lines: usize) -> io::Result<Option<String>> {
        if self.batch.is_some() {
            return Ok(None);
        }
        if !self.pending.is_empty() {
            let outcome = self.commit();
            if let Some(e) = outcome.error {
                return Err(e);
            }
        }
        loop {
            let Some(front) = self.segments.front() else {
                return Ok(None);
            };
            let is_write_segment = self.segments.len() == 1;
            if self.head_offset < front.bytes {
                break;
            }
            if is_write_segment {
                return Ok(None);
            }
            // Lines still counted here were in damage skipped on the way.
            self.len = self
                .len
                .saturating_sub(front.lines.saturating_sub(self.head_lines));
            self.drop_front_segment()?;
        }
        let (id, bytes) = match self.segments.front() {
            Some(front) => (front.id, front.bytes),
            None => return Ok(None),
        };
        let file = match &self.read_file {
            Some((read_id, file)) if *read_id == id => file,
            _ => {
                let file = File::open(segment_path(&self.dir, id))?;
                &self.read_file.insert((id, file)).1
            }
        };
        let max_lines = max_lines.max(1);
        let mut body = String::new();
        let mut lines = 0;
        let mut at = self.head_offset;
        let mut corrupt = 0;
        let mut buf = Vec::new();
        while lines < max_lines && at < bytes {
            let want = ((bytes - at) as usize).min(READ_CHUNK);
            buf.resize(want, 0);
            file.read_exact_at(&mut buf, at)?;
            let mut pos = 0;
            while lines < max_lines && pos < buf.len() {
                match parse_record(&buf[pos..]) {
                    Parsed::Record(len, line) => {
                        if lines > 0 {
                            body.push('\n');
                        }
                        body.push_str(line);
                        lines += 1;
                        pos += len;
                    }
                    Parsed::Short(need) => {
                        if pos == 0 && at + need as u64 <= bytes {
                            // A record longer than a chunk: read it whole.
                            buf.resize(need, 0);
                            file.read_exact_at(&mut buf, at)?;
                            continue;
                        }
                        if pos == 0 {
                            // Cut short before the end of the written bytes:
                            // damage since the spool opened.
                            pos = buf.len();
                            corrupt += 1;
                            quarantine(&self.dir, id, at, &buf)?;
                        }
                        break;
                    }
                    Parsed::Corrupt => {
                        let skip = resync(&buf[pos..]).unwrap_or(buf.len() - pos);
                        quarantine(&self.dir, id, at + pos as u64, &buf[pos..pos + skip])?;
                        corrupt += 1;
                        pos += skip;
                    }
                }
            }
            at += pos as u64;
        }
        self.corrupt_regions += corrupt;
        if lines == 0 {
            // Only damage left in this segment: acknowledge past it.
            self.head_offset = at;
            return Ok(None);
        }
        self.batch = Some(Batch {
            segment: id,
            end: at,
            lines,
            evicted: false,
            // With one line the body is that line.
            single: (lines == 1).then(|| body.clone()),
        });
        Ok(Some(body))
    }

    /// Ends the batch being written (a no-op without one).
    pub fn finish_batch(&mut self, outcome: BatchOutcome) -> BatchSettled {
        let Some(batch) = self.batch.take() else {
            return BatchSettled::default();
        };
        match (outcome, batch.evicted) {
            (BatchOutcome::Delivered | BatchOutcome::Rejected, false) => {
                self.head_offset = batch.end;
                self.head_lines += batch.lines;
                self.len = self.len.saturating_sub(batch.lines);
                if let Err(e) = self.write_ack() {
                    // Only costs lines written twice after a restart.
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the spool's ack file");
                }
                BatchSettled {
                    settled: batch.lines,
                    dropped_overflow: 0,
                }
            }
            (BatchOutcome::Delivered | BatchOutcome::Rejected, true) => BatchSettled {
                settled: batch.lines,
                dropped_overflow: 0,
            },
            (BatchOutcome::Failed, false) => BatchSettled::default(),
            (BatchOutcome::Failed, true) => BatchSettled {
                settled: 0,
                dropped_overflow: batch.lines,
            },
        }
    }

    /// Forces what was written to disk (the interval policy's timer).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced_since.take().is_some() {
            self.write_file.sync_data()?;
        }
        Ok(())
    }

    /// Writes and forces to disk everything pushed: for shutdown.
    pub fn close(&mut self) -> CommitOutcome {
        let mut outcome = self.commit();
        if let Err(e) = self
            .write_file
            .sync_data()
            .and_then(|()| self.ack_file.sync_data())
        {
            outcome.error.get_or_insert(e);
        }
        self.unsynced_since = None;
        outcome
    }

    fn write_pending(&mut self) -> io::Result<()> {
        let Some(back) = self.segments.back() else {
            return Err(io::Error::other("spool has no segment to write to"));
        };
        let (id, at) = (back.id, back.bytes);
        if let Err(e) = self.write_file.write_all_at(&self.pending, at) {
            // Leave no partial record behind.
            let _ = self.write_file.set_len(at);
            return Err(e);
        }
        if self.unsynced_since.is_none() {
            self.unsynced_since = Some(Instant::now());
        }
        let written = self.pending.len() as u64;
        self.on_disk += written;
        if let Some(back) = self.segments.back_mut() {
            back.bytes += written;
            back.lines += self.pending_lines;
        }
        self.pending.clear();
        self.pending_lines = 0;
        if at + written >= self.segment_max_bytes {
            self.rotate(id)?;
        }
        Ok(())
    }

    /// Starts the next segment after `id`, the current one forced to disk.
    fn rotate(&mut self, id: u64) -> io::Result<()> {
        self.write_file.sync_data()?;
        self.unsynced_since = None;
        self.write_file = create_segment(&self.dir, id + 1)?;
        self.segments.push_back(Segment {
            id: id + 1,
            bytes: 0,
            lines: 0,
        });
        Ok(())
    }

    /// Deletes the oldest segment to make room (never the one written to).
    /// Returns the lines lost now (lines of a batch being written are
    /// counted when its outcome is known), or `None` if there is nothing
    /// older to delete.
    fn evict_oldest(&mut self) -> Option<usize> {
        if self.segments.len() < 2 {
            return None;
        }
        let front = self.segments.front()?;
        let id = front.id;
        let unacked = front.lines.saturating_sub(self.head_lines);
        let in_batch = match &mut self.batch {
            Some(batch) if batch.segment == id && !batch.evicted => {
                batch.evicted = true;
                batch.lines
            }
            _ => 0,
        };
        self.len = self.len.saturating_sub(unacked);
        if self.drop_front_segment().is_err() {
            // The file stays behind; its bytes no longer count. Deleting it
            // is retried at the next start (it is older than the ack).
            tracing::warn!(segment = id, dir = %self.dir.display(), "cannot delete a spool segment");
        }
        Some(unacked.saturating_sub(in_batch))
    }

    fn drop_front_segment(&mut self) -> io::Result<()> {
        let Some(front) = self.segments.pop_front() else {
            return Ok(());
        };
        self.on_disk = self.on_disk.saturating_sub(front.bytes);
        if self
            .read_file
            .as_ref()
            .is_some_and(|(id, _)| *id == front.id)
        {
            self.read_file = None;
        }
        self.head_offset = 0;
        self.head_lines = 0;
        let result = remove_file(&segment_path(&self.dir, front.id));
        self.write_ack()?;
        result
    }

    fn write_ack(&mut self) -> io::Result<()> {
        let (segment, offset) = match self.segments.front() {
            Some(front) => (front.id, self.head_offset),
            None => (0, 0),
        };
        let mut record = [0u8; 20];
        record[..8].copy_from_slice(&segment.to_le_bytes());
        record[8..16].copy_from_slice(&offset.to_le_bytes());
        let crc = crc32fast::hash(&record[..16]);
        record[16..].copy_from_slice(&crc.to_le_bytes());
        self.ack_file.write_all_at(&record, 0)
    }
}

/// Whether `e` says the disk (or the quota, or the file size limit) is
/// full: the spool treats it like a full spool.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge
    )
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
            ids.push(id);
        }
    }
    Ok(ids)
}

fn create_segment(dir: &Path, id: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(segment_path(dir, id))?;
    // The new name must survive a power cut too.
    File::open(dir)?.sync_all()?;
    Ok(file)
}

fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn read_ack(path: &Path) -> Option<(u64, u64)> {
    let bytes = std::fs::read(path).ok()?;
    let record: &[u8; 20] = bytes.get(..20)?.try_into().ok()?;
    let crc = u32::from_le_bytes(record[16..].try_into().ok()?);
    if crc32fast::hash(&record[..16]) != crc {
        return None;
    }
    let segment = u64::from_le_bytes(record[..8].try_into().ok()?);
    let offset = u64::from_le_bytes(record[8..16].try_into().ok()?);
    Some((segment, offset))
}

/// Replaces a segment's content, durably.
fn rewrite(path: &Path, content: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("seg.tmp");
    std::fs::write(&tmp, content)?;
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn quarantine(dir: &Path, segment: u64, offset: u64, bytes: &[u8]) -> io::Result<()> {
    let folder = dir.join(QUARANTINE_DIR);
    std::fs::create_dir_all(&folder)?;
    let path = folder.join(format!("{segment:020}-at-{offset}.bad"));
    tracing::error!(
        path = %path.display(),
        bytes = bytes.len(),
        "corrupt records in the InfluxDB spool; moved to quarantine and skipped"
    );
    std::fs::write(path, bytes)
}

enum Parsed<'a> {
    /// A whole, valid record of this many bytes, and its line.
    Record(usize, &'a str),
    /// Valid so far, but the record needs this many bytes.
    Short(usize),
    Corrupt,
}

fn parse_record(buf: &[u8]) -> Parsed<'_> {
    if buf.len() < HEADER {
        return if MAGIC.starts_with(&buf[..buf.len().min(4)]) {
            Parsed::Short(HEADER)
        } else {
            Parsed::Corrupt
        };
    }
    if buf[..4] != MAGIC {
        return Parsed::Corrupt;
    }
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Parsed::Corrupt;
    }
    let total = HEADER + len;
    if buf.len() < total {
        return Parsed::Short(total);
    }
    let crc = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&buf[4..8]);
    hasher.update(&buf[HEADER..total]);
    if hasher.finalize() != crc {
        return Parsed::Corrupt;
    }
    match std::str::from_utf8(&buf[HEADER..total]) {
        Ok(line) => Parsed::Record(total, line),
        Err(_) => Parsed::Corrupt,
    }
}

/// Bytes from the start of `buf` (a corrupt record) to the next valid
/// record, if any.
fn resync(buf: &[u8]) -> Option<usize> {
    (1..buf.len().saturating_sub(3))
        .filter(|&at| buf[at..at + 4] == MAGIC)
        .find(|&at| matches!(parse_record(&buf[at..]), Parsed::Record(..)))
}

struct Scan {
    records: Vec<std::ops::Range<usize>>,
    corrupt: Vec<std::ops::Range<usize>>,
    /// Where a record cut short by a crash starts (newest segment only).
    torn_from: Option<usize>,
}

/// Splits a whole segment into records, corrupt regions and a torn tail.
fn scan(content: &[u8], newest: bool) -> Scan {
    let mut scan = Scan {
        records: Vec::new(),
        corrupt: Vec::new(),
        torn_from: None,
    };
    let mut pos = 0;
    while pos < content.len() {
        match parse_record(&content[pos..]) {
            Parsed::Record(len, _) => {
                scan.records.push(pos..pos + len);
                pos += len;
            }
            Parsed::Short(_) if newest => {
                scan.torn_from = Some(pos);
                break;
            }
            Parsed::Short(_) | Parsed::Corrupt => {
                let skip = resync(&content[pos..]).unwrap_or(content.len() - pos);
                scan.corrupt.push(pos..pos + skip);
                pos += skip;
            }
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: FsyncPolicy = FsyncPolicy::EveryCommit;

    fn open(dir: &Path, max_bytes: u64) -> (DiskSpool, SpoolRecovery) {
        DiskSpool::open(dir, max_bytes, BATCH).unwrap()
    }

    fn push_all(spool: &mut DiskSpool, lines: &[&str]) {
        for line in lines {
            assert_eq!(spool.push(line), 0);
        }
        let outcome = spool.commit();
        assert!(outcome.error.is_none(), "{outcome:?}");
    }

    fn drain(spool: &mut DiskSpool) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(body) = spool.start_batch(3).unwrap() {
            out.extend(body.split('\n').map(str::to_string));
            spool.finish_batch(BatchOutcome::Delivered);
        }
        out
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut ids = segment_ids(dir).unwrap();
        ids.sort_unstable();
        ids.into_iter().map(|id| segment_path(dir, id)).collect()
    }

    #[test]
    fn lines_come_back_in_order_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, recovery) = open(dir.path(), 1 << 20);
            assert_eq!(recovery, SpoolRecovery::default());
            push_all(&mut spool, &["a 1", "b 2", "c 3", "d 4"]);
            assert_eq!(spool.start_batch(2).unwrap().as_deref(), Some("a 1\nb 2"));
            spool.finish_batch(BatchOutcome::Delivered);
            assert_eq!(spool.start_batch(2).unwrap().as_deref(), Some("c 3\nd 4"));
            // Not acknowledged: the process dies here.
        }
        let (mut spool, recovery) = open(dir.path(), 1 << 20);
        assert_eq!(recovery.lines, 2);
        assert!(!recovery.ack_lost);
        assert_eq!(drain(&mut spool), ["c 3", "d 4"]);
        assert!(spool.is_empty());
        drop(spool);
        let (_, recovery) = open(dir.path(), 1 << 20);
        assert_eq!(recovery.lines, 0);
        assert_eq!(
            segment_files(dir.path()).len(),
            1,
            "only the new, empty segment"
        );
    }

    #[test]
    fn lines_encoded_in_place_and_records_without_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(dir.path(), 1 << 20);
        let long = "x".repeat(300);
        let pushed: Result<_, ()> = spool.push_with(|out| {
            out.push_str(&long);
            Ok(true)
        });
        assert_eq!(pushed, Ok(Some(0)));
        let none: Result<_, ()> = spool.push_with(|out| {
            out.push_str("half");
            Ok(false)
        });
        assert_eq!(none, Ok(None));
        assert_eq!(spool.push_with(|_| Err("unencodable")), Err("unencodable"));
        let short: Result<_, ()> = spool.push_with(|out| {
            out.push_str("b 2");
            Ok(true)
        });
        assert_eq!(short, Ok(Some(0)));
        assert_eq!(spool.len(), 2);
        spool.commit();
        assert_eq!(drain(&mut spool), [long.as_str(), "b 2"]);
    }

    #[test]
    fn a_second_process_cannot_share_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (_spool, _) = open(dir.path(), 1 << 20);
        let err = DiskSpool::open(dir.path(), 1 << 20, BATCH).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ResourceBusy);
    }

    #[test]
    fn failed_batch_is_taken_again_and_new_lines_queue_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(dir.path(), 1 << 20);
        push_all(&mut spool, &["a", "b"]);
        assert_eq!(spool.start_batch(5).unwrap().as_deref(), Some("a\nb"));
        push_all(&mut spool, &["c"]);
        assert_eq!(
            spool.finish_batch(BatchOutcome::Failed),
            BatchSettled::default()
        );
        assert_eq!(spool.len(), 3);
        assert_eq!(spool.start_batch(5).unwrap().as_deref(), Some("a\nb\nc"));
        assert_eq!(spool.single_batch_line(), None);
        spool.finish_batch(BatchOutcome::Rejected);
        push_all(&mut spool, &["d"]);
        assert_eq!(spool.start_batch(5).unwrap().as_deref(), Some("d"));
        assert_eq!(spool.single_batch_line(), Some("d"));
    }

    #[test]
    fn a_torn_last_record_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = open(dir.path(), 1 << 20);
            push_all(&mut spool, &["whole 1", "whole 2", "torn 3"]);
        }
        let segment = segment_files(dir.path())[0].clone();
        let len = std::fs::metadata(&segment).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(len - 3)
            .unwrap();

        let (mut spool, recovery) = open(dir.path(), 1 << 20);
        assert_eq!(recovery.lines, 2);
        assert_eq!(recovery.torn_bytes, (HEADER + "torn 3".len() - 3) as u64);
        assert_eq!(recovery.corrupt_regions, 0);
        assert_eq!(drain(&mut spool), ["whole 1", "whole 2"]);
        assert!(!dir.path().join(QUARANTINE_DIR).exists());
    }

    #[test]
    fn a_corrupt_record_is_quarantined_and_the_rest_delivered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = open(dir.path(), 1 << 20);
            push_all(&mut spool, &["first", "second", "third"]);
        }
        let segment = segment_files(dir.path())[0].clone();
        let mut content = std::fs::read(&segment).unwrap();
        // Flip a byte of the second line's payload.
        let second = HEADER + "first".len() + HEADER;
        content[second] ^= 0xff;
        std::fs::write(&segment, &content).unwrap();

        let (mut spool, recovery) = open(dir.path(), 1 << 20);
        assert_eq!(recovery.corrupt_regions, 1);
        assert_eq!(recovery.lines, 2);
        assert_eq!(drain(&mut spool), ["first", "third"]);
        let quarantined: Vec<_> = std::fs::read_dir(dir.path().join(QUARANTINE_DIR))
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert_eq!(quarantined.len(), 1);
        assert_eq!(quarantined[0].len(), HEADER + "second".len());
    }

    #[test]
    fn garbage_and_a_damaged_ack_never_stop_the_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = open(dir.path(), 1 << 20);
            push_all(&mut spool, &["x 1", "y 2"]);
            spool.start_batch(1).unwrap();
            spool.finish_batch(BatchOutcome::Delivered);
        }
        std::fs::write(dir.path().join(ACK_FILE), b"garbage").unwrap();
        std::fs::write(segment_path(dir.path(), 0), b"not a spool at all").unwrap();
        let (mut spool, recovery) = open(dir.path(), 1 << 20);
        assert!(recovery.ack_lost);
        assert_eq!(recovery.corrupt_regions, 1);
        // Without the ack, delivery restarts at the oldest record: the
        // delivered line is written again (harmless in InfluxDB).
        assert_eq!(drain(&mut spool), ["x 1", "y 2"]);
    }

    #[test]
    fn a_full_spool_drops_its_oldest_segment() {
        let dir = tempfile::tempdir().unwrap();
        // 64 KiB segments (the smallest), 256 KiB in all.
        let (mut spool, _) = open(dir.path(), 256 * 1024);
        let line = "m v=1 ".to_string() + &"x".repeat(1000);
        let per_segment = (64 * 1024) / (line.len() + HEADER) + 1;
        let mut dropped = 0;
        for i in 0..2000 {
            dropped += spool.push(&format!("{line} {i}"));
            if i % 10 == 0 {
                assert!(spool.commit().error.is_none());
            }
        }
        spool.commit();
        assert!(spool.bytes() <= 256 * 1024, "{}", spool.bytes());
        assert!(dropped > 0);
        assert_eq!(spool.len() + dropped, 2000);
        let lines = drain(&mut spool);
        // What is left is the newest lines, in order, the last one included.
        let first: usize = lines[0].rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(first, dropped);
        assert!(lines.last().unwrap().ends_with(" 1999"));
        assert!(dropped >= per_segment - 1);
    }

    #[test]
    fn evicting_the_batch_being_written_counts_it_once_the_outcome_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(dir.path(), 128 * 1024);
        let line = "x".repeat(4000);
        let mut pushed = 0;
        while spool.segments.len() < 2 {
            spool.push(&line);
            spool.commit();
            pushed += 1;
        }
        assert!(spool.start_batch(2).unwrap().is_some());
        let mut dropped = 0;
        while spool.segments.front().map(|s| s.id) == spool.batch.as_ref().map(|b| b.segment) {
            dropped += spool.push(&line);
            spool.commit();
        }
        assert_eq!(dropped, pushed - 2, "the rest of the oldest segment");
        assert_eq!(
            spool.finish_batch(BatchOutcome::Failed),
            BatchSettled {
                settled: 0,
                dropped_overflow: 2
            }
        );
    }
}
