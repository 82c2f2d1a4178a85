//! Berth's domain core: container specs and their validation, Docker's size units, instance
//! names, node connection statuses, GPU usage readers, the scheduler and the gateway's request
//! routing policies.
//!
//! Pure code: no async runtime, no I/O, no clock. Every other crate builds on these types.

pub mod calendar;
pub mod gpu;
pub mod names;
pub mod node;
pub mod routing;
pub mod schedule;
pub mod seeded;
pub mod spec;
pub mod timeouts;
pub mod units;

pub use node::{ConnectionReport, ConnectionStatus};
pub use spec::{ContainerSpec, SpecError};
pub use units::ByteSize;
