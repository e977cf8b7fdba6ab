//! Harness for IronBridge's integration tests: real servers (victoria-metrics)
//! started on free loopback ports with data under a temp dir, independent
//! protocol peers (Python asyncua, pymodbus) run from the project's venv, and
//! fault injection around them (stop, restart, proxy).
//!
//! Nothing here replaces a server with a mock.

pub mod counter_device;
pub mod gateway_process;
pub mod gateway_rig;
pub mod grafana;
pub mod influxdb1;
pub mod kill_loop;
pub mod mlflow;
pub mod mlserver;
pub mod modbus_line;
pub mod modbus_peer;
pub mod model_dirs;
pub mod opcua_peer;
pub mod opcua_probe;
pub mod paths;
pub mod ports;
pub mod process;
pub mod prometheus;
pub mod sink_rig;
pub mod small_fs;
pub mod tcp_proxy;
pub mod victoria;
