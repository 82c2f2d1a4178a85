//! `berth agent` with 100 running test containers: one stats sweep (all 100 in parallel through
//! the agent's API), against `docker stats --no-stream` once per container (seed 002's way; a
//! sample of 10, scaled to 100) and once for all 100; the agent's resident memory idle and while
//! serving; and requests per second for `GET /containers/` from a load loop on loopback.
//! Run with `cargo bench -p berth-cli --bench agent` (needs the test image and ~1 GiB of memory).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};

const IMAGE: &str = "berth-test/busybox:latest";
const CONTAINERS: usize = 100;
const KEY: &str = "bench-key";

struct Agent {
    child: Child,
    base: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| {
                    line.split_whitespace()
                        .nth(1)
                        .and_then(|kib| kib.parse().ok())
                })
        })
        .unwrap_or(0)
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("agent benchmark: built; run it with `cargo bench -p berth-cli --bench agent`");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let server_id = format!("berth-bench-{}", std::process::id());
    let child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("agent")
        .env("MMANAGER_API_KEY", KEY)
        .env("SERVER_ID", &server_id)
        .env("MAX_CONTAINERS", "200")
        .env("BERTH_AGENT_LISTEN", format!("127.0.0.1:{port}"))
        .env("LOG_LEVEL", "WARNING")
        .stdout(Stdio::null())
        .spawn()
        .expect("start berth agent");
    let agent = Agent {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client");
    for _ in 0..100 {
        if client
            .get(format!("{}/health", agent.base))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_kib = rss_kib(agent.child.id());

    let mut ids = Vec::with_capacity(CONTAINERS);
    let started = Instant::now();
    for index in 0..CONTAINERS {
        let body = json!({"name": format!("{server_id}-{index}"), "image": IMAGE, "command": ["sleep", "3600"],
            "memory_limit": "16m", "cpu_limit": 0.1, "restart_policy": "no", "labels": {"berth.test": "bench"}});
        let created: Value = client
            .post(format!("{}/containers/", agent.base))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("json");
        let id = created["container_id"]
            .as_str()
            .expect("container id")
            .to_owned();
        client
            .post(format!("{}/containers/{id}/start", agent.base))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("start");
        ids.push(id);
    }
    let create_start = started.elapsed();

    let sweep = |label: &'static str| {
        let client = client.clone();
        let base = agent.base.clone();
        let ids = ids.clone();
        async move {
            let started = Instant::now();
            let answers = join_all(ids.iter().map(|id| {
                client
                    .get(format!("{base}/containers/{id}/stats"))
                    .bearer_auth(KEY)
                    .send()
            }))
            .await;
            let ok = answers
                .iter()
                .filter(|answer| {
                    answer
                        .as_ref()
                        .is_ok_and(|response| response.status() == 200)
                })
                .count();
            let elapsed = started.elapsed();
            println!(
                "{label:<58} {:8.0} ms  ({ok}/{} answered 200)",
                millis(elapsed),
                ids.len()
            );
        }
    };
    println!(
        "berth agent, {CONTAINERS} running test containers (create+start through the API: {:.1} s)",
        create_start.as_secs_f64()
    );
    sweep("stats sweep through the agent, first (two samples each)").await;
    sweep("stats sweep through the agent, again").await;

    let driver =
        berth_docker::DockerDriver::connect(&berth_docker::DockerEndpoint::from_docker_host_env())
            .await
            .expect("engine");
    let names: Vec<String> = (0..CONTAINERS)
        .map(|index| format!("{server_id}-{index}"))
        .collect();
    let started = Instant::now();
    let answers = join_all(names.iter().map(|name| driver.stats(name))).await;
    let ok = answers.iter().filter(|answer| answer.is_ok()).count();
    println!(
        "{:<58} {:8.0} ms  ({ok}/{CONTAINERS} answered)",
        "engine one-shot stats API, all 100 in parallel",
        millis(started.elapsed())
    );

    let started = Instant::now();
    let mut arguments = vec!["stats", "--no-stream", "--format", "{{.ID}}"];
    arguments.extend(ids.iter().map(String::as_str));
    let output = docker(&arguments);
    let all_at_once = started.elapsed();
    let lines = String::from_utf8_lossy(&output.stdout).lines().count();
    println!(
        "{:<58} {:8.0} ms  ({lines} rows)",
        "docker stats --no-stream, all at once",
        millis(all_at_once)
    );
    let sample = 10;
    let started = Instant::now();
    for id in ids.iter().take(sample) {
        docker(&["stats", "--no-stream", id]);
    }
    let per_container = started.elapsed() / sample as u32;
    println!(
        "{:<58} {:8.0} ms  ({:.0} ms each, n={sample}, scaled to {CONTAINERS})",
        "docker stats --no-stream once per container",
        millis(per_container * CONTAINERS as u32),
        millis(per_container)
    );

    let duration = Duration::from_secs(5);
    let connections = 16;
    let deadline = Instant::now() + duration;
    let workers = (0..connections).map(|_| {
        let client = client.clone();
        let url = format!("{}/containers/", agent.base);
        async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let response = client
                    .get(&url)
                    .bearer_auth(KEY)
                    .send()
                    .await
                    .expect("list");
                let _ = response.bytes().await.expect("body");
                latencies.push(started.elapsed());
            }
            latencies
        }
    });
    let mut latencies: Vec<Duration> = join_all(workers).await.into_iter().flatten().collect();
    latencies.sort();
    println!(
        "{:<58} {:8.0} req/s (p50 {:.1} ms, p99 {:.1} ms, {connections} connections, {} s)",
        "GET /containers/ with 100 containers",
        latencies.len() as f64 / duration.as_secs_f64(),
        millis(latencies[latencies.len() / 2]),
        millis(latencies[latencies.len() * 99 / 100]),
        duration.as_secs()
    );
    let serving_kib = rss_kib(agent.child.id());
    println!(
        "agent resident memory: idle {:.1} MiB, serving {CONTAINERS} containers {:.1} MiB",
        idle_kib as f64 / 1024.0,
        serving_kib as f64 / 1024.0
    );

    join_all(ids.iter().map(|id| {
        client
            .delete(format!("{}/containers/{id}?force=true", agent.base))
            .bearer_auth(KEY)
            .send()
    }))
    .await;
}
