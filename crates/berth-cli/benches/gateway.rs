//! The gateway against nginx, and the cold start of an unloaded model service.
//!
//! Throughput and latency: a fast upstream (nginx `return 200`, one worker, pinned to CPU 1 with
//! wrk) is reached directly, through an nginx keepalive reverse proxy (one worker, CPU 0),
//! through Berth's gateway in the hub (this process, one Tokio worker, CPU 0) and through a
//! gateway process of its own (`berth gateway`, following this hub; one Tokio worker, CPU 0). The gateway's route is a real
//! service on a simulated node whose container port is published where the upstream listens, so
//! routing, readiness and bookkeeping are the product's own. wrk runs 10 s at 64 connections
//! (requests per second) over the three paths in turn, three rounds (`GATEWAY_BENCH_ROUNDS`),
//! reporting each round, the medians and the gateway's share of nginx's per round; then 10 s at
//! 1 connection (latency percentiles), and again with the proxies moved to CPU 1 beside wrk and
//! the upstream.
//!
//! Cold start: a `busybox httpd` model service on the local engine. The container's own start
//! time is the engine's start call until the server answers on its published port; the cold
//! start is a request through the gateway to the unloaded service until its first byte. Medians
//! of seven of each, alternated.
//!
//! Run with `cargo bench -p berth-cli --bench gateway` (needs Debian's `nginx-light` and `wrk`,
//! `taskset`, and the test image); `-- throughput` or `-- cold-start` runs one part.

#[path = "../tests/processes/mod.rs"]
mod processes;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_hub::gateway::{in_hub, readiness};
use berth_hub::simulation::SIMULATED_DRIVER;
use berth_hub::state::HubSettings;
use berth_hub::{HubState, api, bootstrap};
use berth_store::nodes::{self, NodeRecord};
use berth_store::{SecretBox, Store};
use processes::{IMAGE, engine, fresh_dir};
use reqwest::Method;
use serde_json::{Value, json};

