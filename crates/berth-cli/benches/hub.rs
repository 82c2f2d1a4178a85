//! `berth hub` on SQLite with 1,000 nodes and 10,000 services: requests per second and latency of
//! `GET /api/services/{id}` (token check + service read) and `GET /api/services/{id}/status`
//! (plus the live container state from the node) from a load loop on loopback, and the hub's
//! resident memory. The rows are written straight into the database before the hub starts. Node
//! `local` is the real local engine and every service points at it (their containers do not
//! exist, so each status asks the engine and hears "no such container"); the other 999 nodes have
//! no engine behind them and the monitor is set to an hour so it stays quiet.
//! Run with `cargo bench -p berth-cli --bench hub`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_store::Store;
use berth_store::nodes::{self, NodeRecord};
use berth_store::services::{self, ServiceRecord};
use berth_store::users::{self, Quotas, Role};
use futures_util::future::join_all;

const NODES: usize = 1_000;
const SERVICES: usize = 10_000;

struct Hub(Child);

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("hub benchmark: built; run it with `cargo bench -p berth-cli --bench hub`");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("berth-hub-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let url = format!("sqlite://{}", dir.join("berth.db").display());

    let started = Instant::now();
    let store = Store::connect(&url).await.expect("store");
    let mut transaction = store.begin().await.expect("begin");
    let admin = users::create_user(&mut transaction, "admin", Role::Admin, &Quotas::default())
        .await
        .expect("admin");
    let token = users::issue_token(&mut transaction, admin.id, "bench", None)
        .await
        .expect("token")
        .token;
    let mut node_ids = Vec::with_capacity(NODES);
    for index in 0..NODES {
        let mut record = NodeRecord::new(&format!("node-{index:04}"), "docker");
        record.gpu_count = (index % 8) as i64;
        if index == 0 {
            record.name = "local".to_owned();
            record.docker_address = std::env::var("DOCKER_HOST")
                .unwrap_or_else(|_| berth_docker::DEFAULT_DOCKER_HOST.to_owned());
            record.use_tls = false;
            record.docker_status = "connected".to_owned();
        }
        node_ids.push(
            nodes::insert(&mut transaction, &record)
                .await
                .expect("node")
                .id,
        );
    }
    let mut service_ids = Vec::with_capacity(SERVICES);
    for index in 0..SERVICES {
        let record = ServiceRecord {
            id: 0,
            owner_id: admin.id,
            repo: "bench".into(),
            name: format!("svc-{index:05}"),
            image: "berth-test/busybox:latest".into(),
            spec_id: None,
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            gpu_count: 0,
            definition: serde_json::json!({"image": "berth-test/busybox:latest"}),
            is_public: false,
            status: "running".into(),
            node_id: Some(node_ids[0]),
            container_id: Some(format!("{index:064x}")),
            container_name: Some(format!("svc-{index:05}")),
            version: 1,
            generation: 1,
            pinned: false,
            replicas: 1,
            error: String::new(),
            created_at: 0,
            updated_at: 0,
        };
        service_ids.push(
            services::insert(&mut transaction, &record)
                .await
                .expect("service")
                .id,
        );
    }
    transaction.commit().await.expect("commit");
    store.close().await;
    println!(
        "berth hub on SQLite: {NODES} nodes and {SERVICES} services written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("hub")
        .env("BERTH_DATABASE_URL", &url)
        .env("BERTH_DATA_DIR", &dir)
        .env("BERTH_LISTEN", format!("127.0.0.1:{port}"))
        .env("BERTH_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("BERTH_MONITOR_INTERVAL", "3600")
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("berth hub");
    let hub = Hub(child);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if client.get(format!("{base}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_mib(hub.0.id());

    for (label, suffix) in [
        ("GET /api/services/{id}", ""),
        ("GET /api/services/{id}/status", "/status"),
    ] {
        load_test(&client, &base, &token, &service_ids, label, suffix).await;
    }
    println!(
        "hub resident memory with {NODES} nodes and {SERVICES} services: idle {idle:.1} MiB, after the load {:.1} MiB",
        rss_mib(hub.0.id())
    );
    drop(hub);
    std::fs::remove_dir_all(&dir).ok();
}

/// Sends requests for 5 s from 16 connections, each to a different service, and prints the rate
/// and latency.
async fn load_test(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    service_ids: &[i64],
    label: &str,
    suffix: &str,
) {
    let duration = Duration::from_secs(5);
    let connections = 16;
    let deadline = Instant::now() + duration;
    let workers = (0..connections).map(|worker| {
        let client = client.clone();
        let base = base.to_owned();
        let token = token.to_owned();
        let ids = service_ids.to_vec();
        async move {
            let mut latencies = Vec::new();
            let mut next = worker * 7919;
            let mut failures = 0;
            while Instant::now() < deadline {
                next = (next + 104_729) % ids.len();
                let started = Instant::now();
                let response = client
                    .get(format!("{base}/api/services/{}{suffix}", ids[next]))
                    .bearer_auth(&token)
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status() == 200 => {
                        let _ = response.bytes().await;
                    }
                    _ => failures += 1,
                }
                latencies.push(started.elapsed());
            }
            (latencies, failures)
        }
    });
    let results = join_all(workers).await;
    let failures: usize = results.iter().map(|(_, failures)| failures).sum();
    let mut latencies: Vec<Duration> = results
        .into_iter()
        .flat_map(|(latencies, _)| latencies)
        .collect();
    latencies.sort();
    let millis = |duration: Duration| duration.as_secs_f64() * 1000.0;
    println!(
        "{label}, {connections} connections, {} s: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, {failures} failures",
        duration.as_secs(),
        latencies.len() as f64 / duration.as_secs_f64(),
        millis(latencies[latencies.len() / 2]),
        millis(latencies[latencies.len() * 99 / 100]),
    );
}
