//! The register map: which input registers hold what. Computed from the
//! configuration alone (machine and model order, each model's outputs from
//! its manifest), so an HMI engineer can derive every address before the
//! gateway runs (`ironbridge validate` prints it; docs/modbus-map.md explains
//! it).
//!
//! ```text
//!   0 ..=  63   directory
//!  64 ..= 127   block 0    one block per (machine, model) pair, in order:
//! 128 ..= 191   block 1    [[machines]] order, then [[models]] order
//!  ...
//! ```
//!
//! Every block has the same size whatever its model's output count, so a
//! block's address depends only on how many pairs come before it.

use std::fmt::Write as _;

/// Identifies the map in the directory's first register: "IB" in ASCII.
pub const MAGIC: u16 = 0x4942;
/// Bumped whenever an offset or a meaning below changes.
pub const LAYOUT_VERSION: u16 = 1;
/// Registers of the directory (at address 0) and of every block. 64 keeps
/// a whole block inside one read (at most 125 registers), so an HMI gets a
/// consistent block with one request.
pub const BLOCK_SIZE: u16 = 64;
/// Where block 0 starts: right after the directory.
pub const FIRST_BLOCK_ADDRESS: u16 = BLOCK_SIZE;
/// Outputs one block has room for (2 registers each).
pub const MAX_OUTPUTS: usize = 16;
/// Characters of the version string (2 per register).
pub const VERSION_CHARS: usize = 32;
/// Blocks that fit below address 65536 after the directory.
pub const MAX_BLOCKS: usize = (65536 - FIRST_BLOCK_ADDRESS as usize) / BLOCK_SIZE as usize;
/// The Modbus limit for one read of registers (function 04).
pub const MAX_REGISTERS_PER_READ: u16 = 125;

/// Register offsets inside the directory (address 0).
pub mod directory {
    /// u16 [`super::MAGIC`].
    pub const MAGIC: u16 = 0;
    /// u16 [`super::LAYOUT_VERSION`].
    pub const LAYOUT_VERSION: u16 = 1;
    /// u16 number of blocks.
    pub const BLOCK_COUNT: u16 = 2;
    /// u16 [`super::BLOCK_SIZE`].
    pub const BLOCK_SIZE: u16 = 3;
    /// u16 [`super::FIRST_BLOCK_ADDRESS`].
    pub const FIRST_BLOCK_ADDRESS: u16 = 4;
    /// u16 [`super::MAX_OUTPUTS`].
    pub const MAX_OUTPUTS: u16 = 5;
    /// u64 (4 registers): the gateway's clock when the read was answered,
    /// unix milliseconds, so an HMI can age predictions without trusting its
    /// own clock.
    pub const GATEWAY_CLOCK_MS: u16 = 6;
}

/// Register offsets inside a block.
pub mod block {
    /// u32 (2 registers): predictions written to this block since start;
    /// 0 = none yet; wraps from 4294967295 to 1.
    pub const SEQUENCE: u16 = 0;
    /// u16 [`super::BlockStatus`].
    pub const STATUS: u16 = 2;
    /// u16 number of outputs of the model.
    pub const OUTPUT_COUNT: u16 = 3;
    /// u64 (4 registers): acquisition time of the inputs of the prediction
    /// shown, unix milliseconds; 0 = none yet.
    pub const INPUTS_ACQUIRED_MS: u16 = 4;
    /// 16 registers: the model version, ASCII, 2 characters per register
    /// (first in the high byte), NUL padded.
    pub const VERSION: u16 = 8;
    /// u16 position of the machine in `[[machines]]` (0-based).
    pub const MACHINE_INDEX: u16 = 24;
    /// u16 position of the model in `[[models]]` (0-based).
    pub const MODEL_INDEX: u16 = 25;
    /// u64 (4 registers): while the status is
    /// [`super::BlockStatus::MachineUnreachable`], when the outage was
    /// reported (unix ms); 0 otherwise.
    pub const OUTAGE_REPORTED_MS: u16 = 28;
    /// f32 per output (2 registers each, ABCD), in the manifest's order.
    pub const OUTPUTS: u16 = 32;
}

/// What a block's output registers hold (its `status` register).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum BlockStatus {
    /// No prediction since the gateway started: outputs are NaN.
    NoPrediction = 0,
    /// Outputs are the latest prediction.
    Current = 1,
    /// The machine could not be read since the last prediction: outputs are
    /// NaN; sequence and acquisition time still name the last prediction.
    /// Ends with the first prediction from inputs acquired after the outage.
    MachineUnreachable = 2,
}

