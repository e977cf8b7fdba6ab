//! Configuration of one Modbus TCP machine and its tags.

use std::collections::HashSet;

use serde::Deserialize;

pub use crate::backoff::BackoffConfig;

use crate::validation::{name_problem, Problem};

/// Largest register count one Modbus read may ask for (function codes 3 and 4).
pub const MAX_REGISTERS_PER_READ: u16 = 125;
/// Largest bit count one Modbus read may ask for (function codes 1 and 2).
pub const MAX_BITS_PER_READ: u16 = 2000;

/// One machine reached over Modbus TCP.
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
        let mut problems = Vec::new();
        if let Some(message) = name_problem(&self.name) {
            problems.push(Problem::new(format!("{path}.name"), message));
        }
        if let Some(message) = address_problem(&self.address) {
            problems.push(Problem::new(format!("{path}.address"), message));
        }
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
