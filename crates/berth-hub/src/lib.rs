//! `berth hub`: the control plane. This part holds users and API tokens, compute nodes (Docker
//! engines reached directly or through a `berth agent`) with their connection status, the node
//! monitor, and the operation log; `berth up` runs it embedded on SQLite with the local engine as
//! node `local`.

pub mod api;
pub mod bootstrap;
pub mod metrics;
pub mod monitor;
pub mod node_check;
pub mod state;

pub use state::HubState;
