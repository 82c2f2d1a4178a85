//! `berth up`: the embedded default — the hub on SQLite in a data directory, with the local
//! Docker engine registered as node `local` and an admin whose token is printed and written to
//! `DIR/admin-token` (0600).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::hub::{Launch, serve};

/// Options of `berth up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// text (lines for people) or json (one object per line, for log collectors).
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum, default_value_t = crate::logging::LogFormat::Text)]
    log_format: crate::logging::LogFormat,
    /// Where the database, the secret key and the admin token live.
    #[arg(long, default_value = "berth-data")]
    data_dir: PathBuf,
    /// Address of the API.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Address of the gateway, where requests reach model services (`/s/{user}/{service}/…`).
    #[arg(long, env = "BERTH_GATEWAY_LISTEN", default_value = "127.0.0.1:7701")]
    gateway_listen: SocketAddr,
    /// The local Docker engine.
    #[arg(long, env = "DOCKER_HOST", default_value = berth_docker::DEFAULT_DOCKER_HOST)]
    docker_host: String,
    /// Seconds between samples of each running service's resource use (the console's charts);
    /// 0 turns sampling off.
    #[arg(long, env = "BERTH_STATS_INTERVAL", default_value_t = 10)]
    stats_interval: u64,
    /// The CLI context saved for this hub and made current, so the next `berth` command finds
    /// it from any directory.
    #[arg(long, default_value = "local")]
    context: String,
    /// TLS for the API and console.
    #[command(flatten)]
    tls: crate::hub::TlsArgs,
}

/// Runs the embedded default until a shutdown signal.
pub async fn run(args: UpArgs) -> ExitCode {
    if let Err(err) = crate::logging::init("info", None, args.log_format) {
        eprintln!("berth up: cannot set up logging: {err}");
    }
    let database = args.data_dir.join("berth.db");
    let config = berth_hub::config::HubConfig {
        stats_interval: args.stats_interval,
        ..berth_hub::config::HubConfig::default()
    };
    serve(Launch {
        listen: args.listen,
        gateway_listen: args.gateway_listen,
        database_url: format!("sqlite://{}", database.display()),
        data_dir: args.data_dir,
        monitor_interval: Duration::from_secs(config.monitor_interval),
        local_docker_host: Some(args.docker_host),
        config,
        config_file: None,
        monitor_interval_flag: None,
        cli_context: Some(args.context),
        tls: args.tls,
        advertise_url: None,
        lease: berth_hub::leadership::LeaseSettings::default(),
    })
    .await
}
