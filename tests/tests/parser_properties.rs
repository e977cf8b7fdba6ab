//! Property tests of the parsers that read outside input: no input makes
//! them panic, and what they write they read back exactly.
//!
//! - Modbus decoding against the simulator's own, independent encoder;
//! - OPC UA node addresses (`nsu=<uri>;s=<id>`) through text and back;
//! - line protocol against a reference reader with InfluxDB's escaping
//!   rules (its Go parser's: `\` escapes only `,`, `=` and space in names);
//! - the configuration file and the model manifest, whole and mutated;
//! - the InfluxDB disk spool's segments, damaged anywhere.
//!
//! It found one: async-opcua's node-id parser panics when the first two
//! bytes split a character (a typo in a config file would have crashed
//! `ironbridge validate`); `NodeAddress::parse` now refuses such text first.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ironbridge_connectors::influx::line_protocol::encode_scan;
use ironbridge_connectors::modbus::config::{ByteOrder, DataType};
use ironbridge_connectors::modbus::decode::decode_registers;
use ironbridge_connectors::opcua::node::NodeAddress;
use ironbridge_connectors::{Quality, Scan, TagReading, TagValue};
use ironbridge_simulator::registers::{encode_words, ByteOrder as SimOrder};
use ironbridge_tests::paths::repo_root;
use opcua::types::Identifier;
use proptest::prelude::*;

const ORDERS: [(ByteOrder, SimOrder); 4] = [
    (ByteOrder::Abcd, SimOrder::Abcd),
    (ByteOrder::Dcba, SimOrder::Dcba),
    (ByteOrder::Badc, SimOrder::Badc),
    (ByteOrder::Cdab, SimOrder::Cdab),
];

fn decoded(bytes: &[u8], data_type: DataType, order: usize) -> TagValue {
    let (ours, theirs) = ORDERS[order];
    let words = encode_words(bytes, theirs);
    match decode_registers(&words, data_type, ours) {
        Ok(value) => value,
        Err(e) => panic!("{data_type:?} {ours:?} {words:?}: {e:?}"),
    }
}

