//! What the sink tells its outage buffer about a batch, and what the buffer
//! answers: shared by the memory buffer and the disk spool (a module of its
//! own, so that neither has to import the other for it).

/// What became of a batch's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// The server stored them.
    Delivered,
    /// The server refused them for good (malformed, unauthorized...).
    Rejected,
    /// The write failed and may succeed later: the lines stay at the head.
    Failed,
}

/// Counts from `finish_batch` (of either buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchSettled {
    /// Lines that left the buffer with this outcome (delivered or rejected),
    /// including any evicted while the write was under way.
    pub settled: usize,
    /// Lines evicted while the write was under way, now known to be lost.
    pub dropped_overflow: usize,
}