/// A machine, as the map needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapMachine {
    pub name: String,
    /// How many tags it has: a scan with all of them Bad means unreachable.
    pub tag_count: usize,
}

/// A served model, as the map needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapModel {
    pub name: String,
    pub version: String,
    /// Output names in the manifest's order.
    pub outputs: Vec<String>,
    /// The machines that feed it.
    pub machines: Vec<String>,
}

/// One (machine, model) block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredictionBlock {
    /// Address of its first register.
    pub address: u16,
    pub machine: String,
    pub machine_index: u16,
    pub model: String,
    pub model_index: u16,
    pub version: String,
    pub outputs: Vec<String>,
}

impl PredictionBlock {
    /// Address of the first of the two registers of output `i`.
    pub fn output_address(&self, i: usize) -> u16 {
        // i < MAX_OUTPUTS (checked when the map is made): no overflow.
        self.address + block::OUTPUTS + 2 * i as u16
    }
}

/// Where everything is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterMap {
    pub machines: Vec<MapMachine>,
    pub blocks: Vec<PredictionBlock>,
}

impl RegisterMap {
    /// Lays out one block per (machine, model) pair: machines in their
    /// configuration order, then the models each feeds in theirs. Appending
    /// a machine (or a model of the last machine) never moves a block.
    pub fn new(machines: Vec<MapMachine>, models: &[MapModel]) -> Result<Self, String> {
        for model in models {
            if let Some(problem) = served_model_problem(&model.version, model.outputs.len()) {
                return Err(format!("model {} {problem}", model.name));
            }
            for name in &model.machines {
                if !machines.iter().any(|m| &m.name == name) {
                    return Err(format!(
                        "model {} names no known machine {name:?}",
                        model.name
                    ));
                }
            }
        }
        let pairs: usize = models
            .iter()
            .map(|model| {
                machines
                    .iter()
                    .filter(|m| model.machines.contains(&m.name))
                    .count()
            })
            .sum();
        if pairs > MAX_BLOCKS {
            return Err(block_count_problem(pairs));
        }
        let mut blocks = Vec::with_capacity(pairs);
        for (machine_index, machine) in machines.iter().enumerate() {
            for (model_index, model) in models.iter().enumerate() {
                if !model.machines.contains(&machine.name) {
                    continue;
                }
                blocks.push(PredictionBlock {
                    // blocks.len() < MAX_BLOCKS, so this stays below 65536.
                    address: FIRST_BLOCK_ADDRESS + BLOCK_SIZE * blocks.len() as u16,
                    machine: machine.name.clone(),
                    machine_index: u16::try_from(machine_index).map_err(|_| "too many machines")?,
                    model: model.name.clone(),
                    model_index: u16::try_from(model_index).map_err(|_| "too many models")?,
                    version: model.version.clone(),
                    outputs: model.outputs.clone(),
                });
            }
        }
        Ok(Self { machines, blocks })
    }

    /// One past the last register: reads must end at or before it.
    pub fn end(&self) -> usize {
        usize::from(FIRST_BLOCK_ADDRESS) + self.blocks.len() * usize::from(BLOCK_SIZE)
    }

    /// The block of `machine` and `model`.
    pub fn block(&self, machine: &str, model: &str) -> Option<&PredictionBlock> {
        self.blocks
            .iter()
            .find(|b| b.machine == machine && b.model == model)
    }

    /// The map for people: common offsets once, then one line per block
    /// with the address of each output.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "Modbus input registers (function 04), zero-based addresses, layout {LAYOUT_VERSION}:"
        );
        let _ = writeln!(
            out,
            "  0..=63  directory: +0 magic 0x4942, +1 layout, +2 blocks ({}), +3 block size, \
             +4 first block, +5 max outputs, +6 gateway clock (u64 unix ms)",
            self.blocks.len()
        );
        let _ = writeln!(
            out,
            "  every block: +0 sequence (u32), +2 status (u16: 0 none yet, 1 current, \
             2 machine unreachable), +3 output count, +4 inputs acquired (u64 unix ms), \
             +8 version (32 ASCII chars), +24 machine index, +25 model index, \
             +28 outage reported (u64 unix ms), +32 outputs (f32 ABCD)"
        );
        for b in &self.blocks {
            let outputs: Vec<String> = b
                .outputs
                .iter()
                .enumerate()
                .map(|(i, name)| format!("{name}@{}", b.output_address(i)))
                .collect();
            let _ = writeln!(
                out,
                "  {}..={}  {} / {} {}: {}",
                b.address,
                usize::from(b.address) + usize::from(BLOCK_SIZE) - 1,
                b.machine,
                b.model,
                b.version,
                outputs.join(", ")
            );
        }
        out
    }
}

