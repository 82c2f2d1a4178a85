//! `berth agent`: the node controller with mManager's REST API, on the Docker driver.
//!
//! It manages only the containers it created (label `berth.agent=<SERVER_ID>`), so several agents
//! and other tools can share one engine; it keeps no state of its own, so after a restart it sees
//! its containers again from their labels. `api::router` is the HTTP API; `berth_http::listen::serve` runs it.

pub mod api;
pub mod config;
pub mod gpus;
pub mod host;
pub mod metrics;
pub mod node;
pub mod state;
pub mod timestamp;
pub mod wire;

pub use config::AgentConfig;
pub use state::AgentState;
