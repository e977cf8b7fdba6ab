//! Records as InfluxDB line protocol, per the contract in README.md ("Contracts", "InfluxDB line protocol"):
//!
//! ```text
//! process,machine=<machine> <tag>=<value>,... <acquisition time ns>
//! prediction,machine=<machine>,model=<model>,version=<version> <output>=<value>,... <time of its inputs ns>
//! ```
//!
//! Values:
//! - floats in Rust's shortest round-trip form (`1.5`, `1e300`); an integral
//!   float is written without a point (`1`), which InfluxDB reads as a float;
//!   an f32 value ([`TagValue::Float32`]: a Modbus f32 register, an OPC UA
//!   Float) in its own f32 shortest form (`1.001`, not the widened
//!   `1.0010000467300415`): the store reads it as an f64 which, narrowed
//!   back, is the same f32, so a stored input recomputes its prediction
//!   exactly. That holds for every finite f32 but one pair, ±0x15AE43FD
//!   (`7.038531e-26` comes back as its neighbour), written widened
//!   (checked exhaustively by `examples/f32_text_narrows_back.rs`);
//! - signed and unsigned integers up to `i64::MAX` with the `i` suffix;
//!   unsigned integers above `i64::MAX` as floats (InfluxDB 1.x has no
//!   unsigned type, and the `u` suffix is not understood everywhere), which
//!   rounds them to 53 bits of mantissa;
//! - booleans as `true` / `false`;
//! - text as a double-quoted string field (`"` and `\` escaped);
//! - in names (measurement, tag keys and values, field keys) `,`, `=` and
//!   spaces are escaped and a backslash is written as it is; a name with a
//!   backslash at its end or before one of those is refused (InfluxDB could
//!   not read it back);
//! - NaN and infinities are skipped: InfluxDB rejects the whole batch for them.
//!
//! Every line may end its tags with the gateway's own ([`PointTags`]:
//! `,gateway=<name>[,<site tag>=<value>...]`), so a fleet's points can be
//! told apart in one store.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::ConnectorError;
use crate::scan::{
    DriftRecord, GateRecord, GatewayInfoRecord, ModelEventRecord, Prediction, Quality, Record,
    Scan, TagValue,
};

pub const PROCESS_MEASUREMENT: &str = "process";
pub const PREDICTION_MEASUREMENT: &str = "prediction";
pub const MODEL_EVENT_MEASUREMENT: &str = "model_event";
pub const SHADOW_PREDICTION_MEASUREMENT: &str = "prediction_shadow";
pub const GATE_MEASUREMENT: &str = "gate";
pub const DRIFT_MEASUREMENT: &str = "drift";
pub const GATEWAY_INFO_MEASUREMENT: &str = "gateway_info";

/// Tags the gateway adds to every line it writes (`[gateway] name` as
/// `gateway=<name>`, and its site tags), escaped once when the sink starts
/// instead of on every line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PointTags {
    /// `,key=value...`, escaped; empty for none.
    encoded: String,
    keys: Vec<String>,
}

