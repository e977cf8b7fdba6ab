//! The statistical gate between a shadow version and the active one, on
//! live data (docs/model-lifecycle.md, "Shadow and the gate").
//!
//! Each paired observation is one row both versions answered:
//!
//! - `metric = "mae"` (needs a label, the measured truth): the difference of
//!   absolute errors `d = |shadow − label| − |active − label|`. The shadow
//!   passes when it is non-inferior: the upper confidence bound of mean `d`
//!   is below `margin` (it is at most `margin` worse, with the configured
//!   confidence). It fails when the lower bound is above `margin`.
//! - `metric = "disagreement"` (no label): `d = |shadow − active|`; passes
//!   when the upper bound of mean `d` is below `margin`, fails when the lower
//!   bound is above it. The PSI of the shadow's outputs against the active
//!   one's is reported beside it.
//!
//! Bounds are one-sided normal-approximation bounds, `mean ± z·s/√n` with
//! `z = Φ⁻¹(confidence)`. Consecutive rows of a machine are correlated, so
//! these bounds are optimistic; `min_samples` should cover many independent
//! operating states, not a few seconds of one.

use serde::Deserialize;

/// Which comparison the gate makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateMetric {
    /// Paired non-inferiority on the mean absolute error (needs a label).
    Mae,
    /// Bound on the mean |shadow − active| (no label needed).
    Disagreement,
}

impl GateMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            GateMetric::Mae => "mae",
            GateMetric::Disagreement => "disagreement",
        }
    }
}

/// `[models.gate]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Paired observations before any decision.
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    pub metric: GateMetric,
    /// How much worse (mae) or how far apart (disagreement) is acceptable,
    /// in the output's unit.
    pub margin: f64,
    /// One-sided confidence of the bounds, in (0.5, 1).
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    /// Pass activates the shadow; Fail stops it. Both are audited.
    #[serde(default)]
    pub auto_promote: bool,
    /// The output compared (default: the model's first).
    #[serde(default)]
    pub output: Option<String>,
}

fn default_min_samples() -> u64 {
    200
}

fn default_confidence() -> f64 {
    0.95
}

impl GateConfig {
    /// Problems with the values, each as (key, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.min_samples < 2 {
            problems.push(("min_samples", "must be at least 2".to_string()));
        }
        if !(self.margin.is_finite() && self.margin >= 0.0) {
            problems.push(("margin", "must be a finite number >= 0".to_string()));
        }
        if !(self.confidence > 0.5 && self.confidence < 1.0) {
            problems.push((
                "confidence",
                "must be between 0.5 and 1 (exclusive)".to_string(),
            ));
        }
        problems
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateDecision {
    Pending,
    Pass,
    Fail,
}

impl GateDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            GateDecision::Pending => "Pending",
            GateDecision::Pass => "Pass",
            GateDecision::Fail => "Fail",
        }
    }
}

/// The gate's running statistics and decision.
#[derive(Debug, Clone, PartialEq)]
pub struct GateStats {
    pub metric: GateMetric,
    pub samples: u64,
    /// Mean of `d` (see the module docs); NaN before any sample.
    pub mean: f64,
    pub lower: f64,
    pub upper: f64,
    pub margin: f64,
    /// PSI of the shadow's outputs against the active one's (10 bins at
    /// the active outputs' deciles); `None` before 20 pairs.
    pub psi: Option<f64>,
    pub decision: GateDecision,
}

/// Most pairs kept for the PSI; beyond it the oldest make room.
const PSI_WINDOW: usize = 10_000;

/// Accumulates paired observations for one shadow version.
#[derive(Debug, Clone)]
pub struct Gate {
    config: GateConfig,
    z: f64,
    n: u64,
    mean: f64,
    m2: f64,
    /// (active, shadow) outputs, for the PSI.
    pairs: std::collections::VecDeque<(f64, f64)>,
}

