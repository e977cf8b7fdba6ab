//! Configuration problems found before anything opens a socket.

use std::fmt;

/// One thing wrong with a configuration, at a key path such as
/// `machines[0].tags[2].address`. The gateway maps the path to a line in the
/// file it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path; array elements as `[index]`.
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Names end up in InfluxDB keys and OPC UA node ids, so keep them plain.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_string());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Some(format!(
            "`{name}` contains `{bad}`; use only A-Z, a-z, 0-9, `_`, `.` and `-`"
        ));
    }
    None
}
