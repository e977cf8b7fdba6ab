//! The register image behind the server: one `u16` per mapped register,
//! written by the prediction collectors and the fan-out, read by client
//! connections.
//!
//! One mutex over the whole image: a prediction writes about 30 registers
//! and a read copies at most 125, so the lock is held for well under a
//! microsecond, and a read never sees a half-written block.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use ironbridge_connectors::{Prediction, Quality, Scan};
use tokio_modbus::ExceptionCode;

use super::map::{
    block, directory, BlockStatus, RegisterMap, BLOCK_SIZE, FIRST_BLOCK_ADDRESS, LAYOUT_VERSION,
    MAGIC, MAX_OUTPUTS, MAX_REGISTERS_PER_READ, VERSION_CHARS,
};

/// The f32 an output holds when there is no value: a quiet NaN, the same
/// bits every time so an HMI can compare words if it cannot test for NaN.
pub const NO_VALUE: f32 = f32::from_bits(0x7FC0_0000);

/// The latest predictions as Modbus registers. Cheap to clone; every method
/// is synchronous, takes the image's lock briefly and does not allocate
/// (except [`Self::read_input_registers`], for its answer).
#[derive(Clone)]
pub struct PredictionRegisters {
    inner: Arc<Inner>,
}

struct Inner {
    /// machine → its tag count and its blocks.
    machines: HashMap<Arc<str>, MachineBlocks>,
    image: Mutex<Vec<u16>>,
    /// Predictions for a (machine, model) pair the map has no block for.
    unknown_predictions: AtomicU64,
}

struct MachineBlocks {
    tag_count: usize,
    /// (model, index of the block's first register in the image).
    blocks: Vec<(Arc<str>, usize)>,
}

