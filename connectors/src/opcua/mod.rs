//! OPC UA client source: reads one machine's OPC UA server and yields
//! [`Scan`](crate::Scan)s.
//!
//! - [`config`]: the machine, its security and identity, its tags, with
//!   validation that lists every problem;
//! - [`node`]: node addresses by namespace URI, resolved at every connect;
//! - [`decode`]: DataValues to readings (type, quality, timestamps);
//! - [`source`]: the session, subscriptions or polling, reconnects, counters.

pub mod config;
pub mod decode;
pub mod discover;
pub mod node;
pub mod session;
pub mod source;

pub use config::{
    DeadbandConfig, OpcUaMachineConfig, OpcUaTagConfig, ReadMode, SecurityModeName,
    SecurityPolicyName,
};
pub use discover::{discover, DiscoveredVariable, Discovery, DiscoveryLimits};
pub use node::NodeAddress;
pub use session::{open_session, Identity, LiveSession, SessionOptions};
pub use source::OpcUaSource;
