//! `berth gateway`: the gateway alone, in a process of its own, for running several behind a
//! load balancer apart from the hubs. It follows a hub's route table (any of several, with an
//! admin's token), serves model and service requests from its own copy, asks the hub about
//! tokens and loads, and reports its traffic to it. `/health` and `/metrics` are on a separate
//! listener. It stops on SIGINT or SIGTERM, letting requests in flight finish.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use berth_gateway::Gateway;
use berth_gateway::remote::RemoteHub;
use berth_http::listen::{ListenTls, TlsFiles};
use clap::Args;

/// Options of `berth gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// text (lines for people) or json (one object per line, for log collectors).
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum, default_value_t = crate::logging::LogFormat::Text)]
    log_format: crate::logging::LogFormat,
    /// A hub's URL; give several (or a comma-separated list) to move to the next when one
    /// does not answer.
    #[arg(
        long = "hub",
        env = "BERTH_GATEWAY_HUBS",
        value_delimiter = ',',
        required = true
    )]
    hubs: Vec<String>,
    /// An admin's API token, for the hub's gateway routes.
    #[arg(long, env = "BERTH_GATEWAY_TOKEN", hide_env_values = true)]
    token: String,
    /// Where requests to services arrive.
    #[arg(long, env = "BERTH_GATEWAY_LISTEN", default_value = "0.0.0.0:7701")]
    listen: SocketAddr,
    /// Where `/health` and `/metrics` are served.
    #[arg(
        long,
        env = "BERTH_GATEWAY_ADMIN_LISTEN",
        default_value = "127.0.0.1:7702"
    )]
    admin_listen: SocketAddr,
    /// This gateway's name in the hub's counts [default: the host name].
    #[arg(long, env = "BERTH_GATEWAY_NAME")]
    name: Option<String>,
    /// The hubs' CA certificate (PEM), trusted besides the system's roots.
    #[arg(long, env = "BERTH_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM); read again when it changes.
    #[arg(long, env = "BERTH_GATEWAY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "BERTH_GATEWAY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// Runs the gateway until SIGINT or SIGTERM.
pub async fn run(args: GatewayArgs) -> ExitCode {
    if let Err(err) = crate::logging::init("info", None, args.log_format) {
        eprintln!("berth gateway: cannot set up logging: {err}");
        return ExitCode::FAILURE;
    }
    match serve(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("berth gateway: {err}");
            ExitCode::FAILURE
        }
    }
}

fn http_client(ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(5));
    if let Some(ca_file) = ca_file {
        let pem = std::fs::read(ca_file).map_err(|err| {
            format!(
                "cannot read the hub's CA certificate {} ({err}); point --ca-file at the hub's ca.pem",
                ca_file.display()
            )
        })?;
        let ca = reqwest::Certificate::from_pem(&pem)
            .map_err(|err| format!("{}: not a PEM certificate ({err})", ca_file.display()))?;
        builder = builder.add_root_certificate(ca);
    }
    builder.build().map_err(|err| err.to_string())
}

async fn serve(args: GatewayArgs) -> Result<(), String> {
    let hubs: Vec<String> = args
        .hubs
        .iter()
        .map(|hub| hub.trim().to_owned())
        .filter(|hub| !hub.is_empty())
        .collect();
    if let Some(bad) = hubs
        .iter()
        .find(|hub| !(hub.starts_with("http://") || hub.starts_with("https://")))
    {
        return Err(format!(
            "--hub {bad}: give the hub's URL with its scheme, e.g. http://hub.example:7700"
        ));
    }
    let name = args.name.clone().unwrap_or_else(host_name);
    let remote = Arc::new(RemoteHub::new(
        hubs,
        args.token.clone(),
        http_client(args.ca_file.as_deref())?,
        &name,
    ));
    // The first table before the first request: without it every request would be a 404.
    if let Err(err) = remote.sync().await {
        tracing::warn!(error = %err, "No hub gave its routes yet; serving once one does.");
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(TlsFiles::load(ListenTls {
            cert: cert.clone(),
            key: key.clone(),
        })?)),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|err| format!("cannot listen on {} ({err}); choose --listen", args.listen))?;
    let admin = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .map_err(|err| {
            format!(
                "cannot listen on {} ({err}); choose --admin-listen",
                args.admin_listen
            )
        })?;
    tracing::info!(
        listen = %args.listen,
        admin = %args.admin_listen,
        hub = remote.hub(),
        gateway = %name,
        "Gateway serving."
    );
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let stopped = move |mut receiver: tokio::sync::watch::Receiver<bool>| async move {
        let _ = receiver.wait_for(|stopped| *stopped).await;
    };
    let follow = {
        let remote = Arc::clone(&remote);
        let until = stopped(stopping.clone());
        tokio::spawn(async move { remote.follow(until).await })
    };
    let report = {
        let remote = Arc::clone(&remote);
        let until = stopped(stopping.clone());
        tokio::spawn(async move { remote.report(until).await })
    };
    let admin_app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(Arc::clone(&remote));
    let admin_task = {
        let until = stopped(stopping.clone());
        tokio::spawn(async move {
            axum::serve(admin, admin_app)
                .with_graceful_shutdown(until)
                .await
        })
    };
    let mut gateway = Gateway::with_control(remote);
    if let Some(tls) = tls {
        gateway = gateway.over_tls(tls);
    }
    let until = stopped(stopping.clone());
    let serving = tokio::spawn(Arc::new(gateway).serve(listener, until));
    crate::shutdown_signal().await;
    tracing::info!("Shutting down: letting requests in flight finish.");
    let _ = stop.send(true);
    let _ = serving.await;
    let _ = tokio::join!(follow, report, admin_task);
    tracing::info!("Gateway stopped.");
    Ok(())
}

async fn health(State(remote): State<Arc<RemoteHub>>) -> impl IntoResponse {
    axum::Json(remote.health())
}

async fn metrics(State(remote): State<Arc<RemoteHub>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        remote.render_metrics(),
    )
}

/// This host's name, for the hub's counts.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "gateway".to_owned())
}