impl PointTags {
    /// Tag keys a record already carries on some measurement: a point tag
    /// with one of these names would make two tags of one key.
    pub const RESERVED_KEYS: &'static [&'static str] = &[
        "machine",
        "model",
        "version",
        "input",
        "output",
        "active_version",
        "shadow_version",
        "commit",
        "config_sha256",
    ];

    /// No tags: lines as they were before fleets.
    pub fn none() -> Self {
        Self::default()
    }

    /// `tags` in the given order. Fails on what line protocol cannot carry
    /// (empty text, line breaks, an unreadable backslash), on a key a record
    /// already uses ([`Self::RESERVED_KEYS`]) and on a key given twice.
    pub fn new<'a>(
        tags: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConnectorError> {
        let mut out = Self::default();
        for (key, value) in tags {
            if Self::RESERVED_KEYS.contains(&key) {
                return Err(ConnectorError::Unencodable(format!(
                    "tag key {key:?} is used by the gateway's own points"
                )));
            }
            if out.keys.iter().any(|k| k == key) {
                return Err(ConnectorError::Unencodable(format!(
                    "tag key {key:?} is given twice"
                )));
            }
            check_identifier("tag key", key)?;
            check_identifier(key, value)?;
            out.encoded.push(',');
            escape_key("tag key", key, &mut out.encoded)?;
            out.encoded.push('=');
            escape_key(key, value, &mut out.encoded)?;
            out.keys.push(key.to_owned());
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    /// The tags as they end a line's tag set (`,gateway=line-3`).
    pub fn as_str(&self) -> &str {
        &self.encoded
    }
}

/// The line of one record; `Ok(None)` when it has no value to write (no good
/// reading, or only NaN/infinite values).
pub fn encode_record(record: &Record) -> Result<Option<String>, ConnectorError> {
    encode_record_tagged(record, &PointTags::none())
}

/// [`encode_record`] with the gateway's point tags after the record's own.
pub fn encode_record_tagged(
    record: &Record,
    point_tags: &PointTags,
) -> Result<Option<String>, ConnectorError> {
    let mut line = String::with_capacity(128);
    Ok(encode_record_tagged_into(record, point_tags, &mut line)?.then_some(line))
}

/// [`encode_record_tagged`] appended to `out` (without a line break), so that
/// the sink writes a record straight into its buffer. Returns whether a line
/// was written; `out` is left as it was when none is (`Ok(false)`) or on an
/// error.
pub fn encode_record_tagged_into(
    record: &Record,
    point_tags: &PointTags,
    out: &mut String,
) -> Result<bool, ConnectorError> {
    match record {
        Record::Scan(scan) => encode_scan_into(scan, point_tags, out),
        Record::Prediction(prediction) => {
            encode_prediction_into(PREDICTION_MEASUREMENT, prediction, point_tags, out)
        }
        Record::ShadowPrediction(prediction) => {
            encode_prediction_into(SHADOW_PREDICTION_MEASUREMENT, prediction, point_tags, out)
        }
        Record::Gate(gate) => encode_gate_into(gate, point_tags, out),
        Record::Drift(drift) => encode_drift_into(drift, point_tags, out),
        Record::ModelEvent(event) => encode_model_event_into(event, point_tags, out),
        Record::GatewayInfo(info) => encode_gateway_info_into(info, point_tags, out),
    }
}

/// `gateway_info,version=<v>,commit=<c>,config_sha256=<h> started=1i <ns>`:
/// the identifiers are tags (as in a Prometheus info metric) so that stores
/// which keep only numeric fields, victoria-metrics among them, keep them.
fn encode_gateway_info_into(
    info: &GatewayInfoRecord,
    point_tags: &PointTags,
    out: &mut String,
) -> Result<bool, ConnectorError> {
    let config = if info.config_sha256.is_empty() {
        "none"
    } else {
        info.config_sha256.as_str()
    };
    encode_line(
        GATEWAY_INFO_MEASUREMENT,
        &[
            ("version", info.version.as_str()),
            ("commit", info.commit.as_str()),
            ("config_sha256", config),
        ],
        point_tags,
        std::iter::once(("started", TagValue::Int(1))),
        info.started_at,
        out,
    )
}

/// `model_event,model=<model> event="activated",version="…",previous="…",user="…"[,reason="…"] <ns>`
/// (`previous` and `reason` only when there is one).
fn encode_model_event_into(
    event: &ModelEventRecord,
    point_tags: &PointTags,
    out: &mut String,
) -> Result<bool, ConnectorError> {
    let text = |s: &str| TagValue::Text(Arc::from(s));
    let mut fields = vec![
        ("event", text(event.event)),
        ("version", text(&event.version)),
    ];
    if let Some(previous) = &event.previous {
        fields.push(("previous", text(previous)));
    }
    fields.push(("user", text(&event.user)));
    if let Some(reason) = &event.reason {
        fields.push(("reason", text(reason)));
    }
    encode_line(
        MODEL_EVENT_MEASUREMENT,
        &[("model", &event.model)],
        point_tags,
        fields.into_iter(),
        event.at,
        out,
    )
}

/// `process,machine=<machine> <tag>=<value>,... <ns>`: only readings of
/// quality Good that carry a value.
pub fn encode_scan(scan: &Scan) -> Result<Option<String>, ConnectorError> {
    let mut line = String::with_capacity(128);
    Ok(encode_scan_into(scan, &PointTags::none(), &mut line)?.then_some(line))
}

fn encode_scan_into(
    scan: &Scan,
    point_tags: &PointTags,
    out: &mut String,
) -> Result<bool, ConnectorError> {
    let fields = scan
        .readings
        .iter()
        .filter_map(|r| match (r.quality, &r.value) {
            (Quality::Good, Some(value)) => Some((&*r.tag, value.clone())),
            _ => None,
        });
    encode_line(
        PROCESS_MEASUREMENT,
        &[("machine", &scan.machine)],
        point_tags,
        fields,
        scan.acquired_at,
        out,
    )
}

/// `gate,model=<m>,active_version=<a>,shadow_version=<s> metric="mae",samples=<n>i,mean=…,lower=…,upper=…,margin=…[,psi=…],decision="Pending"`
/// (bounds that are not finite yet are left out).
fn encode_gate_into(
    gate: &GateRecord,
    point_tags: &PointTags,
    out: &mut String,
) -> Result<bool, ConnectorError> {
    let mut fields = vec![
        ("metric", TagValue::Text(Arc::from(gate.metric))),
        ("samples", TagValue::UInt(gate.samples)),
        ("mean", TagValue::Float(gate.mean)),
        ("lower", TagValue::Float(gate.lower)),
        ("upper", TagValue::Float(gate.upper)),
        ("margin", TagValue::Float(gate.margin)),
        ("decision", TagValue::Text(Arc::from(gate.decision))),
    ];
    if let Some(psi) = gate.psi {
        fields.push(("psi", TagValue::Float(psi)));
    }
    encode_line(
        GATE_MEASUREMENT,
        &[
            ("model", &gate.model),
            ("active_version", &gate.active_version),
            ("shadow_version", &gate.shadow_version),
        ],
        point_tags,
        fields.into_iter(),
        gate.at,
        out,
    )
}

/// `drift,machine=<m>,model=<model>,version=<v>,input=<name> psi=<psi>` (or
/// `output=<name>` for a model output).
fn encode_drift_into(
    drift: &DriftRecord,
    point_tags: &PointTags,
    out: &mut String,
) -> Result<bool, ConnectorError> {
    encode_line(
        DRIFT_MEASUREMENT,
        &[
            ("machine", &drift.machine),
            ("model", &drift.model),
            ("version", &drift.version),
            (drift.kind, &drift.name),
        ],
        point_tags,
        std::iter::once(("psi", TagValue::Float(drift.psi))),
        drift.at,
        out,
    )
}

/// `prediction,machine=<m>,model=<model>,version=<v> <output>=<value>,... <ns>`
/// (or `shadow_prediction,…`) stamped with the acquisition time of the
/// inputs.
fn encode_prediction_into(
    measurement: &str,
    prediction: &Prediction,
    point_tags: &PointTags,
    out: &mut String,
) -> Result<bool, ConnectorError> {
    let fields = prediction
        .outputs
        .iter()
        .map(|(name, value)| (&**name, TagValue::Float(*value)));
    encode_line(
        measurement,
        &[
            ("machine", &prediction.machine),
            ("model", &prediction.model),
            ("version", &prediction.version),
        ],
        point_tags,
        fields,
        prediction.inputs_acquired_at,
        out,
    )
}

/// Appends one line to `out`; on `Ok(false)` (no writable field) or an error
/// `out` is cut back to where it was.
fn encode_line<'a>(
    measurement: &str,
    tags: &[(&str, &str)],
    point_tags: &PointTags,
    fields: impl Iterator<Item = (&'a str, TagValue)>,
    time: SystemTime,
    out: &mut String,
) -> Result<bool, ConnectorError> {
    let start = out.len();
    let written = write_line(measurement, tags, point_tags, fields, time, out);
    if !matches!(written, Ok(true)) {
        out.truncate(start);
    }
    written
}

fn write_line<'a>(
    measurement: &str,
    tags: &[(&str, &str)],
    point_tags: &PointTags,
    fields: impl Iterator<Item = (&'a str, TagValue)>,
    time: SystemTime,
    line: &mut String,
) -> Result<bool, ConnectorError> {
    escape_measurement(measurement, line)?;
    for (key, value) in tags {
        check_identifier("tag key", key)?;
        check_identifier(key, value)?;
        line.push(',');
        escape_key("tag key", key, line)?;
        line.push('=');
        escape_key(key, value, line)?;
    }
    line.push_str(point_tags.as_str());
    let mut field_count = 0;
    for (key, value) in fields {
        if !is_writable(&value) {
            continue;
        }
        check_identifier("field key", key)?;
        line.push(if field_count == 0 { ' ' } else { ',' });
        escape_key("field key", key, line)?;
        line.push('=');
        write_value(&value, line);
        field_count += 1;
    }
    if field_count == 0 {
        return Ok(false);
    }
    line.push(' ');
    line.push_str(itoa::Buffer::new().format(timestamp_ns(time)?));
    Ok(true)
}

/// Line protocol can carry neither empty keys/values nor line breaks in them.
fn check_identifier(what: &str, text: &str) -> Result<(), ConnectorError> {
    if text.is_empty() {
        return Err(ConnectorError::Unencodable(format!("empty {what}")));
    }
    if text.contains(['\n', '\r']) {
        return Err(ConnectorError::Unencodable(format!(
            "{what} {text:?} contains a line break"
        )));
    }
    Ok(())
}

fn is_writable(value: &TagValue) -> bool {
    match value {
        TagValue::Float(f) => f.is_finite(),
        TagValue::Float32(f) => f.is_finite(),
        // InfluxDB refuses string fields over 64 KiB (the whole batch).
        TagValue::Text(t) => t.len() <= MAX_STRING_FIELD_BYTES,
        _ => true,
    }
}

/// Nanoseconds since the Unix epoch (negative before it), the protocol's
/// default precision.
pub fn timestamp_ns(time: SystemTime) -> Result<i64, ConnectorError> {
    let out_of_range =
        || ConnectorError::Unencodable(format!("timestamp {time:?} is outside 1677..2262"));
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).map_err(|_| out_of_range()),
        Err(before) => i64::try_from(before.duration().as_nanos())
            .map(|ns| -ns)
            .map_err(|_| out_of_range()),
    }
}

