//! Configuration of one Modbus machine (TCP, RTU on a serial line, RTU over
//! TCP) and its tags.

use std::collections::HashSet;

use serde::Deserialize;

pub use crate::backoff::BackoffConfig;

use crate::validation::{name_problem, Problem};

/// Largest register count one Modbus read may ask for (function codes 3 and 4).
pub const MAX_REGISTERS_PER_READ: u16 = 125;
/// Largest bit count one Modbus read may ask for (function codes 1 and 2).
pub const MAX_BITS_PER_READ: u16 = 2000;

/// One machine reached over Modbus TCP (`protocol = "modbus-tcp"`), or over
/// RTU framing on a TCP socket (`protocol = "modbus-rtu-over-tcp"`, as serial
/// device servers speak it): both have the same keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusMachineConfig {
    pub name: String,
    /// `host:port`; the host may be a name, resolved at each connect.
    pub address: String,
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Deadline for each request and for each connect.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Reconnect delay (default 250 ms doubling up to 30 s).
    #[serde(default = "default_backoff")]
    pub backoff: BackoffConfig,
    /// Upper bound of registers in one read; some devices accept fewer than
    /// the protocol's 125.
    #[serde(default = "default_max_registers_per_read")]
    pub max_registers_per_read: u16,
    pub tags: Vec<ModbusTagConfig>,
}

/// One value read from a machine.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusTagConfig {
    pub name: String,
    pub register: RegisterKind,
    /// Zero-based protocol address of the first register or bit.
    pub address: u16,
    #[serde(rename = "type")]
    pub data_type: DataType,
    #[serde(default)]
    pub byte_order: ByteOrder,
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    pub unit: Option<String>,
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    Holding,
    Input,
    Coil,
    DiscreteInput,
}

impl RegisterKind {
    /// Coils and discrete inputs hold single bits, the others 16-bit words.
    pub fn is_bit(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::DiscreteInput)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RegisterKind::Holding => "holding",
            RegisterKind::Input => "input",
            RegisterKind::Coil => "coil",
            RegisterKind::DiscreteInput => "discrete_input",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl DataType {
    /// Registers (or, for `Bool`, bits) the value occupies.
    pub fn width(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }
}

/// Byte order of a multi-register value; see [`crate::modbus::decode`] for
/// the register layout of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum ByteOrder {
    #[default]
    #[serde(rename = "ABCD")]
    Abcd,
    #[serde(rename = "DCBA")]
    Dcba,
    #[serde(rename = "BADC")]
    Badc,
    #[serde(rename = "CDAB")]
    Cdab,
}

fn default_baud_rate() -> u32 {
    19_200
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_unit_id() -> u8 {
    1
}
fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_request_timeout_ms() -> u64 {
    1000
}
fn default_backoff() -> BackoffConfig {
    BackoffConfig {
        initial_ms: 250,
        max_ms: 30_000,
    }
}
fn default_max_registers_per_read() -> u16 {
    MAX_REGISTERS_PER_READ
}
fn default_scale() -> f64 {
    1.0
}

impl ModbusMachineConfig {
    /// Every problem of this machine, each at a key path below `path`
    /// (e.g. `machines[0]`). Empty when the configuration is usable.
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        let unit = self.unit();
        let mut problems = unit.name_problems(path);
        if let Some(message) = address_problem(&self.address) {
            problems.push(Problem::new(format!("{path}.address"), message));
        }
        problems.extend(unit.polling_problems(path));
        problems
    }

    /// What is polled and how, apart from the way the machine is reached.
    pub fn unit(&self) -> ModbusUnitConfig {
        ModbusUnitConfig {
            name: self.name.clone(),
            unit_id: self.unit_id,
            poll_interval_ms: self.poll_interval_ms,
            request_timeout_ms: self.request_timeout_ms,
            backoff: self.backoff,
            max_registers_per_read: self.max_registers_per_read,
            tags: self.tags.clone(),
        }
    }
}

