//! Records shared by sources, the gateway and sinks.

use std::sync::Arc;
use std::time::SystemTime;

/// Quality of one reading, in the sense of OPC UA status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quality {
    /// Read from the device just now.
    Good,
    /// Read, but not trustworthy (e.g. the device answered with an exception).
    Uncertain,
    /// Not read: the device is unreachable or answered nothing usable.
    Bad,
}

/// A typed value after decoding, scaling and offset.
///
/// A tag with a non-identity scale or offset always becomes `Float`; otherwise
/// integers keep their signedness so that 64-bit counters stay exact.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TagValue {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
}

impl TagValue {
    /// The value as a float, for model inputs (booleans are 0.0 / 1.0).
    pub fn as_f64(&self) -> f64 {
        match *self {
            TagValue::Bool(b) => f64::from(u8::from(b)),
            TagValue::Int(i) => i as f64,
            TagValue::UInt(u) => u as f64,
            TagValue::Float(f) => f,
        }
    }
}

/// One tag of one scan.
#[derive(Debug, Clone, PartialEq)]
pub struct TagReading {
    pub tag: Arc<str>,
    /// `None` whenever `quality` is `Bad`: an old value is never carried
    /// forward as if it were fresh.
    pub value: Option<TagValue>,
    pub quality: Quality,
}

/// One poll (or notification batch) of one machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    pub machine: Arc<str>,
    /// When the values were acquired (for a poll: when the request for the
    /// first register block was sent). Sinks stamp data with this, never with
    /// the time they send it.
    pub acquired_at: SystemTime,
    pub readings: Vec<TagReading>,
}

impl Scan {
    pub fn reading(&self, tag: &str) -> Option<&TagReading> {
        self.readings.iter().find(|r| &*r.tag == tag)
    }
}

/// The outputs of one model for one machine's inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub machine: Arc<str>,
    pub model: Arc<str>,
    /// The model version that computed these outputs.
    pub version: Arc<str>,
    /// Acquisition time of the inputs (not the time of inference).
    pub inputs_acquired_at: SystemTime,
    /// Output name and value, in the manifest's order.
    pub outputs: Vec<(Arc<str>, f64)>,
}

/// What a sink receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Scan(Arc<Scan>),
    Prediction(Arc<Prediction>),
}
