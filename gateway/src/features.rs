//! Feature assembly: the latest value of each tag a machine's models read,
//! kept in a [`MachineState`], turned into one model input row by a
//! [`FeatureMap`].
//!
//! Polled machines deliver every tag in every scan; OPC UA subscriptions
//! deliver only what changed (partial scans). So inputs are read from the
//! last known value of each tag, not from the scan alone: an input that is
//! absent from a notification keeps its last value.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ironbridge_connectors::{Quality, Scan, TagValue};
use ironbridge_models::InputValue;

use crate::scan_layout::ScanLayout;

/// The latest reading of one tag.
#[derive(Debug, Clone, PartialEq)]
struct Latest {
    value: Option<TagValue>,
    quality: Quality,
    acquired_at: SystemTime,
}

/// The latest reading of each tag kept for a machine (the last-value cache
/// before feature assembly). Only the tags its models read are kept (their
/// inputs and label tags): a machine of 1,000 tags feeding an 8-input model
/// keeps 8, not 1,000 (BENCHMARKS.md §28).
#[derive(Debug)]
pub struct MachineState {
    /// tag → its slot in `latest`: the kept tags, fixed at creation.
    slots: HashMap<Arc<str>, usize>,
    /// `None` until the tag's first reading.
    latest: Vec<Option<Latest>>,
    /// The slots of the machine's scans, by tag order (no lookup by name
    /// while the order stays).
    layout: ScanLayout,
}

impl MachineState {
    /// A state that keeps these tags (repeats are kept once) and ignores
    /// every other reading.
    pub fn keeping(tags: impl IntoIterator<Item = Arc<str>>) -> Self {
        let mut slots = HashMap::new();
        for tag in tags {
            let next = slots.len();
            slots.entry(tag).or_insert(next);
        }
        Self {
            latest: vec![None; slots.len()],
            slots,
            layout: ScanLayout::default(),
        }
    }

    /// Takes every reading of `scan` of a kept tag as its latest. A Bad
    /// reading replaces the value too: an old value is never passed off as
    /// current.
    pub fn apply(&mut self, scan: &Scan) {
        let Self {
            slots,
            latest,
            layout,
        } = self;
        let placed = layout.slots(scan, |tag| slots.get(tag).copied());
        for (r, slot) in scan.readings.iter().zip(placed) {
            if let Some(entry) = slot.and_then(|i| latest.get_mut(i)) {
                *entry = Some(Latest {
                    value: r.value.clone(),
                    quality: r.quality,
                    acquired_at: scan.acquired_at,
                });
            }
        }
    }

    fn get(&self, tag: &str) -> Option<&Latest> {
        self.slots
            .get(tag)
            .and_then(|&i| self.latest.get(i))
            .and_then(Option::as_ref)
    }
}

impl MachineState {
    /// The tag's latest value if it is Good and numeric (a label for the
    /// gate, for instance).
    pub fn good_value(&self, tag: &str) -> Option<f64> {
        let latest = self.get(tag)?;
        match (latest.quality, &latest.value) {
            (Quality::Good, Some(v)) => v.as_f64(),
            _ => None,
        }
    }
}

/// Which tag feeds each model input, in the manifest's input order.
#[derive(Debug, Clone)]
pub struct FeatureMap {
    tags: Vec<Arc<str>>,
    /// Inputs older than this (relative to the triggering scan) are missing.
    max_age: Option<Duration>,
}

impl FeatureMap {
    pub fn new(tags: Vec<String>, max_age: Option<Duration>) -> Self {
        Self {
            tags: tags.into_iter().map(Arc::from).collect(),
            max_age,
        }
    }

    /// The tags of the model's inputs, in input order.
    pub fn tags(&self) -> &[Arc<str>] {
        &self.tags
    }

    /// Whether `scan` carries at least one of the model's inputs (a scan of
    /// other tags only changes nothing the model sees).
    pub fn touches(&self, scan: &Scan) -> bool {
        scan.readings.iter().any(|r| self.tags.contains(&r.tag))
    }

