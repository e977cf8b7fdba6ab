//! The sink's outage buffer: lines waiting for the server, in memory
//! ([`LineBuffer`]) or on disk ([`DiskSpool`]), behind one interface
//! ([`OutageBuffer`]). Plain data, so the policies are testable without a
//! server or a clock.

use std::collections::VecDeque;
use std::io;
use std::time::Instant;

use bytes::Bytes;

pub use super::batch::{BatchBody, BatchOutcome, BatchSettled};
use super::spool::{CommitOutcome, DiskSpool};

/// Where the lines wait: chosen by `[influx] buffer`.
#[derive(Debug)]
pub enum OutageBuffer {
    /// Bounded by lines; lost when the process ends.
    Memory(LineBuffer),
    /// Bounded by bytes; kept across restarts. (Boxed: one per sink, and
    /// far larger than the memory variant.)
    Disk(Box<DiskSpool>),
}

impl OutageBuffer {
    /// Appends the line `encode` writes (`Ok(false)`: it has none; see
    /// [`LineBuffer::push_with`]). Returns `Ok(None)` without a line, else
    /// how many lines are now known to be lost to make room (the oldest).
    pub fn push_with<E>(
        &mut self,
        encode: impl FnOnce(&mut String) -> Result<bool, E>,
    ) -> Result<Option<usize>, E> {
        match self {
            OutageBuffer::Memory(b) => b.push_with(encode),
            OutageBuffer::Disk(s) => s.push_with(encode),
        }
    }

    /// Whether commits do disk I/O.
    pub fn is_on_disk(&self) -> bool {
        matches!(self, OutageBuffer::Disk(_))
    }

    /// Makes the lines pushed so far durable as the policy says (disk).
    pub fn commit(&mut self) -> CommitOutcome {
        match self {
            OutageBuffer::Memory(_) => CommitOutcome::default(),
            OutageBuffer::Disk(s) => s.commit(),
        }
    }

    /// When a commit is due although no line came (disk, fsync interval).
    pub fn sync_due_at(&self) -> Option<Instant> {
        match self {
            OutageBuffer::Memory(_) => None,
            OutageBuffer::Disk(s) => s.sync_due_at(),
        }
    }

    /// Forces written lines to disk now (disk, fsync interval).
    pub fn sync(&mut self) -> io::Result<()> {
        match self {
            OutageBuffer::Memory(_) => Ok(()),
            OutageBuffer::Disk(s) => s.sync(),
        }
    }

    pub fn start_batch(&mut self, max_lines: usize) -> io::Result<Option<BatchBody>> {
        match self {
            OutageBuffer::Memory(b) => Ok(b.start_batch(max_lines)),
            OutageBuffer::Disk(s) => Ok(s.start_batch(max_lines)?.map(BatchBody::from)),
        }
    }