const UPSTREAM_PORT: u16 = 18_801;
const NGINX_PROXY_PORT: u16 = 18_802;
const GATEWAY_PROCESS_PORT: u16 = 18_803;
const GATEWAY_PROCESS_ADMIN_PORT: u16 = 18_804;

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    // The gateway gets CPU 0 and one worker, as the nginx proxy does.
    let pin = Command::new("taskset")
        .args(["-a", "-pc", "0", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    if !pin.is_ok_and(|status| status.success()) {
        eprintln!("gateway bench: taskset is needed (util-linux)");
        return;
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(1).enable_all();
    if let Some(interval) = std::env::var("GATEWAY_BENCH_EVENT_INTERVAL")
        .ok()
        .and_then(|value| value.parse().ok())
    {
        builder.event_interval(interval);
    }
    let runtime = builder.build().expect("runtime");
    runtime.block_on(run());
}

struct Hub {
    state: Arc<HubState>,
    api: SocketAddr,
    gateway: SocketAddr,
    token: String,
    user: String,
    client: reqwest::Client,
}

impl Hub {
    async fn start(dir: &Path) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = Store::connect(&format!("sqlite://{}", dir.join("berth.db").display()))
            .await
            .expect("store");
        let secrets = SecretBox::load_or_create(None, &dir.join("secret.key")).expect("key");
        let settings = HubSettings {
            max_services_per_user: 10,
            ..HubSettings::default()
        };
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
        let api = listener.local_addr().expect("addr");
        let router = api::router(Arc::clone(&state));
        tokio::spawn(async move { axum::serve(listener, router).await });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let gateway = listener.local_addr().expect("addr");
        tokio::spawn(readiness::run(Arc::clone(&state), std::future::pending()));
        tokio::spawn(Arc::new(in_hub(Arc::clone(&state))).serve(listener, std::future::pending()));
        let mut hub = Self {
            state,
            api,
            gateway,
            token: booted.new_admin_token.expect("token"),
            user: String::new(),
            client: reqwest::Client::new(),
        };
        hub.user = hub.call(Method::GET, "/api/users/me", None).await["name"]
            .as_str()
            .expect("name")
            .to_owned();
        hub
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .client
            .request(method, format!("http://{}{path}", self.api))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("api");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn create(&self, body: Value) -> i64 {
        self.call(
            Method::POST,
            &format!("/api/{}/bench/services?wait=60", self.user),
            Some(body),
        )
        .await["service_id"]
            .as_i64()
            .expect("id")
    }

    async fn wait_ready(&self, id: i64) {
        for _ in 0..600 {
            let status = self
                .call(Method::GET, &format!("/api/services/{id}/status"), None)
                .await;
            if status["serving"]["ready_replicas"].as_u64() > Some(0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("service {id} never became ready");
    }
}

fn nginx(dir: &Path, name: &str, cpu: &str, server: &str) -> Child {
    let config = dir.join(format!("{name}.conf"));
    std::fs::write(
        &config,
        format!(
            "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {dir}/{name}.pid;\nerror_log {dir}/{name}.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  upstream model {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 64; }}\n  {server}\n}}\n",
            dir = dir.display()
        ),
    )
    .expect("nginx config");
    Command::new("taskset")
        .args(["-c", cpu, "nginx", "-p"])
        .arg(dir)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .expect("nginx (apt-get install nginx-light)")
}

/// Moves every thread of process `pid` to `cpu`.
fn repin(pid: u32, cpu: &str) {
    let _ = Command::new("taskset")
        .args(["-a", "-pc", cpu, &pid.to_string()])
        .stdout(Stdio::null())
        .status();
}

struct Run {
    requests_per_second: f64,
    p50_us: f64,
    p99_us: f64,
}

fn micros(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => value,
        "ms" => value * 1e3,
        "s" => value * 1e6,
        _ => f64::NAN,
    }
}

fn wrk(url: &str, connections: u32) -> Run {
    let output = Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1", "-d10s", "--latency"])
        .arg(format!("-c{connections}"))
        .arg(url)
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(prefix).map(str::trim))
            .unwrap_or("")
            .to_owned()
    };
    assert!(!text.contains("Non-2xx"), "{url}: errors\n{text}");
    Run {
        requests_per_second: field("Requests/sec:").parse().unwrap_or(f64::NAN),
        p50_us: micros(&field("50%")),
        p99_us: micros(&field("99%")),
    }
}

/// Requests per second at 64 connections, `rounds` times over every path in turn (so that a
/// slow spell of the machine hits every path alike): one row per path with each round and the
/// median, then the gateway's share of nginx's per round.
fn throughput_table(paths: &[(&str, &str)], rounds: usize) {
    let mut runs = vec![Vec::new(); paths.len()];
    for _ in 0..rounds {
        for ((_, url), runs) in paths.iter().zip(&mut runs) {
            runs.push(wrk(url, 64).requests_per_second);
        }
    }
    let rounds_header: String = (1..=rounds)
        .map(|round| format!(" round {round} |"))
        .collect();
    println!("| 64 connections, requests/s |{rounds_header} median |");
    println!("|---|{}---|", "---|".repeat(rounds));
    for ((name, _), runs) in paths.iter().zip(&runs) {
        let cells: String = runs.iter().map(|rate| format!(" {rate:.0} |")).collect();
        println!("| {name} |{cells} {:.0} |", median(runs.clone()));
    }
    for ((name, _), gateway_runs) in paths.iter().zip(&runs).skip(2) {
        let ratios: Vec<f64> = gateway_runs
            .iter()
            .zip(&runs[1])
            .map(|(gateway, nginx)| gateway / nginx)
            .collect();
        let cells: String = ratios
            .iter()
            .map(|ratio| format!(" {ratio:.2} |"))
            .collect();
        println!("| {name} ÷ nginx |{cells} {:.2} |", median(ratios));
    }
}

/// A `berth gateway` process on CPU 0 with one Tokio worker, following `hub`, once it serves
/// `url`.
async fn gateway_process(hub: &Hub, url: &str) -> Child {
    let mut child = Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_berth"), "gateway"])
        .args(["--hub", &format!("http://{}", hub.api)])
        .args(["--listen", &format!("127.0.0.1:{GATEWAY_PROCESS_PORT}")])
        .args([
            "--admin-listen",
            &format!("127.0.0.1:{GATEWAY_PROCESS_ADMIN_PORT}"),
        ])
        .env("BERTH_GATEWAY_TOKEN", &hub.token)
        .env("TOKIO_WORKER_THREADS", "1")
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("berth gateway");
    for _ in 0..200 {
        if let Ok(answer) = hub.client.get(url).send().await
            && answer.status().is_success()
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the gateway process never served {url}");
}

/// Prints one row per path: the 1-connection latency and what each path adds over the first.
fn latency_table(header: &str, paths: &[(&str, &str)]) {
    println!("{header}");
    println!("|---|---|---|---|---|");
    let mut direct_latency = None;
    for (name, url) in paths {
        let single = wrk(url, 1);
        let (base50, base99) = *direct_latency.get_or_insert((single.p50_us, single.p99_us));
        println!(
            "| {name} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs |",
            single.p50_us,
            single.p99_us,
            single.p50_us - base50,
            single.p99_us - base99
        );
    }
}

async fn throughput(dir: &Path) {
    let mut upstream = nginx(
        dir,
        "upstream",
        "1",
        &format!(
            "server {{ listen 127.0.0.1:{UPSTREAM_PORT}; location / {{ return 200 \"ok\\n\"; }} }}"
        ),
    );
    let mut proxy = nginx(
        dir,
        "proxy",
        "0",
        &format!(
            "server {{ listen 127.0.0.1:{NGINX_PROXY_PORT}; location / {{ proxy_pass http://model; \
             proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
        ),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let hub = Hub::start(&dir.join("hub")).await;
    let mut node = NodeRecord::new("sim-upstream", SIMULATED_DRIVER);
    node.docker_status = "connected".to_owned();
    node.cpu = "8".to_owned();
    node.memory = "16g".to_owned();
    let node = {
        let mut transaction = hub.state.store.begin().await.expect("tx");
        let node = nodes::insert(&mut transaction, &node).await.expect("node");
        transaction.commit().await.expect("commit");
        node
    };
    let id = hub
        .create(
            json!({"name": "fast", "image": IMAGE, "port": 8080, "start": true,
            "is_public": true, "cpu_limit": 0.1, "memory_limit": "32m"}),
        )
        .await;
    let status = hub
        .call(Method::GET, &format!("/api/services/{id}/status"), None)
        .await;
    let container = status["replicas"][0]["container_id"]
        .as_str()
        .expect("container");
    hub.state
        .fleet
        .publish(node.id, container, "8080/tcp", UPSTREAM_PORT)
        .expect("publish");
    hub.state.routes.touch(id);
    hub.wait_ready(id).await;

    let direct_url = format!("http://127.0.0.1:{UPSTREAM_PORT}/");
    let nginx_url = format!("http://127.0.0.1:{NGINX_PROXY_PORT}/");
    let gateway_url = format!("http://{}/s/{}/fast/", hub.gateway, hub.user);
    let process_url = format!(
        "http://127.0.0.1:{GATEWAY_PROCESS_PORT}/s/{}/fast/",
        hub.user
    );
    let mut process = gateway_process(&hub, &process_url).await;
    let paths = [
        ("direct", direct_url.as_str()),
        ("nginx proxy", nginx_url.as_str()),
        ("Berth gateway", gateway_url.as_str()),
        ("gateway process", process_url.as_str()),
    ];
    let rounds = std::env::var("GATEWAY_BENCH_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(3);
    throughput_table(&paths, rounds);
    println!();
    latency_table(
        "| 1 connection, proxies on CPU 0 | p50 | p99 | added p50 | added p99 |",
        &paths,
    );
    // The same 1-connection latency with everything on one CPU: no cross-CPU wake-ups, which on
    // this kind of virtual machine cost more than the proxying itself.
    repin(std::process::id(), "1");
    repin(proxy.id(), "1");
    repin(process.id(), "1");
    println!();
    latency_table(
        "| 1 connection, all on CPU 1 | p50 | p99 | added p50 | added p99 |",
        &paths,
    );
    repin(std::process::id(), "0");
    for child in [&mut upstream, &mut proxy, &mut process] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn first_byte(client: &reqwest::Client, url: &str) -> Option<Duration> {
    let started = Instant::now();
    let mut response = client.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.chunk().await.ok()??;
    Some(started.elapsed())
}

async fn cold_start(dir: &Path) {
    let hub = Hub::start(&dir.join("cold")).await;
    let docker =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
    hub.call(
        Method::POST,
        "/api/nodes",
        Some(
            json!({"name": "local", "public_ip": "127.0.0.1", "private_ip": "127.0.0.1",
            "docker_address": docker, "use_tls": false}),
        ),
    )
    .await;
    let id = hub
        .create(
            json!({"name": "cold", "image": IMAGE, "port": 8080, "is_public": true,
            "cpu_limit": 0.5, "memory_limit": "32m",
            "command": ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"]}),
        )
        .await;
    let status = hub
        .call(Method::GET, &format!("/api/services/{id}/status"), None)
        .await;
    let container = status["replicas"][0]["container_id"]
        .as_str()
        .expect("container")
        .to_owned();
    let engine = engine().await;
    let client = reqwest::Client::new();
    let gateway_url = format!("http://{}/s/{}/cold/", hub.gateway, hub.user);
    let (mut own, mut through) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        hub.call(
            Method::POST,
            &format!("/api/services/{id}/unload?wait=60"),
            None,
        )
        .await;
        // The container's own start: engine start until its server answers.
        let started = Instant::now();
        engine.start(&container).await.expect("start");
        let port = engine.inspect(&container).await.expect("inspect").ports["8080/tcp"];
        let url = format!("http://127.0.0.1:{port}/");
        while first_byte(&client, &url).await.is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        own.push(started.elapsed().as_secs_f64() * 1e3);
        engine.stop(&container, 5).await.expect("stop");

        // Through the gateway: the service is unloaded and its container stopped; one request.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let elapsed = first_byte(&client, &gateway_url).await.expect("answer");
        through.push(elapsed.as_secs_f64() * 1e3);
    }
    hub.call(Method::DELETE, &format!("/api/services/{id}?wait=60"), None)
        .await;
    let (own, through) = (median(own), median(through));
    println!();
    println!("| cold start (median of 7) | ms |");
    println!("|---|---|");
    println!("| container's own start (engine start → first byte) | {own:.1} |");
    println!("| request to the unloaded service → first byte | {through:.1} |");
    println!("| added by Berth | {:.1} |", through - own);
}

async fn run() {
    let dir = fresh_dir("gateway-bench");
    std::fs::create_dir_all(dir.join("hub")).expect("dir");
    std::fs::create_dir_all(dir.join("cold")).expect("dir");
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let wanted = |part: &str| parts.is_empty() || parts.iter().any(|arg| arg == part);
    if wanted("throughput") {
        throughput(&dir).await;
    }
    if wanted("cold-start") {
        cold_start(&dir).await;
    }
}
