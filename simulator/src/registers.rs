//! The pump's Modbus register map: how a [`ProcessState`] becomes registers,
//! and how a client decodes them again.
//!
//! The map deliberately mixes register types, value types and byte orders,
//! like the retrofitted machines the gateway meets. `simulator/README.md`
//! has it as a table, with the matching gateway configuration.

use std::collections::BTreeMap;

use tokio_modbus::ExceptionCode;

use crate::process::ProcessState;

/// Largest register count one read may ask for (Modbus spec).
pub const MAX_READ_REGISTERS: u16 = 125;
/// Largest coil/discrete-input count one read may ask for (Modbus spec).
pub const MAX_READ_BITS: u16 = 2000;

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Holding,
    Input,
    Coil,
    DiscreteInput,
}

/// Value types used by the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    Bool,
    I16,
    U32,
    I32,
    U64,
    F32,
    F64,
}

impl ValueType {
    /// Registers (16-bit words) one value occupies; bits occupy one coil.
    pub fn words(self) -> u16 {
        match self {
            Self::Bool | Self::I16 => 1,
            Self::U32 | Self::I32 | Self::F32 => 2,
            Self::U64 | Self::F64 => 4,
        }
    }
}

/// Order of the value's bytes across registers; A is the most significant
/// byte. For 32 bits: ABCD = [AB, CD], CDAB = [CD, AB], BADC = [BA, DC],
/// DCBA = [DC, BA]; 64-bit values generalize the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    /// Big-endian words in big-endian order.
    Abcd,
    /// Word order reversed, big-endian inside each word.
    Cdab,
    /// Words in order, bytes swapped inside each word.
    Badc,
    /// Fully reversed (little-endian).
    Dcba,
}

/// The process quantities the device exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    SpeedRpm,
    MotorCurrentA,
    RunSeconds,
    DischargePressureBar,
    BearingTempC,
    VibrationMmS,
    FlowM3H,
    Running,
    OvertempAlarm,
}

impl Signal {
    /// The tag name; equals the model input name where a model uses it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::SpeedRpm => "speed_rpm",
            Self::MotorCurrentA => "motor_current_a",
            Self::RunSeconds => "run_seconds",
            Self::DischargePressureBar => "discharge_pressure_bar",
            Self::BearingTempC => "bearing_temp_c",
            Self::VibrationMmS => "vibration_mm_s",
            Self::FlowM3H => "flow_m3_h",
            Self::Running => "running",
            Self::OvertempAlarm => "overtemp_alarm",
        }
    }
}

/// One entry of the register map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TagSpec {
    /// Tag name; equals the model input name where the model uses it.
    pub name: &'static str,
    pub signal: Signal,
    pub table: Table,
    pub address: u16,
    pub value_type: ValueType,
    pub byte_order: ByteOrder,
    /// Engineering value = raw × scale.
    pub scale: f64,
    pub unit: &'static str,
}

const fn tag(
    signal: Signal,
    table: Table,
    address: u16,
    value_type: ValueType,
    byte_order: ByteOrder,
    scale: f64,
    unit: &'static str,
) -> TagSpec {
    TagSpec {
        name: signal.name(),
        signal,
        table,
        address,
        value_type,
        byte_order,
        scale,
        unit,
    }
}

/// The register map of the simulated pump (unit id configurable, default 1).
// One row per tag, laid out as the table it is.
#[rustfmt::skip]
pub const REGISTER_MAP: &[TagSpec] = &[
    tag(Signal::SpeedRpm, Table::Holding, 0, ValueType::F32, ByteOrder::Abcd, 1.0, "rpm"),
    tag(Signal::MotorCurrentA, Table::Holding, 2, ValueType::F32, ByteOrder::Cdab, 1.0, "A"),
    tag(Signal::RunSeconds, Table::Holding, 10, ValueType::U64, ByteOrder::Badc, 1.0, "s"),
    tag(Signal::DischargePressureBar, Table::Holding, 20, ValueType::F64, ByteOrder::Abcd, 1.0, "bar"),
    tag(Signal::BearingTempC, Table::Input, 0, ValueType::I16, ByteOrder::Abcd, 0.1, "°C"),
    tag(Signal::VibrationMmS, Table::Input, 1, ValueType::U32, ByteOrder::Dcba, 0.001, "mm/s"),
    tag(Signal::FlowM3H, Table::Input, 3, ValueType::I32, ByteOrder::Cdab, 0.01, "m³/h"),
    tag(Signal::Running, Table::Coil, 0, ValueType::Bool, ByteOrder::Abcd, 1.0, ""),
    tag(Signal::OvertempAlarm, Table::DiscreteInput, 0, ValueType::Bool, ByteOrder::Abcd, 1.0, ""),
];

