//! Model serving under change: rollouts under load, and the autoscaler's answer to a load step.
//!
//! A `berth hub` process (release build) with the local engine as its node serves `busybox
//! httpd` model services whose `/cgi-bin/host` answers the container's hostname after 0.2 s.
//!
//! - Replica start: the container's own start, engine start call until its server answers on
//!   its published port (median of 5), the yardstick for the two others.
//! - Rollout: a 2-replica service under an open-loop load of 200 requests per second through
//!   the gateway; five new versions (`PATCH` of the environment) one after another. Every
//!   answer's status and which container answered; each rollout's duration (the `PATCH` with
//!   `?wait=` until its operation succeeded).
//! - Load step: a service autoscaled on in-flight requests (`min 1, max 2, target 1`,
//!   `scale_up_seconds: 0`) at rest on one replica gets two concurrent clients; the time until a
//!   second container answers. Five steps, each after the service went back to one replica.
//!
//! Run with `cargo bench -p berth-cli --bench serving` (needs the test image).

#[path = "../tests/processes/mod.rs"]
mod processes;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use processes::{HubApi, IMAGE, engine, fresh_dir, start_hub};
use reqwest::Method;
use serde_json::{Value, json};

/// A model server: `/` answers `ok`, `/cgi-bin/host` its hostname after 0.2 s.
const MODEL: &str = r#"mkdir -p /www/cgi-bin
printf '#!/bin/sh\nsleep 0.2\necho "Content-Type: text/plain"\necho\nhostname\n' > /www/cgi-bin/host
chmod +x /www/cgi-bin/host
trap 'exit 0' TERM
httpd -f -p 8080 -h /www &
wait"#;

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(run());
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn create(hub: &HubApi, name: &str, replicas: i64, serving: Value) -> (i64, String) {
    let (status, created) = hub
        .call(
            Method::POST,
            "/api/admin/bench/services?wait=60",
            Some(
                json!({"name": name, "image": IMAGE, "port": 8080, "is_public": true,
                "replicas": replicas, "start": true, "cpu_limit": 0.2, "memory_limit": "32m",
                "command": ["sh", "-c", MODEL], "serving": serving}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["service_id"].as_i64().expect("id");
    let status = ready(hub, id, usize::try_from(replicas).unwrap_or(1)).await;
    let url = status["service_url"]
        .as_str()
        .expect("service_url")
        .to_owned();
    (id, url)
}

/// Waits until `count` replicas of `id` take traffic; its status.
async fn ready(hub: &HubApi, id: i64, count: usize) -> Value {
    for _ in 0..1200 {
        let (_, status) = hub
            .call(Method::GET, &format!("/api/services/{id}/status"), None)
            .await;
        if status["serving"]["ready_replicas"].as_u64() == Some(count as u64) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("service {id} never had {count} ready replicas");
}

/// The container's own start: engine start until its server answers (ms).
async fn replica_start(hub: &HubApi, id: i64) -> f64 {
    let (_, status) = hub
        .call(Method::GET, &format!("/api/services/{id}/status"), None)
        .await;
    let container = status["replicas"][0]["container_id"]
        .as_str()
        .expect("container")
        .to_owned();
    hub.call(
        Method::POST,
        &format!("/api/services/{id}/unload?wait=60"),
        None,
    )
    .await;
    let engine = engine().await;
    let client = reqwest::Client::new();
    let mut starts = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        engine.start(&container).await.expect("start");
        let port = engine.inspect(&container).await.expect("inspect").ports["8080/tcp"];
        let url = format!("http://127.0.0.1:{port}/");
        while !client
            .get(&url)
            .send()
            .await
            .is_ok_and(|response| response.status().is_success())
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        starts.push(started.elapsed().as_secs_f64() * 1e3);
        engine.stop(&container, 5).await.expect("stop");
    }
    median(starts)
}

/// Every answer of an open-loop load at `rate` per second on `url` until `stop`: statuses by
/// count, and the hosts that answered.
struct Load {
    sent: AtomicU64,
    failed: AtomicU64,
    hosts: std::sync::Mutex<HashSet<String>>,
}

async fn open_loop(url: String, rate: u64, stop: Arc<AtomicBool>) -> Arc<Load> {
    let load = Arc::new(Load {
        sent: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        hosts: std::sync::Mutex::new(HashSet::new()),
    });
    let client = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut requests = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let (client, url, load) = (client.clone(), url.clone(), Arc::clone(&load));
        requests.push(tokio::spawn(async move {
            load.sent.fetch_add(1, Ordering::Relaxed);
            let answer = async {
                let response = client.get(&url).send().await.ok()?;
                if !response.status().is_success() {
                    return None;
                }
                response.text().await.ok()
            }
            .await;
            match answer {
                Some(host) => {
                    if let Ok(mut hosts) = load.hosts.lock() {
                        hosts.insert(host.trim().to_owned());
                    }
                }
                None => {
                    load.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for request in requests {
        let _ = request.await;
    }
    load
}

async fn rollouts(hub: &HubApi, start_ms: f64) {
    let (id, url) = create(hub, "rolling", 2, json!({"probe_interval_seconds": 1})).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(open_loop(
        format!("{url}cgi-bin/host"),
        200,
        Arc::clone(&stop),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut durations = Vec::new();
    for version in 2..=6 {
        let started = Instant::now();
        let (status, operation) = hub
            .call(
                Method::PATCH,
                &format!("/api/services/{id}?wait=120"),
                Some(json!({"environment": {"VERSION": version.to_string()}})),
            )
            .await;
        assert_eq!(
            (status, operation["state"].as_str()),
            (200, Some("succeeded")),
            "{operation}"
        );
        durations.push(started.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let load = load.await.expect("load");
    let hosts = load.hosts.lock().map(|hosts| hosts.len()).unwrap_or(0);
    println!();
    println!("| rollout of a 2-replica service under 200 req/s (5 rollouts) | value |");
    println!("|---|---|");
    println!(
        "| requests sent / failed | {} / {} |",
        load.sent.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed)
    );
    println!("| containers that answered (2 per version, 6 versions) | {hosts} |");
    println!(
        "| rollout duration, median / max | {:.0} ms / {:.0} ms |",
        median(durations.clone()),
        durations.iter().copied().fold(0.0, f64::max)
    );
    println!("| one replica's own start (engine start → first answer) | {start_ms:.0} ms |");
}

async fn load_steps(hub: &HubApi, start_ms: f64) {
    let (id, url) = create(
        hub,
        "elastic",
        1,
        json!({"probe_interval_seconds": 1, "autoscale": {"min": 1, "max": 2,
            "target_in_flight_per_replica": 1, "scale_up_seconds": 0,
            "scale_down_delay_seconds": 2}}),
    )
    .await;
    let client = reqwest::Client::new();
    let host_url = format!("{url}cgi-bin/host");
    let mut steps = Vec::new();
    for _ in 0..5 {
        let first = client
            .get(&host_url)
            .send()
            .await
            .expect("answer")
            .text()
            .await
            .expect("host");
        let first = first.trim().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let began = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Duration>(4);
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let (client, url, stop, first, tx) = (
                    client.clone(),
                    host_url.clone(),
                    Arc::clone(&stop),
                    first.clone(),
                    tx.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(response) = client.get(&url).send().await else {
                            continue;
                        };
                        let host = response.text().await.unwrap_or_default();
                        if host.trim() != first {
                            let _ = tx.send(began.elapsed()).await;
                        }
                    }
                })
            })
            .collect();
        let step = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .ok()
            .flatten()
            .expect("a second replica answers");
        steps.push(step.as_secs_f64() * 1e3);
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            let _ = client.await;
        }
        ready(hub, id, 1).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!();
    println!("| load step → a new replica answers (median of 5) | value |");
    println!("|---|---|");
    println!(
        "| autoscaled step (min 1, max 2, 2 clients) | {:.0} ms |",
        median(steps)
    );
    println!("| one replica's own start (engine start → first answer) | {start_ms:.0} ms |");
}

async fn run() {
    let dir = fresh_dir("serving-bench");
    let (_hub_process, hub) = start_hub(&dir, "max_services_per_user: 10\n").await;
    hub.add_local_node().await;
    let (probe, _) = create(&hub, "yardstick", 1, json!({})).await;
    let start_ms = replica_start(&hub, probe).await;
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let wanted = |part: &str| parts.is_empty() || parts.iter().any(|arg| arg == part);
    if wanted("rollout") {
        rollouts(&hub, start_ms).await;
    }
    if wanted("load-step") {
        load_steps(&hub, start_ms).await;
    }
    hub.delete_all_services().await;
}