/// The part of every Modbus machine's configuration that does not depend on
/// how it is reached: its unit id, polling and tags. The poller works on
/// this alone.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusUnitConfig {
    pub name: String,
    pub unit_id: u8,
    pub poll_interval_ms: u64,
    pub request_timeout_ms: u64,
    pub backoff: BackoffConfig,
    pub max_registers_per_read: u16,
    pub tags: Vec<ModbusTagConfig>,
}

impl ModbusUnitConfig {
    fn name_problems(&self, path: &str) -> Vec<Problem> {
        name_problem(&self.name)
            .map(|message| Problem::new(format!("{path}.name"), message))
            .into_iter()
            .collect()
    }

    /// Problems of the polling keys and the tags (not of the name).
    fn polling_problems(&self, path: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.poll_interval_ms == 0 {
            problems.push(Problem::new(
                format!("{path}.poll_interval_ms"),
                "must be greater than 0",
            ));
        }
        if self.request_timeout_ms == 0 {
            problems.push(Problem::new(
                format!("{path}.request_timeout_ms"),
                "must be greater than 0",
            ));
        }
        problems.extend(self.backoff.validate(&format!("{path}.backoff")));
        if !(1..=MAX_REGISTERS_PER_READ).contains(&self.max_registers_per_read) {
            problems.push(Problem::new(
                format!("{path}.max_registers_per_read"),
                format!(
                    "{} is outside 1..={MAX_REGISTERS_PER_READ}",
                    self.max_registers_per_read
                ),
            ));
        }
        if self.tags.is_empty() {
            problems.push(Problem::new(
                format!("{path}.tags"),
                "at least one tag is needed",
            ));
        }

        let mut seen = HashSet::new();
        for (i, tag) in self.tags.iter().enumerate() {
            let tag_path = format!("{path}.tags[{i}]");
            if let Some(message) = name_problem(&tag.name) {
                problems.push(Problem::new(format!("{tag_path}.name"), message));
            } else if !seen.insert(tag.name.as_str()) {
                problems.push(Problem::new(
                    format!("{tag_path}.name"),
                    format!("duplicate tag name `{}`", tag.name),
                ));
            }
            problems.extend(tag.problems(&tag_path, self.max_registers_per_read));
        }
        problems
    }

    /// A unit id a device on an RTU line can have: 0 is the broadcast
    /// address (nobody answers it) and 248-255 are reserved by the spec.
    fn rtu_unit_id_problems(&self, path: &str) -> Vec<Problem> {
        if (1..=247).contains(&self.unit_id) {
            Vec::new()
        } else {
            vec![Problem::new(
                format!("{path}.unit_id"),
                format!(
                    "{} is not a device address on an RTU line (1-247; 0 is broadcast)",
                    self.unit_id
                ),
            )]
        }
    }
}

/// RTU-over-TCP machines have the keys of Modbus TCP machines; their unit id
/// addresses a device on the serial line behind the device server.
pub fn rtu_over_tcp_problems(config: &ModbusMachineConfig, path: &str) -> Vec<Problem> {
    let mut problems = config.validate(path);
    problems.extend(config.unit().rtu_unit_id_problems(path));
    problems
}

/// One machine on a serial line (`protocol = "modbus-rtu"`). Machines that
/// name the same `serial` share the line: they must agree on its settings and
/// have different unit ids.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusRtuMachineConfig {
    pub name: String,
    /// The serial device, e.g. `/dev/ttyUSB0`.
    pub serial: String,
    #[serde(default = "default_baud_rate")]
    pub baud_rate: u32,
    /// Default even, as the Modbus serial line spec says.
    #[serde(default)]
    pub parity: Parity,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Deadline for each request, counted from the moment it goes on the line
    /// (not while it waits for the bus).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Delay before a unit that failed is asked again (default 250 ms
    /// doubling up to 30 s); the other units of the line are not delayed.
    #[serde(default = "default_backoff")]
    pub backoff: BackoffConfig,
    #[serde(default = "default_max_registers_per_read")]
    pub max_registers_per_read: u16,
    pub tags: Vec<ModbusTagConfig>,
}

