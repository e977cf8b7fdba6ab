//! The sink's outage buffer: lines waiting for the server, in memory
//! ([`LineBuffer`]) or on disk ([`DiskSpool`]), behind one interface
//! ([`OutageBuffer`]). Plain data, so the policies are testable without a
//! server or a clock.

use std::collections::VecDeque;
use std::io;
use std::time::Instant;

pub use super::batch::{BatchOutcome, BatchSettled};
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
    /// Appends a line; returns how many lines are now known to be lost to
    /// make room (the oldest).
    pub fn push(&mut self, line: String) -> usize {
        match self {
            OutageBuffer::Memory(b) => b.push(line),
            OutageBuffer::Disk(s) => s.push(&line),
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

    pub fn start_batch(&mut self, max_lines: usize) -> io::Result<Option<String>> {
        match self {
            OutageBuffer::Memory(b) => Ok(b.start_batch(max_lines)),
            OutageBuffer::Disk(s) => s.start_batch(max_lines),
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
            OutageBuffer::Memory(b) if b.batch_len() == 1 => b.batch().next().map(str::to_string),
            OutageBuffer::Memory(_) => None,
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

/// Lines waiting to be written, oldest first, at most `capacity` of them.
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
    lines: VecDeque<String>,
    capacity: usize,
    /// Head lines in the batch being written (0: no batch).
    batch_lines: usize,
    /// Lines of the batch being written that were evicted meanwhile.
    batch_evicted: usize,
}

impl LineBuffer {
    /// `capacity` is at least 1 (a zero capacity is treated as 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            capacity: capacity.max(1),
            batch_lines: 0,
            batch_evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Lines of the batch being written still in the buffer.
    pub fn batch_len(&self) -> usize {
        self.batch_lines
    }

    /// The lines of the batch being written still in the buffer.
    pub fn batch(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().take(self.batch_lines).map(String::as_str)
    }

    pub fn is_batch_in_flight(&self) -> bool {
        self.batch_lines > 0 || self.batch_evicted > 0
    }

    /// Appends a line, evicting the oldest if full. Returns how many lines
    /// are now known to be lost (0 or 1; an evicted line of the batch being
    /// written is reported by [`LineBuffer::finish_batch`] instead).
    pub fn push(&mut self, line: String) -> usize {
        let mut dropped = 0;
        if self.lines.len() >= self.capacity && self.lines.pop_front().is_some() {
            if self.batch_lines > 0 {
                self.batch_lines -= 1;
                self.batch_evicted += 1;
            } else {
                dropped = 1;
            }
        }
        self.lines.push_back(line);
        dropped
    }

    /// Marks up to `max_lines` head lines as the batch being written and
    /// returns their body (lines joined by `\n`), or `None` if the buffer is
    /// empty or a batch is already being written.
    pub fn start_batch(&mut self, max_lines: usize) -> Option<String> {
        if self.is_batch_in_flight() || self.lines.is_empty() {
            return None;
        }
        self.batch_lines = self.lines.len().min(max_lines.max(1));
        let mut body = String::with_capacity(
            self.lines
                .iter()
                .take(self.batch_lines)
                .map(|l| l.len() + 1)
                .sum(),
        );
        for (i, line) in self.lines.iter().take(self.batch_lines).enumerate() {
            if i > 0 {
                body.push('\n');
            }
            body.push_str(line);
        }
        Some(body)
    }

    /// Ends the batch being written (a no-op without one).
    pub fn finish_batch(&mut self, outcome: BatchOutcome) -> BatchSettled {
        let in_batch = self.batch_lines;
        let evicted = self.batch_evicted;
        self.batch_lines = 0;
        self.batch_evicted = 0;
        match outcome {
            BatchOutcome::Delivered | BatchOutcome::Rejected => {
                self.lines.drain(..in_batch);
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
        let n = self.lines.len();
        self.lines.clear();
        self.batch_lines = 0;
        self.batch_evicted = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(capacity: usize, lines: &[&str]) -> LineBuffer {
        let mut buffer = LineBuffer::new(capacity);
        for line in lines {
            assert_eq!(buffer.push(line.to_string()), 0);
        }
        buffer
    }

    #[test]
    fn batches_take_head_lines_in_order() {
        let mut buffer = filled(10, &["a", "b", "c"]);
        assert_eq!(buffer.start_batch(2).as_deref(), Some("a\nb"));
        assert_eq!(buffer.start_batch(2), None, "one batch at a time");
        assert_eq!(
            buffer.finish_batch(BatchOutcome::Delivered),
            BatchSettled {
                settled: 2,
                dropped_overflow: 0
            }
        );
        assert_eq!(buffer.len(), 1);
        assert_eq!(buffer.start_batch(2).as_deref(), Some("c"));
        buffer.finish_batch(BatchOutcome::Rejected);
        assert!(buffer.is_empty());
        assert_eq!(buffer.start_batch(2), None);
    }

    #[test]
    fn failed_batch_stays_at_the_head_and_new_lines_queue_behind() {
        let mut buffer = filled(10, &["a", "b"]);
        assert_eq!(buffer.start_batch(5).as_deref(), Some("a\nb"));
        assert_eq!(buffer.push("c".into()), 0);
        assert_eq!(
            buffer.finish_batch(BatchOutcome::Failed),
            BatchSettled::default()
        );
        assert_eq!(buffer.len(), 3);
        assert_eq!(buffer.start_batch(5).as_deref(), Some("a\nb\nc"));
    }

    #[test]
    fn full_buffer_drops_oldest() {
        let mut buffer = filled(3, &["a", "b", "c"]);
        assert_eq!(buffer.push("d".into()), 1);
        assert_eq!(buffer.push("e".into()), 1);
        assert_eq!(buffer.len(), 3);
        assert_eq!(buffer.start_batch(10).as_deref(), Some("c\nd\ne"));
    }

    #[test]
    fn evicting_a_line_being_written_counts_it_once_the_outcome_is_known() {
        // Delivered: the evicted line reached the server after all.
        let mut buffer = filled(3, &["a", "b", "c"]);
        assert_eq!(buffer.start_batch(2).as_deref(), Some("a\nb"));
        assert_eq!(buffer.push("d".into()), 0);
        assert_eq!(
            buffer.finish_batch(BatchOutcome::Delivered),
            BatchSettled {
                settled: 2,
                dropped_overflow: 0
            }
        );
        assert_eq!(buffer.start_batch(10).as_deref(), Some("c\nd"));

        // Failed: the evicted line is lost; the rest of the batch stays.
        let mut buffer = filled(3, &["a", "b", "c"]);
        buffer.start_batch(2);
        assert_eq!(buffer.push("d".into()), 0);
        assert_eq!(
            buffer.finish_batch(BatchOutcome::Failed),
            BatchSettled {
                settled: 0,
                dropped_overflow: 1
            }
        );
        assert_eq!(buffer.start_batch(10).as_deref(), Some("b\nc\nd"));
    }

    #[test]
    fn whole_batch_evicted_while_being_written() {
        let mut buffer = filled(2, &["a", "b"]);
        buffer.start_batch(2);
        assert_eq!(buffer.push("c".into()), 0);
        assert_eq!(buffer.push("d".into()), 0);
        assert_eq!(
            buffer.push("e".into()),
            1,
            "beyond the batch: dropped at once"
        );
        assert!(buffer.is_batch_in_flight());
        assert_eq!(buffer.start_batch(2), None);
        assert_eq!(
            buffer.finish_batch(BatchOutcome::Rejected),
            BatchSettled {
                settled: 2,
                dropped_overflow: 0
            }
        );
        assert_eq!(buffer.start_batch(10).as_deref(), Some("d\ne"));
    }

    #[test]
    fn clear_reports_what_was_left() {
        let mut buffer = filled(5, &["a", "b"]);
        buffer.start_batch(1);
        assert_eq!(buffer.clear(), 2);
        assert!(!buffer.is_batch_in_flight());
    }
}