/// Puts a value's big-endian bytes (ABCD…) into registers in `order`.
pub fn encode_words(big_endian: &[u8], order: ByteOrder) -> Vec<u16> {
    let mut words: Vec<u16> = big_endian
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => u16::from_be_bytes([*hi, *lo]),
            [hi] => u16::from(*hi) << 8,
            _ => 0,
        })
        .collect();
    match order {
        ByteOrder::Abcd => {}
        ByteOrder::Cdab => words.reverse(),
        ByteOrder::Badc => words.iter_mut().for_each(|w| *w = w.swap_bytes()),
        ByteOrder::Dcba => {
            words.reverse();
            words.iter_mut().for_each(|w| *w = w.swap_bytes());
        }
    }
    words
}

/// Inverse of [`encode_words`]: the value's big-endian bytes.
pub fn decode_words(words: &[u16], order: ByteOrder) -> Vec<u8> {
    // Every order is its own inverse on the word sequence.
    encode_words(
        &words
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect::<Vec<_>>(),
        order,
    )
    .iter()
    .flat_map(|w| w.to_be_bytes())
    .collect()
}

/// The raw value of a tag, before byte ordering.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Raw {
    Bool(bool),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    F64(f64),
}

impl Raw {
    fn big_endian(self) -> Vec<u8> {
        match self {
            Self::Bool(b) => u16::from(b).to_be_bytes().to_vec(),
            Self::I16(v) => v.to_be_bytes().to_vec(),
            Self::U32(v) => v.to_be_bytes().to_vec(),
            Self::I32(v) => v.to_be_bytes().to_vec(),
            Self::U64(v) => v.to_be_bytes().to_vec(),
            Self::F32(v) => v.to_be_bytes().to_vec(),
            Self::F64(v) => v.to_be_bytes().to_vec(),
        }
    }
}

/// Rounds `value / scale` to the nearest integer the register can hold;
/// out-of-range values saturate (`as` casts from float saturate in Rust).
fn scaled(value: f64, scale: f64) -> f64 {
    (value / scale).round()
}

fn raw_value(spec: &TagSpec, state: &ProcessState) -> Raw {
    match spec.signal {
        Signal::SpeedRpm => Raw::F32(state.speed_rpm as f32),
        Signal::MotorCurrentA => Raw::F32(state.motor_current_a as f32),
        Signal::RunSeconds => Raw::U64(state.run_seconds),
        Signal::DischargePressureBar => Raw::F64(state.discharge_pressure_bar),
        Signal::BearingTempC => Raw::I16(scaled(state.bearing_temp_c, spec.scale) as i16),
        Signal::VibrationMmS => Raw::U32(scaled(state.vibration_mm_s, spec.scale) as u32),
        Signal::FlowM3H => Raw::I32(scaled(state.flow_m3_h, spec.scale) as i32),
        Signal::Running => Raw::Bool(state.running),
        Signal::OvertempAlarm => Raw::Bool(state.overtemp_alarm),
    }
}

/// All four tables of the device at one instant. Only mapped addresses exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterImage {
    pub holding: BTreeMap<u16, u16>,
    pub input: BTreeMap<u16, u16>,
    pub coils: BTreeMap<u16, bool>,
    pub discrete_inputs: BTreeMap<u16, bool>,
}

impl RegisterImage {
    /// Encodes a state with [`REGISTER_MAP`].
    pub fn from_state(state: &ProcessState) -> Self {
        let mut image = Self::default();
        for spec in REGISTER_MAP {
            let raw = raw_value(spec, state);
            match (spec.table, raw) {
                (Table::Coil, Raw::Bool(b)) => {
                    image.coils.insert(spec.address, b);
                }
                (Table::DiscreteInput, Raw::Bool(b)) => {
                    image.discrete_inputs.insert(spec.address, b);
                }
                (Table::Holding | Table::Input, _) => {
                    let words = encode_words(&raw.big_endian(), spec.byte_order);
                    let table = if spec.table == Table::Holding {
                        &mut image.holding
                    } else {
                        &mut image.input
                    };
                    for (address, word) in (spec.address..).zip(words) {
                        table.insert(address, word);
                    }
                }
                // A bit table only ever holds a Bool in the map.
                (Table::Coil | Table::DiscreteInput, _) => {}
            }
        }
        image
    }

