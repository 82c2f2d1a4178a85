//! `berth hub` and the hub half of `berth up`: open the database, bootstrap, run the node
//! monitor, serve the API until SIGINT or SIGTERM, then drain requests and close the database.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use berth_core::ConnectionStatus;
use berth_hub::config::HubConfig;
use berth_hub::reload::{self, ConfigWatcher, Reload};
use berth_hub::state::HubSettings;
use berth_hub::{HubState, bootstrap, gateway, monitor, node_watch, scaling, stats_sampler};
use berth_store::{SecretBox, Store, nodes, redact_url};
use clap::Args;

/// Options of `berth hub`.
#[derive(Debug, Args)]
pub struct HubArgs {
    /// text (lines for people) or json (one object per line, for log collectors).
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum, default_value_t = crate::logging::LogFormat::Text)]
    log_format: crate::logging::LogFormat,
    /// Address of the API.
    #[arg(long, env = "BERTH_LISTEN", default_value = "0.0.0.0:7700")]
    listen: SocketAddr,
    /// Address of the gateway, where requests reach model services (`/s/{user}/{service}/…`).
    #[arg(long, env = "BERTH_GATEWAY_LISTEN", default_value = "0.0.0.0:7701")]
    gateway_listen: SocketAddr,
    /// sqlite://PATH or postgres://USER:PASSWORD@HOST/DB.
    #[arg(
        long,
        env = "BERTH_DATABASE_URL",
        default_value = "sqlite://berth-data/berth.db"
    )]
    database_url: String,
    /// Directory for the secret key file (when BERTH_SECRET_KEY is not set) and the admin token.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = "berth-data")]
    data_dir: PathBuf,
    /// Seconds between two node checks (default: the config file's, else 3).
    #[arg(long, env = "BERTH_MONITOR_INTERVAL")]
    monitor_interval: Option<u64>,
    /// A YAML file with seed 000's settings: mmanager_controllers, mmanager_api_key,
    /// max_services_per_user, monitor_interval, failure_threshold, placement_policy,
    /// max_models_per_node, service_domain. Reloaded when it changes or on SIGHUP.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
}

/// How to start the hub.
pub struct Launch {
    /// API address.
    pub listen: SocketAddr,
    /// Gateway address.
    pub gateway_listen: SocketAddr,
    /// Database URL.
    pub database_url: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Node check interval.
    pub monitor_interval: Duration,
    /// Register this Docker address as node `local` (`berth up`).
    pub local_docker_host: Option<String>,
    /// The configuration file's settings.
    pub config: HubConfig,
    /// The configuration file, watched for changes.
    pub config_file: Option<PathBuf>,
    /// `--monitor-interval`, which wins over the file's.
    pub monitor_interval_flag: Option<u64>,
    /// Save a CLI context of this name for the hub and make it current (`berth up`).
    pub cli_context: Option<String>,
}

/// Prints how a shell reaches the hub at `address` with the token in `token_file`, and saves
/// that as the CLI context `context` when given (a failure to save is said, not fatal).
fn announce_cli(context: &Option<String>, address: &str, token_file: &std::path::Path) {
    let url = format!("http://{address}");
    let token_file = std::path::absolute(token_file).unwrap_or_else(|_| token_file.to_owned());
    println!(
        "for the CLI in another shell:\n  export BERTH_URL={url}\n  export BERTH_TOKEN=$(cat {})",
        token_file.display()
    );
    let Some(name) = context else { return };
    let saved =
        crate::client::context::remember(name, crate::client::context::Context { url, token_file });
    match saved {
        Ok(path) => println!(
            "CLI context {name:?} saved in {} and made current: `berth service list` works from any directory",
            path.display()
        ),
        Err(err) => println!("CLI context not saved ({err}); use the export lines above"),
    }
}

/// Runs `berth hub`.
pub async fn run(args: HubArgs) -> ExitCode {
    if let Err(err) = crate::logging::init("info", None, args.log_format) {
        eprintln!("berth hub: cannot set up logging: {err}");
    }
    let config = match &args.config {
        Some(path) => match HubConfig::load(path) {
            Ok(config) => config,
            Err(err) => {
                eprintln!("berth hub: bad configuration file: {err}");
                return ExitCode::from(2);
            }
        },
        None => HubConfig::default(),
    };
    let monitor_interval = args.monitor_interval.unwrap_or(config.monitor_interval);
    if monitor_interval == 0 {
        eprintln!("berth hub: --monitor-interval must be at least 1 second");
        return ExitCode::from(2);
    }
    serve(Launch {
        listen: args.listen,
        gateway_listen: args.gateway_listen,
        database_url: args.database_url,
        data_dir: args.data_dir,
        monitor_interval: Duration::from_secs(monitor_interval),
        local_docker_host: None,
        config,
        config_file: args.config.clone(),
        monitor_interval_flag: args.monitor_interval,
        cli_context: None,
    })
    .await
}

