//! Capped exponential backoff with jitter, for everything that retries a
//! peer: Modbus reconnects and InfluxDB writes.

use std::time::Duration;

use rand::Rng;

use serde::Deserialize;

use crate::Problem;

/// Delay between retries: doubles from `initial_ms` up to `max_ms`. Each
/// component has its own default; a table that is given must name both keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl BackoffConfig {
    /// Problems of this table at key path `path` (e.g. `machines[0].backoff`).
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        // A zero initial delay would never grow: retries would busy-loop.
        if self.initial_ms == 0 {
            problems.push(Problem::new(
                format!("{path}.initial_ms"),
                "must be greater than 0",
            ));
        }
        if self.max_ms < self.initial_ms {
            problems.push(Problem::new(
                format!("{path}.max_ms"),
                format!("must be at least initial_ms ({})", self.initial_ms),
            ));
        }
        problems
    }
}

/// Capped exponential backoff with equal jitter: the n-th delay in a row lies
/// in `[c/2, c]` with `c = min(max, initial * 2^n)`. The jitter keeps many
/// gateways that lost the same network from reconnecting in lockstep; the
/// lower half bound keeps the delay from collapsing towards zero.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    failures: u32,
}

impl Backoff {
    pub fn new(config: BackoffConfig) -> Self {
        Self {
            initial_ms: config.initial_ms,
            max_ms: config.max_ms,
            failures: 0,
        }
    }

    /// Starts over after a working link.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last [`reset`](Self::reset).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u64.checked_shl(self.failures).unwrap_or(u64::MAX);
        Duration::from_millis(self.initial_ms.saturating_mul(factor).min(self.max_ms))
    }

    /// Records one more failure and returns how long to wait before the next
    /// attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling_ms = self.ceiling().as_millis() as u64;
        self.failures = self.failures.saturating_add(1);
        let half = ceiling_ms / 2;
        let jitter = rand::rng().random_range(0..=ceiling_ms - half);
        Duration::from_millis(half + jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(initial_ms: u64, max_ms: u64) -> Backoff {
        Backoff::new(BackoffConfig { initial_ms, max_ms })
    }

    #[test]
    fn delays_double_then_stay_at_the_cap() {
        let mut b = backoff(250, 30_000);
        let ceilings: Vec<u64> = (0..12)
            .map(|_| {
                let ceiling = b.ceiling();
                let delay = b.next_delay();
                assert!(
                    delay <= ceiling && delay >= ceiling / 2,
                    "{delay:?} vs {ceiling:?}"
                );
                ceiling.as_millis() as u64
            })
            .collect();
        assert_eq!(
            ceilings,
            [250, 500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(b.failures(), 12);
    }

    #[test]
    fn many_failures_never_overflow() {
        let mut b = backoff(u64::MAX / 3, u64::MAX);
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::from_millis(u64::MAX));
        }
        assert_eq!(b.ceiling(), Duration::from_millis(u64::MAX));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = backoff(100, 1000);
        for _ in 0..5 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_millis(1000));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        assert_eq!(b.failures(), 0);
    }
}