impl Gate {
    pub fn new(config: GateConfig) -> Self {
        let z = normal_quantile(config.confidence);
        Self {
            config,
            z,
            n: 0,
            mean: 0.0,
            m2: 0.0,
            pairs: std::collections::VecDeque::new(),
        }
    }

    pub fn config(&self) -> &GateConfig {
        &self.config
    }

    /// One row both versions answered. `label` is the measured truth at the
    /// inputs' time, when there is one; a `mae` gate ignores rows without.
    /// Non-finite values are ignored. Returns whether the row counted.
    pub fn observe(&mut self, active: f64, shadow: f64, label: Option<f64>) -> bool {
        if !(active.is_finite() && shadow.is_finite()) {
            return false;
        }
        let d = match (self.config.metric, label) {
            (GateMetric::Mae, Some(truth)) if truth.is_finite() => {
                (shadow - truth).abs() - (active - truth).abs()
            }
            (GateMetric::Mae, _) => return false,
            (GateMetric::Disagreement, _) => (shadow - active).abs(),
        };
        // Welford: stable running mean and variance.
        self.n += 1;
        let delta = d - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (d - self.mean);
        if self.pairs.len() == PSI_WINDOW {
            self.pairs.pop_front();
        }
        self.pairs.push_back((active, shadow));
        true
    }

    /// Mean of `d` and its one-sided bounds (running moments: cheap).
    fn bounds(&self) -> (f64, f64, f64) {
        let n = self.n;
        if n == 0 {
            (f64::NAN, f64::NAN, f64::NAN)
        } else if n == 1 {
            (self.mean, f64::NEG_INFINITY, f64::INFINITY)
        } else {
            let sd = (self.m2 / (n - 1) as f64).sqrt();
            let half = self.z * sd / (n as f64).sqrt();
            (self.mean, self.mean - half, self.mean + half)
        }
    }

    /// The decision alone: constant time, for every observation (the PSI
    /// in [`Gate::stats`] sorts the whole window).
    pub fn decision(&self) -> GateDecision {
        let (_, lower, upper) = self.bounds();
        if self.n < self.config.min_samples {
            GateDecision::Pending
        } else if upper < self.config.margin {
            GateDecision::Pass
        } else if lower > self.config.margin {
            GateDecision::Fail
        } else {
            GateDecision::Pending
        }
    }

    /// Everything, the PSI included (for publishing and reports).
    pub fn stats(&self) -> GateStats {
        let (mean, lower, upper) = self.bounds();
        GateStats {
            metric: self.config.metric,
            samples: self.n,
            mean,
            lower,
            upper,
            margin: self.config.margin,
            psi: psi(&self.pairs),
            decision: self.decision(),
        }
    }
}

/// PSI of the shadow outputs against the active ones, binned at the active
/// outputs' deciles.
fn psi(pairs: &std::collections::VecDeque<(f64, f64)>) -> Option<f64> {
    const BINS: usize = 10;
    const FLOOR: f64 = 1e-4;
    if pairs.len() < 20 {
        return None;
    }
    let mut active: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    active.sort_by(f64::total_cmp);
    let edges: Vec<f64> = (1..BINS).map(|i| active[i * active.len() / BINS]).collect();
    let bin = |v: f64| edges.partition_point(|&e| e <= v);
    let mut expected = [0usize; BINS];
    let mut actual = [0usize; BINS];
    for &(a, s) in pairs {
        expected[bin(a)] += 1;
        actual[bin(s)] += 1;
    }
    let total = pairs.len() as f64;
    Some(
        expected
            .iter()
            .zip(actual.iter())
            .map(|(&e, &a)| {
                let e = (e as f64 / total).max(FLOOR);
                let a = (a as f64 / total).max(FLOOR);
                (a - e) * (a / e).ln()
            })
            .sum(),
    )
}