    /// Registers `address..address+count` of a register table, or the
    /// exception a device answers with.
    pub fn read_registers(
        &self,
        table: Table,
        address: u16,
        count: u16,
    ) -> Result<Vec<u16>, ExceptionCode> {
        let registers = match table {
            Table::Holding => &self.holding,
            Table::Input => &self.input,
            Table::Coil | Table::DiscreteInput => return Err(ExceptionCode::IllegalFunction),
        };
        if count == 0 || count > MAX_READ_REGISTERS {
            return Err(ExceptionCode::IllegalDataValue);
        }
        read_range(registers, address, count)
    }

    /// Bits `address..address+count` of a bit table.
    pub fn read_bits(
        &self,
        table: Table,
        address: u16,
        count: u16,
    ) -> Result<Vec<bool>, ExceptionCode> {
        let bits = match table {
            Table::Coil => &self.coils,
            Table::DiscreteInput => &self.discrete_inputs,
            Table::Holding | Table::Input => return Err(ExceptionCode::IllegalFunction),
        };
        if count == 0 || count > MAX_READ_BITS {
            return Err(ExceptionCode::IllegalDataValue);
        }
        read_range(bits, address, count)
    }
}

/// Every address in the range must be mapped; a range that touches a gap is
/// refused as a whole, as most PLCs do, so clients must read mapped blocks.
fn read_range<T: Copy>(
    table: &BTreeMap<u16, T>,
    address: u16,
    count: u16,
) -> Result<Vec<T>, ExceptionCode> {
    let end = u32::from(address) + u32::from(count);
    if end > 0x1_0000 {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    (u32::from(address)..end)
        .map(|a| {
            u16::try_from(a)
                .ok()
                .and_then(|a| table.get(&a).copied())
                .ok_or(ExceptionCode::IllegalDataAddress)
        })
        .collect()
}

/// Sensor values as a client decodes them from a [`RegisterImage`]: the
/// register quantization (0.1 °C, 1 µm/s, f32 rounding) is already applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientReadings {
    pub speed_rpm: f32,
    pub motor_current_a: f32,
    pub bearing_temp_c: f64,
    pub vibration_mm_s: f64,
    pub discharge_pressure_bar: f64,
    pub flow_m3_h: f64,
    pub run_seconds: u64,
    pub running: bool,
    pub overtemp_alarm: bool,
}

impl ClientReadings {
    /// Decodes every tag of [`REGISTER_MAP`] from `image`.
    pub fn decode(image: &RegisterImage) -> Self {
        Self {
            speed_rpm: f32::from_be_bytes(array(&be_bytes(image, Signal::SpeedRpm))),
            motor_current_a: f32::from_be_bytes(array(&be_bytes(image, Signal::MotorCurrentA))),
            bearing_temp_c: f64::from(i16::from_be_bytes(array(&be_bytes(
                image,
                Signal::BearingTempC,
            )))) * scale_of(Signal::BearingTempC),
            vibration_mm_s: f64::from(u32::from_be_bytes(array(&be_bytes(
                image,
                Signal::VibrationMmS,
            )))) * scale_of(Signal::VibrationMmS),
            discharge_pressure_bar: f64::from_be_bytes(array(&be_bytes(
                image,
                Signal::DischargePressureBar,
            ))),
            flow_m3_h: f64::from(i32::from_be_bytes(array(&be_bytes(image, Signal::FlowM3H))))
                * scale_of(Signal::FlowM3H),
            run_seconds: u64::from_be_bytes(array(&be_bytes(image, Signal::RunSeconds))),
            running: image
                .coils
                .get(&address_of(Signal::Running))
                .copied()
                .unwrap_or(false),
            overtemp_alarm: image
                .discrete_inputs
                .get(&address_of(Signal::OvertempAlarm))
                .copied()
                .unwrap_or(false),
        }
    }
}

fn spec_of(signal: Signal) -> Option<&'static TagSpec> {
    REGISTER_MAP.iter().find(|spec| spec.signal == signal)
}

