//! Failover end to end with the default settings, every part its own process: a `berth hub` and
//! two `berth agent`s with different `SERVER_ID`s on the local engine. A service runs on one
//! agent; that agent pauses for 2 s (SIGSTOP, then SIGCONT), which moves nothing; then it is
//! killed, and the service runs on the other within the failure window; the first agent comes
//! back and its stale replica is removed. Every step is in the operation log.

mod processes;

use std::time::{Duration, Instant};

use processes::{
    LabelledContainers, engine, engine_status, free_port, fresh_dir, running_service, start_agent,
    start_hub, wait_for,
};
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agents_service_runs_on_the_other_and_its_stale_replica_goes() {
    let dir = fresh_dir("failover-e2e");
    let (_hub_process, hub) = start_hub(&dir, "").await;
    let pid = std::process::id();
    let server_ids = [format!("e2e-a-{pid}"), format!("e2e-b-{pid}")];
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

    let started = running_service(&hub, "survivor").await;
    let id = started["id"].as_i64().expect("id");
    let old_container = started["container_id"]
        .as_str()
        .expect("container")
        .to_owned();
    let first = nodes
        .iter()
        .position(|node| started["node_id"].as_i64() == Some(*node))
        .expect("placed on one of the agents");
    let other_node = nodes[1 - first];

    // A 2 s blip, twice (a monitor round falls into one of them): nothing moves or flaps.
    for _ in 0..2 {
        agents[first].pause_for(Duration::from_secs(2)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let after_blips = hub.service(id).await;
    assert_eq!(after_blips["node_id"], started["node_id"], "{after_blips}");
    assert_eq!(after_blips["container_id"], started["container_id"]);
    let seen = hub.actions().await;
    assert!(
        !seen.iter().any(|(action, _)| action == "node.down"),
        "a 2 s blip is not a failure: {seen:?}"
    );

    agents[first].kill();
    let killed_at = Instant::now();
    let moved = wait_for(
        Duration::from_secs(60),
        "the service runs on the other node",
        || {
            let hub = &hub;
            async move {
                let service = hub.service(id).await;
                (service["node_id"].as_i64() == Some(other_node)
                    && service["status"] == "running"
                    && service["container_id"].is_string())
                .then_some(service)
            }
        },
    )
    .await;
    let new_container = moved["container_id"]
        .as_str()
        .expect("container")
        .to_owned();
    assert_eq!(
        engine_status(&engine, &new_container).await.as_deref(),
        Some("running")
    );
    println!(
        "failover: service running on the other node {:.2} s after the agent was killed",
        killed_at.elapsed().as_secs_f64()
    );
    assert_eq!(moved["generation"], 2);

    agents[first] = start_agent(&server_ids[first], keys[first], ports[first]).await;
    wait_for(
        Duration::from_secs(60),
        "the stale replica is removed",
        || {
            let engine = &engine;
            let old = &old_container;
            async move { engine_status(engine, old).await.is_none().then_some(()) }
        },
    )
    .await;
    assert_eq!(
        engine_status(&engine, &new_container).await.as_deref(),
        Some("running")
    );
    let done = hub.actions().await;
    for expected in [
        ("node.down", "ok"),
        ("service.failover", "ok"),
        ("node.up", "ok"),
        ("container.remove_stale", "ok"),
    ] {
        assert!(
            done.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} in {done:?}"
        );
    }
    let (status, _) = hub
        .call(Method::DELETE, &format!("/api/services/{id}?wait=60"), None)
        .await;
    assert_eq!(status, 200);
    drop(agents);
}