impl std::fmt::Debug for PredictionRegisters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionRegisters")
            .field("registers", &self.lock().len())
            .field(
                "unknown_predictions",
                &self.inner.unknown_predictions.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl PredictionRegisters {
    /// The image of `map` before any prediction: directory filled, every
    /// block with its version, indexes and output count, status
    /// [`BlockStatus::NoPrediction`] and NaN outputs.
    pub fn new(map: &RegisterMap) -> Self {
        let mut image = vec![0u16; map.end()];
        let dir = &mut image[..usize::from(BLOCK_SIZE)];
        dir[usize::from(directory::MAGIC)] = MAGIC;
        dir[usize::from(directory::LAYOUT_VERSION)] = LAYOUT_VERSION;
        // RegisterMap keeps the count at or below MAX_BLOCKS (1023).
        dir[usize::from(directory::BLOCK_COUNT)] = map.blocks.len() as u16;
        dir[usize::from(directory::BLOCK_SIZE)] = BLOCK_SIZE;
        dir[usize::from(directory::FIRST_BLOCK_ADDRESS)] = FIRST_BLOCK_ADDRESS;
        dir[usize::from(directory::MAX_OUTPUTS)] = MAX_OUTPUTS as u16;

        let mut machines: HashMap<Arc<str>, MachineBlocks> = map
            .machines
            .iter()
            .map(|m| {
                (
                    Arc::from(m.name.as_str()),
                    MachineBlocks {
                        tag_count: m.tag_count,
                        blocks: Vec::new(),
                    },
                )
            })
            .collect();
        for b in &map.blocks {
            let start = usize::from(b.address);
            let words = &mut image[start..start + usize::from(BLOCK_SIZE)];
            put(words, block::STATUS, BlockStatus::NoPrediction as u16);
            put(words, block::OUTPUT_COUNT, b.outputs.len() as u16);
            put(words, block::MACHINE_INDEX, b.machine_index);
            put(words, block::MODEL_INDEX, b.model_index);
            encode_version(words, &b.version);
            clear_outputs(words);
            if let Some(machine) = machines.get_mut(b.machine.as_str()) {
                machine.blocks.push((Arc::from(b.model.as_str()), start));
            }
        }
        Self {
            inner: Arc::new(Inner {
                machines,
                image: Mutex::new(image),
                unknown_predictions: AtomicU64::new(0),
            }),
        }
    }

    /// Writes `prediction` into its block: sequence + 1, acquisition time,
    /// version and, unless its inputs predate a reported outage, outputs
    /// and status [`BlockStatus::Current`].
    pub fn publish_prediction(&self, prediction: &Prediction) {
        let Some(start) = self.block_start(&prediction.machine, &prediction.model) else {
            let n = self
                .inner
                .unknown_predictions
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    machine = %prediction.machine,
                    model = %prediction.model,
                    total = n,
                    "prediction has no Modbus block"
                );
            }
            return;
        };
        let mut image = self.lock();
        encode_prediction(
            &mut image[start..start + usize::from(BLOCK_SIZE)],
            prediction,
        );
    }

    /// Marks the blocks of the scan's machine [`BlockStatus::MachineUnreachable`]
    /// (outputs NaN) when the scan says the machine cannot be read: every
    /// one of its tags Bad without a value, as sources report an outage.
    /// The outage's time is kept, because predictions already in flight
    /// arrive after it and must not turn the block current again.
    pub fn observe_scan(&self, scan: &Scan) {
        let Some(machine) = self.inner.machines.get(&*scan.machine) else {
            return;
        };
        let unreachable = !scan.readings.is_empty()
            && scan.readings.len() >= machine.tag_count
            && scan
                .readings
                .iter()
                .all(|r| r.quality == Quality::Bad && r.value.is_none());
        if !unreachable || machine.blocks.is_empty() {
            return;
        }
        let mut image = self.lock();
        for &(_, start) in &machine.blocks {
            let words = &mut image[start..start + usize::from(BLOCK_SIZE)];
            // Before any prediction there is nothing to withdraw; "none yet"
            // stays the more precise answer.
            if get(words, block::STATUS) != BlockStatus::NoPrediction as u16 {
                put(words, block::STATUS, BlockStatus::MachineUnreachable as u16);
                put_u64(words, block::OUTAGE_REPORTED_MS, unix_ms(scan.acquired_at));
                clear_outputs(words);
            }
        }
    }

    /// Answers function 04: `count` registers from `address`, or the
    /// exception a Modbus device gives (03 for a count outside 1..=125, 02
    /// for registers outside the map).
    pub fn read_input_registers(
        &self,
        address: u16,
        count: u16,
    ) -> Result<Vec<u16>, ExceptionCode> {
        if count == 0 || count > MAX_REGISTERS_PER_READ {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let start = usize::from(address);
        let end = start + usize::from(count);
        let mut words = {
            let image = self.lock();
            if end > image.len() {
                return Err(ExceptionCode::IllegalDataAddress);
            }
            image[start..end].to_vec()
        };
        // The clock is the time of this answer, so it is filled here rather
        // than kept in the image.
        let clock = usize::from(directory::GATEWAY_CLOCK_MS);
        if start < clock + 4 && end > clock {
            let now = unix_ms(SystemTime::now()).to_be_bytes();
            for i in 0..4 {
                let register = clock + i;
                if (start..end).contains(&register) {
                    words[register - start] = u16::from_be_bytes([now[2 * i], now[2 * i + 1]]);
                }
            }
        }
        Ok(words)
    }

    fn block_start(&self, machine: &str, model: &str) -> Option<usize> {
        self.inner
            .machines
            .get(machine)?
            .blocks
            .iter()
            .find(|(m, _)| &**m == model)
            .map(|&(_, start)| start)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u16>> {
        // Writers only store whole words; a panic between two of them can at
        // worst leave one block mixing two predictions until the next one,
        // which beats taking the server down.
        self.inner
            .image
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Writes one prediction into its block's `words`.
fn encode_prediction(words: &mut [u16], prediction: &Prediction) {
    let sequence = get_u32(words, block::SEQUENCE);
    // 0 means "never"; after a wrap the counter skips it.
    let next = if sequence == u32::MAX {
        1
    } else {
        sequence + 1
    };
    put_u32(words, block::SEQUENCE, next);
    let acquired_ms = unix_ms(prediction.inputs_acquired_at);
    put_u64(words, block::INPUTS_ACQUIRED_MS, acquired_ms);
    encode_version(words, &prediction.version);
    let outage_ms = get_u64(words, block::OUTAGE_REPORTED_MS);
    if get(words, block::STATUS) == BlockStatus::MachineUnreachable as u16
        && acquired_ms <= outage_ms
    {
        // Made from values read before the outage: no longer current.
        return;
    }
    put(words, block::STATUS, BlockStatus::Current as u16);
    put_u64(words, block::OUTAGE_REPORTED_MS, 0);
    clear_outputs(words);
    for (i, (_, value)) in prediction.outputs.iter().take(MAX_OUTPUTS).enumerate() {
        // Models compute f32; the f64 in a Prediction converts back exactly.
        put_f32(words, block::OUTPUTS + 2 * i as u16, *value as f32);
    }
}

/// ASCII, two characters per register, first in the high byte, NUL padded;
/// at most [`VERSION_CHARS`] (the map refuses longer versions).
fn encode_version(words: &mut [u16], version: &str) {
    let bytes = version.as_bytes();
    for i in 0..VERSION_CHARS / 2 {
        let high = bytes.get(2 * i).copied().unwrap_or(0);
        let low = bytes.get(2 * i + 1).copied().unwrap_or(0);
        put(
            words,
            block::VERSION + i as u16,
            u16::from_be_bytes([high, low]),
        );
    }
}

fn clear_outputs(words: &mut [u16]) {
    for i in 0..MAX_OUTPUTS {
        put_f32(words, block::OUTPUTS + 2 * i as u16, NO_VALUE);
    }
}

/// Milliseconds since the unix epoch; 0 for earlier times.
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn get(words: &[u16], offset: u16) -> u16 {
    words[usize::from(offset)]
}

fn put(words: &mut [u16], offset: u16, value: u16) {
    words[usize::from(offset)] = value;
}

fn get_u32(words: &[u16], offset: u16) -> u32 {
    (u32::from(get(words, offset)) << 16) | u32::from(get(words, offset + 1))
}

fn get_u64(words: &[u16], offset: u16) -> u64 {
    (u64::from(get_u32(words, offset)) << 32) | u64::from(get_u32(words, offset + 2))
}

/// Big-endian words, high word first (ABCD), like every multi-register value
/// of the map.
fn put_u32(words: &mut [u16], offset: u16, value: u32) {
    put(words, offset, (value >> 16) as u16);
    put(words, offset + 1, value as u16);
}

fn put_u64(words: &mut [u16], offset: u16, value: u64) {
    put_u32(words, offset, (value >> 32) as u32);
    put_u32(words, offset + 2, value as u32);
}

fn put_f32(words: &mut [u16], offset: u16, value: f32) {
    put_u32(words, offset, value.to_bits());
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ironbridge_connectors::{TagReading, TagValue};

    use super::*;
    use crate::modbus_server::map::{MapMachine, MapModel};

    fn map() -> RegisterMap {
        RegisterMap::new(
            vec![
                MapMachine {
                    name: "pump-1".into(),
                    tag_count: 2,
                },
                MapMachine {
                    name: "pump-2".into(),
                    tag_count: 2,
                },
            ],
            &[MapModel {
                name: "bearing-wear".into(),
                version: "1.0.0".into(),
                outputs: vec!["bearing_wear".into(), "spare".into()],
                machines: vec!["pump-1".into(), "pump-2".into()],
            }],
        )
        .expect("map")
    }

    fn prediction(machine: &str, outputs: &[f64], acquired_ms: u64) -> Prediction {
        Prediction {
            machine: Arc::from(machine),
            model: Arc::from("bearing-wear"),
            version: Arc::from("1.0.0"),
            inputs_acquired_at: UNIX_EPOCH + Duration::from_millis(acquired_ms),
            outputs: outputs
                .iter()
                .enumerate()
                .map(|(i, v)| (Arc::from(format!("o{i}").as_str()), *v))
                .collect(),
        }
    }

    fn scan(machine: &str, readings: Vec<TagReading>) -> Scan {
        Scan {
            machine: Arc::from(machine),
            acquired_at: SystemTime::now(),
            readings,
        }
    }

    fn all_bad(machine: &str) -> Scan {
        scan(
            machine,
            vec![
                TagReading::bad(Arc::from("a"), None),
                TagReading::bad(Arc::from("b"), None),
            ],
        )
    }

    fn read(r: &PredictionRegisters, address: u16, count: u16) -> Vec<u16> {
        r.read_input_registers(address, count).expect("read")
    }

    fn u64_at(words: &[u16], offset: usize) -> u64 {
        words[offset..offset + 4]
            .iter()
            .fold(0u64, |acc, w| (acc << 16) | u64::from(*w))
    }

    fn f32_at(words: &[u16], offset: usize) -> f32 {
        f32::from_bits((u32::from(words[offset]) << 16) | u32::from(words[offset + 1]))
    }

    #[test]
    fn the_directory_describes_the_map() {
        let r = PredictionRegisters::new(&map());
        let before = unix_ms(SystemTime::now());
        let dir = read(&r, 0, 64);
        let after = unix_ms(SystemTime::now());
        assert_eq!(&dir[..6], &[0x4942, 1, 2, 64, 64, 16]);
        let clock = dir[6..10]
            .iter()
            .fold(0u64, |acc, w| (acc << 16) | u64::from(*w));
        assert!(
            (before..=after).contains(&clock),
            "{before} {clock} {after}"
        );
        assert!(dir[10..].iter().all(|&w| w == 0));
        // A read of part of the clock gets that part.
        let low = read(&r, 8, 2);
        assert_eq!(low.len(), 2);
    }

    #[test]
    fn a_block_before_any_prediction_says_so() {
        let r = PredictionRegisters::new(&map());
        let b = read(&r, 128, 64);
        assert_eq!(&b[..4], &[0, 0, BlockStatus::NoPrediction as u16, 2]);
        assert_eq!(&b[4..8], &[0, 0, 0, 0]);
        // "1.0.0" = 0x312E 0x302E 0x3000, then NUL words.
        assert_eq!(&b[8..12], &[0x312E, 0x302E, 0x3000, 0]);
        assert_eq!(&b[24..26], &[1, 0], "machine index, model index");
        for i in 0..16 {
            assert_eq!(f32_at(&b, 32 + 2 * i).to_bits(), 0x7FC0_0000);
        }
    }

    #[test]
    fn a_prediction_is_encoded_big_endian_high_word_first() {
        let r = PredictionRegisters::new(&map());
        let acquired = 1_700_000_000_123u64;
        r.publish_prediction(&prediction("pump-1", &[0.25, -1.5], acquired));
        let b = read(&r, 64, 64);
        assert_eq!(&b[..3], &[0, 1, BlockStatus::Current as u16]);
        assert_eq!(
            &b[4..8],
            &[
                (acquired >> 48) as u16,
                (acquired >> 32) as u16,
                (acquired >> 16) as u16,
                acquired as u16
            ]
        );
        // 0.25f32 = 0x3E800000, -1.5f32 = 0xBFC00000.
        assert_eq!(&b[32..36], &[0x3E80, 0x0000, 0xBFC0, 0x0000]);
        assert!(f32_at(&b, 36).is_nan(), "slots past the outputs stay NaN");
        // The other machine's block is untouched.
        assert_eq!(read(&r, 128, 3), [0, 0, 0]);

        r.publish_prediction(&prediction("pump-1", &[0.5, 2.0], acquired + 1));
        let b = read(&r, 64, 64);
        assert_eq!(&b[..2], &[0, 2], "sequence counts predictions");
        assert_eq!(f32_at(&b, 32), 0.5);
    }

    #[test]
    fn the_sequence_skips_zero_when_it_wraps() {
        let r = PredictionRegisters::new(&map());
        {
            let mut image = r.lock();
            put_u32(&mut image[64..128], block::SEQUENCE, u32::MAX);
        }
        r.publish_prediction(&prediction("pump-1", &[0.1], 1));
        assert_eq!(read(&r, 64, 2), [0, 1]);
    }

    #[test]
    fn an_unreachable_machine_withdraws_its_outputs_until_the_next_prediction() {
        let r = PredictionRegisters::new(&map());
        // Before any prediction, an outage leaves "none yet".
        r.observe_scan(&all_bad("pump-1"));
        assert_eq!(read(&r, 66, 1), [BlockStatus::NoPrediction as u16]);

        r.publish_prediction(&prediction("pump-1", &[0.25, 0.5], 42));
        r.publish_prediction(&prediction("pump-2", &[0.75, 0.5], 43));
        // A partial scan with one Bad tag is not an outage.
        r.observe_scan(&scan("pump-1", vec![TagReading::bad(Arc::from("a"), None)]));
        // Nor is a scan with a Good reading.
        r.observe_scan(&scan(
            "pump-1",
            vec![
                TagReading::bad(Arc::from("a"), None),
                TagReading::good(Arc::from("b"), TagValue::Float(1.0)),
            ],
        ));
        assert_eq!(read(&r, 66, 1), [BlockStatus::Current as u16]);

        let outage = all_bad("pump-1");
        let outage_ms = unix_ms(outage.acquired_at);
        r.observe_scan(&outage);
        let b = read(&r, 64, 64);
        assert_eq!(&b[..3], &[0, 1, BlockStatus::MachineUnreachable as u16]);
        assert_eq!(&b[4..8], &[0, 0, 0, 42], "the last prediction's time stays");
        assert_eq!(u64_at(&b, 28), outage_ms);
        assert!(f32_at(&b, 32).is_nan() && f32_at(&b, 34).is_nan());

        // A prediction already in flight (inputs read before the outage) is
        // counted and named, but does not bring the outputs back.
        r.publish_prediction(&prediction("pump-1", &[0.26, 0.5], 43));
        let b = read(&r, 64, 64);
        assert_eq!(&b[..3], &[0, 2, BlockStatus::MachineUnreachable as u16]);
        assert_eq!(&b[4..8], &[0, 0, 0, 43]);
        assert_eq!(u64_at(&b, 28), outage_ms);
        assert!(f32_at(&b, 32).is_nan());
        assert_eq!(
            read(&r, 128 + 2, 1),
            [BlockStatus::Current as u16],
            "another machine keeps its prediction"
        );

        r.publish_prediction(&prediction("pump-1", &[0.3, 0.6], outage_ms + 1));
        let b = read(&r, 64, 34);
        assert_eq!(&b[..3], &[0, 3, BlockStatus::Current as u16]);
        assert_eq!(u64_at(&b, 28), 0, "no outage any more");
        assert_eq!(f32_at(&b, 32), 0.3);
    }

    #[test]
    fn reads_outside_the_map_or_too_long_get_the_modbus_exceptions() {
        let r = PredictionRegisters::new(&map());
        // The map is 0..192.
        assert_eq!(read(&r, 67, 125).len(), 125);
        assert_eq!(read(&r, 191, 1).len(), 1);
        assert_eq!(
            r.read_input_registers(191, 2),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            r.read_input_registers(192, 1),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            r.read_input_registers(65535, 125),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            r.read_input_registers(0, 126),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            r.read_input_registers(0, 0),
            Err(ExceptionCode::IllegalDataValue)
        );
    }

    #[test]
    fn a_prediction_without_a_block_is_counted_not_written() {
        let r = PredictionRegisters::new(&map());
        let before = read(&r, 0, 125);
        r.publish_prediction(&prediction("press-9", &[1.0], 1));
        assert_eq!(r.inner.unknown_predictions.load(Ordering::Relaxed), 1);
        let mut after = read(&r, 0, 125);
        // Only the clock moved.
        after[6..10].copy_from_slice(&before[6..10]);
        assert_eq!(before, after);
    }
}