    pub fn finish_batch(&mut self, outcome: BatchOutcome) -> BatchSettled {
        match self {
            OutageBuffer::Memory(b) => b.finish_batch(outcome),
            OutageBuffer::Disk(s) => s.finish_batch(outcome),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            OutageBuffer::Memory(b) => b.len(),
            OutageBuffer::Disk(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lines of the batch being written still in the buffer.
    pub fn batch_len(&self) -> usize {
        match self {
            OutageBuffer::Memory(b) => b.batch_len(),
            OutageBuffer::Disk(s) => s.batch_len(),
        }
    }

    /// The line of a batch of one line.
    pub fn single_batch_line(&self) -> Option<String> {
        match self {
            OutageBuffer::Memory(b) => b.single_batch_line(),
            OutageBuffer::Disk(s) => s.single_batch_line().map(str::to_string),
        }
    }

    /// Bytes the spool takes on disk (0 in memory).
    pub fn spool_bytes(&self) -> u64 {
        match self {
            OutageBuffer::Memory(_) => 0,
            OutageBuffer::Disk(s) => s.bytes(),
        }
    }

    /// At shutdown: lines still waiting are lost (memory) or forced to disk
    /// for the next start (disk).
    pub fn close(&mut self) -> Closed {
        match self {
            OutageBuffer::Memory(b) => Closed {
                lost: b.clear(),
                kept: 0,
                error: None,
            },
            OutageBuffer::Disk(s) => {
                let outcome = s.close();
                Closed {
                    lost: outcome.dropped,
                    kept: s.len(),
                    error: outcome.error,
                }
            }
        }
    }
}

/// What [`OutageBuffer::close`] left behind.
#[derive(Debug)]
pub struct Closed {
    /// Lines that will never be delivered.
    pub lost: usize,
    /// Lines kept in the spool for the next start.
    pub kept: usize,
    pub error: Option<io::Error>,
}

/// A chunk takes no new lines once its text reaches this size. It bounds
/// what lines already evicted can hold on to during an outage (their chunk
/// is freed when its last line goes), and stays far above a flush's lines in
/// normal running.
const CHUNK_BYTES: usize = 8 << 20;

/// A spare chunk's text and offsets, emptied for new lines, or `None` while
/// a write still shares its text. `fits` is the chunk just sealed: a spare
/// far larger than that (it held a backlog: a slow or unreachable store)
/// is cut to twice its size, so that the memory a backlog took goes back
/// once the load is down, while a steady load keeps its chunks' memory.
fn emptied_for_reuse(
    chunk: LineChunk<Bytes>,
    fits: &LineChunk<String>,
) -> Option<LineChunk<String>> {
    let mut text = Vec::from(chunk.text.try_into_mut().ok()?);
    let mut ends = chunk.ends;
    text.clear();
    ends.clear();
    let bytes = fits.text.len().max(MIN_SPARE_BYTES);
    if text.capacity() > 4 * bytes {
        text.shrink_to(2 * bytes);
    }
    let lines = fits.ends.len().max(MIN_SPARE_BYTES / 64);
    if ends.capacity() > 4 * lines {
        ends.shrink_to(2 * lines);
    }
    Some(LineChunk {
        // Empty, so valid UTF-8: this cannot fail.
        text: String::from_utf8(text).ok()?,
        ends,
        gone: 0,
    })
}

/// Below this a spare chunk is never cut (a few pages are not worth a
/// reallocation).
const MIN_SPARE_BYTES: usize = 64 << 10;

/// Lines waiting to be written, oldest first, at most `capacity` of them.
///
/// The lines are kept as text in chunks, each line followed by `\n`: a line
/// costs its bytes and one offset, not an allocation of its own, and a batch
/// is written as a slice of one chunk (shared with the write, not copied;
/// a batch ends where its chunk ends).
///
/// The head of the buffer is the current batch: [`LineBuffer::start_batch`]
/// marks the first lines as being written and returns their body;
/// [`LineBuffer::finish_batch`] removes them once the server took (or
/// rejected) them, or keeps them at the head for a retry. New lines are
/// accepted while a batch is being written.
///
/// When full, the oldest line is dropped, also if it belongs to the batch
/// being written: the write may still deliver it, so such a line is counted
/// only when the outcome is known (delivered, rejected, or dropped if the
/// write failed).
#[derive(Debug)]
pub struct LineBuffer {
    /// Chunks that take no more lines, oldest first (shared with a write,
    /// or full).
    sealed: VecDeque<LineChunk<Bytes>>,
    /// The newest lines, after the sealed ones; new lines go here.
    open: LineChunk<String>,
    /// A chunk all of whose lines are gone, kept to become the next open
    /// chunk: a flush's lines are written into memory already in use
    /// instead of a string grown afresh by doubling (fresh pages faulted
    /// in, and arenas fragmented in proportion to the tags: BENCHMARKS.md
    /// §28). Reused at the next seal, by when the write that shared its
    /// text has let go of it (the HTTP client may still hold the body
    /// when the answer arrives).
    spare: Option<LineChunk<Bytes>>,
    /// Lines in all chunks.
    len: usize,
    capacity: usize,
    /// Head lines in the batch being written (0: no batch).
    batch_lines: usize,
    /// Lines of the batch being written that were evicted meanwhile.
    batch_evicted: usize,
}

/// Lines in one piece of text, each followed by `\n`.
#[derive(Debug, Default)]
struct LineChunk<T> {
    text: T,
    /// The offset of each line's `\n`.
    ends: Vec<usize>,
    /// Lines at the front already gone (written, rejected or evicted).
    gone: usize,
}

impl<T: AsRef<[u8]>> LineChunk<T> {
    fn len(&self) -> usize {
        self.ends.len() - self.gone
    }

    /// Its next `n` lines (1 ≤ n ≤ len), joined by `\n`.
    fn lines(&self, n: usize) -> &[u8] {
        let start = match self.gone {
            0 => 0,
            gone => self.ends[gone - 1] + 1,
        };
        &self.text.as_ref()[start..self.ends[self.gone + n - 1]]
    }
}

impl LineBuffer {
    /// `capacity` is at least 1 (a zero capacity is treated as 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            sealed: VecDeque::new(),
            open: LineChunk::default(),
            spare: None,
            len: 0,
            capacity: capacity.max(1),
            batch_lines: 0,
            batch_evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Lines of the batch being written still in the buffer.
    pub fn batch_len(&self) -> usize {
        self.batch_lines
    }

    /// The line of a batch of one line.
    pub fn single_batch_line(&self) -> Option<String> {
        if self.batch_lines != 1 {
            return None;
        }
        let line = match self.sealed.front() {
            Some(chunk) => chunk.lines(1),
            None => self.open.lines(1),
        };
        Some(String::from_utf8_lossy(line).into_owned())
    }

    pub fn is_batch_in_flight(&self) -> bool {
        self.batch_lines > 0 || self.batch_evicted > 0
    }

    /// Appends a line, evicting the oldest if full. Returns how many lines
    /// are now known to be lost (0 or 1; an evicted line of the batch being
    /// written is reported by [`LineBuffer::finish_batch`] instead).
    pub fn push(&mut self, line: &str) -> usize {
        let written: Result<_, std::convert::Infallible> = self.push_with(|out| {
            out.push_str(line);
            Ok(true)
        });
        written.ok().flatten().unwrap_or(0)
    }

    /// Appends the line `encode` writes into the buffer's text (without a
    /// line break; `Ok(false)`: no line). Returns `Ok(None)` without a line,
    /// else how many lines are now known to be lost, as [`LineBuffer::push`].
    /// On `Ok(false)` or an error nothing is added.
    pub fn push_with<E>(
        &mut self,
        encode: impl FnOnce(&mut String) -> Result<bool, E>,
    ) -> Result<Option<usize>, E> {
        if self.open.text.len() >= CHUNK_BYTES {
            self.seal_open();
        }
        let text = &mut self.open.text;
        let start = text.len();
        match encode(text) {
            Ok(true) => {}
            other => {
                text.truncate(start);
                return other.map(|_| None);
            }
        }
        self.open.ends.push(text.len());
        text.push('\n');
        self.len += 1;
        let mut dropped = 0;
        if self.len > self.capacity {
            self.remove_front(1);
            if self.batch_lines > 0 {
                self.batch_lines -= 1;
                self.batch_evicted += 1;
            } else {
                dropped = 1;
            }
        }
        Ok(Some(dropped))
    }

    /// Moves the open chunk's lines to the sealed ones, where they can be
    /// shared with a write.
    fn seal_open(&mut self) {
        if self.open.len() == 0 {
            return;
        }
        let spare = self.spare.take();
        let fresh = spare.and_then(|spare| emptied_for_reuse(spare, &self.open));
        let open = std::mem::replace(&mut self.open, fresh.unwrap_or_default());
        self.sealed.push_back(LineChunk {
            text: Bytes::from(open.text.into_bytes()),
            ends: open.ends,
            gone: open.gone,
        });
    }

    /// Keeps a chunk whose lines are all gone as the spare, if there is
    /// none.
    fn keep_spare(&mut self, chunk: LineChunk<Bytes>) {
        if self.spare.is_none() {
            self.spare = Some(chunk);
        }
    }

    /// Drops the `n` oldest lines (n ≤ len), and the chunks they emptied.
    fn remove_front(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(chunk) = self.sealed.front_mut() else {
                break;
            };
            let here = n.min(chunk.len());
            chunk.gone += here;
            n -= here;
            if chunk.len() == 0 {
                if let Some(emptied) = self.sealed.pop_front() {
                    self.keep_spare(emptied);
                }
            }
        }
        self.open.gone += n;
        if self.open.len() == 0 {
            // Empty again: its allocations are reused.
            self.open.text.clear();
            self.open.ends.clear();
            self.open.gone = 0;
        }
    }

    /// Marks up to `max_lines` head lines as the batch being written and
    /// returns their body (lines joined by `\n`), or `None` if the buffer is
    /// empty or a batch is already being written.
    ///
    /// A batch ends where its chunk ends: it is always a slice of one chunk,
    /// never a copy (a shorter batch, and the next one starts the next
    /// chunk). So a retry sends the same bytes, and under load, where
    /// batches used to straddle chunks, no body is copied and no fresh
    /// memory faulted in for it (BENCHMARKS.md §28).
    pub fn start_batch(&mut self, max_lines: usize) -> Option<BatchBody> {
        if self.is_batch_in_flight() || self.len == 0 {
            return None;
        }
        // Emptied chunks are removed as their last line goes; should one be
        // left, it must not hold up the lines behind it.
        while self.sealed.front().is_some_and(|c| c.len() == 0) {
            self.sealed.pop_front();
        }
        if self.sealed.is_empty() {
            self.seal_open();
        }
        let front = self.sealed.front()?;
        let lines = front.len().min(max_lines.max(1));
        self.batch_lines = lines;
        Some(BatchBody::from_line_bytes(
            front.text.slice_ref(front.lines(lines)),
        ))
    }

    /// Ends the batch being written (a no-op without one).
    pub fn finish_batch(&mut self, outcome: BatchOutcome) -> BatchSettled {
        let in_batch = self.batch_lines;
        let evicted = self.batch_evicted;
        self.batch_lines = 0;
        self.batch_evicted = 0;
        match outcome {
            BatchOutcome::Delivered | BatchOutcome::Rejected => {
                self.remove_front(in_batch);
                BatchSettled {
                    settled: in_batch + evicted,
                    dropped_overflow: 0,
                }
            }
            // The next batch is taken afresh from the head, which still
            // starts with these lines.
            BatchOutcome::Failed => BatchSettled {
                settled: 0,
                dropped_overflow: evicted,
            },
        }
    }

    /// Takes every line out (for reporting what could not be delivered).
    pub fn clear(&mut self) -> usize {
        let n = self.len;
        self.sealed.clear();
        self.open = LineChunk::default();
        self.spare = None;
        self.len = 0;
        self.batch_lines = 0;
        self.batch_evicted = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(body: Option<BatchBody>) -> Option<String> {
        body.map(|b| b.to_text())
    }

    fn filled(capacity: usize, lines: &[&str]) -> LineBuffer {
        let mut buffer = LineBuffer::new(capacity);
        for line in lines {
            assert_eq!(buffer.push(line), 0);
        }
        buffer
    }

    #[test]
    fn batches_take_head_lines_in_order() {
        let mut buffer = filled(10, &["a", "b", "c"]);
        assert_eq!(text(buffer.start_batch(2)).as_deref(), Some("a\nb"));
        assert_eq!(buffer.start_batch(2), None, "one batch at a time");
        assert_eq!(
            buffer.finish_batch(BatchOutcome::Delivered),
            BatchSettled {
                settled: 2,
                dropped_overflow: 0
            }
        );
        assert_eq!(buffer.len(), 1);
        assert_eq!(text(buffer.start_batch(2)).as_deref(), Some("c"));
        buffer.finish_batch(BatchOutcome::Rejected);
        assert!(buffer.is_empty());
        assert_eq!(buffer.start_batch(2), None);
    }

    #[test]
    fn failed_batch_stays_at_the_head_and_new_lines_queue_behind() {
        let mut buffer = filled(10, &["a", "b"]);
        assert_eq!(text(buffer.start_batch(5)).as_deref(), Some("a\nb"));
        assert_eq!(buffer.push("c"), 0);
        assert_eq!(
            buffer.finish_batch(BatchOutcome::Failed),
            BatchSettled::default()
        );
        assert_eq!(buffer.len(), 3);
        // The retry is the same batch; the new line follows in the next.
        assert_eq!(text(buffer.start_batch(5)).as_deref(), Some("a\nb"));
        buffer.finish_batch(BatchOutcome::Delivered);
        assert_eq!(text(buffer.start_batch(5)).as_deref(), Some("c"));
    }

    #[test]
    fn full_buffer_drops_oldest() {
        let mut buffer = filled(3, &["a", "b", "c"]);
        assert_eq!(buffer.push("d"), 1);
        assert_eq!(buffer.push("e"), 1);
        assert_eq!(buffer.len(), 3);
        assert_eq!(text(buffer.start_batch(10)).as_deref(), Some("c\nd\ne"));
    }

    #[test]
    fn evicting_a_line_being_written_counts_it_once_the_outcome_is_known() {
        // Delivered: the evicted line reached the server after all.
        let mut buffer = filled(3, &["a", "b", "c"]);
        assert_eq!(text(buffer.start_batch(2)).as_deref(), Some("a\nb"));
        assert_eq!(buffer.push("d"), 0);
        assert_eq!(
            buffer.finish_batch(BatchOutcome::Delivered),
            BatchSettled {
                settled: 2,
                dropped_overflow: 0
            }
        );
        assert_eq!(text(buffer.start_batch(10)).as_deref(), Some("c"));
        buffer.finish_batch(BatchOutcome::Delivered);
        assert_eq!(text(buffer.start_batch(10)).as_deref(), Some("d"));

        // Failed: the evicted line is lost; the rest of the batch stays.
        let mut buffer = filled(3, &["a", "b", "c"]);
        buffer.start_batch(2);
        assert_eq!(buffer.push("d"), 0);
        assert_eq!(
            buffer.finish_batch(BatchOutcome::Failed),
            BatchSettled {
                settled: 0,
                dropped_overflow: 1
            }
        );
        assert_eq!(text(buffer.start_batch(10)).as_deref(), Some("b\nc"));
        buffer.finish_batch(BatchOutcome::Delivered);
        assert_eq!(text(buffer.start_batch(10)).as_deref(), Some("d"));
    }

    #[test]
    fn whole_batch_evicted_while_being_written() {
        let mut buffer = filled(2, &["a", "b"]);
        buffer.start_batch(2);
        assert_eq!(buffer.push("c"), 0);
        assert_eq!(buffer.push("d"), 0);
        assert_eq!(buffer.push("e"), 1, "beyond the batch: dropped at once");
        assert!(buffer.is_batch_in_flight());
        assert_eq!(buffer.start_batch(2), None);
        assert_eq!(
            buffer.finish_batch(BatchOutcome::Rejected),
            BatchSettled {
                settled: 2,
                dropped_overflow: 0
            }
        );
        assert_eq!(text(buffer.start_batch(10)).as_deref(), Some("d\ne"));
    }

    #[test]
    fn clear_reports_what_was_left() {
        let mut buffer = filled(5, &["a", "b"]);
        buffer.start_batch(1);
        assert_eq!(buffer.clear(), 2);
        assert!(!buffer.is_batch_in_flight());
    }

    #[test]
    fn a_batch_is_a_slice_of_the_buffer_and_a_retry_sends_the_same_bytes() {
        let mut buffer = filled(10, &["a 1", "b 2", "c 3"]);
        let first = buffer.start_batch(2).unwrap();
        buffer.finish_batch(BatchOutcome::Failed);
        let retry = buffer.start_batch(2).unwrap();
        assert_eq!(retry.to_text(), "a 1\nb 2");
        assert_eq!(
            first.as_bytes().as_ptr(),
            retry.as_bytes().as_ptr(),
            "shared with the buffer, not copied"
        );
        buffer.finish_batch(BatchOutcome::Delivered);
        assert_eq!(text(buffer.start_batch(5)).as_deref(), Some("c 3"));
    }

    #[test]
    fn lines_not_encoded_leave_nothing_behind() {
        let mut buffer = LineBuffer::new(10);
        assert_eq!(buffer.push("a 1"), 0);
        let none: Result<_, ()> = buffer.push_with(|out| {
            out.push_str("half a line");
            Ok(false)
        });
        assert_eq!(none, Ok(None));
        let failed = buffer.push_with(|out| {
            out.push_str("half a line");
            Err("unencodable")
        });
        assert_eq!(failed, Err("unencodable"));
        assert_eq!(buffer.push("b 2"), 0);
        assert_eq!(buffer.len(), 2);
        assert_eq!(text(buffer.start_batch(5)).as_deref(), Some("a 1\nb 2"));
    }

    #[test]
    fn a_single_line_batch_names_its_line() {
        let mut buffer = filled(10, &["a 1", "b 2"]);
        buffer.start_batch(2);
        assert_eq!(buffer.single_batch_line(), None);
        buffer.finish_batch(BatchOutcome::Delivered);
        assert_eq!(buffer.push("c 3"), 0);
        buffer.start_batch(1);
        assert_eq!(buffer.single_batch_line().as_deref(), Some("c 3"));
    }

    #[test]
    fn lines_past_a_chunk_and_batches_across_chunks() {
        // Lines of 1 MiB: a chunk closes after CHUNK_BYTES of them.
        let per_chunk = CHUNK_BYTES / (1 << 20);
        let lines: Vec<String> = (0..per_chunk * 2 + 3)
            .map(|i| format!("{i:03}{}", "x".repeat((1 << 20) - 4)))
            .collect();
        let mut buffer = LineBuffer::new(lines.len() - 2);
        let mut dropped = 0;
        for line in &lines {
            dropped += buffer.push(line);
        }
        assert_eq!(dropped, 2, "the two oldest made room");
        assert!(buffer.sealed.len() >= 2, "{} chunks", buffer.sealed.len());
        // The first chunk lost two lines to the capacity: a batch asking
        // for a whole chunk's worth ends where that chunk ends, and every
        // line comes once, in order.
        let body = buffer.start_batch(per_chunk).unwrap();
        assert_eq!(body.to_text(), lines[2..per_chunk].join("\n"));
        buffer.finish_batch(BatchOutcome::Delivered);
        let mut delivered = vec![body.to_text()];
        while let Some(body) = buffer.start_batch(lines.len()) {
            delivered.push(body.to_text());
            buffer.finish_batch(BatchOutcome::Delivered);
        }
        assert_eq!(delivered.join("\n"), lines[2..].join("\n"));
        assert!(delivered.len() >= 3, "one batch a chunk");
        assert!(buffer.is_empty());
        assert!(buffer.sealed.is_empty(), "emptied chunks are freed");
    }

    #[test]
    fn a_delivered_chunk_takes_the_next_lines_in_its_own_memory() {
        let mut buffer = filled(10, &["a 1", "b 2"]);
        let body = buffer.start_batch(10).unwrap();
        let first = body.as_bytes().as_ptr();
        buffer.push("c 3");
        buffer.finish_batch(BatchOutcome::Delivered);
        // The write lets go of its body only after the answer.
        drop(body);
        let body = buffer.start_batch(10).unwrap();
        assert_eq!(body.to_text(), "c 3");
        let second = body.as_bytes().as_ptr();
        drop(body);
        buffer.finish_batch(BatchOutcome::Delivered);
        // The third batch's lines are written where the first batch's were.
        buffer.push("d 4");
        let body = buffer.start_batch(10).unwrap();
        assert_eq!(body.to_text(), "d 4");
        assert_eq!(body.as_bytes().as_ptr(), first);
        assert_ne!(second, first);
    }

    #[test]
    fn a_chunk_that_held_a_backlog_is_cut_once_the_load_is_down() {
        let line = "x".repeat(1 << 10);
        let mut buffer = LineBuffer::new(usize::MAX);
        // A backlog of 4 MiB, delivered.
        for _ in 0..4 << 10 {
            buffer.push(&line);
        }
        drop(buffer.start_batch(usize::MAX));
        buffer.finish_batch(BatchOutcome::Delivered);
        assert!(buffer.is_empty());
        // As large again: its memory is kept.
        for _ in 0..4 << 10 {
            buffer.push(&line);
        }
        drop(buffer.start_batch(usize::MAX));
        assert!(buffer.open.text.capacity() >= 4 << 20);
        buffer.finish_batch(BatchOutcome::Delivered);
        // A few lines now: the backlog's chunk is cut to a little.
        for _ in 0..3 {
            buffer.push(&line);
        }
        drop(buffer.start_batch(usize::MAX));
        let capacity = buffer.open.text.capacity();
        assert!(capacity <= 2 * MIN_SPARE_BYTES, "{capacity}");
        assert!(buffer.open.ends.capacity() <= 4 * (MIN_SPARE_BYTES / 64));
    }

    #[test]
    fn a_chunk_still_shared_with_a_write_is_not_reused() {
        let mut buffer = filled(10, &["a 1", "b 2"]);
        let held = buffer.start_batch(10).unwrap();
        buffer.finish_batch(BatchOutcome::Delivered);
        buffer.push("c 3");
        let body = buffer.start_batch(10).unwrap();
        assert_eq!(body.to_text(), "c 3");
        assert_ne!(body.as_bytes().as_ptr(), held.as_bytes().as_ptr());
        // The held body still reads its own lines.
        assert_eq!(held.to_text(), "a 1\nb 2");
    }
}
