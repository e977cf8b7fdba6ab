//! Feature assembly: one scan of one machine → one model input row.

use ironbridge_connectors::{Quality, Scan};
use ironbridge_models::InputValue;

/// Which tag feeds each model input, in the manifest's input order.
#[derive(Debug, Clone)]
pub struct FeatureMap {
    tags: Vec<String>,
}

impl FeatureMap {
    pub fn new(tags: Vec<String>) -> Self {
        Self { tags }
    }

    /// The model's inputs read off `scan`. A tag that is absent is `Missing`;
    /// one whose quality is not Good (Bad, or Uncertain after a device
    /// exception) is `BadQuality`: neither is ever fed to the model.
    pub fn assemble(&self, scan: &Scan) -> Vec<InputValue> {
        self.tags
            .iter()
            .map(|tag| match scan.reading(tag) {
                None => InputValue::Missing,
                Some(r) => match (r.quality, r.value) {
                    (Quality::Good, Some(v)) => InputValue::Value(v.as_f64()),
                    (Quality::Good, None) => InputValue::Missing,
                    _ => InputValue::BadQuality,
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironbridge_connectors::{TagReading, TagValue};
    use std::time::SystemTime;

    fn reading(tag: &str, value: Option<TagValue>, quality: Quality) -> TagReading {
        TagReading {
            tag: tag.into(),
            value,
            quality,
        }
    }

    #[test]
    fn inputs_follow_the_manifest_order_and_mark_what_must_not_be_fed() {
        let scan = Scan {
            machine: "m".into(),
            acquired_at: SystemTime::UNIX_EPOCH,
            readings: vec![
                reading("b", Some(TagValue::Int(-3)), Quality::Good),
                reading("a", Some(TagValue::Float(1.5)), Quality::Good),
                reading("c", None, Quality::Bad),
                reading("d", Some(TagValue::Bool(true)), Quality::Uncertain),
            ],
        };
        let map = FeatureMap::new(vec![
            "a".into(),
            "b".into(),
            "c".into(),
            "d".into(),
            "e".into(),
        ]);
        let row = map.assemble(&scan);
        assert!(matches!(row[0], InputValue::Value(v) if v == 1.5));
        assert!(matches!(row[1], InputValue::Value(v) if v == -3.0));
        assert!(matches!(row[2], InputValue::BadQuality));
        assert!(matches!(row[3], InputValue::BadQuality));
        assert!(matches!(row[4], InputValue::Missing));
    }
}