fn scale_of(signal: Signal) -> f64 {
    spec_of(signal).map_or(1.0, |spec| spec.scale)
}

fn address_of(signal: Signal) -> u16 {
    spec_of(signal).map_or(0, |spec| spec.address)
}

/// The big-endian bytes of a register-table tag, read back from `image`.
fn be_bytes(image: &RegisterImage, signal: Signal) -> Vec<u8> {
    let Some(spec) = spec_of(signal) else {
        return Vec::new();
    };
    image
        .read_registers(spec.table, spec.address, spec.value_type.words())
        .map(|words| decode_words(&words, spec.byte_order))
        .unwrap_or_default()
}

/// Copies bytes into a fixed array (zero-padded if short).
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (slot, byte) in out.iter_mut().zip(bytes) {
        *slot = *byte;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{Process, ProcessConfig};

    #[test]
    fn byte_orders_match_the_documented_table() {
        let abcd = [0xA1, 0xB2, 0xC3, 0xD4];
        assert_eq!(encode_words(&abcd, ByteOrder::Abcd), [0xA1B2, 0xC3D4]);
        assert_eq!(encode_words(&abcd, ByteOrder::Cdab), [0xC3D4, 0xA1B2]);
        assert_eq!(encode_words(&abcd, ByteOrder::Badc), [0xB2A1, 0xD4C3]);
        assert_eq!(encode_words(&abcd, ByteOrder::Dcba), [0xD4C3, 0xB2A1]);
        let eight = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
        assert_eq!(
            encode_words(&eight, ByteOrder::Cdab),
            [0x7788, 0x5566, 0x3344, 0x1122]
        );
        assert_eq!(
            encode_words(&eight, ByteOrder::Badc),
            [0x2211, 0x4433, 0x6655, 0x8877]
        );
        assert_eq!(
            encode_words(&eight, ByteOrder::Dcba),
            [0x8877, 0x6655, 0x4433, 0x2211]
        );
        for order in [
            ByteOrder::Abcd,
            ByteOrder::Cdab,
            ByteOrder::Badc,
            ByteOrder::Dcba,
        ] {
            assert_eq!(decode_words(&encode_words(&eight, order), order), eight);
        }
    }

    #[test]
    fn map_entries_do_not_overlap() {
        for (i, a) in REGISTER_MAP.iter().enumerate() {
            for b in &REGISTER_MAP[i + 1..] {
                let a_end = a.address + a.value_type.words();
                let b_end = b.address + b.value_type.words();
                let overlap = a.table == b.table && a.address < b_end && b.address < a_end;
                assert!(!overlap, "{} overlaps {}", a.name, b.name);
            }
        }
    }

    #[test]
    fn decoded_readings_equal_the_state_up_to_register_resolution() {
        let mut process = Process::new(1, ProcessConfig::default());
        for _ in 0..500 {
            let state = process.step(60.0).clone();
            let readings = ClientReadings::decode(&RegisterImage::from_state(&state));
            assert_eq!(readings.speed_rpm, state.speed_rpm as f32);
            assert_eq!(readings.motor_current_a, state.motor_current_a as f32);
            assert!((readings.bearing_temp_c - state.bearing_temp_c).abs() <= 0.05 + 1e-9);
            assert!((readings.vibration_mm_s - state.vibration_mm_s).abs() <= 0.0005 + 1e-9);
            assert!((readings.flow_m3_h - state.flow_m3_h).abs() <= 0.005 + 1e-9);
            assert_eq!(
                readings.discharge_pressure_bar,
                state.discharge_pressure_bar
            );
            assert_eq!(readings.run_seconds, state.run_seconds);
            assert_eq!(readings.running, state.running);
            assert_eq!(readings.overtemp_alarm, state.overtemp_alarm);
        }
    }

    #[test]
    fn reads_touching_unmapped_addresses_are_refused() {
        let image = RegisterImage::from_state(Process::new(1, ProcessConfig::default()).state());
        assert_eq!(
            image.read_registers(Table::Holding, 4, 1),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            image.read_registers(Table::Holding, 0, 5),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            image.read_registers(Table::Holding, 0xFFFF, 2),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            image.read_registers(Table::Holding, 0, 0),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            image.read_bits(Table::Coil, 1, 1),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert!(image.read_registers(Table::Holding, 0, 4).is_ok());
        assert!(image.read_registers(Table::Input, 0, 5).is_ok());
    }
}
