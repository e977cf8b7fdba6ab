//! OPC UA values to readings: the Variant's type decides the [`TagValue`],
//! the StatusCode's severity the [`Quality`], and the SourceTimestamp (else
//! the ServerTimestamp) the acquisition time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opcua::types::{DataValue, DateTime, StatusCode, Variant};

use crate::scan::{Quality, Scan, SourceStatus, TagReading, TagValue};

/// Why a value could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// A type that is neither a number, a boolean nor a string (arrays,
    /// byte strings, structures, ...): named by its Variant type.
    Type(String),
}

/// A variant as a tag value: numbers, booleans and strings; nothing else.
pub fn tag_value(variant: &Variant) -> Result<TagValue, Unreadable> {
    Ok(match variant {
        Variant::Boolean(b) => TagValue::Bool(*b),
        Variant::SByte(v) => TagValue::Int(i64::from(*v)),
        Variant::Int16(v) => TagValue::Int(i64::from(*v)),
        Variant::Int32(v) => TagValue::Int(i64::from(*v)),
        Variant::Int64(v) => TagValue::Int(*v),
        Variant::Byte(v) => TagValue::UInt(u64::from(*v)),
        Variant::UInt16(v) => TagValue::UInt(u64::from(*v)),
        Variant::UInt32(v) => TagValue::UInt(u64::from(*v)),
        Variant::UInt64(v) => TagValue::UInt(*v),
        Variant::Float(v) => TagValue::Float32(*v),
        Variant::Double(v) => TagValue::Float(*v),
        Variant::String(s) => TagValue::Text(Arc::from(s.as_ref())),
        Variant::LocalizedText(t) => TagValue::Text(Arc::from(t.text.as_ref())),
        other => return Err(Unreadable::Type(format!("{:?}", other.type_id()))),
    })
}

/// One DataValue as a reading, and whether its type was unreadable.
///
/// - Good with a readable value: Good;
/// - Uncertain: Uncertain, value kept (the model never gets it; sinks show
///   it with its status);
/// - Bad, no value, or a value of an unreadable type: Bad, no value.
///
/// The server's StatusCode is kept whenever it is not plain Good.
pub fn reading(tag: &Arc<str>, value: &DataValue) -> (TagReading, Option<Unreadable>) {
    let status = value.status.unwrap_or(StatusCode::Good);
    let source_status = (status != StatusCode::Good).then_some(SourceStatus::OpcUa(status.bits()));
    if status.is_bad() {
        return (TagReading::bad(tag.clone(), source_status), None);
    }
    let converted = match &value.value {
        None | Some(Variant::Empty) => return (TagReading::bad(tag.clone(), source_status), None),
        Some(variant) => tag_value(variant),
    };
    match converted {
        Ok(v) => (
            TagReading {
                tag: tag.clone(),
                value: Some(v),
                quality: if status.is_uncertain() {
                    Quality::Uncertain
                } else {
                    Quality::Good
                },
                status: source_status,
            },
            None,
        ),
        Err(why) => (
            TagReading::bad(
                tag.clone(),
                Some(SourceStatus::OpcUa(StatusCode::BadTypeMismatch.bits())),
            ),
            Some(why),
        ),
    }
}

/// When a value was acquired: its SourceTimestamp, else its ServerTimestamp,
/// else `received`.
pub fn acquired_at(value: &DataValue, received: SystemTime) -> SystemTime {
    value
        .source_timestamp
        .or(value.server_timestamp)
        .and_then(system_time)
        .unwrap_or(received)
}

