//! The gateway's numbers, in one shape.
//!
//! Every component keeps its counters as handles of this crate ([`Counter`],
//! [`Gauge`], [`Histogram`]: one relaxed atomic operation to update, cheap to
//! clone) and registers them, with their `machine`, `model` or `version`
//! labels, in the gateway's [`MetricsRegistry`]. Readers take a
//! [`MetricsRegistry::snapshot`]: the Prometheus endpoint encodes it, the
//! periodic log line prints it ([`log_lines`]), so both always show the same
//! values. The components keep typed getters (`SourceStats::scans()`, ...)
//! over the same handles for the code and tests that need one number.
//!
//! Why not the `metrics` crate: its handles cannot be read back (the log
//! would need a second store), and its recorder is process-global or
//! thread-local, while a process may run several gateways (the tests do)
//! whose numbers must stay apart.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Label names and values of one series, e.g. `[("machine", "press-1")]`.
pub type Labels = Vec<(&'static str, String)>;

/// A monotonically increasing count.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one and returns the new total (for "warn at powers of two").
    pub fn inc_get(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
    /// Adds `n` and returns the new total.
    pub fn add_get(&self, n: u64) -> u64 {
        self.0.fetch_add(n, Ordering::Relaxed) + n
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (stored as the bits of an f64).
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
    pub fn set_u64(&self, value: u64) {
        self.set(value as f64);
    }
    /// 1 for true, 0 for false (`*_up` gauges).
    pub fn set_bool(&self, value: bool) {
        self.set(if value { 1.0 } else { 0.0 });
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    /// The value as a count (gauges of lines or bytes).
    pub fn get_u64(&self) -> u64 {
        self.get() as u64
    }
    pub fn get_bool(&self) -> bool {
        self.get() > 0.5
    }
}

/// Observations counted into fixed buckets: one relaxed atomic add per
/// observation (and one for the sum), no lock, for the hot path.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<BucketCounts>);

#[derive(Debug)]
struct BucketCounts {
    /// Upper bounds, ascending.
    bounds: &'static [f64],
    /// One per bound, plus the overflow (+Inf) bucket.
    counts: Vec<AtomicU64>,
    /// Sum of the observations in nanounits (ns, or rows x 1e9), so that it
    /// fits an integer atomic.
    sum_nano: AtomicU64,
}

impl Histogram {
    /// `bounds` must be ascending; values above the last go to +Inf.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self(Arc::new(BucketCounts {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nano: AtomicU64::new(0),
        }))
    }

    pub fn observe(&self, value: f64) {
        let h = &*self.0;
        let i = h.bounds.partition_point(|&b| b < value);
        if let Some(count) = h.counts.get(i) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        h.sum_nano
            .fetch_add((value * 1e9) as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let h = &*self.0;
        let counts: Vec<u64> = h.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        HistogramSnapshot {
            buckets: h
                .bounds
                .iter()
                .copied()
                .chain(std::iter::once(f64::INFINITY))
                .zip(counts.iter().copied())
                .collect(),
            count: counts.iter().sum(),
            sum: h.sum_nano.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A histogram at one moment: `(upper bound, observations in this bucket)`
/// (not cumulative; the last bound is +Inf), their count and sum.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Series whose values are computed when read (uptime, states whose labels
/// change): called at every snapshot, outside the registry's lock.
pub type ComputedSeries = Arc<dyn Fn() -> Vec<(Labels, f64)> + Send + Sync>;

#[derive(Clone)]
enum Handle {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricKind,
    series: Vec<(Labels, Handle)>,
    computed: Vec<ComputedSeries>,
}

/// The registry of one gateway. Clones share it.
///
/// Registration happens while the gateway is built or a model version is
/// loaded, never on the data path. Series are kept until the registry is
/// dropped: a model version that stopped serving keeps its final counts.
#[derive(Clone, Default)]
pub struct MetricsRegistry {
    families: Arc<Mutex<Vec<Family>>>,
    /// Labels on every series (the gateway's `[gateway] name`), added when
    /// read.
    constant: Arc<Labels>,
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let families = self.lock();
        f.debug_list()
            .entries(families.iter().map(|family| family.name))
            .finish()
    }
}

impl MetricsRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry whose every series also carries `labels` (after its own),
    /// as a fleet's gateway labels everything it exports with its name.
    pub fn with_constant_labels(labels: Labels) -> Self {
        Self {
            constant: Arc::new(labels),
            ..Self::default()
        }
    }

    /// Registers `counter` as the series `labels` of the family `name`
    /// (without the `_total` suffix the exporter adds). A series registered
    /// again under the same labels replaces the earlier one (a model
    /// version loaded again starts from zero: a counter reset, which
    /// Prometheus' `rate()` handles).
    pub fn add_counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
        counter: &Counter,
    ) {
        self.add(
            name,
            help,
            MetricKind::Counter,
            labels,
            Handle::Counter(counter.clone()),
        );
    }

    pub fn add_gauge(&self, name: &'static str, help: &'static str, labels: Labels, gauge: &Gauge) {
        self.add(
            name,
            help,
            MetricKind::Gauge,
            labels,
            Handle::Gauge(gauge.clone()),
        );
    }

    pub fn add_histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
        histogram: &Histogram,
    ) {
        self.add(
            name,
            help,
            MetricKind::Histogram,
            labels,
            Handle::Histogram(histogram.clone()),
        );
    }

    /// A new counter, registered.
    pub fn counter(&self, name: &'static str, help: &'static str, labels: Labels) -> Counter {
        let counter = Counter::default();
        self.add_counter(name, help, labels, &counter);
        counter
    }

    /// A new gauge, registered.
    pub fn gauge(&self, name: &'static str, help: &'static str, labels: Labels) -> Gauge {
        let gauge = Gauge::default();
        self.add_gauge(name, help, labels, &gauge);
        gauge
    }

    /// Gauge series computed at each read.
    pub fn add_computed_gauge(
        &self,
        name: &'static str,
        help: &'static str,
        series: impl Fn() -> Vec<(Labels, f64)> + Send + Sync + 'static,
    ) {
        let mut families = self.lock();
        let family = family_mut(&mut families, name, help, MetricKind::Gauge);
        if let Some(family) = family {
            family.computed.push(Arc::new(series));
        }
    }

    fn add(
        &self,
        name: &'static str,
        help: &'static str,
        kind: MetricKind,
        labels: Labels,
        handle: Handle,
    ) {
        let mut families = self.lock();
        let Some(family) = family_mut(&mut families, name, help, kind) else {
            return;
        };
        match family.series.iter_mut().find(|(l, _)| *l == labels) {
            Some(existing) => existing.1 = handle,
            None => family.series.push((labels, handle)),
        }
    }

    /// Every family with the value of each series now, in registration
    /// order.
    pub fn snapshot(&self) -> Vec<FamilySnapshot> {
        // Handles and functions are cloned out, so computed series run (and
        // may take other locks) without the registry's lock held.
        let families: Vec<_> = self
            .lock()
            .iter()
            .map(|f| (f.name, f.help, f.kind, f.series.clone(), f.computed.clone()))
            .collect();
        families
            .into_iter()
            .map(|(name, help, kind, series, computed)| {
                let mut out: Vec<SeriesSnapshot> = series
                    .into_iter()
                    .map(|(labels, handle)| SeriesSnapshot {
                        labels,
                        value: match handle {
                            Handle::Counter(c) => Value::Counter(c.get()),
                            Handle::Gauge(g) => Value::Gauge(g.get()),
                            Handle::Histogram(h) => Value::Histogram(h.snapshot()),
                        },
                    })
                    .collect();
                for f in computed {
                    out.extend(f().into_iter().map(|(labels, v)| SeriesSnapshot {
                        labels,
                        value: Value::Gauge(v),
                    }));
                }
                if !self.constant.is_empty() {
                    for series in &mut out {
                        series.labels.extend(self.constant.iter().cloned());
                    }
                }
                FamilySnapshot {
                    name,
                    help,
                    kind,
                    series: out,
                }
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Family>> {
        // Every update is a single push or assignment: data behind a
        // poisoned lock is consistent.
        self.families.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The family `name`, created if new; `None` (and the registration
/// ignored) if it exists with another kind: a programming error, which the
/// gateway's scrape test would show as a missing series.
fn family_mut<'a>(
    families: &'a mut Vec<Family>,
    name: &'static str,
    help: &'static str,
    kind: MetricKind,
) -> Option<&'a mut Family> {
    let index = match families.iter().position(|f| f.name == name) {
        Some(i) => i,
        None => {
            families.push(Family {
                name,
                help,
                kind,
                series: Vec::new(),
                computed: Vec::new(),
            });
            families.len() - 1
        }
    };
    let family = &mut families[index];
    (family.kind == kind).then_some(family)
}

/// One family as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilySnapshot {
    /// Without the `_total` suffix of counters ([`FamilySnapshot::exposed_name`]).
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricKind,
    pub series: Vec<SeriesSnapshot>,
}

impl FamilySnapshot {
    /// The name Prometheus shows: counters end in `_total`.
    pub fn exposed_name(&self) -> String {
        match self.kind {
            MetricKind::Counter => format!("{}_total", self.name),
            _ => self.name.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSnapshot {
    pub labels: Labels,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(HistogramSnapshot),
}

/// The snapshot as log lines: one per label set (the gateway's own
/// numbers, then one line per machine, per model version...), each
/// `name=value` with the names Prometheus shows, so a value in the log can
/// be found on `/metrics` under the same name. Histograms give their
/// `_count` and `_sum`.
pub fn log_lines(snapshot: &[FamilySnapshot]) -> Vec<(String, String)> {
    let mut groups: Vec<(Labels, String)> = Vec::new();
    for family in snapshot {
        let name = family.exposed_name();
        for series in &family.series {
            // A label that is the family's own dimension (a reason, a
            // state) goes into the name; the rest groups the line.
            let (own, group): (Labels, Labels) = series
                .labels
                .iter()
                .cloned()
                .partition(|(k, _)| matches!(*k, "reason" | "state" | "commit"));
            let index = match groups.iter().position(|(l, _)| *l == group) {
                Some(i) => i,
                None => {
                    groups.push((group, String::new()));
                    groups.len() - 1
                }
            };
            let line = &mut groups[index].1;
            let suffix: String = own.iter().map(|(k, v)| format!("{{{k}={v}}}")).collect();
            if !line.is_empty() {
                line.push(' ');
            }
            let _ = match &series.value {
                Value::Counter(n) => write!(line, "{name}{suffix}={n}"),
                Value::Gauge(v) => write!(line, "{name}{suffix}={v}"),
                Value::Histogram(h) => write!(
                    line,
                    "{name}_count{suffix}={} {name}_sum{suffix}={}",
                    h.count, h.sum
                ),
            };
        }
    }
    groups
        .into_iter()
        .map(|(labels, line)| {
            let labels = labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            (labels, line)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 3] = [1.0, 2.0, 4.0];

    #[test]
    fn histogram_buckets_count_and_sum() {
        let h = Histogram::new(&BOUNDS);
        for v in [0.5, 1.0, 1.5, 3.0, 100.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(
            s.buckets,
            vec![(1.0, 2), (2.0, 1), (4.0, 1), (f64::INFINITY, 1)]
        );
        assert_eq!(s.count, 5);
        assert!((s.sum - 106.0).abs() < 1e-6);
    }

    #[test]
    fn registered_handles_are_read_live_and_replaced_by_labels() {
        let registry = MetricsRegistry::new();
        let scans = Counter::default();
        let machine = |m: &str| vec![("machine", m.to_string())];
        registry.add_counter("scans", "Scans.", machine("a"), &scans);
        let b = registry.counter("scans", "Scans.", machine("b"));
        let up = registry.gauge("up", "Up.", machine("a"));
        scans.add(3);
        b.inc();
        up.set_bool(true);
        let snap = registry.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap[0].exposed_name(), "scans_total");
        assert_eq!(
            snap[0].series,
            vec![
                SeriesSnapshot {
                    labels: machine("a"),
                    value: Value::Counter(3)
                },
                SeriesSnapshot {
                    labels: machine("b"),
                    value: Value::Counter(1)
                },
            ]
        );
        // The same labels again: the new handle replaces the old one.
        let again = registry.counter("scans", "Scans.", machine("a"));
        again.add(7);
        let snap = registry.snapshot();
        assert_eq!(snap[0].series.len(), 2);
        assert_eq!(snap[0].series[0].value, Value::Counter(7));
        assert_eq!(snap[1].series[0].value, Value::Gauge(1.0));
    }

    #[test]
    fn constant_labels_end_every_series_counted_or_computed() {
        let registry = MetricsRegistry::with_constant_labels(vec![("gateway", "line-3".into())]);
        let clone = registry.clone();
        clone.counter("scans", "Scans.", vec![("machine", "a".into())]);
        registry.add_computed_gauge("uptime", "Uptime.", || vec![(Vec::new(), 1.0)]);
        let labels: Vec<Labels> = registry
            .snapshot()
            .into_iter()
            .map(|f| f.series[0].labels.clone())
            .collect();
        assert_eq!(
            labels,
            vec![
                vec![
                    ("machine", "a".to_string()),
                    ("gateway", "line-3".to_string())
                ],
                vec![("gateway", "line-3".to_string())],
            ]
        );
    }

    #[test]
    fn computed_series_are_called_at_each_snapshot() {
        let registry = MetricsRegistry::new();
        let source = Gauge::default();
        let read = source.clone();
        registry.add_computed_gauge("state", "State.", move || {
            vec![(vec![("state", "Serving".to_string())], read.get())]
        });
        source.set(2.0);
        assert_eq!(registry.snapshot()[0].series[0].value, Value::Gauge(2.0));
        source.set(5.0);
        assert_eq!(registry.snapshot()[0].series[0].value, Value::Gauge(5.0));
    }

    #[test]
    fn log_lines_group_by_labels_with_exposed_names() {
        let registry = MetricsRegistry::new();
        let machine = |m: &str| vec![("machine", m.to_string())];
        registry.counter("scans", "S.", machine("a")).add(4);
        registry.counter("scans", "S.", machine("b")).add(5);
        registry
            .counter("dropped", "D.", vec![("reason", "overflow".into())])
            .add(2);
        registry.gauge("up", "U.", machine("a")).set_bool(true);
        let h = Histogram::new(&BOUNDS);
        h.observe(1.5);
        registry.add_histogram("latency", "L.", Vec::new(), &h);
        let lines = log_lines(&registry.snapshot());
        assert_eq!(
            lines,
            vec![
                ("machine=a".to_string(), "scans_total=4 up=1".to_string()),
                ("machine=b".to_string(), "scans_total=5".to_string()),
                (
                    String::new(),
                    "dropped_total{reason=overflow}=2 latency_count=1 latency_sum=1.5".to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_name_registered_as_another_kind_is_ignored() {
        let registry = MetricsRegistry::new();
        registry.counter("x", "X.", Vec::new()).inc();
        registry.gauge("x", "X.", Vec::new()).set(9.0);
        let snap = registry.snapshot();
        assert_eq!(snap[0].series.len(), 1);
        assert_eq!(snap[0].series[0].value, Value::Counter(1));
    }
}
