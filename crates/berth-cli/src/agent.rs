//! `berth agent`: reads the configuration (flags over the environment), sets up logging, binds,
//! joins the hub when asked (`--join URL --token T`: the hub creates the node and gives it its
//! API key, kept in the data directory for later starts), connects to the engine and serves the
//! mManager API until SIGINT or SIGTERM. With `--tls-from-hub` the join also brings a
//! certificate of the hub's CA for this host (the key never leaves it: the hub signs a request),
//! kept beside the key, and the agent serves TLS with it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use berth_agent::config::{self, AgentConfig};
use berth_agent::{AgentState, api};
use berth_http::listen::TlsFiles;
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
    /// Join the hub at this URL as a new node (with --token), then serve with the key it gives.
    #[arg(long, env = "BERTH_JOIN", value_name = "HUB_URL")]
    join: Option<String>,
    /// The join token `berth node join-token` printed.
    #[arg(
        long,
        env = "BERTH_JOIN_TOKEN",
        requires = "join",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The URL the hub reaches this agent on [default: this host's address towards the hub,
    /// with the listen port].
    #[arg(long, env = "BERTH_AGENT_ADVERTISE", requires = "join")]
    advertise: Option<String>,
    /// Serve TLS with a certificate the hub's CA signs at the join (for the advertised host).
    #[arg(
        long,
        env = "BERTH_AGENT_TLS_FROM_HUB",
        requires = "join",
        conflicts_with = "tls_cert"
    )]
    tls_from_hub: bool,
    /// Where a joined agent keeps the hub's URL and its key, to serve again after a restart.
    #[arg(long, env = "BERTH_AGENT_DATA_DIR", default_value = "berth-agent-data")]
    data_dir: PathBuf,
}

/// The certificate and key files a `--tls-from-hub` agent serves with, in its data directory.
fn hub_signed_files(data_dir: &std::path::Path) -> config::ListenTls {
    config::ListenTls {
        cert: data_dir.join("agent.pem"),
        key: data_dir.join("agent-key.pem"),
    }
}

/// What a joined agent keeps (0600) to start again without a new token.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Joined {
    hub: String,
    node_id: i64,
    name: String,
    api_key: String,
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

/// A `SERVER_ID` made of this host's name, for an agent that joins without one.
fn server_id_of_host() -> Option<String> {
    let name: String = berth_agent::host::host_name()
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('-').chars().take(63).collect::<String>();
    (!name.is_empty()).then_some(name)
}

/// The address this host reaches `hub` from: the one the hub reaches it on, most likely.
async fn address_towards(hub: &reqwest::Url) -> Result<std::net::IpAddr, String> {
    let host = hub.host_str().unwrap_or_default();
    let port = hub.port_or_known_default().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|err| format!("cannot reach the hub at {hub}: {err}"))?;
    stream
        .local_addr()
        .map(|address| address.ip())
        .map_err(|err| err.to_string())
}

