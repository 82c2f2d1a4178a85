//! An in-process hub on a fresh SQLite database with its admin token, and a client for it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use berth_hub::state::HubSettings;
use berth_hub::{HubState, bootstrap};
use berth_store::{SecretBox, Store};
use reqwest::Method;
use serde_json::{Value, json};

/// A running hub.
pub struct Hub {
    /// Where it listens.
    pub address: SocketAddr,
    /// Its state.
    pub state: Arc<HubState>,
    /// The admin's token.
    pub admin: String,
    client: reqwest::Client,
}

/// Starts a hub for `test`.
pub async fn start(test: &str) -> Hub {
    start_with(test, HubSettings::default()).await
}

/// Starts a hub for `test` with `settings`.
pub async fn start_with(test: &str, settings: HubSettings) -> Hub {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("berth-hub-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let store = Store::connect(&format!("sqlite://{}", dir.join("berth.db").display()))
        .await
        .expect("store");
    let secrets = SecretBox::load_or_create(None, &dir.join("secret.key")).expect("key");
    let state = Arc::new(
        HubState::new(store, secrets, settings)
            .await
            .expect("state"),
    );
    let booted = bootstrap::ensure(&state, None, None)
        .await
        .expect("bootstrap");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    let router = berth_console::app(Arc::clone(&state));
    tokio::spawn(async move { axum::serve(listener, router).await });
    Hub {
        address,
        state,
        admin: booted.new_admin_token.expect("admin token"),
        client: reqwest::Client::new(),
    }
}

impl Hub {
    /// Sends a request with `token`; status, JSON body (or null) and raw text.
    pub async fn call(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, String) {
        let mut request = self
            .client
            .request(method, format!("http://{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        )
    }

    /// Sends a request as the admin.
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, value, _) = self.call(Some(&self.admin), method, path, body).await;
        (status, value)
    }

    /// The actions of the operation log's rows for service `id`, newest first.
    pub async fn actions_of_service(&self, id: i64) -> Vec<String> {
        let (_, log) = self
            .admin(
                Method::GET,
                &format!("/api/admin/operations?service_id={id}&size=500"),
                None,
            )
            .await;
        log["operations"]
            .as_array()
            .expect("operations")
            .iter()
            .filter_map(|operation| operation["action"].as_str().map(str::to_owned))
            .collect()
    }

    /// Creates a user; their id and token.
    pub async fn new_user(&self, name: &str) -> (i64, String) {
        let (status, body) = self
            .admin(Method::POST, "/api/users", Some(json!({"name": name})))
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["user"]["id"].as_i64().expect("id"),
            body["token"].as_str().expect("token").to_owned(),
        )
    }
}

