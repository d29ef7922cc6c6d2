//! Ports published from a sandbox to the host.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A port on the host forwarded to a port in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    /// The service it belongs to.
    pub service: String,
    /// The host address it is reachable on (`127.0.0.1` unless asked otherwise).
    pub host_addr: Ipv4Addr,
    /// The host port.
    pub host_port: u16,
    /// The port in the sandbox.
    pub guest_port: u16,
}