/// The API key of this node: kept from an earlier join to the same hub, or given by the hub
/// for `--token` now (and kept).
async fn joined_key(
    args: &AgentArgs,
    config: &AgentConfig,
    listen: std::net::SocketAddr,
) -> Result<String, String> {
    let hub = args
        .join
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/');
    let hub_url = reqwest::Url::parse(hub)
        .map_err(|err| format!("--join {hub:?} is not a URL ({err}); give the hub's URL, as berth node join-token printed it"))?;
    let kept = args.data_dir.join("joined.json");
    if let Ok(text) = std::fs::read_to_string(&kept)
        && let Ok(joined) = serde_json::from_str::<Joined>(&text)
        && joined.hub == hub
    {
        tracing::info!(node = %joined.name, hub, "Joined earlier; serving with the key kept in {}.", kept.display());
        return Ok(joined.api_key);
    }
    let token = args.token.as_deref().ok_or_else(|| {
        "--join needs --token: run berth node join-token on the hub and use the command it prints".to_owned()
    })?;
    let advertise = match &args.advertise {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let ip = if listen.ip().is_unspecified() {
                address_towards(&hub_url).await?
            } else {
                listen.ip()
            };
            let scheme = if config.tls.is_some() || args.tls_from_hub {
                "https"
            } else {
                "http"
            };
            format!(
                "{scheme}://{}",
                std::net::SocketAddr::new(ip, listen.port())
            )
        }
    };
    let client = match std::env::var_os("BERTH_CA_FILE") {
        Some(ca_file) => {
            let pem = std::fs::read(&ca_file).map_err(|err| {
                format!(
                    "cannot read BERTH_CA_FILE {}: {err}",
                    ca_file.to_string_lossy()
                )
            })?;
            let ca = reqwest::Certificate::from_pem(&pem)
                .map_err(|err| format!("BERTH_CA_FILE is not a PEM certificate: {err}"))?;
            reqwest::Client::builder()
                .add_root_certificate(ca)
                .build()
                .map_err(|err| err.to_string())?
        }
        None => reqwest::Client::new(),
    };
    let request = args
        .tls_from_hub
        .then(|| berth_docker::pki::agent_request(&config.server_id))
        .transpose()
        .map_err(|err| format!("cannot make a certificate request: {err}"))?;
    let answer = client
        .post(format!("{hub}/api/nodes/join"))
        .json(&serde_json::json!({
            "token": token,
            "agent_url": advertise,
            "server_id": config.server_id,
            "server_type": config.server_type,
            "csr": request.as_ref().map(|(_, csr)| csr),
        }))
        .send()
        .await
        .map_err(|err| {
            format!(
                "cannot reach the hub at {hub}: {err} (a hub with its own CA: set BERTH_CA_FILE to its ca.pem)"
            )
        })?;
    let status = answer.status();
    let body: serde_json::Value = answer.json().await.unwrap_or_default();
    if !status.is_success() {
        return Err(format!(
            "the hub refused the join ({status}): {}",
            body["detail"].as_str().unwrap_or("no reason given")
        ));
    }
    let joined = Joined {
        hub: hub.to_owned(),
        node_id: body["node_id"].as_i64().unwrap_or_default(),
        name: body["name"].as_str().unwrap_or_default().to_owned(),
        api_key: body["api_key"]
            .as_str()
            .ok_or("the hub's answer carries no api_key")?
            .to_owned(),
    };
    if let Some((key, _)) = &request {
        let certificate = body["certificate"]
            .as_str()
            .ok_or("the hub signed no certificate")?;
        let files = hub_signed_files(&args.data_dir);
        berth_store::secrets::write_private(&files.key, key)
            .and_then(|()| berth_store::secrets::write_private(&files.cert, certificate))
            .map_err(|err| {
                format!(
                    "cannot keep the certificate in {}: {err}",
                    args.data_dir.display()
                )
            })?;
    }
    let text = serde_json::to_string_pretty(&joined).map_err(|err| err.to_string())?;
    berth_store::secrets::write_private(&kept, &text)
        .map_err(|err| format!("cannot keep the key in {}: {err}", kept.display()))?;
    tracing::info!(node = %joined.name, node_id = joined.node_id, hub, url = %advertise, "Joined the hub as a new node.");
    Ok(joined.api_key)
}

/// The TLS files `config` names, loaded.
fn load_tls(config: &AgentConfig) -> Result<Option<Arc<TlsFiles>>, String> {
    config
        .tls
        .clone()
        .map(|files| TlsFiles::load(files).map(Arc::new))
        .transpose()
}

/// Runs the agent until a shutdown signal.
pub async fn run(args: AgentArgs) -> ExitCode {
    let joining = args.join.is_some();
    let host_id = joining.then(server_id_of_host).flatten();
    let config = match AgentConfig::load(|key| {
        args.flag(key)
            .or_else(|| std::env::var(key).ok())
            .or_else(|| {
                (key == config::ENV_SERVER_ID)
                    .then(|| host_id.clone())
                    .flatten()
            })
    }) {
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
    // A certificate given by flags is checked before a join can use the token up.
    let mut tls = match load_tls(&config) {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("berth agent: {err}");
            return ExitCode::from(2);
        }
    };
    let listen = config.listen;
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("berth agent: cannot listen on {listen}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut config = config;
    if joining {
        let bound = listener.local_addr().unwrap_or(listen);
        match joined_key(&args, &config, bound).await {
            Ok(key) => {
                config.api_key = key;
                config.api_key_is_default = false;
            }
            Err(err) => {
                eprintln!("berth agent: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    if args.tls_from_hub {
        config.tls = Some(hub_signed_files(&args.data_dir));
        tls = match load_tls(&config) {
            Ok(tls) => tls,
            Err(err) => {
                eprintln!(
                    "berth agent: {err} (joined earlier without --tls-from-hub? remove joined.json and join with a new token)"
                );
                return ExitCode::from(2);
            }
        };
    }
    if config.api_key_is_default {
        tracing::warn!(
            "MMANAGER_API_KEY is not set: the agent accepts the well-known default key. Set MMANAGER_API_KEY to a secret before exposing this port."
        );
    }
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
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        server_id = %state.config.server_id,
        server_type = %state.config.server_type,
        address = %format!("{scheme}://{}", listener.local_addr().map(|addr| addr.to_string()).unwrap_or_default()),
        "Agent listening."
    );
    let router = api::router(Arc::clone(&state));
    match berth_http::listen::serve(listener, router, tls, crate::shutdown_signal()).await {
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
