//! Facts about a node's Docker connection that every layer shares.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The Docker connection status of a compute node, as the node list shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionStatus {
    /// The engine answered.
    Connected,
    /// The engine was tried and did not answer, or refused the credentials.
    Failed,
    /// The connection could not be tried (no address, incomplete TLS material).
    Unknown,
}

impl ConnectionStatus {
    /// The lower-case name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStatus::Connected => "connected",
            ConnectionStatus::Failed => "failed",
            ConnectionStatus::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ConnectionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of a connection test: a status and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionReport {
    /// Connected, failed or unknown.
    pub status: ConnectionStatus,
    /// What happened, e.g. the engine version or the reason it failed.
    pub message: String,
}
