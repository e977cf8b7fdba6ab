//! `[runtime]`: how many threads run the gateway's async work (polls,
//! fan-out, the sink, the OPC UA server). Models run on their own inference
//! threads besides, and rows run inline on these.

use ironbridge_connectors::Problem;
use serde::Deserialize;

/// More async worker threads than this is a typo, not a plan: the gateway's
/// work is I/O-bound and a box has a few cores.
pub const MAX_WORKER_THREADS: usize = 256;

/// Async worker threads when the key is absent. One wakes fewer threads per
/// poll: 0.5-0.9x the CPU per value of one per core on issue 10's workload,
/// every scan taken at 100 ms polls up to 1,000 machines and with five
/// SignAndEncrypt subscribers to every value (BENCHMARKS.md §18, §20).
/// Polls every few milliseconds lose a few per cent of their ticks on one
/// (`ironbridge_source_polls_skipped_total` shows it); such a box sets more.
pub const DEFAULT_WORKER_THREADS: usize = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Async worker threads. Absent: [`DEFAULT_WORKER_THREADS`], or what
    /// tokio's own `TOKIO_WORKER_THREADS` says when it is set. One worker
    /// wakes fewer threads per poll and costs less CPU per value, but caps
    /// the async work at one core (BENCHMARKS.md §18, §20).
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

impl RuntimeConfig {
    /// The worker threads to ask tokio for: the key's, else
    /// [`DEFAULT_WORKER_THREADS`]; `None` (key absent, `TOKIO_WORKER_THREADS`
    /// set, passed here as `tokio_env`) leaves it to tokio, which reads that.
    pub fn worker_threads_for(&self, tokio_env: Option<&str>) -> Option<usize> {
        match (self.worker_threads, tokio_env) {
            (Some(n), _) => Some(n),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_WORKER_THREADS),
        }
    }

    pub fn validate(&self, path: &str) -> Vec<Problem> {
        match self.worker_threads {
            Some(n) if n == 0 || n > MAX_WORKER_THREADS => vec![Problem::new(
                format!("{path}.worker_threads"),
                format!(
                    "must be between 1 and {MAX_WORKER_THREADS} (absent: {DEFAULT_WORKER_THREADS})"
                ),
            )],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_is_one_unless_tokio_is_told_and_zero_or_too_many_are_refused() {
        let config: RuntimeConfig = toml::from_str("").expect("empty table");
        assert_eq!(config.worker_threads, None);
        assert!(config.validate("runtime").is_empty());
        assert_eq!(config.worker_threads_for(None), Some(1));
        assert_eq!(config.worker_threads_for(Some("4")), None);
        let three: RuntimeConfig = toml::from_str("worker_threads = 3").expect("three");
        assert_eq!(three.worker_threads_for(Some("4")), Some(3));
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