proptest! {
    // A failure prints its minimal input; nothing is written into the tree.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn modbus_integers_round_trip_through_the_simulators_encoder(
        v16 in any::<u16>(), v32 in any::<u32>(), v64 in any::<u64>(), order in 0usize..4,
    ) {
        prop_assert_eq!(decoded(&v16.to_be_bytes(), DataType::U16, order), TagValue::UInt(v16.into()));
        prop_assert_eq!(
            decoded(&v16.to_be_bytes(), DataType::I16, order),
            TagValue::Int((v16 as i16).into())
        );
        prop_assert_eq!(decoded(&v32.to_be_bytes(), DataType::U32, order), TagValue::UInt(v32.into()));
        prop_assert_eq!(
            decoded(&v32.to_be_bytes(), DataType::I32, order),
            TagValue::Int((v32 as i32).into())
        );
        prop_assert_eq!(decoded(&v64.to_be_bytes(), DataType::U64, order), TagValue::UInt(v64));
        prop_assert_eq!(decoded(&v64.to_be_bytes(), DataType::I64, order), TagValue::Int(v64 as i64));
    }

    #[test]
    fn modbus_floats_round_trip_bit_for_bit(bits32 in any::<u32>(), bits64 in any::<u64>(), order in 0usize..4) {
        let TagValue::Float32(f) = decoded(&bits32.to_be_bytes(), DataType::F32, order) else {
            panic!("f32 is not an f32");
        };
        // Kept as the f32 it is, NaN payloads included.
        prop_assert_eq!(f.to_bits(), bits32);
        let TagValue::Float(f) = decoded(&bits64.to_be_bytes(), DataType::F64, order) else {
            panic!("f64 is not a float");
        };
        prop_assert_eq!(f.to_bits(), bits64);
    }

    #[test]
    fn modbus_decoding_refuses_any_wrong_input_without_panicking(
        words in proptest::collection::vec(any::<u16>(), 0..9),
        data_type in 0usize..9,
        order in 0usize..4,
    ) {
        let types = [
            DataType::Bool, DataType::U16, DataType::I16, DataType::U32, DataType::I32,
            DataType::U64, DataType::I64, DataType::F32, DataType::F64,
        ];
        let data_type = types[data_type];
        let result = decode_registers(&words, data_type, ORDERS[order].0);
        let fits = data_type != DataType::Bool && words.len() == usize::from(data_type.width());
        prop_assert_eq!(result.is_ok(), fits);
    }

    #[test]
    fn node_addresses_round_trip_through_text(
        uri in proptest::option::of("\\PC{1,24}"),
        numeric in any::<u32>(),
        name in "\\PC{1,24}",
        use_name in any::<bool>(),
    ) {
        let identifier = if use_name {
            Identifier::String(name.clone().into())
        } else {
            Identifier::Numeric(numeric)
        };
        let address = NodeAddress { namespace_uri: uri.clone(), identifier };
        let text = address.to_string();
        let back = NodeAddress::parse(&text);
        // Surrounding blanks are trimmed from the whole text (a config
        // convenience), so an identifier that ends in one cannot come back.
        let blank_edge = use_name && name.ends_with(char::is_whitespace)
            || uri.as_deref().is_some_and(|u| u.starts_with(char::is_whitespace));
        if !blank_edge {
            prop_assert_eq!(back, Ok(address), "text {:?}", text);
        }
    }

    #[test]
    fn node_address_parsing_never_panics(text in "\\PC{0,40}") {
        let _ = NodeAddress::parse(&text);
        let _ = NodeAddress::parse(&format!("nsu={text}"));
    }

    #[test]
    fn line_protocol_reads_back_exactly_or_is_refused(
        machine in "[a-zA-Z0-9 ,=\\\\\"_.:-]{1,12}",
        tag in "[a-zA-Z0-9 ,=\\\\\"_.-]{1,12}",
        value in any::<f64>(),
        text in "\\PC{0,16}",
        ns in 0u64..4_000_000_000_000_000_000,
    ) {
        let scan = Scan {
            machine: machine.as_str().into(),
            acquired_at: UNIX_EPOCH + Duration::from_nanos(ns),
            readings: vec![
                TagReading { tag: tag.as_str().into(), value: Some(TagValue::Float(value)), quality: Quality::Good, status: None },
                TagReading { tag: "note".into(), value: Some(TagValue::Text(Arc::from(text.as_str()))), quality: Quality::Good, status: None },
            ],
        };
        match encode_scan(&scan) {
            Err(_) => {
                // Only what InfluxDB could not read back is refused.
                let unreadable = |s: &str| s.ends_with('\\')
                    || [",", "=", " "].iter().any(|c| s.contains(&format!("\\{c}")));
                prop_assert!(unreadable(&machine) || unreadable(&tag), "{machine:?} {tag:?}");
            }
            Ok(None) => prop_assert!(false, "a text field is always written"),
            Ok(Some(line)) => {
                let point = read_line(&line);
                prop_assert_eq!(&point.measurement, "process");
                prop_assert_eq!(&point.tags, &vec![("machine".to_string(), machine.clone())]);
                let mut expected = Vec::new();
                if value.is_finite() && tag != "note" {
                    expected.push((tag.clone(), Field::Float(value)));
                }
                expected.push(("note".to_string(), Field::Text(text.clone())));
                if tag == "note" && value.is_finite() {
                    expected.insert(0, (tag.clone(), Field::Float(value)));
                }
                prop_assert_eq!(&point.fields, &expected, "line {:?}", line);
                prop_assert_eq!(point.time_ns, ns as i64);
            }
        }
    }

    #[test]
    fn configuration_parsing_never_panics_on_a_mutated_example(
        at in 0usize..20_000, delete in 0usize..40, insert in "\\PC{0,12}",
    ) {
        let path = repo_root().join("config/example.toml");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mutated = mutate(&text, at, delete, &insert);
        let _ = ironbridge::config::GatewayConfig::parse(&mutated, &path);
    }

    #[test]
    fn manifest_parsing_never_panics_on_a_mutated_example(
        at in 0usize..4_000, delete in 0usize..40, insert in "\\PC{0,12}",
    ) {
        let dir = repo_root().join("models/examples/bearing-wear/1.0.0");
        let text = std::fs::read_to_string(dir.join("manifest.toml")).unwrap_or_default();
        let mutated = mutate(&text, at, delete, &insert);
        let _ = ironbridge_models::ModelManifest::from_toml(&mutated, Path::new(&dir));
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        cases: 64,
        ..ProptestConfig::default()
    })]

    /// A spool segment damaged anywhere (bytes overwritten, the file cut)
    /// never stops the spool from opening, and what it delivers is the
    /// written lines, intact and in order, less the damaged ones.
    #[test]
    fn a_damaged_spool_opens_and_yields_only_whole_lines_in_order(
        lines in proptest::collection::vec("[a-z]{1,8} v=[0-9]{1,6}i", 1..60),
        damage in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        use ironbridge_connectors::influx::buffer::BatchOutcome;
        use ironbridge_connectors::influx::spool::{DiskSpool, FsyncPolicy};
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        {
            let (mut spool, _) = DiskSpool::open(dir.path(), 1 << 20, FsyncPolicy::EveryCommit)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            for line in &lines {
                spool.push(line);
            }
            prop_assert!(spool.close().error.is_none());
        }
        let segment = std::fs::read_dir(dir.path())
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false)
                && p.extension().is_some_and(|x| x == "seg"))
            .ok_or_else(|| TestCaseError::fail("no segment written"))?;
        let mut bytes = std::fs::read(&segment).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (at, value) in &damage {
            let at = at % bytes.len();
            bytes[at] = *value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        std::fs::write(&segment, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;

        let (mut spool, recovery) = DiskSpool::open(dir.path(), 1 << 20, FsyncPolicy::EveryCommit)
            .map_err(|e| TestCaseError::fail(format!("a damaged spool must open: {e}")))?;
        let mut read = Vec::new();
        while let Some(body) = spool.start_batch(7).map_err(|e| TestCaseError::fail(e.to_string()))? {
            read.extend(body.split('\n').map(str::to_string));
            spool.finish_batch(BatchOutcome::Delivered);
        }
        prop_assert_eq!(read.len(), recovery.lines);
        // A subsequence of what was written, in order.
        let mut written = lines.iter();
        for line in &read {
            prop_assert!(written.any(|w| w == line), "{:?} not in order in {:?}", line, lines);
        }
        if damage.is_empty() && cut.is_none() {
            prop_assert_eq!(&read, &lines);
        }
    }
}