/// Parity bit of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    #[default]
    Even,
    Odd,
}

impl Parity {
    pub fn as_str(self) -> &'static str {
        match self {
            Parity::None => "none",
            Parity::Even => "even",
            Parity::Odd => "odd",
        }
    }
}

/// The settings every device on one serial line must share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SerialLineSettings {
    pub baud_rate: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl SerialLineSettings {
    /// Bits on the wire per character: start bit, data, parity, stop bits.
    pub fn bits_per_character(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// The silence that ends a frame: 3.5 character times, but a fixed
    /// 1.75 ms above 19200 baud (Modbus over serial line spec, 2.5.1.1),
    /// where the character time gets too short for UARTs to time reliably.
    pub fn inter_frame_gap(&self) -> std::time::Duration {
        if self.baud_rate > 19_200 {
            std::time::Duration::from_micros(1750)
        } else {
            let micros =
                u64::from(self.bits_per_character()) * 3_500_000 / u64::from(self.baud_rate.max(1));
            std::time::Duration::from_micros(micros)
        }
    }

    /// `(key, value)` pairs, for naming the first difference to another line.
    fn keyed(&self) -> [(&'static str, String); 4] {
        [
            ("baud_rate", self.baud_rate.to_string()),
            ("parity", format!("{:?}", self.parity.as_str())),
            ("data_bits", self.data_bits.to_string()),
            ("stop_bits", self.stop_bits.to_string()),
        ]
    }

    /// The first key where `self` differs from `other`, with both values.
    pub fn first_difference(&self, other: &Self) -> Option<(&'static str, String, String)> {
        self.keyed()
            .into_iter()
            .zip(other.keyed())
            .find(|((_, a), (_, b))| a != b)
            .map(|((key, a), (_, b))| (key, a, b))
    }
}

impl ModbusRtuMachineConfig {
    /// Every problem of this machine on its own (the line it shares with
    /// other machines is checked by [`shared_line_problems`]).
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        let unit = self.unit();
        let mut problems = unit.name_problems(path);
        if self.serial.trim().is_empty() {
            problems.push(Problem::new(
                format!("{path}.serial"),
                "must name the serial device, e.g. /dev/ttyUSB0",
            ));
        }
        if !(MIN_BAUD_RATE..=MAX_BAUD_RATE).contains(&self.baud_rate) {
            problems.push(Problem::new(
                format!("{path}.baud_rate"),
                format!(
                    "{} is outside {MIN_BAUD_RATE}..={MAX_BAUD_RATE}",
                    self.baud_rate
                ),
            ));
        }
        // RTU carries every byte as one 8-bit character; 7 bits is ASCII mode.
        if self.data_bits != 8 {
            problems.push(Problem::new(
                format!("{path}.data_bits"),
                format!(
                    "{}: Modbus RTU sends 8 data bits per character",
                    self.data_bits
                ),
            ));
        }
        if !(1..=2).contains(&self.stop_bits) {
            problems.push(Problem::new(
                format!("{path}.stop_bits"),
                format!("{} is not 1 or 2", self.stop_bits),
            ));
        }
        problems.extend(unit.rtu_unit_id_problems(path));
        problems.extend(unit.polling_problems(path));
        problems
    }

    pub fn line(&self) -> SerialLineSettings {
        SerialLineSettings {
            baud_rate: self.baud_rate,
            parity: self.parity,
            data_bits: self.data_bits,
            stop_bits: self.stop_bits,
        }
    }

    pub fn unit(&self) -> ModbusUnitConfig {
        ModbusUnitConfig {
            name: self.name.clone(),
            unit_id: self.unit_id,
            poll_interval_ms: self.poll_interval_ms,
            request_timeout_ms: self.request_timeout_ms,
            backoff: self.backoff,
            max_registers_per_read: self.max_registers_per_read,
            tags: self.tags.clone(),
        }
    }
}

/// Slowest and fastest baud rates accepted: the range serial hardware
/// offers; anything outside is a typo.
pub const MIN_BAUD_RATE: u32 = 300;
pub const MAX_BAUD_RATE: u32 = 4_000_000;

/// How one machine reaches a shared RTU line, for [`shared_line_problems`].
#[derive(Debug, Clone, Copy)]
pub enum LineMember<'a> {
    /// `protocol = "modbus-rtu"`.
    Serial(&'a ModbusRtuMachineConfig),
    /// `protocol = "modbus-rtu-over-tcp"`.
    RtuOverTcp(&'a ModbusMachineConfig),
}

impl<'a> LineMember<'a> {
    fn line_key(self) -> (&'static str, &'a str) {
        match self {
            LineMember::Serial(c) => ("serial", c.serial.as_str()),
            LineMember::RtuOverTcp(c) => ("address", c.address.as_str()),
        }
    }
    fn name(self) -> &'a str {
        match self {
            LineMember::Serial(c) => &c.name,
            LineMember::RtuOverTcp(c) => &c.name,
        }
    }
    fn unit_id(self) -> u8 {
        match self {
            LineMember::Serial(c) => c.unit_id,
            LineMember::RtuOverTcp(c) => c.unit_id,
        }
    }
}

/// Problems between machines that share an RTU line (the same `serial`, or
/// the same `address` of an RTU-over-TCP device server): line settings that
/// differ from the first machine on the line, and unit ids used twice. Each
/// problem is at the later machine's key and names the earlier machine.
/// `members` are `(key path, machine)`, e.g. `("machines[3]", ...)`.
pub fn shared_line_problems<'a>(
    members: impl IntoIterator<Item = (String, LineMember<'a>)>,
) -> Vec<Problem> {
    // Per line: the first machine's path and member, and the units seen.
    type Line<'a> = (String, LineMember<'a>, Vec<(u8, String, String)>);
    let mut lines: Vec<((&'static str, &'a str), Line<'a>)> = Vec::new();
    let mut problems = Vec::new();
    for (path, member) in members {
        let key = member.line_key();
        let Some((_, (first_path, first, units))) = lines.iter_mut().find(|(k, _)| *k == key)
        else {
            let units = vec![(member.unit_id(), path.clone(), member.name().to_string())];
            lines.push((key, (path, member, units)));
            continue;
        };
        if let (LineMember::Serial(this), LineMember::Serial(that)) = (member, *first) {
            if let Some((setting, mine, theirs)) = this.line().first_difference(&that.line()) {
                problems.push(Problem::new(
                    format!("{path}.{setting}"),
                    format!(
                        "{mine} differs from {theirs} of machine {:?} ({first_path}) on the same line {}: \
                         all machines on one serial line need the same settings",
                        that.name, this.serial
                    ),
                ));
            }
        }
        let unit = member.unit_id();
        if let Some((_, other_path, other_name)) = units.iter().find(|(u, _, _)| *u == unit) {
            problems.push(Problem::new(
                format!("{path}.unit_id"),
                format!(
                    "unit {unit} is already machine {other_name:?} ({other_path}) on the line {}={:?}",
                    key.0, key.1
                ),
            ));
        } else {
            units.push((unit, path, member.name().to_string()));
        }
    }
    problems
}

impl ModbusTagConfig {
    fn problems(&self, tag_path: &str, max_registers_per_read: u16) -> Vec<Problem> {
        let mut problems = Vec::new();
        let is_bool = self.data_type == DataType::Bool;
        if self.register.is_bit() && !is_bool {
            problems.push(Problem::new(
                format!("{tag_path}.type"),
                format!(
                    "{} tags hold single bits: the type must be bool",
                    self.register.as_str()
                ),
            ));
        }
        if !self.register.is_bit() && is_bool {
            problems.push(Problem::new(
                format!("{tag_path}.type"),
                format!(
                    "bool needs a coil or discrete_input; {} registers hold numbers",
                    self.register.as_str()
                ),
            ));
        }
        let width = self.data_type.width();
        let last = u32::from(self.address) + u32::from(width) - 1;
        if last > u32::from(u16::MAX) {
            problems.push(Problem::new(
                format!("{tag_path}.address"),
                format!(
                    "a {width}-register value at {} ends at {last}, beyond 65535",
                    self.address
                ),
            ));
        }
        // Only checked when the limit itself is valid, so one mistake gives one problem.
        if !self.register.is_bit()
            && (1..=MAX_REGISTERS_PER_READ).contains(&max_registers_per_read)
            && width > max_registers_per_read
        {
            problems.push(Problem::new(
                format!("{tag_path}.type"),
                format!(
                    "needs {width} registers but max_registers_per_read is {max_registers_per_read}"
                ),
            ));
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            problems.push(Problem::new(
                format!("{tag_path}.scale"),
                format!("{} is not a finite, non-zero number", self.scale),
            ));
        }
        if !self.offset.is_finite() {
            problems.push(Problem::new(
                format!("{tag_path}.offset"),
                format!("{} is not a finite number", self.offset),
            ));
        }
        problems
    }
}

fn address_problem(address: &str) -> Option<String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Some(format!("`{address}` is not host:port"));
    };
    if host.is_empty() {
        return Some(format!("`{address}` has no host"));
    }
    match port.parse::<u16>() {
        Ok(0) => Some(format!("`{address}`: port 0 cannot be connected to")),
        Ok(_) => None,
        Err(_) => Some(format!("`{address}`: `{port}` is not a port (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ModbusMachineConfig {
        toml::from_str(text).unwrap()
    }

    fn valid() -> ModbusMachineConfig {
        parse(
            r#"
            name = "press-7"
            address = "10.0.0.7:502"
            [[tags]]
            name = "temp_c"
            register = "holding"
            address = 0
            type = "f32"
            [[tags]]
            name = "running"
            register = "coil"
            address = 3
            type = "bool"
            "#,
        )
    }

    fn paths(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn defaults_apply() {
        let c = valid();
        assert_eq!(c.unit_id, 1);
        assert_eq!(c.poll_interval_ms, 1000);
        assert_eq!(c.request_timeout_ms, 1000);
        assert_eq!(
            c.backoff,
            BackoffConfig {
                initial_ms: 250,
                max_ms: 30_000
            }
        );
        assert_eq!(c.max_registers_per_read, 125);
        let t = &c.tags[0];
        assert_eq!(t.byte_order, ByteOrder::Abcd);
        assert_eq!(t.scale, 1.0);
        assert_eq!(t.offset, 0.0);
        assert_eq!(t.unit, None);
        assert!(c.validate("machines[0]").is_empty());
    }

    #[test]
    fn all_fields_parse() {
        let c = parse(
            r#"
            name = "m"
            address = "plc.local:1502"
            unit_id = 17
            poll_interval_ms = 200
            request_timeout_ms = 300
            max_registers_per_read = 60
            backoff = { initial_ms = 10, max_ms = 20 }
            [[tags]]
            name = "flow"
            register = "input"
            address = 40
            type = "i64"
            byte_order = "CDAB"
            scale = 0.5
            offset = -3.0
            unit = "l/min"
            "#,
        );
        assert_eq!(c.unit_id, 17);
        assert_eq!(
            c.backoff,
            BackoffConfig {
                initial_ms: 10,
                max_ms: 20
            }
        );
        let t = &c.tags[0];
        assert_eq!(t.register, RegisterKind::Input);
        assert_eq!(t.data_type, DataType::I64);
        assert_eq!(t.byte_order, ByteOrder::Cdab);
        assert_eq!(t.unit.as_deref(), Some("l/min"));
        assert!(c.validate("m").is_empty());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<ModbusMachineConfig>(
            "name = \"m\"\naddress = \"h:1\"\nprotocol = \"modbus\"\ntags = []",
        )
        .unwrap_err();
        assert!(err.to_string().contains("protocol"), "{err}");
        let err = toml::from_str::<ModbusMachineConfig>(
            "name = \"m\"\naddress = \"h:1\"\ntags = [{ name = \"t\", register = \"holding\", address = 0, type = \"u16\", swap = true }]",
        )
        .unwrap_err();
        assert!(err.to_string().contains("swap"), "{err}");
    }

    #[test]
    fn machine_level_rules() {
        let mut c = valid();
        c.name = "press 7".into();
        c.poll_interval_ms = 0;
        c.request_timeout_ms = 0;
        c.backoff = BackoffConfig {
            initial_ms: 500,
            max_ms: 100,
        };
        c.max_registers_per_read = 126;
        let problems = c.validate("machines[1]");
        assert_eq!(
            paths(&problems),
            [
                "machines[1].name",
                "machines[1].poll_interval_ms",
                "machines[1].request_timeout_ms",
                "machines[1].backoff.max_ms",
                "machines[1].max_registers_per_read",
            ]
        );
        c.max_registers_per_read = 0;
        c.backoff.initial_ms = 0;
        c.tags.clear();
        c.name = String::new();
        let problems = c.validate("m");
        assert!(paths(&problems).contains(&"m.max_registers_per_read"));
        assert!(paths(&problems).contains(&"m.backoff.initial_ms"));
        assert!(paths(&problems).contains(&"m.tags"));
        assert!(paths(&problems).contains(&"m.name"));
    }

    #[test]
    fn addresses_need_host_and_port() {
        for (address, ok) in [
            ("10.0.0.7:502", true),
            ("plc.local:1502", true),
            ("[::1]:502", true),
            ("10.0.0.7", false),
            (":502", false),
            ("host:", false),
            ("host:0", false),
            ("host:70000", false),
            ("host:http", false),
        ] {
            let mut c = valid();
            c.address = address.into();
            let problems = c.validate("m");
            if ok {
                assert!(problems.is_empty(), "{address}: {problems:?}");
            } else {
                assert_eq!(paths(&problems), ["m.address"], "{address}");
            }
        }
    }

    #[test]
    fn tag_rules_each_report_their_own_path() {
        let mut c = valid();
        let base = c.tags[0].clone();
        let tag = |f: &dyn Fn(&mut ModbusTagConfig)| {
            let mut t = base.clone();
            f(&mut t);
            t
        };
        c.tags = vec![
            tag(&|t| t.name = "ok".into()),
            tag(&|t| t.name = "ok".into()),
            tag(&|t| {
                t.name = "coil_u16".into();
                t.register = RegisterKind::Coil;
                t.data_type = DataType::U16;
            }),
            tag(&|t| {
                t.name = "holding_bool".into();
                t.data_type = DataType::Bool;
            }),
            tag(&|t| {
                t.name = "too_far".into();
                t.data_type = DataType::F64;
                t.address = 65533;
            }),
            tag(&|t| {
                t.name = "nan_scale".into();
                t.scale = f64::NAN;
            }),
            tag(&|t| {
                t.name = "zero_scale".into();
                t.scale = 0.0;
            }),
            tag(&|t| {
                t.name = "inf_offset".into();
                t.offset = f64::INFINITY;
            }),
            tag(&|t| t.name = "temp/c".into()),
            tag(&|t| t.name = String::new()),
            tag(&|t| {
                t.name = "last_fits".into();
                t.data_type = DataType::F64;
                t.address = 65532;
            }),
        ];
        let problems = c.validate("machines[0]");
        assert_eq!(
            paths(&problems),
            [
                "machines[0].tags[1].name",
                "machines[0].tags[2].type",
                "machines[0].tags[3].type",
                "machines[0].tags[4].address",
                "machines[0].tags[5].scale",
                "machines[0].tags[6].scale",
                "machines[0].tags[7].offset",
                "machines[0].tags[8].name",
                "machines[0].tags[9].name",
            ],
            "{problems:#?}"
        );
        assert!(problems[0].message.contains("duplicate"));
    }

    #[test]
    fn a_tag_wider_than_the_read_limit_is_reported() {
        let mut c = valid();
        c.max_registers_per_read = 1;
        assert_eq!(paths(&c.validate("m")), ["m.tags[0].type"]);
    }
}

#[cfg(test)]
mod rtu_tests {
    use super::*;

    fn rtu(text: &str) -> ModbusRtuMachineConfig {
        toml::from_str(text).unwrap()
    }

    const TAG: &str =
        "[[tags]]\nname = \"t\"\nregister = \"holding\"\naddress = 0\ntype = \"u16\"\n";

    #[test]
    fn rtu_defaults_follow_the_modbus_serial_spec() {
        let c = rtu(&format!("name = \"m\"\nserial = \"/dev/ttyUSB0\"\n{TAG}"));
        assert_eq!(
            c.line(),
            SerialLineSettings {
                baud_rate: 19_200,
                parity: Parity::Even,
                data_bits: 8,
                stop_bits: 1
            }
        );
        assert_eq!(c.unit_id, 1);
        assert_eq!(c.line().bits_per_character(), 11);
        assert!(c.validate("m").is_empty());
    }

    #[test]
    fn rtu_line_keys_are_checked_each_at_its_path() {
        let mut c = rtu(&format!("name = \"m\"\nserial = \"\"\n{TAG}"));
        c.baud_rate = 0;
        c.data_bits = 7;
        c.stop_bits = 3;
        c.unit_id = 0;
        let paths: Vec<String> = c
            .validate("machines[2]")
            .into_iter()
            .map(|p| p.path)
            .collect();
        assert_eq!(
            paths,
            [
                "machines[2].serial",
                "machines[2].baud_rate",
                "machines[2].data_bits",
                "machines[2].stop_bits",
                "machines[2].unit_id",
            ]
        );
        c.unit_id = 248;
        assert!(c.validate("m").iter().any(|p| p.path == "m.unit_id"));
        let err = toml::from_str::<ModbusRtuMachineConfig>(&format!(
            "name = \"m\"\nserial = \"/dev/x\"\nparity = \"mark\"\n{TAG}"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("mark"), "{err}");
        let err = toml::from_str::<ModbusRtuMachineConfig>(&format!(
            "name = \"m\"\nserial = \"/dev/x\"\naddress = \"h:1\"\n{TAG}"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("address"), "{err}");
    }

    #[test]
    fn machines_on_one_line_must_agree_and_not_share_unit_ids() {
        let base = rtu(&format!("name = \"a\"\nserial = \"/dev/ttyS0\"\n{TAG}"));
        let mut b = base.clone();
        b.name = "b".into();
        b.unit_id = 2;
        b.parity = Parity::None;
        let mut c = base.clone();
        c.name = "c".into();
        let mut elsewhere = base.clone();
        elsewhere.name = "d".into();
        elsewhere.serial = "/dev/ttyS1".into();
        elsewhere.baud_rate = 9600;
        let problems = shared_line_problems([
            ("machines[0]".to_string(), LineMember::Serial(&base)),
            ("machines[1]".to_string(), LineMember::Serial(&b)),
            ("machines[2]".to_string(), LineMember::Serial(&c)),
            ("machines[3]".to_string(), LineMember::Serial(&elsewhere)),
        ]);
        let found: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.path.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].0, "machines[1].parity");
        assert!(found[0].1.contains("\"a\"") && found[0].1.contains("machines[0]"));
        assert_eq!(found[1].0, "machines[2].unit_id");
        assert!(found[1].1.contains("unit 1") && found[1].1.contains("\"a\""));
    }
}