const MEASUREMENT_SPECIAL: &[char] = &[',', ' '];
const KEY_SPECIAL: &[char] = &[',', '=', ' '];

/// Measurements escape commas and spaces.
fn escape_measurement(text: &str, out: &mut String) -> Result<(), ConnectorError> {
    escape("measurement", text, MEASUREMENT_SPECIAL, out)
}

/// Tag keys, tag values and field keys escape commas, equals signs and
/// spaces; `what` names the text in an error.
fn escape_key(what: &str, text: &str, out: &mut String) -> Result<(), ConnectorError> {
    escape(what, text, KEY_SPECIAL, out)
}

/// A backslash itself is written as it is: InfluxDB (1.x and 2.x) reads
/// `\\` in a name as two backslashes (victoria-metrics as one), and a lone
/// one as itself everywhere. A backslash at the end, or before a character
/// that must be escaped, is refused: InfluxDB's parser would take it as
/// escaping what follows (its line protocol has no escape for a backslash).
fn escape(
    what: &str,
    text: &str,
    special: &[char],
    out: &mut String,
) -> Result<(), ConnectorError> {
    let unreadable = || {
        ConnectorError::Unencodable(format!(
            "{what} {text:?} has a backslash at its end or before `,`, `=` or a space, \
             which InfluxDB line protocol cannot carry"
        ))
    };
    // Most names need no escaping: copy them whole (this runs for every
    // field of every line).
    if !text
        .bytes()
        .any(|b| b == b'\\' || (b.is_ascii() && special.contains(&char::from(b))))
    {
        out.push_str(text);
        return Ok(());
    }
    let mut after_backslash = false;
    for c in text.chars() {
        if special.contains(&c) {
            if after_backslash {
                return Err(unreadable());
            }
            out.push('\\');
        }
        out.push(c);
        after_backslash = c == '\\';
    }
    if after_backslash {
        return Err(unreadable());
    }
    Ok(())
}

