//! What the sink tells its outage buffer about a batch, what the buffer
//! answers, and the body a batch is written as: shared by the memory buffer
//! and the disk spool (a module of its own, so that neither has to import
//! the other for it).

use bytes::Bytes;

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

/// The body of one write: line protocol, lines joined by `\n`. A batch of
/// the memory buffer shares its bytes with the buffer (no body is copied:
/// a batch never spans the buffer's chunks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchBody(Bytes);

impl BatchBody {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// How many lines it carries.
    pub fn line_count(&self) -> usize {
        if self.0.is_empty() {
            return 0;
        }
        1 + self.0.iter().filter(|&&b| b == b'\n').count()
    }

    /// The body as text (for tests and logs; the bytes came from `str`s).
    pub fn to_text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// A body from bytes that are line protocol (crate-internal: the
    /// buffer's chunks, which are built from `str`s).
    pub(super) fn from_line_bytes(bytes: Bytes) -> Self {
        Self(bytes)
    }
}

impl From<String> for BatchBody {
    fn from(body: String) -> Self {
        Self(Bytes::from(body))
    }
}
