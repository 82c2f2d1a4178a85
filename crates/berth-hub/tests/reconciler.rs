//! The reconciler and failover on the real engine: a node's containers converge to the database
//! (a stopped one restarted, a missing one created again, orphans and stale generations removed,
//! an interrupted launch adopted, other hubs' containers left alone) and a second round changes
//! nothing; a service on an agent that dies moves to the other agent after the failure threshold,
//! a pinned one is reported instead, and the moved replica's old container is removed when its
//! agent returns.

mod support;

use std::collections::BTreeMap;

use berth_core::ContainerSpec;
use berth_docker::{DockerDriver, RemoveOptions};
use berth_hub::monitor;
use berth_hub::reconciler::{self, RoundReport};
use berth_hub::state::HubSettings;
use berth_store::allocations::{self, ReplicaRef};
use reqwest::Method;
use serde_json::{Value, json};
use support::{Hub, add_local_node, engine, node, start, start_agent, start_with, with_cleanup};

const IMAGE: &str = "berth-test/busybox:latest";

async fn admin_name(hub: &Hub) -> String {
    let (_, me) = hub.admin(Method::GET, "/api/users/me", None).await;
    me["name"].as_str().expect("name").to_owned()
}

async fn service_body(name: &str, pinned: bool) -> Value {
    json!({"name": name, "image": IMAGE, "memory_limit": "16m", "cpu_limit": 0.1, "pinned": pinned,
        "command": ["sh", "-c", "while true; do sleep 0.2; done"]})
}