/// Why a model cannot be served in a block, if it cannot: the block has room
/// for [`MAX_OUTPUTS`] outputs and [`VERSION_CHARS`] ASCII characters of
/// version (a truncated version would name a different model).
pub fn served_model_problem(version: &str, output_count: usize) -> Option<String> {
    if output_count > MAX_OUTPUTS {
        return Some(format!(
            "has {output_count} outputs; a Modbus block holds at most {MAX_OUTPUTS}"
        ));
    }
    if version.len() > VERSION_CHARS || !version.bytes().all(|b| b.is_ascii() && b != 0) {
        return Some(format!(
            "version {version:?}: Modbus serves at most {VERSION_CHARS} ASCII characters"
        ));
    }
    None
}

/// The problem with `blocks` blocks, if there are too many.
pub fn block_count_problem(blocks: usize) -> String {
    format!(
        "{blocks} (machine, model) pairs need a block each; the Modbus map holds at most {MAX_BLOCKS}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(name: &str) -> MapMachine {
        MapMachine {
            name: name.to_string(),
            tag_count: 3,
        }
    }

    fn model(name: &str, outputs: &[&str], machines: &[&str]) -> MapModel {
        MapModel {
            name: name.to_string(),
            version: "1.0.0".to_string(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            machines: machines.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn blocks_follow_machine_order_then_model_order() {
        let map = RegisterMap::new(
            vec![machine("pump-1"), machine("pump-2"), machine("idle")],
            &[
                model("wear", &["bearing_wear"], &["pump-2", "pump-1"]),
                model("leak", &["p_leak", "severity"], &["pump-1"]),
            ],
        )
        .expect("map");
        let placed: Vec<(u16, &str, &str, u16, u16)> = map
            .blocks
            .iter()
            .map(|b| {
                (
                    b.address,
                    b.machine.as_str(),
                    b.model.as_str(),
                    b.machine_index,
                    b.model_index,
                )
            })
            .collect();
        assert_eq!(
            placed,
            [
                (64, "pump-1", "wear", 0, 0),
                (128, "pump-1", "leak", 0, 1),
                (192, "pump-2", "wear", 1, 0),
            ]
        );
        assert_eq!(map.end(), 256);
        let leak = map.block("pump-1", "leak").expect("block");
        assert_eq!(leak.output_address(0), 160);
        assert_eq!(leak.output_address(1), 162);
        let text = map.describe();
        assert!(
            text.contains("128..=191  pump-1 / leak 1.0.0: p_leak@160, severity@162"),
            "{text}"
        );
    }

    #[test]
    fn a_map_refuses_what_a_block_cannot_hold() {
        let too_many: Vec<String> = (0..=MAX_OUTPUTS).map(|i| format!("o{i}")).collect();
        let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
        let err = RegisterMap::new(vec![machine("m")], &[model("big", &too_many, &["m"])])
            .expect_err("17 outputs");
        assert!(err.contains("at most 16"), "{err}");

        let mut long = model("v", &["o"], &["m"]);
        long.version = "1.0.0-".to_string() + &"x".repeat(VERSION_CHARS);
        let err = RegisterMap::new(vec![machine("m")], &[long]).expect_err("long version");
        assert!(err.contains("32 ASCII"), "{err}");
        assert!(served_model_problem("1.0.0-é", 1).is_some());
        assert!(served_model_problem(&"9".repeat(VERSION_CHARS), MAX_OUTPUTS).is_none());

        let machines: Vec<MapMachine> = (0..=MAX_BLOCKS)
            .map(|i| machine(&format!("m{i}")))
            .collect();
        let names: Vec<String> = machines.iter().map(|m| m.name.clone()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let err =
            RegisterMap::new(machines, &[model("all", &["o"], &names)]).expect_err("1024 blocks");
        assert!(err.contains("at most 1023"), "{err}");
    }

    #[test]
    fn the_largest_map_ends_at_the_last_register() {
        let machines: Vec<MapMachine> =
            (0..MAX_BLOCKS).map(|i| machine(&format!("m{i}"))).collect();
        let names: Vec<String> = machines.iter().map(|m| m.name.clone()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let map = RegisterMap::new(machines, &[model("all", &["o"], &names)]).expect("1023 blocks");
        assert_eq!(map.end(), 65536);
        assert_eq!(map.blocks.last().map(|b| b.address), Some(65472));
    }
}