/// An OPC UA DateTime as a SystemTime; `None` for the null DateTime (1601)
/// that servers send when they have no time.
pub fn system_time(t: DateTime) -> Option<SystemTime> {
    let t = t.as_chrono();
    let nanos = t.timestamp_nanos_opt()?;
    if t.timestamp() <= -11_644_473_600 {
        return None;
    }
    Some(if nanos >= 0 {
        UNIX_EPOCH + Duration::from_nanos(nanos.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_nanos(nanos.unsigned_abs())
    })
}

/// Readings grouped into scans by acquisition time, oldest first: one scan
/// per timestamp, so every sink stamps each value with its own time.
pub fn scans_by_time(
    machine: &Arc<str>,
    readings: impl IntoIterator<Item = (SystemTime, TagReading)>,
) -> Vec<Scan> {
    let mut by_time: BTreeMap<SystemTime, Vec<TagReading>> = BTreeMap::new();
    for (time, reading) in readings {
        by_time.entry(time).or_default().push(reading);
    }
    by_time
        .into_iter()
        .map(|(acquired_at, readings)| Scan {
            machine: machine.clone(),
            acquired_at,
            readings,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::{ByteString, LocalizedText, UAString};

    fn tag() -> Arc<str> {
        Arc::from("t")
    }

    #[test]
    fn opcua_numbers_booleans_and_strings_are_read() {
        let cases = [
            (Variant::Boolean(true), TagValue::Bool(true)),
            (Variant::SByte(-3), TagValue::Int(-3)),
            (Variant::Int64(i64::MIN), TagValue::Int(i64::MIN)),
            (Variant::UInt64(u64::MAX), TagValue::UInt(u64::MAX)),
            (Variant::Byte(200), TagValue::UInt(200)),
            (Variant::Float(1.5), TagValue::Float32(1.5)),
            (Variant::Double(-2.25), TagValue::Float(-2.25)),
            (
                Variant::String(UAString::from("P-17")),
                TagValue::Text("P-17".into()),
            ),
            (
                Variant::LocalizedText(Box::new(LocalizedText::new("en", "Run"))),
                TagValue::Text("Run".into()),
            ),
        ];
        for (variant, expected) in cases {
            assert_eq!(tag_value(&variant), Ok(expected), "{variant:?}");
        }
        assert!(tag_value(&Variant::ByteString(ByteString::from(vec![1u8]))).is_err());
        assert!(tag_value(&Variant::from(vec![1.0f64, 2.0])).is_err());
    }

    #[test]
    fn opcua_status_decides_quality_and_is_kept() {
        let t = tag();
        let good = DataValue::new_now(Variant::Double(1.0));
        let (r, why) = reading(&t, &good);
        assert_eq!(
            (r.quality, r.value, r.status, why),
            (Quality::Good, Some(TagValue::Float(1.0)), None, None)
        );

        let mut uncertain = DataValue::new_now(Variant::Double(2.0));
        uncertain.status = Some(StatusCode::UncertainSensorNotAccurate);
        let (r, _) = reading(&t, &uncertain);
        assert_eq!(r.quality, Quality::Uncertain);
        assert_eq!(r.value, Some(TagValue::Float(2.0)));
        assert_eq!(
            r.status,
            Some(SourceStatus::OpcUa(
                StatusCode::UncertainSensorNotAccurate.bits()
            ))
        );

        let mut bad = DataValue::new_now(Variant::Double(3.0));
        bad.status = Some(StatusCode::BadSensorFailure);
        let (r, _) = reading(&t, &bad);
        assert_eq!((r.quality, r.value), (Quality::Bad, None));

        let blob = DataValue::new_now(Variant::ByteString(ByteString::from(vec![1u8])));
        let (r, why) = reading(&t, &blob);
        assert_eq!((r.quality, r.value), (Quality::Bad, None));
        assert!(why.is_some());
    }

    #[test]
    fn opcua_scans_group_by_source_timestamp_oldest_first() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t1 = t0 + Duration::from_millis(50);
        let m: Arc<str> = Arc::from("m");
        let r = |name: &str| TagReading::good(Arc::from(name), TagValue::Int(1));
        let scans = scans_by_time(&m, [(t1, r("a")), (t0, r("b")), (t1, r("c"))]);
        assert_eq!(scans.len(), 2);
        assert_eq!(scans[0].acquired_at, t0);
        assert_eq!(scans[1].acquired_at, t1);
        assert_eq!(scans[1].readings.len(), 2);
    }

    #[test]
    fn opcua_timestamps_fall_back_to_server_then_receipt() {
        let received = UNIX_EPOCH + Duration::from_secs(5);
        let mut v = DataValue::new_now(Variant::Double(1.0));
        let source = v.source_timestamp.unwrap();
        assert_eq!(acquired_at(&v, received), system_time(source).unwrap());
        v.source_timestamp = None;
        v.server_timestamp = Some(DateTime::from(116_444_736_000_000_000i64 + 10 * 10_000_000));
        assert_eq!(
            acquired_at(&v, received),
            UNIX_EPOCH + Duration::from_secs(10)
        );
        v.server_timestamp = None;
        assert_eq!(acquired_at(&v, received), received);
        assert_eq!(system_time(DateTime::null()), None);
    }
}
