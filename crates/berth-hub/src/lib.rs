//! `berth hub`: the control plane. Users and API tokens, compute nodes (Docker engines reached
//! directly or through a `berth agent`) with their connection status, the node monitor, the
//! catalog (images, product specs), services placed on nodes with their deployment history, and
//! the operation log, the gateway that routes requests to model services' replicas, the stats
//! history and the web console; `berth up` runs it embedded on SQLite with the local engine as
//! node `local`.

pub mod api;
pub mod bootstrap;
pub mod config;
pub mod create_commit;
pub mod gateway;
pub mod leadership;
pub mod metrics;
pub mod model_file;
pub mod models;
pub mod monitor;
pub mod node_check;
pub mod node_client;
pub mod node_watch;
pub mod node_work;
pub mod ops;
pub mod reconciler;
pub mod reload;
pub mod replicas;
pub mod rollout;
pub mod scaling;
pub mod scenario;
pub mod scheduling;
pub mod service_definition;
pub mod service_request;
pub mod service_work;
pub mod simulation;
pub mod state;
pub mod stats_sampler;

pub use state::HubState;
