//! Drift: how far the values a model sees have moved from its training
//! distribution, as a PSI (population stability index) against the
//! quantile edges the training script wrote into the manifest
//! (docs/model-lifecycle.md, "Drift").
//!
//! With edges `e0 ≤ … ≤ eK` (the minimum, the quantiles, the maximum) the
//! training data has `1/K` of its mass in each of the K bins
//! `(-∞, e1], (e1, e2], …, (eK-1, +∞)`. A discrete input repeats edges (a
//! boolean has mostly 0s and 1s): bins that collapse are merged with their
//! mass, so PSI compares like with like. PSI = Σ (a − e)·ln(a/e) over the
//! bins, each share floored at 1e-4; by the usual rule below 0.1 is stable,
//! 0.1–0.25 a moderate shift, above 0.25 a significant one.

use std::collections::VecDeque;

/// Shares below this are taken as this (an empty bin would be infinite).
const FLOOR: f64 = 1e-4;

/// The reference distribution of one column, from its quantile edges.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceBins {
    /// Upper bounds of every bin but the last (which is open).
    uppers: Vec<f64>,
    /// The training share of each bin (`uppers.len() + 1` of them).
    shares: Vec<f64>,
}

impl ReferenceBins {
    /// From quantile edges (validated by the manifest: at least 3, finite,
    /// nondecreasing). `None` for fewer than 3 edges.
    pub fn from_quantiles(edges: &[f64]) -> Option<Self> {
        if edges.len() < 3 {
            return None;
        }
        let k = edges.len() - 1;
        let interior = &edges[1..k];
        let mut uppers: Vec<f64> = Vec::with_capacity(interior.len());
        for &e in interior {
            if uppers.last() != Some(&e) {
                uppers.push(e);
            }
        }
        let mut shares = vec![0.0; uppers.len() + 1];
        // Original bin j holds 1/k of the training data and ends at
        // edges[j + 1]; the last one at the maximum, which may equal the
        // last interior edge (a point mass), then it merges too.
        for j in 0..k {
            let bin = uppers.partition_point(|&u| u < edges[j + 1]);
            shares[bin] += 1.0 / k as f64;
        }
        Some(Self { uppers, shares })
    }

    fn bin_of(&self, value: f64) -> usize {
        self.uppers.partition_point(|&u| u < value)
    }

    /// PSI of `values` against this reference; `None` without values.
    pub fn psi(&self, values: impl IntoIterator<Item = f64>) -> Option<f64> {
        let mut counts = vec![0usize; self.shares.len()];
        let mut n = 0usize;
        for v in values.into_iter().filter(|v| v.is_finite()) {
            counts[self.bin_of(v)] += 1;
            n += 1;
        }
        if n == 0 {
            return None;
        }
        Some(
            counts
                .iter()
                .zip(&self.shares)
                .map(|(&c, &e)| {
                    let a = (c as f64 / n as f64).max(FLOOR);
                    let e = e.max(FLOOR);
                    (a - e) * (a / e).ln()
                })
                .sum(),
        )
    }
}

/// The latest `capacity` values of one column.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    values: VecDeque<f64>,
    capacity: usize,
}

impl SlidingWindow {
    pub fn new(capacity: usize) -> Self {
        Self {
            values: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
        }
    }

    pub fn push(&mut self, value: f64) {
        if self.values.len() == self.capacity {
            self.values.pop_front();
        }
        self.values.push_back(value);
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.values.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deciles of the uniform distribution on [0, 1].
    fn uniform_edges() -> Vec<f64> {
        (0..=10).map(|i| i as f64 / 10.0).collect()
    }

    fn uniform(n: usize, shift: f64) -> impl Iterator<Item = f64> {
        (0..n).map(move |i| (i as f64 + 0.5) / n as f64 + shift)
    }

    #[test]
    fn the_training_distribution_itself_has_no_drift() {
        let bins = ReferenceBins::from_quantiles(&uniform_edges()).unwrap();
        let psi = bins.psi(uniform(1000, 0.0)).unwrap();
        assert!(psi < 1e-9, "{psi}");
    }

    #[test]
    fn a_shifted_distribution_drifts_and_more_shift_drifts_more() {
        let bins = ReferenceBins::from_quantiles(&uniform_edges()).unwrap();
        let small = bins.psi(uniform(1000, 0.05)).unwrap();
        let large = bins.psi(uniform(1000, 0.5)).unwrap();
        assert!(small > 0.0 && small < 0.1, "{small}");
        assert!(large > 0.25, "{large}");
        assert!(large > small);
    }

    #[test]
    fn a_boolean_input_merges_its_repeated_edges() {
        // Training: 60 % false (0), 40 % true (1).
        let edges = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let bins = ReferenceBins::from_quantiles(&edges).unwrap();
        let shares: Vec<f64> = bins
            .shares
            .iter()
            .map(|s| (s * 10.0).round() / 10.0)
            .collect();
        assert_eq!(shares, [0.6, 0.4, 0.0], "two point masses, nothing above");
        let same = (0..100).map(|i| if i < 60 { 0.0 } else { 1.0 });
        assert!(bins.psi(same).unwrap() < 1e-9);
        let flipped = (0..100).map(|i| if i < 10 { 0.0 } else { 1.0 });
        assert!(bins.psi(flipped).unwrap() > 0.25);
    }

    #[test]
    fn a_window_keeps_the_latest_values() {
        let mut window = SlidingWindow::new(3);
        for v in [1.0, 2.0, 3.0, 4.0] {
            window.push(v);
        }
        assert_eq!(window.values().collect::<Vec<_>>(), [2.0, 3.0, 4.0]);
        assert!(ReferenceBins::from_quantiles(&[1.0, 2.0]).is_none());
        let bins = ReferenceBins::from_quantiles(&uniform_edges()).unwrap();
        assert_eq!(bins.psi(std::iter::empty()), None);
    }
}
