//! Failover time: a `berth hub` (the default monitor interval of 3 s and failure threshold of 3)
//! and two `berth agent` processes on the local engine; ten times, the agent running the service
//! is killed and the time until the service runs on the other one is taken; the killed agent
//! then comes back (its stale replica is removed) before the next round.
//! Run with `cargo bench -p berth-cli --bench failover` (needs the test image; about 3 minutes).

#[path = "../tests/processes/mod.rs"]
mod processes;

use std::time::{Duration, Instant};

use processes::{
    LabelledContainers, engine, engine_status, free_port, fresh_dir, running_service, start_agent,
    start_hub, wait_for,
};
use reqwest::Method;

const ROUNDS: usize = 10;

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "failover benchmark: built; run it with `cargo bench -p berth-cli --bench failover`"
        );
        return;
    }
    let config = std::env::var("BERTH_BENCH_HUB_CONFIG").unwrap_or_default();
    let dir = fresh_dir("failover-bench");
    let (_hub_process, hub) = start_hub(&dir, &config).await;
    let pid = std::process::id();
    let server_ids = [format!("bench-a-{pid}"), format!("bench-b-{pid}")];
    let _leftovers = LabelledContainers(
        server_ids
            .iter()
            .map(|id| format!("berth.agent={id}"))
            .collect(),
    );
    let keys = ["key-a", "key-b"];
    let ports = [free_port(), free_port()];
    let mut agents = [
        start_agent(&server_ids[0], keys[0], ports[0]).await,
        start_agent(&server_ids[1], keys[1], ports[1]).await,
    ];
    let nodes = [
        hub.add_agent("agent-a", ports[0], keys[0]).await,
        hub.add_agent("agent-b", ports[1], keys[1]).await,
    ];
    let engine = engine().await;
    let started = running_service(&hub, "bench-failover").await;
    let id = started["id"].as_i64().expect("id");
    let mut service = started;
    let mut times = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        let current = nodes
            .iter()
            .position(|node| service["node_id"].as_i64() == Some(*node))
            .expect("on an agent");
        let old_container = service["container_id"]
            .as_str()
            .expect("container")
            .to_owned();
        let other = nodes[1 - current];
        agents[current].kill();
        let killed_at = Instant::now();
        service = wait_for(Duration::from_secs(120), "failover", || {
            let hub = &hub;
            async move {
                let service = hub.service(id).await;
                (service["node_id"].as_i64() == Some(other) && service["container_id"].is_string())
                    .then_some(service)
            }
        })
        .await;
        let new_container = service["container_id"]
            .as_str()
            .expect("container")
            .to_owned();
        wait_for(Duration::from_secs(30), "the replacement runs", || {
            let engine = &engine;
            let id = &new_container;
            async move { (engine_status(engine, id).await.as_deref() == Some("running")).then_some(()) }
        })
        .await;
        let elapsed = killed_at.elapsed().as_secs_f64();
        println!("round {round}: {elapsed:.2} s");
        times.push(elapsed);
        agents[current] = start_agent(&server_ids[current], keys[current], ports[current]).await;
        wait_for(Duration::from_secs(120), "the stale replica goes", || {
            let engine = &engine;
            let old = &old_container;
            async move { engine_status(engine, old).await.is_none().then_some(()) }
        })
        .await;
        // The returning node must be up again before it can take the service back.
        wait_for(Duration::from_secs(60), "the node is up", || {
            let hub = &hub;
            async move {
                let (_, usage) = hub
                    .call(Method::GET, "/api/admin/resources/usage", None)
                    .await;
                usage["nodes"]
                    .as_array()?
                    .iter()
                    .any(|node| {
                        node["node_id"].as_i64() == Some(nodes[current])
                            && node["down"] == false
                            && node["healthy"] == true
                    })
                    .then_some(())
            }
        })
        .await;
    }
    times.sort_by(f64::total_cmp);
    println!(
        "failover (agent killed → replacement running), {ROUNDS} rounds: median {:.2} s, min {:.2} s, max {:.2} s",
        (times[ROUNDS / 2 - 1] + times[ROUNDS / 2]) / 2.0,
        times[0],
        times[ROUNDS - 1]
    );
    let _ = hub
        .call(Method::DELETE, &format!("/api/services/{id}?wait=60"), None)
        .await;
}