/// Runs `body`, then deletes every service (and so its container) even when `body` panicked.
pub async fn with_cleanup<F: Future<Output = ()>>(hub: &Hub, body: F) {
    use futures_util::FutureExt;
    let outcome = std::panic::AssertUnwindSafe(body).catch_unwind().await;
    let (_, listed) = hub.admin(Method::GET, "/api/services?all=true", None).await;
    for service in listed["services"].as_array().cloned().unwrap_or_default() {
        let (status, problem) = hub
            .admin(
                Method::DELETE,
                &format!("/api/services/{}?wait=60", service["id"]),
                None,
            )
            .await;
        if status != 200 {
            eprintln!(
                "cleanup could not delete service {}: {problem}",
                service["id"]
            );
        }
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A node creation body with the required fields and `extra`.
pub fn node(name: &str, extra: Value) -> Value {
    let mut body = json!({"name": name, "public_ip": "203.0.113.5", "private_ip": "10.0.0.5"});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

/// Adds a connected simulated node `name` with 8 cores and 16 GiB straight to the database.
pub async fn add_simulated_node(hub: &Hub, name: &str) -> berth_store::nodes::NodeRecord {
    let mut record =
        berth_store::nodes::NodeRecord::new(name, berth_hub::simulation::SIMULATED_DRIVER);
    record.docker_status = "connected".to_owned();
    record.cpu = "8".to_owned();
    record.memory = "16g".to_owned();
    let mut transaction = hub.state.store.begin().await.expect("tx");
    let node = berth_store::nodes::insert(&mut transaction, &record)
        .await
        .expect("node");
    transaction.commit().await.expect("commit");
    hub.state.placements_changed();
    node
}

/// Registers the local engine as node `local` (Docker driver); its id.
pub async fn add_local_node(hub: &Hub) -> i64 {
    let docker =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
    let (status, created) = hub
        .admin(
            Method::POST,
            "/api/nodes",
            Some(node(
                "local",
                json!({"docker_address": docker, "use_tls": false}),
            )),
        )
        .await;
    assert_eq!(
        (status, created["docker_status"].as_str()),
        (201, Some("connected")),
        "{created}"
    );
    created["id"].as_i64().expect("id")
}

/// A `berth agent` served in this process on the local engine.
pub struct RunningAgent {
    /// Its address.
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningAgent {
    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops it as a dead agent would: no more answers, idle connections closed.
    pub async fn kill(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.served.abort();
        let _ = self.served.await;
    }
}

/// Starts an agent with `server_id` and `key` on `address` (port 0 for any).
pub async fn start_agent(server_id: &str, key: &str, address: &str) -> RunningAgent {
    start_agent_with(server_id, key, address, &[]).await
}

/// The same with more of its settings (`BERTH_SIMULATED_GPUS`, …).
pub async fn start_agent_with(
    server_id: &str,
    key: &str,
    address: &str,
    settings: &[(&'static str, &str)],
) -> RunningAgent {
    let mut values = std::collections::HashMap::from([
        ("MMANAGER_API_KEY", key.to_owned()),
        ("SERVER_ID", server_id.to_owned()),
    ]);
    for (name, value) in settings {
        values.insert(name, (*value).to_owned());
    }
    let config = berth_agent::AgentConfig::load(|name| {
        values.get(name).cloned().or_else(|| {
            (name == "DOCKER_HOST")
                .then(|| std::env::var(name).ok())
                .flatten()
        })
    })
    .expect("agent config");
    let agent = berth_agent::AgentState::connect(config)
        .await
        .expect("agent");
    let mut listener = None;
    for _ in 0..50 {
        match tokio::net::TcpListener::bind(address).await {
            Ok(bound) => {
                listener = Some(bound);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let listener = listener.expect("bind the agent's address");
    let address = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(berth_http::listen::serve(
        listener,
        berth_agent::api::router(agent),
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    RunningAgent {
        address,
        stop: Some(stop),
        served,
    }
}

/// Starts the gateway and its readiness loop for `hub` on a free port; its address.
pub async fn start_gateway(hub: &Hub) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    let _ = hub.state.gateway_address.set(address);
    tokio::spawn(berth_hub::gateway::readiness::run(
        Arc::clone(&hub.state),
        std::future::pending(),
    ));
    let gateway = Arc::new(berth_hub::gateway::in_hub(Arc::clone(&hub.state)));
    tokio::spawn(gateway.serve(listener, std::future::pending()));
    address
}

/// Starts a second gateway for `hub` serving TLS with a fresh self-signed certificate for
/// `127.0.0.1`; its address and the certificate (PEM) a client trusts.
pub async fn start_tls_gateway(hub: &Hub) -> (SocketAddr, String) {
    let dir = std::env::temp_dir().join(format!(
        "berth-gateway-tls-{}-{}",
        std::process::id(),
        hub.state.started_at_ms
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let certificate = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let files = berth_http::listen::ListenTls {
        cert: dir.join("gateway.pem"),
        key: dir.join("gateway-key.pem"),
    };
    std::fs::write(&files.cert, certificate.pem()).expect("cert");
    std::fs::write(&files.key, key.serialize_pem()).expect("key");
    let tls = berth_http::listen::TlsFiles::load(files).expect("TLS files");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    let gateway = berth_hub::gateway::in_hub(Arc::clone(&hub.state)).over_tls(Arc::new(tls));
    tokio::spawn(Arc::new(gateway).serve(listener, std::future::pending()));
    (address, certificate.pem())
}

/// The local engine, straight through the driver.
pub async fn engine() -> berth_docker::DockerDriver {
    let address =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
    berth_docker::DockerDriver::connect(&berth_docker::DockerEndpoint {
        address,
        tls: None,
        timeout_secs: 30,
    })
    .await
    .expect("engine")
}