    /// The model's inputs from `state`, as of the scan acquired at `now`.
    ///
    /// - a tag never seen, or older than the maximum age: `Missing`;
    /// - a tag whose latest reading is not Good (Bad, or Uncertain after a
    ///   device exception or an OPC UA uncertain status): `BadQuality`;
    /// - a text value: `BadQuality` (a model takes numbers only).
    ///
    /// Neither is ever fed to the model.
    pub fn assemble(&self, state: &MachineState, now: SystemTime) -> Vec<InputValue> {
        self.tags
            .iter()
            .map(|tag| match state.get(tag) {
                None => InputValue::Missing,
                Some(latest) => {
                    let age = now.duration_since(latest.acquired_at).unwrap_or_default();
                    if self.max_age.is_some_and(|max| age > max) {
                        return InputValue::Missing;
                    }
                    match (latest.quality, &latest.value) {
                        (Quality::Good, Some(v)) => match v.as_f64() {
                            Some(x) => InputValue::Value(x),
                            None => InputValue::BadQuality,
                        },
                        (Quality::Good, None) => InputValue::Missing,
                        _ => InputValue::BadQuality,
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironbridge_connectors::TagReading;
    use std::time::UNIX_EPOCH;

    fn reading(tag: &str, value: Option<TagValue>, quality: Quality) -> TagReading {
        TagReading {
            tag: tag.into(),
            value,
            quality,
            status: None,
        }
    }

    fn scan(at_s: u64, readings: Vec<TagReading>) -> Scan {
        Scan {
            machine: "m".into(),
            acquired_at: UNIX_EPOCH + Duration::from_secs(at_s),
            readings,
        }
    }

    fn map(tags: &[&str], max_age: Option<Duration>) -> FeatureMap {
        FeatureMap::new(tags.iter().map(|t| t.to_string()).collect(), max_age)
    }

    #[test]
    fn inputs_follow_the_manifest_order_and_mark_what_must_not_be_fed() {
        let mut state = MachineState::keeping(["a", "b", "c", "d", "e", "t"].map(Arc::from));
        let s = scan(
            100,
            vec![
                reading("b", Some(TagValue::Int(-3)), Quality::Good),
                reading("a", Some(TagValue::Float(1.5)), Quality::Good),
                reading("c", None, Quality::Bad),
                reading("d", Some(TagValue::Bool(true)), Quality::Uncertain),
                reading("t", Some(TagValue::Text("P-17".into())), Quality::Good),
            ],
        );
        state.apply(&s);
        let row = map(&["a", "b", "c", "d", "e", "t"], None).assemble(&state, s.acquired_at);
        assert!(matches!(row[0], InputValue::Value(v) if v == 1.5));
        assert!(matches!(row[1], InputValue::Value(v) if v == -3.0));
        assert!(matches!(row[2], InputValue::BadQuality));
        assert!(matches!(row[3], InputValue::BadQuality));
        assert!(matches!(row[4], InputValue::Missing));
        assert!(matches!(row[5], InputValue::BadQuality));
    }

    #[test]
    fn partial_scans_keep_the_last_value_of_absent_tags() {
        let features = map(&["speed", "temp"], None);
        let mut state = MachineState::keeping(features.tags().iter().cloned());
        state.apply(&scan(
            10,
            vec![
                reading("speed", Some(TagValue::Float(1000.0)), Quality::Good),
                reading("temp", Some(TagValue::Float(40.0)), Quality::Good),
            ],
        ));
        // A notification with only the speed.
        let only_speed = scan(
            11,
            vec![reading(
                "speed",
                Some(TagValue::Float(1200.0)),
                Quality::Good,
            )],
        );
        state.apply(&only_speed);
        assert!(features.touches(&only_speed));
        let row = features.assemble(&state, only_speed.acquired_at);
        assert!(matches!(row[0], InputValue::Value(v) if v == 1200.0));
        assert!(matches!(row[1], InputValue::Value(v) if v == 40.0));
        // A Bad reading replaces the value: never fed again until Good.
        state.apply(&scan(12, vec![reading("temp", None, Quality::Bad)]));
        let row = features.assemble(&state, UNIX_EPOCH + Duration::from_secs(12));
        assert!(matches!(row[1], InputValue::BadQuality));
        assert!(!features.touches(&scan(13, vec![reading("other", None, Quality::Bad)])));
    }

    #[test]
    fn inputs_older_than_the_maximum_age_are_missing() {
        let mut state = MachineState::keeping(["speed", "temp"].map(Arc::from));
        state.apply(&scan(
            10,
            vec![reading("temp", Some(TagValue::Float(40.0)), Quality::Good)],
        ));
        state.apply(&scan(
            20,
            vec![reading(
                "speed",
                Some(TagValue::Float(900.0)),
                Quality::Good,
            )],
        ));
        let at_20 = UNIX_EPOCH + Duration::from_secs(20);
        let strict = map(&["speed", "temp"], Some(Duration::from_secs(5)));
        let row = strict.assemble(&state, at_20);
        assert!(matches!(row[0], InputValue::Value(_)));
        assert!(matches!(row[1], InputValue::Missing));
        let lenient = map(&["speed", "temp"], Some(Duration::from_secs(10)));
        assert!(matches!(
            lenient.assemble(&state, at_20)[1],
            InputValue::Value(_)
        ));
    }

    #[test]
    fn only_the_tags_asked_for_are_kept() {
        let mut state = MachineState::keeping(["speed", "label", "speed"].map(Arc::from));
        state.apply(&scan(
            10,
            vec![
                reading("speed", Some(TagValue::Float(900.0)), Quality::Good),
                reading("other", Some(TagValue::Float(1.0)), Quality::Good),
            ],
        ));
        assert_eq!(state.latest.len(), 2, "a tag asked twice is kept once");
        assert_eq!(state.good_value("speed"), Some(900.0));
        assert_eq!(state.good_value("other"), None, "not asked for, not kept");
        // Asked for, never seen yet: Missing, not BadQuality.
        let row = map(&["label"], None).assemble(&state, UNIX_EPOCH);
        assert!(matches!(row[0], InputValue::Missing));
    }
}
