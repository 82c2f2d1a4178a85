//! `berth agent`: reads the configuration (flags over the environment), sets up logging, connects
//! to the engine, binds and serves the mManager API until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use berth_agent::config::{self, AgentConfig};
use berth_agent::{AgentState, api, server};
use clap::Args;

/// Options of `berth agent`; each overrides the environment variable named beside it.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// text (lines for people) or json (one object per line, for log collectors).
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum, default_value_t = crate::logging::LogFormat::Text)]
    log_format: crate::logging::LogFormat,
    /// Address to listen on [env: BERTH_AGENT_LISTEN; default 0.0.0.0:8000].
    #[arg(long)]
    listen: Option<String>,
    /// Server id put on every container [env: SERVER_ID].
    #[arg(long)]
    server_id: Option<String>,
    /// cpu, gpu or edge [env: SERVER_TYPE].
    #[arg(long)]
    server_type: Option<String>,
    /// Most containers managed at once [env: MAX_CONTAINERS; default 100].
    #[arg(long)]
    max_containers: Option<String>,
    /// Docker engine address [env: DOCKER_HOST].
    #[arg(long)]
    docker_host: Option<String>,
    /// DEBUG, INFO, WARNING or ERROR [env: LOG_LEVEL].
    #[arg(long)]
    log_level: Option<String>,
    /// Also write logs to this file [env: LOG_FILE].
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// TLS certificate (PEM) for the API [env: BERTH_AGENT_TLS_CERT].
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the API [env: BERTH_AGENT_TLS_KEY].
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Simulated GPUs such as 2xA100-80GB, for tests and demos [env: BERTH_SIMULATED_GPUS].
    #[arg(long)]
    simulated_gpus: Option<String>,
}

impl AgentArgs {
    fn flag(&self, key: &str) -> Option<String> {
        let path = |path: &Option<PathBuf>| path.as_ref().map(|path| path.display().to_string());
        match key {
            config::ENV_LISTEN => self.listen.clone(),
            config::ENV_SERVER_ID => self.server_id.clone(),
            config::ENV_SERVER_TYPE => self.server_type.clone(),
            config::ENV_MAX_CONTAINERS => self.max_containers.clone(),
            config::ENV_DOCKER_HOST => self.docker_host.clone(),
            config::ENV_LOG_LEVEL => self.log_level.clone(),
            config::ENV_LOG_FILE => path(&self.log_file),
            config::ENV_TLS_CERT => path(&self.tls_cert),
            config::ENV_TLS_KEY => path(&self.tls_key),
            config::ENV_SIMULATED_GPUS => self.simulated_gpus.clone(),
            _ => None,
        }
    }
}

/// Runs the agent until a shutdown signal.
pub async fn run(args: AgentArgs) -> ExitCode {
    let config = match AgentConfig::load(|key| args.flag(key).or_else(|| std::env::var(key).ok())) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("berth agent: bad configuration: {err}");
            return ExitCode::from(2);
        }
    };
    let level = config::tracing_level(&config.log_level).unwrap_or("info");
    if let Err(err) = crate::logging::init(level, config.log_file.as_deref(), args.log_format) {
        eprintln!("berth agent: cannot open the log file: {err}");
        return ExitCode::from(2);
    }
    let tls = match config.tls.as_ref().map(server::tls_acceptor).transpose() {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("berth agent: {err}");
            return ExitCode::from(2);
        }
    };
    if config.api_key_is_default {
        tracing::warn!(
            "MMANAGER_API_KEY is not set: the agent accepts the well-known default key. Set MMANAGER_API_KEY to a secret before exposing this port."
        );
    }
    let listen = config.listen;
    let state = match AgentState::connect(config).await {
        Ok(state) => state,
        Err(err) => {
            eprintln!("berth agent: {err}");
            return ExitCode::FAILURE;
        }
    };
    match state.adopted().await {
        Ok(0) => {}
        Ok(adopted) => tracing::info!(
            adopted,
            server_id = %state.config.server_id,
            "Adopted the containers the original mManager made on this host for this SERVER_ID: they are listed, stopped and removed like the agent's own."
        ),
        Err(err) => {
            tracing::warn!(error = %err.detail(), "Could not count the containers to adopt.")
        }
    }
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("berth agent: cannot listen on {listen}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        server_id = %state.config.server_id,
        server_type = %state.config.server_type,
        address = %format!("{scheme}://{}", listener.local_addr().map(|addr| addr.to_string()).unwrap_or_default()),
        "Agent listening."
    );
    let router = api::router(Arc::clone(&state));
    match server::serve(listener, router, tls, crate::shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("Agent stopped.");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "Serving failed.");
            ExitCode::FAILURE
        }
    }
}