/// `text` with `delete` characters at `at` replaced by `insert`.
fn mutate(text: &str, at: usize, delete: usize, insert: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = at % (chars.len() + 1);
    let end = (at + delete).min(chars.len());
    chars[..at]
        .iter()
        .chain(insert.chars().collect::<Vec<_>>().iter())
        .chain(chars[end..].iter())
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Float(f64),
    Text(String),
}

#[derive(Debug)]
struct Point {
    measurement: String,
    tags: Vec<(String, String)>,
    fields: Vec<(String, Field)>,
    time_ns: i64,
}

/// A reference reader of one line, with InfluxDB's rules: in names a
/// backslash escapes `,`, `=` or a space and is itself otherwise; in a
/// string field `\"` and `\\` are escapes.
fn read_line(line: &str) -> Point {
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    // Reads a name up to an unescaped stop character.
    let name = |stops: &[char], i: &mut usize| -> String {
        let mut out = String::new();
        while *i < chars.len() && !stops.contains(&chars[*i]) {
            if chars[*i] == '\\' && *i + 1 < chars.len() && [',', '=', ' '].contains(&chars[*i + 1])
            {
                out.push(chars[*i + 1]);
                *i += 2;
            } else {
                out.push(chars[*i]);
                *i += 1;
            }
        }
        out
    };
    let measurement = name(&[',', ' '], &mut i);
    let mut tags = Vec::new();
    while chars.get(i) == Some(&',') {
        i += 1;
        let key = name(&['='], &mut i);
        i += 1;
        let value = name(&[',', ' '], &mut i);
        tags.push((key, value));
    }
    assert_eq!(chars.get(i), Some(&' '), "{line}");
    i += 1;
    let mut fields = Vec::new();
    loop {
        let key = name(&['='], &mut i);
        i += 1;
        let value = if chars.get(i) == Some(&'"') {
            i += 1;
            let mut out = String::new();
            while chars[i] != '"' {
                if chars[i] == '\\' && matches!(chars.get(i + 1), Some('"' | '\\')) {
                    i += 1;
                }
                out.push(chars[i]);
                i += 1;
            }
            i += 1;
            Field::Text(out)
        } else {
            let start = i;
            while i < chars.len() && chars[i] != ',' && chars[i] != ' ' {
                i += 1;
            }
            let raw: String = chars[start..i].iter().collect();
            Field::Float(raw.parse().unwrap_or_else(|_| panic!("{raw:?} in {line}")))
        };
        fields.push((key, value));
        if chars.get(i) == Some(&',') {
            i += 1;
        } else {
            break;
        }
    }
    assert_eq!(chars.get(i), Some(&' '), "{line}");
    let time_ns = chars[i + 1..]
        .iter()
        .collect::<String>()
        .parse()
        .unwrap_or(-1);
    Point {
        measurement,
        tags,
        fields,
        time_ns,
    }
}
