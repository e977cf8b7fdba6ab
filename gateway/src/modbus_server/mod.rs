//! The Modbus TCP server: each machine's latest predictions and the version
//! of the model that made them, read-only, as input registers, for HMIs and
//! PLCs that speak Modbus but not OPC UA (contract: docs/modbus-map.md).
//!
//! - [`config`]: the `[modbus_server]` table and its validation;
//! - [`map`]: the register map, computed from the configuration;
//! - [`registers`]: [`PredictionRegisters`], the register image the gateway
//!   writes predictions into;
//! - [`server`]: [`ModbusServer`], bind then serve (a tokio-modbus
//!   `Service` answering function 04 only).
//!
//! Loopback by default: Modbus has no authentication.

pub mod config;
pub mod map;
pub mod registers;
pub mod server;

pub use config::ModbusServerConfig;
pub use map::{BlockStatus, MapMachine, MapModel, PredictionBlock, RegisterMap};
pub use registers::PredictionRegisters;
pub use server::ModbusServer;

use ironbridge_models::ModelRegistry;

use crate::config::GatewayConfig;
use crate::GatewayError;

/// The register map of a configuration, each model's outputs read from its
/// manifest (verified as `ironbridge validate` does; nothing is loaded into
/// libtorch and no socket opens).
pub fn register_map(config: &GatewayConfig) -> Result<RegisterMap, GatewayError> {
    let machines = config
        .machines
        .iter()
        .map(|m| MapMachine {
            name: m.name().to_string(),
            tag_count: m.tag_names().len(),
        })
        .collect();
    let models = config
        .models
        .iter()
        .map(|model| {
            let manifest = ModelRegistry::open(config.model_dir(model))
                .and_then(|r| r.load(&model.version))
                .map_err(|e| GatewayError::Model {
                    model: model.name.clone(),
                    source: Box::new(e),
                })?
                .manifest()
                .clone();
            Ok(MapModel {
                name: manifest.name.clone(),
                version: manifest.version.clone(),
                outputs: manifest.output_names(),
                machines: model.machines.clone(),
            })
        })
        .collect::<Result<Vec<_>, GatewayError>>()?;
    RegisterMap::new(machines, &models).map_err(GatewayError::ModbusRegisterMap)
}
