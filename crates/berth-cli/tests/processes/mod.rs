//! `berth hub` and `berth agent` as separate processes on loopback, for tests and benchmarks of
//! a small cluster on the local engine: start, kill, restart, and call the hub's API.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_docker::{DockerDriver, DockerEndpoint};
use reqwest::Method;
use serde_json::{Value, json};

/// The test image.
pub const IMAGE: &str = "berth-test/busybox:latest";

/// A child process, killed when dropped.
pub struct Process(pub Child);

impl Process {
    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    /// Pauses it (SIGSTOP) for `pause`, then lets it go on (SIGCONT): a network blip as the
    /// hub sees it — connections stay open, nothing answers meanwhile.
    pub async fn pause_for(&self, pause: Duration) {
        let pid = self.0.id().to_string();
        let signal = |name: &str| {
            let sent = Command::new("kill")
                .args([name, &pid])
                .status()
                .expect("kill(1)");
            assert!(sent.success(), "kill {name} {pid}");
        };
        signal("-STOP");
        tokio::time::sleep(pause).await;
        signal("-CONT");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A fresh directory for `name`.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// Waits until `check` gives a value, polling every 50 ms, for at most `limit`.
pub async fn wait_for<T, F: Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The hub's API as its admin.
pub struct HubApi {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl HubApi {
    /// The API at `base` as the admin with `token`.
    pub fn at(base: String, token: String) -> Self {
        Self {
            base,
            token,
            client: reqwest::Client::new(),
        }
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The admin token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A call; status and JSON body (null when none).
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, body, &[]).await
    }

    /// A call with extra headers; status (0: no answer) and JSON body (null when none).
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// Deletes every service of the admin (and so their containers).
    pub async fn delete_all_services(&self) {
        let (_, listed) = self.call(Method::GET, "/api/services", None).await;
        for service in listed["services"].as_array().cloned().unwrap_or_default() {
            self.call(
                Method::DELETE,
                &format!("/api/services/{}?wait=60", service["id"]),
                None,
            )
            .await;
        }
    }

    /// Registers the local engine as node `local` (Docker driver); its id.
    pub async fn add_local_node(&self) -> i64 {
        let docker = std::env::var("DOCKER_HOST")
            .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
        let (status, node) = self
            .call(
                Method::POST,
                "/api/nodes",
                Some(
                    json!({"name": "local", "public_ip": "127.0.0.1", "private_ip": "127.0.0.1",
                    "docker_address": docker, "use_tls": false}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{node}");
        node["id"].as_i64().expect("id")
    }

    /// Registers an agent node; its id.
    pub async fn add_agent(&self, name: &str, port: u16, key: &str) -> i64 {
        let body = json!({"name": name, "public_ip": "127.0.0.1", "private_ip": "127.0.0.1",
            "driver": "agent", "agent_url": format!("http://127.0.0.1:{port}"), "agent_api_key": key});
        let (status, created) = self.call(Method::POST, "/api/nodes", Some(body)).await;
        assert_eq!(
            (status, created["docker_status"].as_str()),
            (201, Some("connected")),
            "{created}"
        );
        created["id"].as_i64().expect("id")
    }

    /// A service as the hub has it.
    pub async fn service(&self, id: i64) -> Value {
        self.call(Method::GET, &format!("/api/services/{id}"), None)
            .await
            .1
    }

    /// The operation log's (action, outcome) pairs, oldest first.
    pub async fn actions(&self) -> Vec<(String, String)> {
        let (_, listed) = self
            .call(Method::GET, "/api/admin/operations?size=500", None)
            .await;
        let mut pairs: Vec<(String, String)> = listed["operations"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|operation| {
                (
                    operation["action"].as_str().unwrap_or_default().to_owned(),
                    operation["outcome"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        pairs.reverse();
        pairs
    }
}

/// The key every hub seals secrets with (they share the database, so the key too).
pub const SECRET_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A fresh PostgreSQL database named after `purpose` on the test server
/// (`BERTH_TEST_POSTGRES_URL`), or `None` when none is configured (outside CI).
pub async fn postgres_database(purpose: &str) -> Option<String> {
    let base = match std::env::var("BERTH_TEST_POSTGRES_URL") {
        Ok(base) => base,
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("BERTH_TEST_POSTGRES_URL is not set; scripts/test starts PostgreSQL and sets it")
        }
        Err(_) => {
            eprintln!("skipped: BERTH_TEST_POSTGRES_URL is not set");
            return None;
        }
    };
    let name = format!("berth_{purpose}_{}", std::process::id());
    let admin = berth_store::Store::connect(&base)
        .await
        .expect("PostgreSQL");
    let mut connection = admin.acquire().await.expect("connection");
    for statement in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *connection)
            .await
            .expect("the test database");
    }
    let slash = base
        .rfind('/')
        .expect("BERTH_TEST_POSTGRES_URL ends in /DATABASE");
    Some(format!("{}/{name}", &base[..slash]))
}

/// A hub on `database` (PostgreSQL, so elected) with its data in `dir`, its API on `port`,
/// its gateway on `gateway_port`, a lease of `lease_seconds` and the configuration `config`
/// (YAML); its log in `dir/hub.log`.
pub fn start_elected_hub(
    database: &str,
    dir: &Path,
    (port, gateway_port): (u16, u16),
    lease_seconds: u64,
    config: &str,
) -> Process {
    std::fs::create_dir_all(dir).expect("dir");
    let config_path = dir.join("hub.yaml");
    std::fs::write(&config_path, config).expect("config");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("hub.log"))
        .expect("log");
    Process(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("hub")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--gateway-listen", &format!("127.0.0.1:{gateway_port}")])
            .args(["--database-url", database])
            .arg("--data-dir")
            .arg(dir)
            .args(["--leader-lease-seconds", &lease_seconds.to_string()])
            .arg("--config")
            .arg(&config_path)
            .env("BERTH_SECRET_KEY", SECRET_KEY)
            .env("BERTH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("berth hub"),
    )
}

/// `/health`'s leadership of the hub on `port`, once it answers.
pub async fn leadership(client: &reqwest::Client, port: u16) -> Option<Value> {
    let health: Value = client
        .get(format!("http://127.0.0.1:{port}/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(health["leadership"].clone())
}

/// Waits until the hub on one of `ports` leads; that port and its term.
pub async fn leader_among(client: &reqwest::Client, ports: &[u16], what: &str) -> (u16, i64) {
    wait_for(Duration::from_secs(30), what, || async {
        for port in ports {
            if let Some(lead) = leadership(client, *port).await
                && lead["leading"] == true
            {
                return Some((*port, lead["term"].as_i64().expect("a term")));
            }
        }
        None
    })
    .await
}

/// The label (`berth.hub=…`) on every container of the hubs sharing `database`.
pub async fn database_hub_label(database: &str) -> String {
    let store = berth_store::Store::connect(database)
        .await
        .expect("the hubs' database");
    let mut connection = store.acquire().await.expect("connection");
    let id = berth_store::allocations::hub_id(&mut connection)
        .await
        .expect("the hubs' identity");
    format!("berth.hub={id}")
}

/// The hub's log in `dir`, which every hub started there appends to.
fn hub_log(dir: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("hub.log"))
        .map_or_else(|_| Stdio::null(), Stdio::from)
}

/// The last `lines` lines the hubs started in `dir` logged, for a failure's message.
pub fn log_tail(dir: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(dir.join("hub.log")).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The label (`berth.hub=…`) on every container of the hub whose data is in `dir`.
pub async fn hub_label(dir: &Path) -> String {
    let url = format!("sqlite://{}", dir.join("berth.db").display());
    let store = berth_store::Store::connect(&url)
        .await
        .expect("the hub's database");
    let mut connection = store.acquire().await.expect("connection");
    let id = berth_store::allocations::hub_id(&mut connection)
        .await
        .expect("the hub's identity");
    format!("berth.hub={id}")
}

/// Starts `berth hub` on SQLite in `dir` with `config` (YAML) and waits until it answers.
pub async fn start_hub(dir: &Path, config: &str) -> (Process, HubApi) {
    start_hub_configured(dir, "hub.yaml", config).await
}

/// The same with the configuration in a file named `file_name` (`config.py`: seed 000's form).
pub async fn start_hub_configured(dir: &Path, file_name: &str, config: &str) -> (Process, HubApi) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let config_path = dir.join(file_name);
    std::fs::write(&config_path, config).expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("hub")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--gateway-listen", "127.0.0.1:0"])
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.join("berth.db").display()))
        .arg("--data-dir")
        .arg(dir)
        .arg("--config")
        .arg(&config_path)
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(hub_log(dir))
        .spawn()
        .expect("berth hub starts");
    let process = Process(child);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let token_file = dir.join("admin-token");
    let token = wait_for(Duration::from_secs(30), "the hub answers", || {
        let client = client.clone();
        let health = format!("{base}/health");
        let token_file = token_file.clone();
        async move {
            let up = client.get(health).send().await.ok()?.status().is_success();
            up.then(|| std::fs::read_to_string(&token_file).ok())
                .flatten()
                .map(|token| token.trim().to_owned())
        }
    })
    .await;
    (
        process,
        HubApi {
            base,
            token,
            client,
        },
    )
}

/// Starts `berth agent` with `server_id` and `key` on `port` and waits until it answers.
pub async fn start_agent(server_id: &str, key: &str, port: u16) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("agent")
        .env("SERVER_ID", server_id)
        .env("MMANAGER_API_KEY", key)
        .env("BERTH_AGENT_LISTEN", format!("127.0.0.1:{port}"))
        .env("LOG_LEVEL", "WARNING")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("berth agent starts");
    let process = Process(child);
    let client = reqwest::Client::new();
    wait_for(Duration::from_secs(30), "the agent answers", || {
        let request = client.get(format!("http://127.0.0.1:{port}/health"));
        async move {
            request
                .send()
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        }
    })
    .await;
    process
}

/// The local engine, for looking behind the hub's back.
pub async fn engine() -> DockerDriver {
    let address =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
    DockerDriver::connect(&DockerEndpoint {
        address,
        tls: None,
        timeout_secs: 30,
    })
    .await
    .expect("engine")
}

/// The container's status on the engine, `None` when it is gone.
pub async fn engine_status(engine: &DockerDriver, id: &str) -> Option<String> {
    engine.inspect(id).await.ok().map(|details| details.status)
}

/// Creates and starts a small service for the admin; the started service.
pub async fn running_service(hub: &HubApi, name: &str) -> Value {
    let (_, me) = hub.call(Method::GET, "/api/users/me", None).await;
    let user = me["name"].as_str().expect("name").to_owned();
    let body = json!({"name": name, "image": IMAGE, "memory_limit": "16m", "cpu_limit": 0.1,
        "command": ["sh", "-c", "while true; do sleep 0.2; done"]});
    let (status, created) = hub
        .call(
            Method::POST,
            &format!("/api/{user}/e2e/services?wait=60"),
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["service_id"].as_i64().expect("id");
    let (status, started) = hub
        .call(
            Method::POST,
            &format!("/api/services/{id}/start?wait=60"),
            None,
        )
        .await;
    assert_eq!(
        (status, started["state"].as_str()),
        (200, Some("succeeded")),
        "{started}"
    );
    started["service"].clone()
}

/// Removes, when dropped (also when a test fails), every container carrying one of these labels
/// (`berth.agent=<SERVER_ID>`, `berth.hub=<hub id>`), so that a failed run leaves nothing on the
/// engine.
pub struct LabelledContainers(pub Vec<String>);

impl Drop for LabelledContainers {
    fn drop(&mut self) {
        let labels = std::mem::take(&mut self.0);
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let engine = engine().await;
                for label in labels {
                    for container in engine
                        .list(&[label.as_str()], true)
                        .await
                        .unwrap_or_default()
                    {
                        let _ = engine
                            .remove(
                                &container.id,
                                berth_docker::RemoveOptions {
                                    force: true,
                                    keep_data: false,
                                },
                            )
                            .await;
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// What a finished `berth` command wrote, standard output then standard error.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A gateway process following `hubs` with `token`, serving on `port`, `/health` on
/// `admin_port`; its log in `dir/gateway.log`.
pub fn start_gateway(
    dir: &Path,
    hubs: &[String],
    token: &str,
    (port, admin_port): (u16, u16),
) -> Process {
    std::fs::create_dir_all(dir).expect("dir");
    let log = std::fs::File::create(dir.join("gateway.log")).expect("log");
    Process(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("gateway")
            .args(["--hub", &hubs.join(",")])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--name", &dir.file_name().expect("name").to_string_lossy()])
            .env("BERTH_GATEWAY_TOKEN", token)
            .env("BERTH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("berth gateway"),
    )
}

/// Three hubs on one PostgreSQL database, as [`start_three_elected_hubs`] leaves them.
pub struct ElectedHubs {
    /// Hubs `a`, `b` and `c` (data in `dir/a`, …); `a` led first.
    pub processes: Vec<Process>,
    /// Their API ports.
    pub ports: [u16; 3],
    /// Their gateways' ports.
    pub gateways: [u16; 3],
    /// Their APIs, with the first admin's token.
    pub api: Vec<HubApi>,
    /// The first admin's token.
    pub token: String,
}

/// Hub `a` started alone on `database` with `config` and a 2 s lease, leading with the local
/// engine as a node; then hubs `b` and `c`, once each knows the leader.
pub async fn start_three_elected_hubs(database: &str, dir: &Path, config: &str) -> ElectedHubs {
    let client = reqwest::Client::new();
    let ports = [free_port(), free_port(), free_port()];
    let gateways = [free_port(), free_port(), free_port()];
    let start = |which: usize| {
        start_elected_hub(
            database,
            &dir.join(["a", "b", "c"][which]),
            (ports[which], gateways[which]),
            2,
            config,
        )
    };
    let mut processes = vec![start(0)];
    leader_among(&client, &ports[..1], "the first hub leads").await;
    let token = std::fs::read_to_string(dir.join("a").join("admin-token"))
        .expect("token")
        .trim()
        .to_owned();
    let api: Vec<HubApi> = ports
        .iter()
        .map(|port| HubApi::at(format!("http://127.0.0.1:{port}"), token.clone()))
        .collect();
    api[0].add_local_node().await;
    processes.extend([start(1), start(2)]);
    for port in &ports[1..] {
        wait_for(
            Duration::from_secs(30),
            "a follower knows the leader",
            || async {
                let lead = leadership(&client, *port).await?;
                lead["leader_url"].is_string().then_some(())
            },
        )
        .await;
    }
    ElectedHubs {
        processes,
        ports,
        gateways,
        api,
        token,
    }
}