/// Starts the hub as `launch` says and serves until a shutdown signal.
pub async fn serve(launch: Launch) -> ExitCode {
    if let Err(err) = private_dir(&launch.data_dir) {
        eprintln!(
            "berth: cannot create the data directory {}: {err}",
            launch.data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let key = std::env::var("BERTH_SECRET_KEY").ok();
    let secrets = match SecretBox::load_or_create(
        key.as_deref(),
        &launch.data_dir.join("secret.key"),
    ) {
        Ok(secrets) => secrets,
        Err(err) => {
            eprintln!(
                "berth: {err}. Set BERTH_SECRET_KEY to 64 hex characters, or remove the damaged key file."
            );
            return ExitCode::from(2);
        }
    };
    let store = match Store::connect(&launch.database_url).await {
        Ok(store) => store,
        Err(err) => {
            eprintln!(
                "berth: cannot open the database {}: {err}",
                redact_url(&launch.database_url)
            );
            return ExitCode::FAILURE;
        }
    };
    let settings = reload::settings_from(
        &launch.config,
        &HubSettings::default(),
        Some(launch.monitor_interval.as_secs()),
    );
    let state = match HubState::new(store, secrets, settings).await {
        Ok(state) => Arc::new(state),
        Err(err) => {
            eprintln!("berth: cannot read the hub's identity from the database: {err}");
            return ExitCode::FAILURE;
        }
    };
    let token_file = launch.data_dir.join("admin-token");
    let booted = match bootstrap::ensure(
        &state,
        Some(&token_file),
        launch.local_docker_host.as_deref(),
    )
    .await
    {
        Ok(booted) => booted,
        Err(err) => {
            eprintln!("berth: bootstrapping failed: {err}");
            return ExitCode::FAILURE;
        }
    };
    for mapping in launch.config.seed_mappings() {
        println!("config: {mapping}");
    }
    match bootstrap::sync_controllers(&state, &launch.config).await {
        Ok(sync) => {
            if !(sync.created.is_empty() && sync.updated.is_empty() && sync.removed.is_empty()) {
                println!(
                    "controllers from the config: added {:?}, updated {:?}, removed {:?}",
                    sync.created, sync.updated, sync.removed
                );
            }
            for name in sync.skipped {
                eprintln!(
                    "berth: the config declares {name}, but a node of that name was made through the API; it is left as it is"
                );
            }
        }
        Err(err) => {
            eprintln!("berth: syncing the configured controllers failed: {err}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(local) = booted.local_node {
        report_local_node(&state, local).await;
    }
    let listener = match tokio::net::TcpListener::bind(launch.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "berth: cannot listen on {}: {err}; pick another address with --listen",
                launch.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let gateway_listener = match tokio::net::TcpListener::bind(launch.gateway_listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "berth: cannot listen on {} for the gateway: {err}; pick another address with --gateway-listen",
                launch.gateway_listen
            );
            return ExitCode::FAILURE;
        }
    };
    let address = listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    println!(
        "Berth hub listening on http://{address} (console at /, API under /api, health at /health)"
    );
    if let Ok(gateway_address) = gateway_listener.local_addr() {
        let _ = state.gateway_address.set(gateway_address);
        println!(
            "Gateway listening on http://{gateway_address} (model services at /s/{{user}}/{{service}}/)"
        );
    }
    match (
        &booted.new_admin_token,
        std::fs::read_to_string(&token_file),
    ) {
        (Some(token), _) => println!(
            "admin token (shown once, also in {}): {token}",
            token_file.display()
        ),
        (None, Ok(token)) => println!(
            "admin token: {} (from {})",
            token.trim(),
            token_file.display()
        ),
        (None, Err(_)) => {
            println!("admin token: issued on the first start; create another with the admin API")
        }
    }
    announce_cli(&launch.cli_context, &address, &token_file);
    println!(
        "try: curl -H \"Authorization: Bearer $(cat {})\" http://{address}/api/nodes",
        token_file.display()
    );

    match berth_hub::service_work::resume(&state).await {
        Ok(0) => {}
        Ok(resumed) => tracing::info!(
            resumed,
            "Carrying on operations the last run left unfinished."
        ),
        Err(err) => tracing::error!(error = %err, "Reading unfinished operations failed."),
    }
    let (stop_sender, stop_receiver) = tokio::sync::watch::channel(false);
    let stopped = move |mut receiver: tokio::sync::watch::Receiver<bool>| async move {
        let _ = receiver.wait_for(|stop| *stop).await;
    };
    let monitor_task = tokio::spawn(monitor::run(
        Arc::clone(&state),
        stopped(stop_receiver.clone()),
    ));
    let readiness_task = tokio::spawn(gateway::readiness::run(
        Arc::clone(&state),
        stopped(stop_receiver.clone()),
    ));
    let watch_task = tokio::spawn(node_watch::run(
        Arc::clone(&state),
        stopped(stop_receiver.clone()),
    ));
    let sampler_task = tokio::spawn(stats_sampler::run(
        Arc::clone(&state),
        stopped(stop_receiver.clone()),
    ));
    let autoscaler_task = tokio::spawn(scaling::run(
        Arc::clone(&state),
        stopped(stop_receiver.clone()),
    ));
    let gateway_task = tokio::spawn(
        Arc::new(gateway::Gateway::new(Arc::clone(&state)))
            .serve(gateway_listener, stopped(stop_receiver.clone())),
    );
    let model_watch_task = match &launch.config.model_watch_dir {
        Some(dir) => {
            watch_model_files(&state, &address, dir.into(), stopped(stop_receiver.clone())).await
        }
        None => None,
    };
    let reload_task = launch.config_file.clone().map(|path| {
        let watcher =
            ConfigWatcher::new(&path, launch.config.clone(), launch.monitor_interval_flag);
        tokio::spawn(watch_config(
            Arc::clone(&state),
            watcher,
            stopped(stop_receiver.clone()),
        ))
    });
    let router = berth_hub::app(Arc::clone(&state));
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            crate::shutdown_signal().await;
            tracing::info!("Shutting down: draining requests.");
            let _ = stop_sender.send(true);
        })
        .await;
    let _ = monitor_task.await;
    let _ = readiness_task.await;
    let _ = sampler_task.await;
    let _ = autoscaler_task.await;
    let _ = watch_task.await;
    let _ = gateway_task.await;
    if let Some(task) = reload_task {
        let _ = task.await;
    }
    if let Some(task) = model_watch_task {
        let _ = task.await;
    }
    state.store.close().await;
    match served {
        Ok(()) => {
            tracing::info!("Hub stopped; the database is closed.");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("berth: serving failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Reloads the configuration file when it changes (checked every two seconds) or on SIGHUP,
/// until `stop` completes, and says what each reload did.
/// Applies the model files of `dir` as the first admin, through the hub's own API at
/// `address`, until `stop` (the hub configuration's `model_watch_dir`).
async fn watch_model_files(
    state: &HubState,
    address: &str,
    dir: PathBuf,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    let token = match bootstrap::watcher_token(state).await {
        Ok(token) => token,
        Err(err) => {
            eprintln!(
                "berth: model_watch_dir: no token to apply {} with: {err}",
                dir.display()
            );
            return None;
        }
    };
    let base = match address.parse::<SocketAddr>() {
        Ok(listen) if listen.ip().is_unspecified() => {
            format!("http://127.0.0.1:{}", listen.port())
        }
        _ => format!("http://{address}"),
    };
    println!(
        "applying the model files of {} as the first admin (token {:?}; every 2 s)",
        dir.display(),
        bootstrap::WATCHER_TOKEN
    );
    Some(tokio::spawn(async move {
        let client = crate::client::api::HubClient::new(&base, token);
        if let Err(err) = crate::client::watch::watch(&client, &dir, stop).await {
            eprintln!("berth: model_watch_dir: {err}; the hub serves without it");
        }
    }))
}

async fn watch_config(
    state: Arc<HubState>,
    mut watcher: ConfigWatcher,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(signals) => signals.recv().await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => watcher.poll(&state).await,
            _ = hangup => watcher.reload(&state).await,
        };
        match outcome {
            Reload::Unchanged => {}
            Reload::Applied(keys) => {
                tracing::info!(changed = ?keys, "Configuration reloaded; the changes are in force.");
            }
            Reload::Refused(reason) => {
                tracing::error!(%reason, "Configuration reload refused; the running configuration stays.");
            }
        }
    }
}

/// Creates `dir` (and its parents) readable by its owner only: it holds the database and keys.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

async fn report_local_node(state: &HubState, id: i64) {
    let node = match state.store.acquire().await {
        Ok(mut connection) => nodes::get(&mut connection, id).await,
        Err(err) => Err(err),
    };
    let node = match node {
        Ok(node) => node,
        Err(err) => {
            eprintln!("berth: cannot read node local: {err}");
            return;
        }
    };
    match monitor::check_and_record(state, &node, None).await {
        Ok(check) if check.report.status == ConnectionStatus::Connected => {
            println!("node local: connected ({})", check.report.message);
        }
        Ok(check) => {
            println!(
                "node local: {} ({})",
                check.report.status, check.report.message
            );
            println!(
                "  The hub runs, but cannot use the local Docker engine. Start Docker (systemctl start docker), \
                 make {} readable by this user (add it to the docker group), or set DOCKER_HOST; the monitor retries every {} s.",
                node.docker_address.trim_start_matches("unix://"),
                state.settings().monitor_interval.as_secs()
            );
        }
        Err(err) => eprintln!("berth: recording the check of node local failed: {err}"),
    }
}