/// InfluxDB's limit on one string field.
const MAX_STRING_FIELD_BYTES: usize = 64 * 1024;

fn write_value(value: &TagValue, out: &mut String) {
    match *value {
        TagValue::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        TagValue::Int(i) => write_int(i, out),
        TagValue::UInt(u) => match i64::try_from(u) {
            Ok(i) => write_int(i, out),
            // Above i64::MAX: a float, rounded (see the module docs).
            Err(_) => write_float(u as f64, out),
        },
        TagValue::Float(f) => write_float(f, out),
        TagValue::Float32(f) => write_f32(f, out),
        TagValue::Text(ref text) => {
            // Inside a string field both servers read `\\` and `\"`.
            out.push('"');
            for c in text.chars() {
                if matches!(c, '"' | '\\') {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
    }
}

fn write_int(i: i64, out: &mut String) {
    out.push_str(itoa::Buffer::new().format(i));
    out.push('i');
}

/// Shortest form that parses back to the same f64: plain digits for
/// magnitudes in 1e-5..1e16, an exponent outside (`1e300`, `1.5e-7`, which
/// the protocol accepts too) instead of hundreds of digits. `ryu` writes
/// exactly that, for less CPU than `fmt` (this runs once per value stored:
/// 2.7 % of the gateway's profile against `fmt`'s 4.4 %, BENCHMARKS.md
/// §11); only its `.0` on integral values is dropped. Callers pass finite
/// values only ([`is_writable`]).
fn write_float(f: f64, out: &mut String) {
    write_shortest(f, out);
}

/// ryu's shortest text of an f64 or f32, without its `.0` on integral values.
fn write_shortest<F: ryu::Float>(f: F, out: &mut String) {
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(f);
    out.push_str(text.strip_suffix(".0").unwrap_or(text));
}

/// The one positive finite f32 whose shortest text, read as f64 and
/// narrowed, is its neighbour (its negative is the other): `7.038531e-26`.
/// `examples/f32_text_narrows_back.rs` checks every f32 for this.
pub const F32_TEXT_NARROWS_TO_NEIGHBOUR: u32 = 0x15AE_43FD;

/// An f32 in its own shortest form (`12.345` where the widened f64 takes
/// `12.345000267028809`): the value as the device meant it, and about half
/// the bytes a value, in memory until the flush, on the wire and in the
/// store's parse. Written widened for the one f32 whose short text would
/// not narrow back to it (see the module docs). Finite values only.
fn write_f32(f: f32, out: &mut String) {
    if f.to_bits() & 0x7FFF_FFFF == F32_TEXT_NARROWS_TO_NEIGHBOUR {
        return write_float(f64::from(f), out);
    }
    write_shortest(f, out);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::scan::TagReading;

    fn at(ns: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(ns)
    }

    fn reading(tag: &str, value: Option<TagValue>, quality: Quality) -> TagReading {
        TagReading {
            tag: tag.into(),
            value,
            quality,
            status: None,
        }
    }

    fn good(tag: &str, value: TagValue) -> TagReading {
        reading(tag, Some(value), Quality::Good)
    }

    fn scan(machine: &str, readings: Vec<TagReading>) -> Scan {
        Scan {
            machine: machine.into(),
            acquired_at: at(1_700_000_000_123_456_789),
            readings,
        }
    }

    fn float_text(f: f64) -> String {
        let mut out = String::new();
        write_float(f, &mut out);
        out
    }

    #[test]
    fn scan_line_has_machine_tag_fields_and_acquisition_time() {
        let line = encode_scan(&scan(
            "press-7",
            vec![
                good("temp_c", TagValue::Float(21.5)),
                good("count", TagValue::Int(-3)),
                good("running", TagValue::Bool(true)),
                good("total", TagValue::UInt(42)),
                good("program", TagValue::Text(r#"say "hi" \o/"#.into())),
            ],
        ))
        .unwrap();
        assert_eq!(
            line.as_deref(),
            Some(
                r#"process,machine=press-7 temp_c=21.5,count=-3i,running=true,total=42i,program="say \"hi\" \\o/" 1700000000123456789"#
            )
        );
    }

    #[test]
    fn only_good_readings_with_values_are_written() {
        let line = encode_scan(&scan(
            "m",
            vec![
                reading("bad", None, Quality::Bad),
                reading("shaky", Some(TagValue::Int(1)), Quality::Uncertain),
                reading("empty", None, Quality::Good),
                good("ok", TagValue::Bool(false)),
            ],
        ))
        .unwrap();
        assert_eq!(
            line.as_deref(),
            Some("process,machine=m ok=false 1700000000123456789")
        );
    }

    #[test]
    fn scan_without_good_value_yields_no_line() {
        let none = scan(
            "m",
            vec![
                reading("bad", None, Quality::Bad),
                reading("shaky", Some(TagValue::Int(1)), Quality::Uncertain),
                good("nan", TagValue::Float(f64::NAN)),
            ],
        );
        assert_eq!(encode_scan(&none).unwrap(), None);
        assert_eq!(encode_scan(&scan("m", vec![])).unwrap(), None);
    }

    #[test]
    fn non_finite_fields_are_skipped() {
        let line = encode_scan(&scan(
            "m",
            vec![
                good("a", TagValue::Float(f64::INFINITY)),
                good("b", TagValue::Float(1.0)),
                good("c", TagValue::Float(f64::NEG_INFINITY)),
                good("d", TagValue::Float(f64::NAN)),
            ],
        ))
        .unwrap();
        assert_eq!(
            line.as_deref(),
            Some("process,machine=m b=1 1700000000123456789")
        );
    }

    #[test]
    fn prediction_line_is_stamped_with_input_time() {
        let prediction = Prediction {
            machine: "press-7".into(),
            model: "wear".into(),
            version: "1.2.0".into(),
            inputs_acquired_at: at(1_000),
            outputs: vec![("rul_h".into(), 123.25), ("p_fail".into(), f64::NAN)],
        };
        assert_eq!(
            encode_record(&Record::Prediction(Arc::new(prediction)))
                .unwrap()
                .as_deref(),
            Some("prediction,machine=press-7,model=wear,version=1.2.0 rul_h=123.25 1000")
        );
    }

    #[test]
    fn shadow_predictions_and_gate_statistics_have_their_own_measurements() {
        let prediction = Prediction {
            machine: "pump-1".into(),
            model: "wear".into(),
            version: "1.1.0".into(),
            inputs_acquired_at: at(1_000),
            outputs: vec![("wear".into(), 0.25)],
        };
        assert_eq!(
            encode_record(&Record::ShadowPrediction(Arc::new(prediction)))
                .unwrap()
                .as_deref(),
            Some("prediction_shadow,machine=pump-1,model=wear,version=1.1.0 wear=0.25 1000")
        );
        let gate = GateRecord {
            model: "wear".into(),
            active_version: "1.0.0".into(),
            shadow_version: "1.1.0".into(),
            metric: "mae",
            samples: 1,
            mean: 0.5,
            lower: f64::NEG_INFINITY,
            upper: f64::INFINITY,
            margin: 0.1,
            psi: None,
            decision: "Pending",
            at: at(2_000),
        };
        assert_eq!(
            encode_record(&Record::Gate(Arc::new(gate)))
                .unwrap()
                .as_deref(),
            Some(
                "gate,model=wear,active_version=1.0.0,shadow_version=1.1.0 metric=\"mae\",\
                 samples=1i,mean=0.5,margin=0.1,decision=\"Pending\" 2000"
            )
        );
    }

    #[test]
    fn drift_line_names_the_input() {
        let drift = DriftRecord {
            machine: "pump-1".into(),
            model: "wear".into(),
            version: "1.0.0".into(),
            kind: "input",
            name: "speed_rpm".into(),
            psi: 0.5,
            at: at(5_000),
        };
        assert_eq!(
            encode_record(&Record::Drift(Arc::new(drift)))
                .unwrap()
                .as_deref(),
            Some("drift,machine=pump-1,model=wear,version=1.0.0,input=speed_rpm psi=0.5 5000")
        );
    }

    #[test]
    fn point_tags_end_the_tag_set_of_every_kind_of_line() {
        let tags = PointTags::new([("gateway", "line 3"), ("site", "north,hall=2")]).unwrap();
        assert_eq!(tags.as_str(), r",gateway=line\ 3,site=north\,hall\=2");
        let pressed = scan(
            "press 7",
            vec![good("temp c", TagValue::Text("a b".into()))],
        );
        assert_eq!(
            encode_record_tagged(&Record::Scan(Arc::new(pressed)), &tags)
                .unwrap()
                .as_deref(),
            Some(
                r#"process,machine=press\ 7,gateway=line\ 3,site=north\,hall\=2 temp\ c="a b" 1700000000123456789"#
            )
        );
        let info = GatewayInfoRecord {
            version: "0.1.0".into(),
            commit: "abc".into(),
            config_sha256: String::new(),
            started_at: at(5),
        };
        assert_eq!(
            encode_record_tagged(&Record::GatewayInfo(Arc::new(info)), &tags)
                .unwrap()
                .as_deref(),
            Some(
                r"gateway_info,version=0.1.0,commit=abc,config_sha256=none,gateway=line\ 3,site=north\,hall\=2 started=1i 5"
            )
        );
        // No tags: the line is exactly the untagged one.
        let record = Record::Scan(Arc::new(scan("m", vec![good("x", TagValue::Int(1))])));
        assert_eq!(
            encode_record_tagged(&record, &PointTags::none()).unwrap(),
            encode_record(&record).unwrap()
        );
    }

    #[test]
    fn point_tags_refuse_record_keys_repeats_and_unencodable_text() {
        for bad in [
            vec![("machine", "a")],
            vec![("version", "a")],
            vec![("gateway", "a"), ("gateway", "b")],
            vec![("gateway", "")],
            vec![("", "a")],
            vec![("site", "a\nb")],
            vec![("site", "ends in \\")],
        ] {
            assert!(PointTags::new(bad.clone()).is_err(), "{bad:?} was accepted");
        }
        assert!(PointTags::new([]).unwrap().is_empty());
    }

    #[test]
    fn gateway_info_line_names_version_commit_and_config() {
        let info = GatewayInfoRecord {
            version: "0.1.0".into(),
            commit: "abc123".into(),
            config_sha256: "ff00".into(),
            started_at: at(3_000),
        };
        assert_eq!(
            encode_record(&Record::GatewayInfo(Arc::new(info)))
                .unwrap()
                .as_deref(),
            Some("gateway_info,version=0.1.0,commit=abc123,config_sha256=ff00 started=1i 3000")
        );
    }

    #[test]
    fn model_event_line_carries_who_what_and_the_previous_version() {
        let event = ModelEventRecord {
            model: "bearing-wear".into(),
            event: "activated",
            version: "1.1.0".into(),
            previous: Some("1.0.0".into()),
            user: "alice".into(),
            reason: None,
            at: at(2_000),
        };
        assert_eq!(
            encode_record(&Record::ModelEvent(Arc::new(event)))
                .unwrap()
                .as_deref(),
            Some(
                "model_event,model=bearing-wear event=\"activated\",version=\"1.1.0\",\
                 previous=\"1.0.0\",user=\"alice\" 2000"
            )
        );
    }

    #[test]
    fn tags_and_field_keys_escape_comma_equals_and_space_and_keep_backslashes() {
        let line = encode_scan(&scan(
            "C:\\press 7,a=b",
            vec![good("flow rate,l=min", TagValue::Int(1))],
        ))
        .unwrap();
        assert_eq!(
            line.as_deref(),
            Some(r"process,machine=C:\press\ 7\,a\=b flow\ rate\,l\=min=1i 1700000000123456789")
        );
    }

    #[test]
    fn a_backslash_no_server_can_read_is_refused() {
        for machine in ["press\\", "a\\ b", "a\\,b", "a\\=b"] {
            let error = encode_scan(&scan(machine, vec![good("x", TagValue::Int(1))]));
            assert!(
                matches!(error, Err(ConnectorError::Unencodable(_))),
                "{machine:?}: {error:?}"
            );
        }
        let error = encode_scan(&scan("m", vec![good("x\\", TagValue::Int(1))]));
        assert!(
            matches!(error, Err(ConnectorError::Unencodable(_))),
            "{error:?}"
        );
        // In a measurement `=` needs no escape, so a backslash before it is fine.
        let mut out = String::new();
        escape_measurement("a\\=b", &mut out).unwrap();
        assert_eq!(out, "a\\=b");
    }

    #[test]
    fn measurement_escapes_comma_and_space_only() {
        let mut out = String::new();
        escape_measurement("a b,c=d", &mut out).unwrap();
        assert_eq!(out, r"a\ b\,c=d");
    }

    #[test]
    fn unicode_passes_unescaped() {
        let line = encode_scan(&scan("Presse-Ü", vec![good("temp_°C", TagValue::Int(1))])).unwrap();
        assert_eq!(
            line.as_deref(),
            Some("process,machine=Presse-Ü temp_°C=1i 1700000000123456789")
        );
    }

    #[test]
    fn line_breaks_and_empty_names_are_unencodable() {
        for machine in ["", "a\nb", "a\rb"] {
            let result = encode_scan(&scan(machine, vec![good("t", TagValue::Int(1))]));
            assert!(
                matches!(result, Err(ConnectorError::Unencodable(_))),
                "{machine:?}"
            );
        }
        let result = encode_scan(&scan("m", vec![good("", TagValue::Int(1))]));
        assert!(matches!(result, Err(ConnectorError::Unencodable(_))));
    }

    #[test]
    fn floats_round_trip() {
        for f in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            21.5,
            1.0 / 3.0,
            123_456_789.123,
            9_999_999_999_999_998.0,
            1e16,
            1e300,
            -1e300,
            1e-5,
            1.5e-7,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            5e-324,
        ] {
            let text = float_text(f);
            let back: f64 = text.parse().unwrap();
            assert_eq!(back.to_bits(), f.to_bits(), "{f:?} written as {text}");
            assert!(!text.contains(['i', 'u']), "{text} must read as a float");
        }
        assert_eq!(float_text(1.0), "1");
        assert_eq!(float_text(1e300), "1e300");
        assert_eq!(float_text(1.5e-7), "1.5e-7");
        assert_eq!(float_text(0.25), "0.25");
    }

    fn f32_text(f: f32) -> String {
        let mut out = String::new();
        write_value(&TagValue::Float32(f), &mut out);
        out
    }

    /// What the store does with an f32's text: reads an f64, which the
    /// model's input narrows back to f32.
    fn narrowed_back(text: &str) -> f32 {
        text.parse::<f64>().unwrap() as f32
    }

    #[test]
    fn f32_values_are_written_short_and_narrow_back_exactly() {
        assert_eq!(f32_text(12.345), "12.345");
        assert_eq!(f32_text(523.417), "523.417");
        assert_eq!(f32_text(1.0), "1");
        assert_eq!(f32_text(-0.0), "-0");
        assert_eq!(f32_text(1.5e-7), "1.5e-7");
        assert_eq!(f32_text(f32::MAX), "3.4028235e38");
        // The one whose short text would come back as its neighbour is
        // written widened, both signs.
        let odd = f32::from_bits(F32_TEXT_NARROWS_TO_NEIGHBOUR);
        let mut ryu = ryu::Buffer::new();
        assert_ne!(narrowed_back(ryu.format_finite(odd)), odd);
        for f in [odd, -odd] {
            assert_eq!(f32_text(f), float_text(f64::from(f)));
            assert_eq!(narrowed_back(&f32_text(f)).to_bits(), f.to_bits());
        }
        // A stride through every exponent (subnormals included), both
        // signs, and random bit patterns; the whole range is checked by
        // `examples/f32_text_narrows_back.rs`.
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(32);
        let stride = (0..0x7F80_0000u32).step_by(4099);
        let random = (0..200_000).map(|_| rng.random::<u32>());
        let mut checked = 0;
        for bits in stride.chain(random) {
            for f in [f32::from_bits(bits), -f32::from_bits(bits)] {
                if f.is_finite() {
                    let text = f32_text(f);
                    assert_eq!(
                        narrowed_back(&text).to_bits(),
                        f.to_bits(),
                        "{f:e} as {text}"
                    );
                    assert!(text.len() <= float_text(f64::from(f)).len(), "{text}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 1_000_000, "{checked}");
    }

    /// `fmt`'s shortest forms, as floats were written before `ryu`: the
    /// stored text must not change with the formatter, but for a last digit
    /// exactly halfway between two shortest forms (`…880.25` as `.2` or
    /// `.3`), which the two round differently; both read back the same.
    fn fmt_float_text(f: f64) -> String {
        let magnitude = f.abs();
        if magnitude != 0.0 && !(1e-5..1e16).contains(&magnitude) {
            format!("{f:e}")
        } else {
            format!("{f}")
        }
    }

    #[test]
    fn floats_are_written_as_fmt_wrote_them() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut checked, mut ties) = (0, 0);
        while checked < 200_000 {
            // Every bit pattern: all exponents, subnormals, both signs.
            let f = f64::from_bits(rng.random::<u64>());
            // And values as they come from sensors: a few decimals.
            let g = (rng.random_range(-1e6..1e6_f64) * 1000.0).round() / 1000.0;
            for x in [f, g] {
                if x.is_finite() {
                    let (ours, fmt) = (float_text(x), fmt_float_text(x));
                    if ours != fmt {
                        let back: f64 = ours.parse().unwrap();
                        assert_eq!(back.to_bits(), x.to_bits(), "{x:?} as {ours}");
                        assert_eq!(ours.len(), fmt.len(), "{x:?}: {ours} vs {fmt}");
                        assert_eq!(ours[..ours.len() - 1], fmt[..fmt.len() - 1], "{x:?}");
                        ties += 1;
                    }
                    checked += 1;
                }
            }
        }
        assert!(
            ties < checked / 1000,
            "{ties} of {checked} written differently"
        );
    }

    #[test]
    fn integers_carry_the_i_suffix_and_huge_unsigned_become_floats() {
        let write = |v: TagValue| {
            let mut out = String::new();
            write_value(&v, &mut out);
            out
        };
        assert_eq!(write(TagValue::Int(i64::MIN)), "-9223372036854775808i");
        assert_eq!(
            write(TagValue::UInt(i64::MAX as u64)),
            "9223372036854775807i"
        );
        assert_eq!(write(TagValue::UInt(u64::MAX)), "1.8446744073709552e19");
        assert_eq!(write(TagValue::Bool(true)), "true");
    }

    #[test]
    fn timestamps_before_the_epoch_are_negative_and_far_ones_fail() {
        let before = UNIX_EPOCH - Duration::from_nanos(5);
        assert_eq!(timestamp_ns(before).unwrap(), -5);
        let far = UNIX_EPOCH + Duration::from_secs(300 * 365 * 24 * 3600);
        assert!(matches!(
            timestamp_ns(far),
            Err(ConnectorError::Unencodable(_))
        ));
    }
}
