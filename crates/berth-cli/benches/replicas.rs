//! A service of 50 replicas on one node: from the API call (create with `start: true`, each
//! replica started as soon as it is created) to all 50 running, through a
//! `berth hub` process with the local engine as its node, against Docker Swarm doing the same in
//! the same run (`docker swarm init`, `docker service create --replicas 50` of the test image).
//! Run with `cargo bench -p berth-cli --bench replicas` (needs the test image; leaves the engine
//! out of swarm mode again if it was).

#[path = "../tests/processes/mod.rs"]
mod processes;

use std::process::Command;
use std::time::{Duration, Instant};

use processes::{IMAGE, engine, fresh_dir, start_hub, wait_for};
use reqwest::Method;
use serde_json::json;

const REPLICAS: usize = 50;

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

async fn berth_run() -> (f64, f64) {
    let dir = fresh_dir("replicas-bench");
    let (_hub_process, hub) = start_hub(&dir, "").await;
    hub.add_local_node().await;
    let (_, me) = hub.call(Method::GET, "/api/users/me", None).await;
    let user = me["name"].as_str().expect("name").to_owned();
    let body = json!({"name": "fifty", "image": IMAGE, "replicas": REPLICAS, "cpu_limit": 0.02,
        "memory_limit": "8m", "command": ["sleep", "3600"], "start": true});
    let started = Instant::now();
    let (status, created) = hub
        .call(
            Method::POST,
            &format!("/api/{user}/bench/services?wait=60"),
            Some(body),
        )
        .await;
    assert_eq!(
        (status, created["service"]["status"].as_str()),
        (200, Some("running")),
        "{created}"
    );
    let id = created["service_id"].as_i64().expect("id");
    let engine = engine().await;
    let label = format!("berth.service={id}");
    wait_for(Duration::from_secs(120), "50 running", || {
        let engine = &engine;
        let label = label.as_str();
        async move {
            let running = engine
                .list(&[label], false)
                .await
                .ok()?
                .iter()
                .filter(|container| container.state == "running")
                .count();
            (running == REPLICAS).then_some(())
        }
    })
    .await;
    let up = started.elapsed().as_secs_f64();
    let removing = Instant::now();
    let (status, _) = hub
        .call(Method::DELETE, &format!("/api/services/{id}?wait=60"), None)
        .await;
    assert_eq!(status, 200);
    (up, removing.elapsed().as_secs_f64())
}

/// The engine's own floor: 50 containers created and started straight through the driver, eight
/// at a time, with no hub in between.
async fn engine_floor() -> f64 {
    use futures_util::StreamExt;
    let engine = engine().await;
    let pid = std::process::id();
    let specs: Vec<berth_core::ContainerSpec> = (0..REPLICAS)
        .map(|index| {
            serde_json::from_value(json!({
                "name": format!("berth-bench-floor-{pid}-{index}"), "image": IMAGE,
                "command": ["sleep", "3600"], "cpu_limit": 0.02, "memory_limit": "8m",
                "labels": {"berth.test": "1"},
            }))
            .expect("spec")
        })
        .collect();
    let started = Instant::now();
    let ids: Vec<String> = futures_util::stream::iter(&specs)
        .map(|spec| {
            let engine = &engine;
            async move {
                let id = engine.create(spec, &mut |_| {}).await.expect("create").id;
                engine.start(&id).await.expect("start");
                id
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    for id in ids {
        let _ = engine
            .remove(
                &id,
                berth_docker::RemoveOptions {
                    force: true,
                    keep_data: false,
                },
            )
            .await;
    }
    elapsed
}

async fn swarm_run() -> Option<(f64, f64)> {
    let was = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    if was != "active" {
        let init = Command::new("docker")
            .args(["swarm", "init", "--advertise-addr", "127.0.0.1"])
            .output()
            .ok()?;
        if !init.status.success() {
            println!(
                "swarm: cannot init ({}); skipped",
                String::from_utf8_lossy(&init.stderr).trim()
            );
            return None;
        }
    }
    let name = format!("berth-bench-swarm-{}", std::process::id());
    let started = Instant::now();
    let replicas = REPLICAS.to_string();
    docker(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--replicas",
        &replicas,
        "--name",
        &name,
        "--limit-cpu",
        "0.02",
        "--limit-memory",
        "8m",
        IMAGE,
        "sleep",
        "3600",
    ]);
    let want = format!("{REPLICAS}/{REPLICAS}");
    wait_for(Duration::from_secs(300), "swarm 50 running", || {
        let name = name.clone();
        let want = want.clone();
        async move {
            let replicas = docker(&[
                "service",
                "ls",
                "--filter",
                &format!("name={name}"),
                "--format",
                "{{.Replicas}}",
            ]);
            (replicas.starts_with(&want)).then_some(())
        }
    })
    .await;
    let up = started.elapsed().as_secs_f64();
    let removing = Instant::now();
    docker(&["service", "rm", &name]);
    let filter = format!("label=com.docker.swarm.service.name={name}");
    wait_for(Duration::from_secs(300), "swarm containers gone", || {
        let filter = filter.clone();
        async move {
            docker(&["ps", "-aq", "--filter", &filter])
                .is_empty()
                .then_some(())
        }
    })
    .await;
    let removed = removing.elapsed().as_secs_f64();
    if was != "active" {
        docker(&["swarm", "leave", "--force"]);
    }
    Some((up, removed))
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "replicas benchmark: built; run it with `cargo bench -p berth-cli --bench replicas`"
        );
        return;
    }
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(berth_run().await);
    }
    runs.sort_by(|left, right| left.0.total_cmp(&right.0));
    for (up, removed) in &runs {
        println!("berth run: all running in {up:.2} s; removed in {removed:.2} s");
    }
    let (berth_up, berth_removed) = runs[1];
    println!(
        "berth (median of 3): {REPLICAS} replicas from the API call to all running in {berth_up:.2} s; removed in {berth_removed:.2} s"
    );
    println!(
        "engine floor: {REPLICAS} containers created and started straight through the driver, 8 at a time, in {:.2} s",
        engine_floor().await
    );
    if let Some((swarm_up, swarm_removed)) = swarm_run().await {
        println!(
            "swarm: {REPLICAS} replicas to all running in {swarm_up:.2} s; removed in {swarm_removed:.2} s"
        );
        println!("berth / swarm: {:.2}", berth_up / swarm_up);
    }
}
