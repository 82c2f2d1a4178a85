//! The console and the stats history at size: an in-process hub on SQLite with 20 simulated
//! nodes and 500 running services. Prints the time of one sampling round over all services, the
//! history's size and compaction cost after a simulated day, and how long the console's pages
//! take to render (through HTTP on loopback, signed in as the admin).
//! Run with `cargo bench -p berth-cli --bench console`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_hub::simulation::SIMULATED_DRIVER;
use berth_hub::state::HubSettings;
use berth_hub::{HubState, bootstrap, stats_sampler};
use berth_store::nodes::{self, NodeRecord};
use berth_store::stats_history::{self, Retention, StatsSample};
use berth_store::{SecretBox, Store};
use serde_json::json;

const NODES: usize = 20;
const SERVICES: usize = 500;
/// Services whose history is filled with a whole day of samples.
const HISTORY_SERVICES: i64 = 20;
const SAMPLE_EVERY_MS: i64 = 10_000;

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "console benchmark: built; run it with `cargo bench -p berth-cli --bench console`"
        );
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("berth-console-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let store = Store::connect(&format!("sqlite://{}", dir.join("berth.db").display()))
        .await
        .expect("store");
    let secrets = SecretBox::load_or_create(None, &dir.join("secret.key")).expect("key");
    let settings = HubSettings {
        max_services_per_user: 10_000,
        ..HubSettings::default()
    };
    let state = Arc::new(
        HubState::new(store, secrets, settings)
            .await
            .expect("state"),
    );
    let token = bootstrap::ensure(&state, None, None)
        .await
        .expect("bootstrap")
        .new_admin_token
        .expect("admin token");
    {
        let mut transaction = state.store.begin().await.expect("begin");
        for index in 0..NODES {
            let mut node = NodeRecord::new(&format!("sim-{index:02}"), SIMULATED_DRIVER);
            node.docker_status = "connected".to_owned();
            node.cpu = "64".to_owned();
            node.memory = "256g".to_owned();
            nodes::insert(&mut transaction, &node).await.expect("node");
        }
        transaction.commit().await.expect("commit");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = berth_console::app(Arc::clone(&state));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    let started = Instant::now();
    let mut service_ids = Vec::with_capacity(SERVICES);
    for index in 0..SERVICES {
        let created: serde_json::Value = client
            .post(format!("{base}/api/admin/bench/services?wait=60"))
            .bearer_auth(&token)
            .json(
                &json!({"name": format!("svc-{index:03}"), "image": "bench/model:1",
                "cpu_limit": 0.1, "memory_limit": "64m", "start": true}),
            )
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("json");
        assert_eq!(created["state"], "succeeded", "{created}");
        service_ids.push(created["service_id"].as_i64().expect("service id"));
    }
    println!(
        "setup: {NODES} simulated nodes, {SERVICES} running services in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // One sampling round over every running service, five times.
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let began = Instant::now();
        let sampled = stats_sampler::sample_all(&state).await.expect("sample");
        rounds.push(began.elapsed());
        assert_eq!(sampled, SERVICES);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rounds.sort();
    println!(
        "sampling round over {SERVICES} services (stats read, summed, recorded, compacted): median {}, max {}",
        ms(percentile(&rounds, 0.5)),
        ms(percentile(&rounds, 1.0))
    );

    // A day and an hour of samples every 10 s for some services, then one compaction.
    let now = berth_store::now_ms();
    let began = Instant::now();
    let mut transaction = state.store.begin().await.expect("begin");
    let points_per_service = (25 * 3_600_000) / SAMPLE_EVERY_MS;
    for service in service_ids.iter().take(HISTORY_SERVICES as usize) {
        for step in 0..points_per_service {
            let at_ms = now - 25 * 3_600_000 + step * SAMPLE_EVERY_MS;
            let sample = StatsSample {
                at_ms,
                resolution_ms: 0,
                cpu_percent: (step % 100) as f64,
                memory_bytes: 64 << 20,
                memory_limit_bytes: 64 << 20,
                pids: 3,
                gpu_memory_bytes: Some(1 << 30),
                gpu_utilization_percent: Some(step % 100),
                prompt_tokens: step % 7,
                completion_tokens: step % 5,
            };
            stats_history::record(&mut transaction, *service, &sample)
                .await
                .expect("record");
        }
    }
    transaction.commit().await.expect("commit");
    let written = HISTORY_SERVICES * points_per_service;
    println!(
        "history: {written} raw samples written in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    let began = Instant::now();
    let removed = stats_history::compact(
        &mut state.store.acquire().await.expect("connection"),
        now,
        Retention::default(),
    )
    .await
    .expect("compact");
    let compacted = began.elapsed();
    let mut connection = state.store.acquire().await.expect("connection");
    let day = stats_history::since(&mut connection, service_ids[0], now - 86_400_000)
        .await
        .expect("history");
    let began = Instant::now();
    let hour = stats_history::since(&mut connection, service_ids[0], now - 3_600_000)
        .await
        .expect("history");
    let hour_read = began.elapsed();
    drop(connection);
    println!(
        "compaction of a day: {} (removed {removed} rows); one service keeps {} points for 24 h ({} raw + {} averaged); reading its last hour ({} points): {}",
        ms(compacted),
        day.len(),
        day.iter().filter(|point| point.resolution_ms == 0).count(),
        day.iter().filter(|point| point.resolution_ms > 0).count(),
        hour.len(),
        ms(hour_read)
    );

    // Sign in to the console and time its pages.
    let sign_in = client
        .get(format!("{base}/sign-in"))
        .send()
        .await
        .expect("sign-in page");
    let pre_cookie = sign_in
        .headers()
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .expect("sign-in cookie")
        .to_owned();
    let csrf = pre_cookie.split_once('=').expect("pair").1.to_owned();
    let signed = client
        .post(format!("{base}/sign-in"))
        .header("cookie", &pre_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&token={token}&next=%2F"))
        .send()
        .await
        .expect("sign in");
    let session = signed
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with("berth_session="))
        .and_then(|value| value.split(';').next())
        .expect("session cookie")
        .to_owned();
    println!("| page ({SERVICES} services, {NODES} nodes) | p50 | p99 | size |");
    println!("|---|---|---|---|");
    let detail = format!("/services/{}", service_ids[0]);
    for path in [
        "/",
        "/nodes",
        "/services",
        detail.as_str(),
        "/operations",
        "/catalog",
    ] {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..50 {
            let began = Instant::now();
            let response = client
                .get(format!("{base}{path}"))
                .header("cookie", &session)
                .send()
                .await
                .expect("page");
            assert_eq!(response.status(), 200, "{path}");
            size = response.bytes().await.expect("body").len();
            times.push(began.elapsed());
        }
        times.sort();
        println!(
            "| `{path}` | {} | {} | {:.0} KiB |",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            size as f64 / 1024.0
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
