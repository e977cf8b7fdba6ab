//! Where each reading of a machine's scans goes, remembered per tag order.
//!
//! A polled machine sends the same tags in the same order every scan, as the
//! same `Arc<str>` names (its source builds them once). So the slot of each
//! reading in a table (the last-value cache, the OPC UA tag variables) can be
//! found by name once and then reused while the order stays: a pointer
//! comparison per reading instead of a string hash and compare, which at
//! 10,000 scans/s of 62 tags was a visible share of the gateway's CPU
//! (BENCHMARKS.md §9, §11). A scan in another order, or with other tags (an
//! OPC UA notification of what changed), is looked up by name again and
//! becomes the remembered order.

use std::sync::Arc;

use ironbridge_connectors::Scan;

/// The slots of the tag order last seen. `Default` is empty: the first scan
/// is looked up.
#[derive(Debug, Default)]
pub struct ScanLayout {
    /// The names of the order remembered; holding them keeps the pointers
    /// compared against valid.
    tags: Vec<Arc<str>>,
    /// The slot of each, `None` for a tag the table does not have.
    slots: Vec<Option<usize>>,
}

impl ScanLayout {
    /// The slot of each reading of `scan`, in reading order; `resolve` is
    /// asked for the slot of a name when the order is not the remembered one.
    pub fn slots(
        &mut self,
        scan: &Scan,
        mut resolve: impl FnMut(&Arc<str>) -> Option<usize>,
    ) -> &[Option<usize>] {
        let same = self.tags.len() == scan.readings.len()
            && self
                .tags
                .iter()
                .zip(&scan.readings)
                .all(|(tag, reading)| Arc::ptr_eq(tag, &reading.tag));
        if !same {
            self.tags.clear();
            self.slots.clear();
            for reading in &scan.readings {
                self.slots.push(resolve(&reading.tag));
                self.tags.push(reading.tag.clone());
            }
        }
        &self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironbridge_connectors::{TagReading, TagValue};
    use std::time::UNIX_EPOCH;

    fn scan(tags: &[&Arc<str>]) -> Scan {
        Scan {
            machine: "m".into(),
            acquired_at: UNIX_EPOCH,
            readings: tags
                .iter()
                .map(|t| TagReading::good((*t).clone(), TagValue::Int(1)))
                .collect(),
        }
    }

    #[test]
    fn names_are_looked_up_once_per_order_and_again_when_it_changes() {
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        let table = ["b", "a"];
        let lookups = std::cell::Cell::new(0);
        let resolve = |tag: &Arc<str>| {
            lookups.set(lookups.get() + 1);
            table.iter().position(|t| **t == **tag)
        };
        let mut layout = ScanLayout::default();
        assert_eq!(
            layout.slots(&scan(&[&a, &b, &c]), resolve),
            [Some(1), Some(0), None]
        );
        assert_eq!(
            layout.slots(&scan(&[&a, &b, &c]), resolve),
            [Some(1), Some(0), None]
        );
        assert_eq!(lookups.get(), 3);
        // Another order, a subset, and equal names in other allocations: looked up.
        assert_eq!(layout.slots(&scan(&[&b, &a]), resolve), [Some(0), Some(1)]);
        assert_eq!(layout.slots(&scan(&[&b]), resolve), [Some(0)]);
        let b2: Arc<str> = "b".into();
        assert_eq!(layout.slots(&scan(&[&b2]), resolve), [Some(0)]);
        assert_eq!(lookups.get(), 7);
    }
}
