//! Creates through the API of `berth hub` (a separate process, SQLite) on 500 simulated nodes
//! (100 GPU servers, 350 CPU servers, 50 edge devices): 3,000 services of 0.5 to 2 cores and
//! 1 to 4 GiB sent by 32 clients at once, without `?wait=`. Prints creates acknowledged per
//! second (the answer is 202 with the operation: the service, its allocations and the operation
//! committed), the answer's latency, and the time until every create's operation ended (the
//! replicas created on the simulated nodes), then checks that no node is over-committed.
//! Run with `cargo bench -p berth-cli --bench creates`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_store::Store;
use berth_store::nodes;
use berth_store::users::{self, Quotas, Role};
use futures_util::future::join_all;
use serde_json::{Value, json};

const SERVICES: usize = 3_000;
const CLIENTS: usize = 32;

struct Hub(Child);

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "creates benchmark: built; run it with `cargo bench -p berth-cli --bench creates`"
        );
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("berth-creates-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let url = format!("sqlite://{}", dir.join("berth.db").display());
    let store = Store::connect(&url).await.expect("store");
    let mut transaction = store.begin().await.expect("begin");
    let admin = users::create_user(&mut transaction, "admin", Role::Admin, &Quotas::default())
        .await
        .expect("admin");
    let token = users::issue_token(&mut transaction, admin.id, "bench", None)
        .await
        .expect("token")
        .token;
    for (kind, count) in [("gpu", 100), ("cpu", 350), ("edge", 50)] {
        for index in 0..count {
            nodes::insert(
                &mut transaction,
                &berth_hub::scenario::simulated_node(index, kind),
            )
            .await
            .expect("node");
        }
    }
    transaction.commit().await.expect("commit");
    store.close().await;

    let config = dir.join("hub.yaml");
    std::fs::write(
        &config,
        "max_services_per_user: 100000\nmonitor_interval: 3600\n",
    )
    .expect("config");
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
        .env(
            "BERTH_LOG",
            std::env::var("BERTH_BENCH_HUB_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .expect("berth hub");
    let hub = Hub(child);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .expect("client");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the hub did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..CLIENTS).map(|_| {
        let (client, base, token, next) = (
            client.clone(),
            base.clone(),
            token.clone(),
            Arc::clone(&next),
        );
        async move {
            let mut answered = Vec::new();
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if index >= SERVICES {
                    return answered;
                }
                let body = json!({
                    "name": format!("svc-{index:05}"), "image": "sim/model:1", "start": true,
                    "cpu_limit": 0.5 + (index % 4) as f64 * 0.5,
                    "memory_limit": format!("{}g", 1 + index % 4),
                });
                let sent = Instant::now();
                let response = client
                    .post(format!("{base}/api/admin/bench/services"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .expect("create");
                let status = response.status().as_u16();
                let operation: Value = response.json().await.unwrap_or_default();
                answered.push((status, sent.elapsed(), operation["id"].as_i64()));
            }
        }
    });
    let answers: Vec<(u16, Duration, Option<i64>)> =
        join_all(workers).await.into_iter().flatten().collect();
    let acknowledged_in = started.elapsed();
    let accepted = answers
        .iter()
        .filter(|(status, _, _)| *status == 202 || *status == 200)
        .count();
    let mut latencies: Vec<Duration> = answers.iter().map(|(_, took, _)| *took).collect();
    latencies.sort();
    // Every operation to its end.
    let operations: Vec<i64> = answers.iter().filter_map(|(_, _, id)| *id).collect();
    let mut ended = 0;
    for id in &operations {
        let operation: Value = client
            .get(format!("{base}/api/operations/{id}?wait=120"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("operation")
            .json()
            .await
            .expect("json");
        if operation["state"] == "succeeded" {
            ended += 1;
        }
    }
    let finished_in = started.elapsed();
    println!(
        "{SERVICES} creates from {CLIENTS} clients on 500 simulated nodes: {accepted} acknowledged in {:.2} s = {:.0} creates/s (answer p50 {:.1} ms, p99 {:.1} ms); {ended} operations succeeded after {:.2} s = {:.0} services running/s",
        acknowledged_in.as_secs_f64(),
        accepted as f64 / acknowledged_in.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        finished_in.as_secs_f64(),
        ended as f64 / finished_in.as_secs_f64(),
    );
    let usage: Value = client
        .get(format!("{base}/api/admin/resources/usage"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("usage")
        .json()
        .await
        .expect("json");
    let over = usage["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|node| {
            node["allocated"]["cpu_millis"].as_i64() > node["capacity"]["cpu_millis"].as_i64()
        })
        .count();
    println!("nodes over-committed on CPU: {over}");
    drop(hub);
    let _ = std::fs::remove_dir_all(&dir);
}
