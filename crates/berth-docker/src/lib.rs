//! The Docker Engine node driver of Berth, over bollard (never the `docker` CLI).
//!
//! [`DockerEndpoint`] says where an engine is (unix socket, TCP, TCP with mutual TLS from PEM text
//! held in memory) and tests the connection; [`DockerDriver`] is a connected engine: create (with
//! image pull and the system-disk fallback), start, stop, restart, remove (with the data volume),
//! inspect, list by label, logs, one-shot stats, exec and GPU usage. [`translate`] turns a
//! `ContainerSpec` into the engine's create request; [`mirror`] keeps an in-memory copy of an
//! engine's labelled containers from its event stream.

mod cgroup;
mod driver;
mod endpoint;
mod error;
mod exec_session;
mod gpu_usage;
mod images;
mod logs;
pub mod mirror;
pub mod pki;
mod stats;
pub mod translate;

pub use driver::{
    ContainerDetails, ContainerSummary, CreatedContainer, DockerDriver, PullAuth, PullProgress,
    RemoveOptions, RemoveOutcome, Transition, published_ports, real_time,
};
pub use endpoint::{DEFAULT_DOCKER_HOST, DockerEndpoint, TlsMaterial, tls_client_config};
pub use error::DriverError;
pub use exec_session::ExecSession;
pub use gpu_usage::{ExecOutput, GPU_USAGE_TTL, HostGpuView};
pub use images::{EngineInfo, ImageDetails, PruneOutcome};
pub use logs::{LogChunk, LogQuery, LogStream};
pub use stats::ContainerStats;
pub use translate::GpuMode;
