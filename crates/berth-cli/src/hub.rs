//! `berth hub` and the hub half of `berth up`: open the database, bootstrap, run the node
//! monitor, serve the API until SIGINT or SIGTERM, then drain requests and close the database.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use berth_core::ConnectionStatus;
use berth_docker::pki;
use berth_http::listen::{ListenTls, TlsFiles};
use berth_hub::config::HubConfig;
use berth_hub::leadership::{self, LeaseSettings};
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
    /// TLS for the API and console.
    #[command(flatten)]
    tls: TlsArgs,
    /// Where other hubs on the same PostgreSQL database reach this one's API, to pass it the
    /// changes made through them [default: the listen address, or this host's name and port].
    #[arg(long, env = "BERTH_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Seconds a leader's lease lasts unrenewed: a follower leads within this (and a second)
    /// of the leader's death. Several hubs on PostgreSQL only.
    #[arg(long, env = "BERTH_LEADER_LEASE_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=300))]
    leader_lease_seconds: u64,
}

/// TLS for the hub's API and console (`berth hub`, `berth up`).
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// Serve the API and console over TLS with this certificate chain (PEM); read again when
    /// it changes.
    #[arg(long, env = "BERTH_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "BERTH_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve over TLS with a certificate of the data directory's own CA (`DATA_DIR/pki`, made
    /// on first start, as `berth pki` would); clients trust its `ca.pem`.
    #[arg(long, env = "BERTH_TLS_SELF_SIGNED", conflicts_with = "tls_cert")]
    tls_self_signed: bool,
    /// The gateway's own certificate chain (PEM), e.g. a wildcard one for `service_domain`;
    /// without it the gateway serves TLS with the API's certificate when the API has one.
    #[arg(long, env = "BERTH_GATEWAY_TLS_CERT", requires = "gateway_tls_key")]
    gateway_tls_cert: Option<PathBuf>,
    /// The gateway certificate's private key (PEM).
    #[arg(long, env = "BERTH_GATEWAY_TLS_KEY", requires = "gateway_tls_cert")]
    gateway_tls_key: Option<PathBuf>,
}

/// The hub certificate `--tls-self-signed` makes, in the data directory's PKI.
const SELF_SIGNED_NAME: &str = "hub";

impl TlsArgs {
    /// The files to serve TLS with, making the self-signed pair first when asked; `None`: plain
    /// HTTP.
    fn files(&self, data_dir: &Path, listen: SocketAddr) -> Result<Option<ListenTls>, String> {
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            return Ok(Some(ListenTls {
                cert: cert.clone(),
                key: key.clone(),
            }));
        }
        if !self.tls_self_signed {
            return Ok(None);
        }
        let dir = data_dir.join("pki");
        if !dir.join(pki::CA_CERT).exists() {
            pki::init(&dir).map_err(|err| err.to_string())?;
        }
        let files = ListenTls {
            cert: dir.join(format!("{SELF_SIGNED_NAME}.pem")),
            key: dir.join(format!("{SELF_SIGNED_NAME}-key.pem")),
        };
        if !(files.cert.exists() && files.key.exists()) {
            let mut names = vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ];
            if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
                names.push(listen.ip().to_string());
            }
            let host = berth_agent::host::host_name();
            if !host.is_empty() && !names.contains(&host) {
                names.push(host);
            }
            pki::issue(&dir, pki::Purpose::Hub, SELF_SIGNED_NAME, &names)
                .map_err(|err| err.to_string())?;
        }
        Ok(Some(files))
    }

    /// The gateway's TLS: its own pair, else the API's `api` (already loaded), else none.
    fn gateway(&self, api: Option<&Arc<TlsFiles>>) -> Result<Option<Arc<TlsFiles>>, String> {
        match (&self.gateway_tls_cert, &self.gateway_tls_key) {
            (Some(cert), Some(key)) => TlsFiles::load(ListenTls {
                cert: cert.clone(),
                key: key.clone(),
            })
            .map(|files| Some(Arc::new(files))),
            _ => Ok(api.cloned()),
        }
    }

    /// The CA clients trust for a self-signed hub.
    fn self_signed_ca(&self, data_dir: &Path) -> Option<PathBuf> {
        self.tls_self_signed
            .then(|| data_dir.join("pki").join(pki::CA_CERT))
    }
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
    /// TLS for the API and console.
    pub tls: TlsArgs,
    /// Where other hubs reach this one (several hubs on PostgreSQL).
    pub advertise_url: Option<String>,
    /// The leader lease (several hubs on PostgreSQL).
    pub lease: LeaseSettings,
}

