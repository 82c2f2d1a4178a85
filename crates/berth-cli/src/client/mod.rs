//! The CLI client of the hub API: `berth node|image|spec|service|user|ops|apply`, against `BERTH_URL`
//! with `BERTH_TOKEN` (or the token `berth up` wrote). Tables for people, `--output json` for
//! scripts, and errors that say what failed and what to do.

pub mod api;
mod commands;
pub mod context;
mod exec;
pub mod manifest;
mod names;
mod progress;
mod service;
mod table;
pub mod watch;

pub use commands::{
    ClientArgs, ImageCommand, NodeCommand, OpsFilter, Resource, SpecCommand, UserCommand, run,
};
pub use service::ServiceCommand;