/// Φ⁻¹(p) for p in (0, 1): Acklam's rational approximation (relative error
/// below 1.2e-9), enough for confidence bounds.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.02425;
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    if p < LOW {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -normal_quantile(1.0 - p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(metric: GateMetric, margin: f64) -> GateConfig {
        GateConfig {
            min_samples: 50,
            metric,
            margin,
            confidence: 0.95,
            auto_promote: false,
            output: None,
        }
    }

    #[test]
    fn normal_quantiles_match_tables() {
        for (p, z) in [
            (0.5, 0.0),
            (0.95, 1.644_853_6),
            (0.975, 1.959_964),
            (0.99, 2.326_347_9),
        ] {
            assert!(
                (normal_quantile(p) - z).abs() < 1e-6,
                "{p}: {}",
                normal_quantile(p)
            );
        }
        assert!((normal_quantile(0.01) + 2.326_347_9).abs() < 1e-6);
    }

    /// A deterministic spread of errors in [-0.5, 0.5).
    fn noise(i: u64) -> f64 {
        ((i * 7919) % 1000) as f64 / 1000.0 - 0.5
    }

    #[test]
    fn a_shadow_as_good_as_the_active_passes_non_inferiority() {
        let mut gate = Gate::new(config(GateMetric::Mae, 0.05));
        for i in 0..49 {
            gate.observe(1.0 + 0.1 * noise(i), 1.0 + 0.1 * noise(i + 3), Some(1.0));
        }
        assert_eq!(
            gate.stats().decision,
            GateDecision::Pending,
            "below min_samples"
        );
        for i in 49..400 {
            gate.observe(1.0 + 0.1 * noise(i), 1.0 + 0.1 * noise(i + 3), Some(1.0));
        }
        let stats = gate.stats();
        assert_eq!(stats.samples, 400);
        assert!(stats.upper < 0.05, "{stats:?}");
        assert_eq!(stats.decision, GateDecision::Pass);
    }

    #[test]
    fn a_clearly_worse_shadow_fails_and_rows_without_labels_do_not_count() {
        let mut gate = Gate::new(config(GateMetric::Mae, 0.05));
        for i in 0..200 {
            // The shadow is off by 0.3 more than the active version.
            gate.observe(1.0 + 0.01 * noise(i), 1.3 + 0.01 * noise(i), Some(1.0));
            assert!(!gate.observe(1.0, 1.3, None));
        }
        let stats = gate.stats();
        assert_eq!(stats.samples, 200);
        assert!((stats.mean - 0.3).abs() < 0.02, "{stats:?}");
        assert_eq!(stats.decision, GateDecision::Fail);
    }

    #[test]
    fn disagreement_is_bounded_and_psi_sees_a_shifted_distribution() {
        let mut same = Gate::new(config(GateMetric::Disagreement, 0.01));
        let mut shifted = Gate::new(config(GateMetric::Disagreement, 0.01));
        for i in 0..500 {
            let a = noise(i);
            same.observe(a, a, None);
            shifted.observe(a, a + 0.5, None);
        }
        let (same, shifted) = (same.stats(), shifted.stats());
        assert_eq!(same.decision, GateDecision::Pass);
        assert!(same.psi.is_some_and(|p| p < 0.01), "{same:?}");
        assert_eq!(shifted.decision, GateDecision::Fail);
        assert!(shifted.psi.is_some_and(|p| p > 1.0), "{shifted:?}");
    }

    #[test]
    fn undecided_while_the_interval_straddles_the_margin() {
        let feed = |gate: &mut Gate| {
            for i in 0..100 {
                gate.observe(0.0, 0.25 + noise(i), None);
            }
        };
        let mut probe = Gate::new(config(GateMetric::Disagreement, 0.0));
        feed(&mut probe);
        let mean = probe.stats().mean;
        // A margin right at the observed mean lies inside the interval.
        let mut gate = Gate::new(config(GateMetric::Disagreement, mean));
        feed(&mut gate);
        let stats = gate.stats();
        assert!(stats.lower < mean && stats.upper > mean, "{stats:?}");
        assert_eq!(stats.decision, GateDecision::Pending);
    }
}