/// Prints how a shell reaches the hub at `address` with the token in `token_file`, and saves
/// that as the CLI context `context` when given (a failure to save is said, not fatal).
fn announce_cli(
    context: &Option<String>,
    url: String,
    token_file: &Path,
    ca_file: Option<PathBuf>,
) {
    let token_file = std::path::absolute(token_file).unwrap_or_else(|_| token_file.to_owned());
    let ca_file = ca_file.map(|file| std::path::absolute(&file).unwrap_or(file));
    println!(
        "for the CLI in another shell:\n  export BERTH_URL={url}\n  export BERTH_TOKEN=$(cat {})",
        token_file.display()
    );
    if let Some(ca) = &ca_file {
        println!("  export BERTH_CA_FILE={}", ca.display());
    }
    let Some(name) = context else { return };
    let saved = crate::client::context::remember(
        name,
        crate::client::context::Context {
            url,
            token_file,
            ca_file,
        },
    );
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
        tls: args.tls,
        advertise_url: args.advertise_url,
        lease: LeaseSettings {
            ttl: Duration::from_secs(args.leader_lease_seconds),
            ..LeaseSettings::default()
        },
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
    let tls = match launch
        .tls
        .files(&launch.data_dir, launch.listen)
        .and_then(|files| files.map(TlsFiles::load).transpose())
    {
        Ok(tls) => tls.map(Arc::new),
        Err(err) => {
            eprintln!("berth: TLS: {err}");
            return ExitCode::from(2);
        }
    };
    let gateway_tls = match launch.tls.gateway(tls.as_ref()) {
        Ok(gateway_tls) => gateway_tls,
        Err(err) => {
            eprintln!("berth: the gateway's TLS: {err}");
            return ExitCode::from(2);
        }
    };
    state
        .gateway_over_tls
        .store(gateway_tls.is_some(), std::sync::atomic::Ordering::Relaxed);
    let _ = state.pki_dir.set(launch.data_dir.join("pki"));
    let scheme = if tls.is_some() { "https" } else { "http" };
    let address = listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    let url = format!("{scheme}://{address}");
    let ca_file = launch.tls.self_signed_ca(&launch.data_dir);
    println!("Berth hub listening on {url} (console at /, API under /api, health at /health)");
    if let Some(ca) = &ca_file {
        println!(
            "TLS with a certificate of this hub's own CA: clients trust {}",
            ca.display()
        );
    }
    if let Ok(gateway_address) = gateway_listener.local_addr() {
        let _ = state.gateway_address.set(gateway_address);
        let scheme = if gateway_tls.is_some() {
            "https"
        } else {
            "http"
        };
        println!(
            "Gateway listening on {scheme}://{gateway_address} (model services at /s/{{user}}/{{service}}/)"
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
    announce_cli(
        &launch.cli_context,
        url.clone(),
        &token_file,
        ca_file.clone(),
    );
    let curl_ca = ca_file
        .as_ref()
        .map(|ca| format!("--cacert {} ", ca.display()))
        .unwrap_or_default();
    println!(
        "try: curl {curl_ca}-H \"Authorization: Bearer $(cat {})\" {url}/api/nodes",
        token_file.display()
    );

    let (stop_sender, stop_receiver) = tokio::sync::watch::channel(false);
    let stopped = move |mut receiver: tokio::sync::watch::Receiver<bool>| async move {
        let _ = receiver.wait_for(|stop| *stop).await;
    };
    let advertised = launch
        .advertise_url
        .clone()
        .unwrap_or_else(|| advertised_url(scheme, &address));
    if state.store.backend() == berth_store::Backend::Postgres {
        // A follower's gateway asks the leader to load a service with this (hubs may share
        // the database; the token is this hub's, by its address, replaced at each start).
        match bootstrap::admin_token(&state, &format!("hub {advertised}")).await {
            Ok(token) => {
                let _ = state.peer_token.set(token);
            }
            Err(err) => {
                tracing::warn!(error = %err, "No token for asking the leading hub; a follower's gateway cannot wake unloaded services.")
            }
        }
    }
    let report_task = tokio::spawn(leadership::report_to_leader(
        Arc::clone(&state),
        advertised.clone(),
        stop_receiver.clone(),
    ));
    let leadership_task = tokio::spawn(leadership::run(
        Arc::clone(&state),
        advertised,
        launch.lease,
        stopped(stop_receiver.clone()),
    ));
    // The leader's work, from each term's start to its end.
    let resume_task =
        leadership::spawn_while_leading(&state, &stop_receiver, |state, until| async move {
            match berth_hub::service_work::resume(&state).await {
                Ok(0) => {}
                Ok(resumed) => tracing::info!(
                    resumed,
                    "Carrying on operations left unfinished (by the last run, or the last leader)."
                ),
                Err(err) => tracing::error!(error = %err, "Reading unfinished operations failed."),
            }
            until.await;
        });
    let monitor_task = leadership::spawn_while_leading(&state, &stop_receiver, |state, until| {
        monitor::run(state, until)
    });
    let readiness_task = tokio::spawn(gateway::readiness::run(
        Arc::clone(&state),
        stopped(stop_receiver.clone()),
    ));
    let watch_task = leadership::spawn_while_leading(&state, &stop_receiver, |state, until| {
        node_watch::run(state, until)
    });
    let sampler_task = leadership::spawn_while_leading(&state, &stop_receiver, |state, until| {
        stats_sampler::run(state, until)
    });
    let autoscaler_task =
        leadership::spawn_while_leading(&state, &stop_receiver, |state, until| {
            scaling::run(state, until)
        });
    let gateway = match gateway_tls {
        Some(tls) => gateway::in_hub(Arc::clone(&state)).over_tls(tls),
        None => gateway::in_hub(Arc::clone(&state)),
    };
    let gateway_task =
        tokio::spawn(Arc::new(gateway).serve(gateway_listener, stopped(stop_receiver.clone())));
    let model_watch_task = launch.config.model_watch_dir.as_ref().map(|dir| {
        let own = ModelWatch {
            url: own_url(scheme, &address),
            ca_file: ca_file.clone(),
            dir: dir.into(),
        };
        leadership::spawn_while_leading(&state, &stop_receiver, move |state, until| {
            let own = own.clone();
            async move {
                if let Some(task) = watch_model_files(&state, own, until).await {
                    let _ = task.await;
                }
            }
        })
    });
    let reload_task = launch.config_file.clone().map(|path| {
        let watcher =
            ConfigWatcher::new(&path, launch.config.clone(), launch.monitor_interval_flag);
        tokio::spawn(watch_config(
            Arc::clone(&state),
            watcher,
            stopped(stop_receiver.clone()),
        ))
    });
    let router = berth_console::app(Arc::clone(&state));
    let served = berth_http::listen::serve(listener, router, tls, async move {
        crate::shutdown_signal().await;
        tracing::info!("Shutting down: draining requests.");
        let _ = stop_sender.send(true);
    })
    .await;
    let _ = leadership_task.await;
    let _ = report_task.await;
    let _ = resume_task.await;
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
/// Where other hubs reach this one's API: its listen address, or this host's name with the
/// port when it listens on every address.
fn advertised_url(scheme: &str, address: &str) -> String {
    match address.parse::<SocketAddr>() {
        Ok(listen) if listen.ip().is_unspecified() => format!(
            "{scheme}://{}:{}",
            berth_agent::host::host_name(),
            listen.port()
        ),
        _ => format!("{scheme}://{address}"),
    }
}

/// The hub's own API as its model-file watcher reaches it: over loopback when it listens on
/// every address.
fn own_url(scheme: &str, address: &str) -> String {
    match address.parse::<SocketAddr>() {
        Ok(listen) if listen.ip().is_unspecified() => {
            format!("{scheme}://localhost:{}", listen.port())
        }
        _ => format!("{scheme}://{address}"),
    }
}

/// Where the hub's model-file watcher reads and whom it calls.
#[derive(Clone)]
struct ModelWatch {
    url: String,
    ca_file: Option<PathBuf>,
    dir: PathBuf,
}

/// Applies the model files of the watched directory as the first admin, through the hub's own
/// API, until `stop` (the hub configuration's `model_watch_dir`).
async fn watch_model_files(
    state: &HubState,
    watch: ModelWatch,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    let ModelWatch { url, ca_file, dir } = watch;
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
    println!(
        "applying the model files of {} as the first admin (token {:?}; every 2 s)",
        dir.display(),
        bootstrap::WATCHER_TOKEN
    );
    Some(tokio::spawn(async move {
        let client = match crate::client::api::HubClient::trusting(&url, token, ca_file.as_deref())
        {
            Ok(client) => client,
            Err(err) => {
                eprintln!("berth: model_watch_dir: {err}");
                return;
            }
        };
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
fn private_dir(dir: &Path) -> std::io::Result<()> {
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