async fn create_and_start(hub: &Hub, user: &str, name: &str, pinned: bool) -> Value {
    let (status, created) = hub
        .admin(
            Method::POST,
            &format!("/api/{user}/ops/services?wait=60"),
            Some(service_body(name, pinned).await),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["service_id"].as_i64().expect("id");
    let (status, started) = hub
        .admin(
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

async fn service(hub: &Hub, id: i64) -> Value {
    let (status, body) = hub
        .admin(Method::GET, &format!("/api/services/{id}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn actions(hub: &Hub) -> Vec<(String, String)> {
    let (_, listed) = hub
        .admin(Method::GET, "/api/admin/operations?size=200", None)
        .await;
    listed["operations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|operation| {
            (
                operation["action"].as_str().unwrap_or_default().to_owned(),
                operation["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn labelled(name: &str, labels: &[(&str, String)]) -> ContainerSpec {
    let mut spec: ContainerSpec = serde_json::from_value(json!({
        "name": name, "image": IMAGE, "command": ["sleep", "300"],
    }))
    .expect("spec");
    spec.labels = labels
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.clone()))
        .chain([("berth.test".to_owned(), "1".to_owned())])
        .collect::<BTreeMap<_, _>>();
    spec
}

async fn status_of(engine: &DockerDriver, id: &str) -> Option<String> {
    engine.inspect(id).await.ok().map(|details| details.status)
}

#[tokio::test]
async fn a_node_converges_to_the_database_and_a_second_round_changes_nothing() {
    let hub = start("reconcile").await;
    let node_id = add_local_node(&hub).await;
    let engine = engine().await;
    let user = admin_name(&hub).await;
    let hub_id = hub.state.hub_id.clone();
    let pid = std::process::id();
    let foreign = labelled(
        &format!("berth-test-foreign-{pid}"),
        &[
            ("berth.hub", "another-hub".to_owned()),
            ("berth.node", node_id.to_string()),
            ("berth.service", "1".to_owned()),
        ],
    );
    let foreign_id = engine
        .create(&foreign, &mut |_| {})
        .await
        .expect("foreign")
        .id;
    with_cleanup(&hub, async {
        let started = create_and_start(&hub, &user, "steady", false).await;
        let id = started["id"].as_i64().expect("id");
        let first = started["container_id"]
            .as_str()
            .expect("container")
            .to_owned();
        assert_eq!(
            reconciler::round(&hub.state).await.expect("round"),
            RoundReport::default(),
            "nothing to do when everything is as recorded"
        );

        engine
            .stop(&first, 0)
            .await
            .expect("stop behind the hub's back");
        let report = reconciler::round(&hub.state).await.expect("round");
        assert_eq!(report.repaired, 1, "{report:?}");
        assert_eq!(status_of(&engine, &first).await.as_deref(), Some("running"));

        engine
            .remove(
                &first,
                RemoveOptions {
                    force: true,
                    keep_data: false,
                },
            )
            .await
            .expect("remove behind the hub's back");
        let report = reconciler::round(&hub.state).await.expect("round");
        assert_eq!(report.repaired, 1, "{report:?}");
        let recreated = service(&hub, id).await;
        let second = recreated["container_id"]
            .as_str()
            .expect("container")
            .to_owned();
        assert_ne!(second, first);
        assert_eq!(
            status_of(&engine, &second).await.as_deref(),
            Some("running")
        );

        let orphan = labelled(
            &format!("berth-test-orphan-{pid}"),
            &[
                ("berth.hub", hub_id.clone()),
                ("berth.node", node_id.to_string()),
                ("berth.service", "999999".to_owned()),
                ("berth.generation", "1".to_owned()),
            ],
        );
        let stale = labelled(
            &format!("berth-test-stale-{pid}"),
            &[
                ("berth.hub", hub_id.clone()),
                ("berth.node", node_id.to_string()),
                ("berth.service", id.to_string()),
                ("berth.generation", "0".to_owned()),
            ],
        );
        let orphan_id = engine
            .create(&orphan, &mut |_| {})
            .await
            .expect("orphan")
            .id;
        let stale_id = engine.create(&stale, &mut |_| {}).await.expect("stale").id;
        let report = reconciler::round(&hub.state).await.expect("round");
        assert_eq!(report.removed, 2, "{report:?}");
        assert_eq!(status_of(&engine, &orphan_id).await, None);
        assert_eq!(status_of(&engine, &stale_id).await, None);
        assert!(
            status_of(&engine, &foreign_id).await.is_some(),
            "another hub's container is left alone"
        );

        // An interrupted launch: the allocation has no container id yet.
        {
            let mut connection = hub.state.store.acquire().await.expect("connection");
            assert!(
                allocations::set_container(
                    &mut connection,
                    ReplicaRef {
                        service_id: id,
                        replica: 0,
                        generation: 1,
                    },
                    "",
                    "creating"
                )
                .await
                .expect("update")
            );
        }
        let report = reconciler::round(&hub.state).await.expect("round");
        assert_eq!(report.repaired, 1, "adopted: {report:?}");
        let adopted = {
            let mut connection = hub.state.store.acquire().await.expect("connection");
            allocations::for_replica(&mut connection, id, 0)
                .await
                .expect("read")
                .expect("allocation")
        };
        assert_eq!(adopted.container_id, second);
        assert_eq!(
            reconciler::round(&hub.state).await.expect("round"),
            RoundReport::default(),
            "converged"
        );
        let done = actions(&hub).await;
        for action in [
            "container.restart",
            "container.recreate",
            "container.remove_stale",
            "container.adopt",
        ] {
            assert!(
                done.contains(&(action.to_owned(), "ok".to_owned())),
                "{action} in {done:?}"
            );
        }
    })
    .await;
    let _ = engine
        .remove(
            &foreign_id,
            RemoveOptions {
                force: true,
                keep_data: false,
            },
        )
        .await;
}

/// Two in-process agents registered as nodes `agent-a` and `agent-b`.
struct TwoAgents {
    agents: [support::RunningAgent; 2],
    nodes: [i64; 2],
}

impl TwoAgents {
    async fn start(hub: &Hub, prefix: &str) -> Self {
        let pid = std::process::id();
        let first = start_agent(&format!("{prefix}-a-{pid}"), "key-a", "127.0.0.1:0").await;
        let second = start_agent(&format!("{prefix}-b-{pid}"), "key-b", "127.0.0.1:0").await;
        let nodes = [
            add_agent_node(hub, "agent-a", &first.url(), "key-a").await,
            add_agent_node(hub, "agent-b", &second.url(), "key-b").await,
        ];
        Self {
            agents: [first, second],
            nodes,
        }
    }

    async fn kill(self) {
        for agent in self.agents {
            agent.kill().await;
        }
    }
}

async fn add_agent_node(hub: &Hub, name: &str, url: &str, key: &str) -> i64 {
    let body = node(
        name,
        json!({"driver": "agent", "agent_url": url, "agent_api_key": key}),
    );
    let (status, created) = hub.admin(Method::POST, "/api/nodes", Some(body)).await;
    assert_eq!(
        (status, created["docker_status"].as_str()),
        (201, Some("connected")),
        "{created}"
    );
    created["id"].as_i64().expect("id")
}

#[tokio::test]
async fn a_dead_agents_service_moves_and_its_stale_replica_goes_when_it_returns() {
    let settings = HubSettings {
        failure_threshold: 2,
        failure_window: std::time::Duration::ZERO,
        recovery_window: std::time::Duration::ZERO,
        ..HubSettings::default()
    };
    let hub = start_with("failover", settings).await;
    let engine = engine().await;
    let user = admin_name(&hub).await;
    let pid = std::process::id();
    let first = start_agent(&format!("failover-a-{pid}"), "key-a", "127.0.0.1:0").await;
    let first_address = first.address;
    let first_node = add_agent_node(&hub, "agent-a", &first.url(), "key-a").await;
    // Agents that must outlive the services' deletion at cleanup.
    let agents = std::sync::Mutex::new(Vec::new());
    with_cleanup(&hub, async {
        let moving = create_and_start(&hub, &user, "moving", false).await;
        let pinned = create_and_start(&hub, &user, "pinned", true).await;
        let moving_id = moving["id"].as_i64().expect("id");
        let old_container = moving["container_id"]
            .as_str()
            .expect("container")
            .to_owned();
        assert_eq!(moving["node_id"].as_i64(), Some(first_node));
        assert_eq!(pinned["node_id"].as_i64(), Some(first_node));
        let second = start_agent(&format!("failover-b-{pid}"), "key-b", "127.0.0.1:0").await;
        let second_node = add_agent_node(&hub, "agent-b", &second.url(), "key-b").await;
        agents.lock().expect("agents").push(second);

        first.kill().await;
        monitor::check_all(&hub.state).await.expect("check");
        assert!(
            !hub.state.is_down(first_node),
            "one failed check is not a failure"
        );
        assert_eq!(reconciler::round(&hub.state).await.expect("round").moved, 0);
        monitor::check_all(&hub.state).await.expect("check");
        assert!(hub.state.is_down(first_node), "two failed checks are");
        let report = reconciler::round(&hub.state).await.expect("round");
        assert_eq!(report.moved, 1, "{report:?}");

        let moved = service(&hub, moving_id).await;
        assert_eq!(moved["node_id"].as_i64(), Some(second_node));
        assert_eq!(moved["generation"].as_i64(), Some(2));
        assert_eq!(moved["status"].as_str(), Some("running"));
        let new_container = moved["container_id"]
            .as_str()
            .expect("container")
            .to_owned();
        assert_eq!(
            status_of(&engine, &new_container).await.as_deref(),
            Some("running")
        );
        assert_eq!(
            status_of(&engine, &old_container).await.as_deref(),
            Some("running"),
            "the old replica still runs while its node is away"
        );
        let kept = service(&hub, pinned["id"].as_i64().expect("id")).await;
        assert_eq!(kept["node_id"].as_i64(), Some(first_node), "pinned stays");

        let back = start_agent(
            &format!("failover-a-{pid}"),
            "key-a",
            &first_address.to_string(),
        )
        .await;
        agents.lock().expect("agents").push(back);
        monitor::check_all(&hub.state).await.expect("check");
        assert!(!hub.state.is_down(first_node));
        let report = reconciler::round(&hub.state).await.expect("round");
        assert_eq!(report.removed, 1, "{report:?}");
        assert_eq!(
            status_of(&engine, &old_container).await,
            None,
            "stale replica removed"
        );
        assert_eq!(
            status_of(&engine, &new_container).await.as_deref(),
            Some("running")
        );
        let done = actions(&hub).await;
        for expected in [
            ("node.down", "ok"),
            ("service.failover", "ok"),
            ("service.failover", "pinned"),
            ("node.up", "ok"),
            ("container.remove_stale", "ok"),
        ] {
            assert!(
                done.contains(&(expected.0.to_owned(), expected.1.to_owned())),
                "{expected:?} in {done:?}"
            );
        }
    })
    .await;
    let agents = std::mem::take(&mut *agents.lock().expect("agents"));
    for agent in agents {
        agent.kill().await;
    }
}

#[tokio::test]
async fn migrate_moves_a_container_and_drain_empties_a_node() {
    let hub = start("migrate").await;
    let engine = engine().await;
    let user = admin_name(&hub).await;
    let agents = TwoAgents::start(&hub, "migrate").await;
    let [first_node, second_node] = agents.nodes;
    with_cleanup(&hub, async {
        let started = create_and_start(&hub, &user, "mover", false).await;
        let id = started["id"].as_i64().expect("id");
        let old_container = started["container_id"]
            .as_str()
            .expect("container")
            .to_owned();
        let on = started["node_id"].as_i64().expect("node");
        let other = if on == first_node {
            second_node
        } else {
            first_node
        };
        let (_, placed) = hub.admin(Method::GET, "/api/admin/containers", None).await;
        let row = placed["containers"][0]["id"].as_i64().expect("row");

        for (body, status, field) in [
            (json!({"node_id": 99999}), 422, Some("node_id")),
            (json!({"node_id": on}), 422, Some("node_id")),
            (json!({"nodes": 1}), 422, None),
        ] {
            let (got, problem) = hub
                .admin(
                    Method::POST,
                    &format!("/api/admin/containers/{row}/migrate"),
                    Some(body.clone()),
                )
                .await;
            assert_eq!(got, status, "{body}: {problem}");
            if field.is_some() {
                assert_eq!(problem["field"].as_str(), field, "{problem}");
            }
        }
        let (status, _) = hub
            .admin(Method::POST, "/api/admin/containers/99999/migrate", None)
            .await;
        assert_eq!(status, 404);
        assert_eq!(
            service(&hub, id).await["generation"],
            1,
            "refusals change nothing"
        );

        let (status, migrated) = hub
            .admin(
                Method::POST,
                &format!("/api/admin/containers/{row}/migrate?wait=60"),
                Some(json!({"node_id": other})),
            )
            .await;
        assert_eq!(
            (status, migrated["state"].as_str()),
            (200, Some("succeeded")),
            "{migrated}"
        );
        let migrated = &migrated["detail"];
        assert_eq!(migrated["node_id"].as_i64(), Some(other));
        assert_eq!(migrated["generation"], 2);
        let moved_container = migrated["container_id"]
            .as_str()
            .expect("container")
            .to_owned();
        assert_eq!(
            status_of(&engine, &moved_container).await.as_deref(),
            Some("running")
        );
        assert_eq!(
            status_of(&engine, &old_container).await,
            None,
            "old one removed"
        );

        let (status, drained) = hub
            .admin(
                Method::POST,
                &format!("/api/nodes/{other}/drain?wait=60"),
                None,
            )
            .await;
        assert_eq!(
            (status, drained["state"].as_str()),
            (200, Some("succeeded")),
            "{drained}"
        );
        let drained = &drained["detail"];
        assert_eq!(drained["listed"], false);
        assert_eq!(
            drained["moved"][0]["node_id"].as_i64(),
            Some(on),
            "{drained}"
        );
        assert_eq!(status_of(&engine, &moved_container).await, None);
        let back = service(&hub, id).await;
        assert_eq!(
            (
                back["node_id"].as_i64(),
                back["generation"].as_i64(),
                back["status"].as_str()
            ),
            (Some(on), Some(3), Some("running"))
        );

        let (_, usage) = hub
            .admin(Method::GET, "/api/admin/resources/usage", None)
            .await;
        let nodes = usage["nodes"].as_array().expect("nodes");
        let of = |node: i64| {
            nodes
                .iter()
                .find(|entry| entry["node_id"].as_i64() == Some(node))
                .cloned()
                .expect("node in usage")
        };
        assert_eq!(of(on)["allocated"]["cpu_millis"], 100);
        assert_eq!(of(on)["containers"], 1);
        assert_eq!(of(other)["containers"], 0);
        assert_eq!(of(other)["listed"], false);
        let done = actions(&hub).await;
        for action in [
            "container.migrate",
            "node.drain",
            "service.drain",
            "container.remove_stale",
        ] {
            assert!(
                done.iter()
                    .any(|(name, outcome)| name == action && outcome == "ok"),
                "{action} in {done:?}"
            );
        }
    })
    .await;
    agents.kill().await;
}

async fn containers_of(hub: &Hub, engine: &DockerDriver, service: i64) -> Vec<(String, String)> {
    let label = format!("berth.service={service}");
    let ours = format!("berth.hub={}", hub.state.hub_id);
    let mut found: Vec<(String, String)> = engine
        .list(&[label.as_str(), ours.as_str()], true)
        .await
        .expect("list")
        .into_iter()
        .map(|summary| {
            (
                summary
                    .labels
                    .get("berth.replica")
                    .cloned()
                    .unwrap_or_default(),
                summary.state,
            )
        })
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn replicas_spread_over_nodes_and_start_stop_and_go_together() {
    let hub = start("replicas").await;
    let engine = engine().await;
    let user = admin_name(&hub).await;
    let agents = TwoAgents::start(&hub, "replicas").await;
    let [first_node, second_node] = agents.nodes;
    with_cleanup(&hub, async {
        for (replicas, field) in [(json!(0), "replicas"), (json!(201), "replicas")] {
            let mut body = service_body("bad", false).await;
            body["replicas"] = replicas;
            let (status, problem) = hub
                .admin(
                    Method::POST,
                    &format!("/api/{user}/ops/services?wait=60"),
                    Some(body),
                )
                .await;
            assert_eq!(
                (status, problem["field"].as_str()),
                (422, Some(field)),
                "{problem}"
            );
        }
        let mut body = service_body("fleet", false).await;
        body["replicas"] = json!(4);
        let (status, created) = hub
            .admin(
                Method::POST,
                &format!("/api/{user}/ops/services?wait=60"),
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "{created}");
        assert_eq!(created["service"]["replicas"], 4);
        let id = created["service_id"].as_i64().expect("id");
        let (_, live) = hub
            .admin(Method::GET, &format!("/api/services/{id}/status"), None)
            .await;
        let placed = live["replicas"].as_array().expect("replicas").clone();
        assert_eq!(placed.len(), 4, "{live}");
        let on_first = placed
            .iter()
            .filter(|replica| replica["node_id"].as_i64() == Some(first_node))
            .count();
        let on_second = placed
            .iter()
            .filter(|replica| replica["node_id"].as_i64() == Some(second_node))
            .count();
        assert_eq!((on_first, on_second), (2, 2), "spread evenly: {live}");
        let expect = |state: &str| {
            (0..4)
                .map(|replica| (replica.to_string(), state.to_owned()))
                .collect::<Vec<_>>()
        };
        assert_eq!(containers_of(&hub, &engine, id).await, expect("created"));

        let (status, started) = hub
            .admin(
                Method::POST,
                &format!("/api/services/{id}/start?wait=60"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{started}");
        assert_eq!(containers_of(&hub, &engine, id).await, expect("running"));
        let (status, _) = hub
            .admin(
                Method::POST,
                &format!("/api/services/{id}/stop?wait=60"),
                Some(json!({"force_stop": true})),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(containers_of(&hub, &engine, id).await, expect("exited"));
        assert_eq!(
            reconciler::round(&hub.state).await.expect("round"),
            RoundReport::default(),
            "stopped replicas of a stopped service are as wanted"
        );
        let (status, _) = hub
            .admin(Method::DELETE, &format!("/api/services/{id}?wait=60"), None)
            .await;
        assert_eq!(status, 200);
        assert!(
            containers_of(&hub, &engine, id).await.is_empty(),
            "all replicas removed"
        );

        let mut body = service_body("at-once", false).await;
        body["replicas"] = json!(2);
        body["start"] = json!(true);
        let (status, created) = hub
            .admin(
                Method::POST,
                &format!("/api/{user}/ops/services?wait=60"),
                Some(body),
            )
            .await;
        assert_eq!(
            (status, created["service"]["status"].as_str()),
            (200, Some("running")),
            "{created}"
        );
        let id = created["service_id"].as_i64().expect("id");
        assert_eq!(
            containers_of(&hub, &engine, id).await,
            vec![
                ("0".to_owned(), "running".to_owned()),
                ("1".to_owned(), "running".to_owned())
            ],
            "start: true starts every replica"
        );
    })
    .await;
    agents.kill().await;
}

#[tokio::test]
async fn constraints_keep_replicas_on_nodes_with_the_labels() {
    let hub = start("constraints").await;
    let user = admin_name(&hub).await;
    let agents = TwoAgents::start(&hub, "labels").await;
    let labelled = agents.nodes[1];
    with_cleanup(&hub, async {
        let (status, problem) = hub
            .admin(
                Method::PUT,
                &format!("/api/nodes/{labelled}"),
                Some(json!({"labels": {"bad key": "x"}})),
            )
            .await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (422, Some("labels")),
            "{problem}"
        );
        let (status, updated) = hub
            .admin(
                Method::PUT,
                &format!("/api/nodes/{labelled}"),
                Some(json!({"labels": {"zone": "b", "disk": "nvme"}})),
            )
            .await;
        assert_eq!(status, 200, "{updated}");
        assert_eq!(updated["labels"]["zone"], "b");

        let mut body = service_body("zoned", false).await;
        body["replicas"] = json!(3);
        body["constraints"] = json!({"zone": "b"});
        let (status, created) = hub
            .admin(
                Method::POST,
                &format!("/api/{user}/ops/services?wait=60"),
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "{created}");
        let id = created["service_id"].as_i64().expect("id");
        let (_, live) = hub
            .admin(Method::GET, &format!("/api/services/{id}/status"), None)
            .await;
        let nodes: Vec<i64> = live["replicas"]
            .as_array()
            .expect("replicas")
            .iter()
            .filter_map(|replica| replica["node_id"].as_i64())
            .collect();
        assert_eq!(
            nodes,
            vec![labelled; 3],
            "every replica on the labelled node"
        );

        let mut nowhere = service_body("nowhere", false).await;
        nowhere["constraints"] = json!({"zone": "c"});
        let (status, refused) = hub
            .admin(
                Method::POST,
                &format!("/api/{user}/ops/services?wait=60"),
                Some(nowhere),
            )
            .await;
        assert_eq!(
            (status, refused["detail"].as_str()),
            (
                409,
                Some("no node can run it: 2 nodes: labels do not match")
            )
        );
        let mut bad = service_body("bad", false).await;
        bad["constraints"] = json!({"zone": "x".repeat(64)});
        let (status, problem) = hub
            .admin(
                Method::POST,
                &format!("/api/{user}/ops/services?wait=60"),
                Some(bad),
            )
            .await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (422, Some("constraints.zone")),
            "{problem}"
        );
    })
    .await;
    agents.kill().await;
}

#[tokio::test]
async fn an_agent_nodes_event_stream_restarts_a_replica_killed_behind_berths_back() {
    let hub = start("agent-events").await;
    // No monitor runs here: only the agent's event stream can bring the replica back.
    tokio::spawn(berth_hub::node_watch::run(
        std::sync::Arc::clone(&hub.state),
        std::future::pending(),
    ));
    let engine = engine().await;
    let user = admin_name(&hub).await;
    let pid = std::process::id();
    let agent = start_agent(&format!("agent-events-{pid}"), "key-e", "127.0.0.1:0").await;
    let node_id = add_agent_node(&hub, "agent-e", &agent.url(), "key-e").await;
    with_cleanup(&hub, async {
        let service = create_and_start(&hub, &user, "watched", false).await;
        let id = service["id"].as_i64().expect("id");
        let container = service["container_id"]
            .as_str()
            .expect("container")
            .to_owned();
        let mut mirrored = false;
        for _ in 0..200 {
            mirrored = hub
                .state
                .mirror_of(node_id)
                .and_then(|mirror| mirror.get(&container))
                .is_some();
            if mirrored {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            mirrored,
            "the hub mirrors the agent's containers from its event stream"
        );

        engine.stop(&container, 0).await.expect("kill");
        // Started again and recorded (the record follows the start).
        let mut mended = false;
        for _ in 0..300 {
            mended = status_of(&engine, &container).await.as_deref() == Some("running")
                && hub
                    .actions_of_service(id)
                    .await
                    .iter()
                    .any(|action| action == "container.restart");
            if mended {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(mended, "started again from the agent's events");
    })
    .await;
    agent.kill().await;
}
