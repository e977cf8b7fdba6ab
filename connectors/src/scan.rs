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

/// The status a source itself gave a reading, kept beside [`Quality`] so
/// that sinks can pass it on exactly (an OPC UA client of the gateway sees
/// the machine's own `Uncertain_SensorNotAccurate`, not a generic code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceStatus {
    /// An OPC UA StatusCode, as its 32 bits.
    OpcUa(u32),
    /// A Modbus exception code (e.g. 2, illegal data address).
    ModbusException(u8),
}

/// A typed value after decoding, scaling and offset.
///
/// A tag with a non-identity scale or offset always becomes `Float`; otherwise
/// integers keep their signedness so that 64-bit counters stay exact, and an
/// f32 (a Modbus f32 register, an OPC UA Float) stays `Float32`, so that the
/// store gets its own shortest text (`12.345`, not the widened
/// `12.345000267028809`); everything else sees it widened ([`TagValue::as_f64`]). `Text`
/// comes from OPC UA string variables (a program name, an alarm text): it is
/// stored and served, never fed to a model.
#[derive(Debug, Clone, PartialEq)]
pub enum TagValue {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Float32(f32),
    Text(Arc<str>),
}

impl TagValue {
    /// The value as a float, for model inputs (booleans are 0.0 / 1.0);
    /// `None` for text.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            TagValue::Bool(b) => Some(f64::from(u8::from(b))),
            TagValue::Int(i) => Some(i as f64),
            TagValue::UInt(u) => Some(u as f64),
            TagValue::Float(f) => Some(f),
            TagValue::Float32(f) => Some(f64::from(f)),
            TagValue::Text(_) => None,
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
    /// The source's own status for this reading, where it has one.
    pub status: Option<SourceStatus>,
}

impl TagReading {
    /// A Good reading with a value.
    pub fn good(tag: Arc<str>, value: TagValue) -> Self {
        Self {
            tag,
            value: Some(value),
            quality: Quality::Good,
            status: None,
        }
    }

    /// A Bad reading without a value.
    pub fn bad(tag: Arc<str>, status: Option<SourceStatus>) -> Self {
        Self {
            tag,
            value: None,
            quality: Quality::Bad,
            status,
        }
    }
}

/// One poll (or notification batch) of one machine: the readings that share
/// one acquisition time. A poll carries every tag; an OPC UA notification
/// only the tags that changed (a partial scan), and one notification whose
/// values carry different SourceTimestamps becomes one scan per timestamp,
/// in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    pub machine: Arc<str>,
    /// When the values were acquired (for a poll: when the request for the
    /// first register block was sent; for OPC UA: the values'
    /// SourceTimestamp). Sinks stamp data with this, never with the time they
    /// send it.
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

/// One audited change of a model's versions (activation, rollback, a
/// version failing, a folder found or gone).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEventRecord {
    pub model: Arc<str>,
    /// `activated`, `rolled_back`, `failed`, `discovered`, `retired`.
    pub event: &'static str,
    pub version: String,
    pub previous: Option<String>,
    /// Who asked: an OPC UA user, `config` at start, `folder` for rescans.
    pub user: String,
    pub reason: Option<String>,
    pub at: SystemTime,
}

/// Which gateway build with which configuration started, once per start
/// (lineage: any stored value can be traced to the code and configuration
/// that produced it).
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayInfoRecord {
    /// The gateway's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The git commit it was built from.
    pub commit: String,
    /// sha256 of the configuration file's text.
    pub config_sha256: String,
    pub started_at: SystemTime,
}

/// The gate's running statistics for one shadow version (see the models
/// crate's `gate`).
#[derive(Debug, Clone, PartialEq)]
pub struct GateRecord {
    pub model: Arc<str>,
    pub active_version: Arc<str>,
    pub shadow_version: Arc<str>,
    /// `mae` or `disagreement`.
    pub metric: &'static str,
    pub samples: u64,
    pub mean: f64,
    pub lower: f64,
    pub upper: f64,
    pub margin: f64,
    pub psi: Option<f64>,
    /// `Pending`, `Pass` or `Fail`.
    pub decision: &'static str,
    pub at: SystemTime,
}

/// How far one input (or output) of a model on one machine has moved from
/// its training distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftRecord {
    pub machine: Arc<str>,
    pub model: Arc<str>,
    pub version: Arc<str>,
    /// `input` or `output`: the tag key the name goes under.
    pub kind: &'static str,
    pub name: String,
    pub psi: f64,
    pub at: SystemTime,
}

/// What a sink receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Scan(Arc<Scan>),
    Prediction(Arc<Prediction>),
    /// A shadow version's outputs (never the machine's prediction).
    ShadowPrediction(Arc<Prediction>),
    Gate(Arc<GateRecord>),
    Drift(Arc<DriftRecord>),
    ModelEvent(Arc<ModelEventRecord>),
    GatewayInfo(Arc<GatewayInfoRecord>),
}
