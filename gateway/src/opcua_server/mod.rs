//! The OPC UA server: live tag values, predictions and model state as OPC UA
//! nodes for the plant's HMIs and SCADA (contract: README.md, "Contracts", "OPC UA").
//!
//! - [`config`]: the `[opcua]` table and its validation;
//! - [`address_space`]: the node layout (`Objects/IronBridge/...`);
//! - [`server`]: [`start`] and the [`OpcUaPublisher`] that pushes values;
//! - `tag_nodes`: the machines' tag variables, served by a node manager of
//!   our own (a slot per tag, no address-space node);
//! - `hot_values`: where prediction values wait until read or subscribed
//!   (no NodeId lookup per value).
//!
//! Secure by default: one SignAndEncrypt endpoint per configured policy,
//! username/password users (passwords from the environment), unknown client
//! certificates rejected into `pki/rejected/`. Anonymous access and the
//! SecurityPolicy None endpoint (loopback only) exist only when configured.
//! Every node is read-only; the model methods (`Activate`, `Rollback`) are
//! for users with the `admin` role over SignAndEncrypt ([`nodes`]).

pub mod address_space;
pub mod auth;
pub mod config;
mod hot_values;
pub mod nodes;
pub mod rejected;
pub mod server;
mod tag_nodes;

pub use address_space::{AddressSpaceLayout, MachineLayout, ModelLayout, NAMESPACE_URI};
pub use config::{
    OpcUaLimits, OpcUaServerConfig, OpcUaUserConfig, Role, SUPPORTED_SECURITY_POLICIES,
};
pub use server::{
    start, GatewayStatusView, ModelStatusView, OpcUaPublisher, RegistryStatusView, RemoteStatusView,
};
