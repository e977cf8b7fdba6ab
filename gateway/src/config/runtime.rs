//! `[runtime]`: how many threads run the gateway's async work (polls,
//! fan-out, the sink, the OPC UA server). Models run on their own inference
//! threads besides, and rows run inline on these.

use ironbridge_connectors::Problem;
use serde::Deserialize;

/// More async worker threads than this is a typo, not a plan: the gateway's
/// work is I/O-bound and a box has a few cores.
pub const MAX_WORKER_THREADS: usize = 256;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Async worker threads. Absent: one per core (tokio's default, which
    /// also honours `TOKIO_WORKER_THREADS`). One worker wakes fewer threads
    /// per poll and costs less CPU per value, but caps the async work at one
    /// core (BENCHMARKS.md §18).
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

impl RuntimeConfig {
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        match self.worker_threads {
            Some(n) if n == 0 || n > MAX_WORKER_THREADS => vec![Problem::new(
                format!("{path}.worker_threads"),
                format!("must be between 1 and {MAX_WORKER_THREADS} (absent: one per core)"),
            )],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_is_one_per_core_and_zero_or_too_many_are_refused() {
        let config: RuntimeConfig = toml::from_str("").expect("empty table");
        assert_eq!(config.worker_threads, None);
        assert!(config.validate("runtime").is_empty());
        let one: RuntimeConfig = toml::from_str("worker_threads = 1").expect("one");
        assert_eq!(one.worker_threads, Some(1));
        assert!(one.validate("runtime").is_empty());
        for bad in [0, MAX_WORKER_THREADS + 1] {
            let problems = RuntimeConfig {
                worker_threads: Some(bad),
            }
            .validate("runtime");
            assert_eq!(problems.len(), 1, "{bad}");
            assert_eq!(problems[0].path, "runtime.worker_threads");
        }
        assert!(toml::from_str::<RuntimeConfig>("workers = 1").is_err());
    }
}
