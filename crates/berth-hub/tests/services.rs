//! Services end to end on the real engine, through node `local` (the Docker driver) and through a
//! `berth agent` node: create from a spec, start, logs, stats, status, stop, rollback, delete —
//! each step in the operation log — plus quotas, ownership and placement refusals.

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Hub, add_local_node, node, start, start_agent, with_cleanup};

const IMAGE: &str = "berth-test/busybox:latest";

async fn wait_for_logs(hub: &Hub, token: &str, id: i64, needle: &str) -> String {
    for _ in 0..50 {
        let (_, logs, _) = hub
            .call(
                Some(token),
                Method::GET,
                &format!("/api/services/{id}/logs?tail=20"),
                None,
            )
            .await;
        let text = logs["logs"].as_str().unwrap_or_default().to_owned();
        if text.contains(needle) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{needle:?} never appeared in the logs of service {id}");
}

#[tokio::test]
async fn a_service_lives_and_every_step_is_logged() {
    let hub = start("service-life").await;
    let node_id = add_local_node(&hub).await;
    let (alice_id, alice) = hub.new_user("alice").await;
    let (status, spec) = hub
        .admin(
            Method::POST,
            "/api/specs",
            Some(json!({"name": "small", "cpu_cores": 0.5, "memory": "64m", "data_disk": "1g"})),
        )
        .await;
    assert_eq!(status, 201, "{spec}");
    let script = "echo version-$BERTH_VERSION; while true; do sleep 0.2; done";
    let body = json!({"name": "flood", "image": IMAGE, "spec_id": spec["id"], "port": 8080,
        "command": ["sh", "-c", script], "environment": {"BERTH_VERSION": "one"}});
    with_cleanup(&hub, async {
        let (status, created, _) = hub
            .call(
                Some(&alice),
                Method::POST,
                "/api/alice/geo-models/services?wait=60",
                Some(body),
            )
            .await;
        assert_eq!(
            (status, created["state"].as_str(), created["kind"].as_str()),
            (200, Some("succeeded"), Some("service.create")),
            "{created}"
        );
        let id = created["service_id"].as_i64().expect("id");
        let created = &created["service"];
        assert_eq!(
            (created["status"].as_str(), created["node_id"].as_i64()),
            (Some("created"), Some(node_id))
        );
        assert_eq!(created["cpu_millis"], 500);
        let container = created["container_id"]
            .as_str()
            .expect("container")
            .to_owned();

        let (status, started, _) = hub
            .call(
                Some(&alice),
                Method::POST,
                &format!("/api/services/{id}/start?wait=60"),
                None,
            )
            .await;
        assert_eq!(
            (status, started["service"]["status"].as_str()),
            (200, Some("running")),
            "{started}"
        );
        assert!(
            wait_for_logs(&hub, &alice, id, "version-one")
                .await
                .contains("version-one")
        );
        let (_, live, _) = hub
            .call(
                Some(&alice),
                Method::GET,
                &format!("/api/services/{id}/status"),
                None,
            )
            .await;
        assert_eq!(live["container_status"], "running", "{live}");
        assert_eq!(live["node"]["name"], "local");
        assert!(
            live["host_port"].as_u64().is_some(),
            "an engine-assigned host port: {live}"
        );
        let (status, stats, _) = hub
            .call(
                Some(&alice),
                Method::GET,
                &format!("/api/services/{id}/stats"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(stats["stats"]["memory_limit_bytes"], 64u64 << 20, "{stats}");

        let (_, placed) = hub.admin(Method::GET, "/api/admin/containers", None).await;
        assert_eq!(placed["containers"][0]["container_id"], container.as_str());
        assert_eq!(placed["containers"][0]["node_name"], "local");
        let (_, usage) = hub
            .admin(Method::GET, "/api/admin/resources/usage", None)
            .await;
        assert_eq!(usage["nodes"][0]["allocated"]["cpu_millis"], 500);
        assert_eq!(usage["nodes"][0]["containers"], 1);
        let (status, refused) = hub
            .admin(
                Method::POST,
                "/api/admin/containers/1/migrate?wait=30",
                None,
            )
            .await;
        assert_eq!(
            (status, refused["state"].as_str(), refused["error"].as_str()),
            (
                200,
                Some("failed"),
                Some("no node can run it: 1 node: the node it moves away from")
            ),
            "one node: nowhere to move"
        );
        let (_, _, metrics) = hub
            .call(Some(&hub.admin), Method::GET, "/metrics", None)
            .await;
        assert!(
            metrics.contains("berth_hub_services{status=\"running\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("berth_hub_nodes{status=\"connected\"} 1"),
            "{metrics}"
        );
        let (status, stopped, _) = hub
            .call(
                Some(&alice),
                Method::POST,
                &format!("/api/services/{id}/stop?wait=60"),
                Some(json!({"timeout_seconds": 5})),
            )
            .await;
        assert_eq!(
            (status, stopped["service"]["status"].as_str()),
            (200, Some("stopped"))
        );
        let (_, live, _) = hub
            .call(
                Some(&alice),
                Method::GET,
                &format!("/api/services/{id}/status"),
                None,
            )
            .await;
        assert_eq!(live["container_status"], "exited");

        let (status, rolled, _) = hub
            .call(
                Some(&alice),
                Method::POST,
                &format!("/api/services/{id}/rollback?wait=60"),
                Some(json!({"version": 1})),
            )
            .await;
        assert_eq!(
            (status, rolled["state"].as_str(), rolled["kind"].as_str()),
            (200, Some("succeeded"), Some("service.rollback")),
            "{rolled}"
        );
        let rolled = &rolled["service"];
        assert_eq!(
            (rolled["version"].as_i64(), rolled["status"].as_str()),
            (Some(2), Some("stopped")),
            "a stopped service stays stopped at its new version"
        );
        assert_ne!(
            rolled["container_id"].as_str(),
            Some(container.as_str()),
            "a new container replaced the old"
        );
        let (_, history, _) = hub
            .call(
                Some(&alice),
                Method::GET,
                &format!("/api/services/{id}/deployments"),
                None,
            )
            .await;
        let versions: Vec<i64> = history["deployments"]
            .as_array()
            .expect("history")
            .iter()
            .filter_map(|d| d["version"].as_i64())
            .collect();
        assert_eq!(versions, vec![2, 1]);
        assert_eq!(history["deployments"][0]["note"], "rollback to version 1");
        let (status, body, _) = hub
            .call(
                Some(&alice),
                Method::POST,
                &format!("/api/services/{id}/rollback"),
                Some(json!({"version": 9})),
            )
            .await;
        assert_eq!((status, body["field"].as_str()), (422, Some("version")));

        let (status, _, _) = hub
            .call(
                Some(&alice),
                Method::DELETE,
                &format!("/api/services/{id}?wait=60"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let (status, _, _) = hub
            .call(
                Some(&alice),
                Method::GET,
                &format!("/api/services/{id}"),
                None,
            )
            .await;
        assert_eq!(status, 404);

        let (_, log) = hub
            .admin(
                Method::GET,
                &format!("/api/admin/operations?service_id={id}"),
                None,
            )
            .await;
        let mut actions: Vec<&str> = log["operations"]
            .as_array()
            .expect("ops")
            .iter()
            .filter_map(|op| op["action"].as_str())
            .collect();
        actions.reverse();
        assert_eq!(
            actions,
            vec![
                "service.create",
                "container.create",
                "service.start",
                "container.migrate",
                "service.stop",
                "service.rollback",
                "container.create",
                "service.delete"
            ],
            "{log}"
        );
        assert!(
            log["operations"]
                .as_array()
                .expect("ops")
                .iter()
                .all(|op| op["user_id"] == alice_id || op["action"] == "container.migrate"),
            "every step is alice's but the admin's migrate: {log}"
        );
    })
    .await;
}

#[tokio::test]
async fn quotas_ownership_and_bad_requests_are_refused() {
    let hub = start("service-rules").await;
    add_local_node(&hub).await;
    let (status, created) = hub
        .admin(
            Method::POST,
            "/api/users",
            Some(json!({"name": "bob", "max_services": 1})),
        )
        .await;
    assert_eq!(status, 201);
    let bob = created["token"].as_str().expect("token").to_owned();
    let (_, carol) = hub.new_user("carol").await;
    let small = json!({"name": "one", "image": IMAGE, "memory_limit": "32m", "cpu_limit": 0.1, "command": ["sleep", "60"]});
    with_cleanup(&hub, async {
        let (status, first, _) = hub
            .call(
                Some(&bob),
                Method::POST,
                "/api/bob/repo/services?wait=60",
                Some(small.clone()),
            )
            .await;
        assert_eq!(status, 200, "{first}");
        let id = first["service_id"].as_i64().expect("id");
        let second = json!({"name": "two", "image": IMAGE, "memory_limit": "32m"});
        let (status, refused, _) = hub
            .call(
                Some(&bob),
                Method::POST,
                "/api/bob/repo/services?wait=60",
                Some(second),
            )
            .await;
        assert_eq!(status, 403, "{refused}");
        assert!(
            refused["detail"]
                .as_str()
                .expect("detail")
                .contains("max_services_per_user=1"),
            "{refused}"
        );

        let (status, _, _) = hub
            .call(
                Some(&carol),
                Method::GET,
                &format!("/api/services/{id}"),
                None,
            )
            .await;
        assert_eq!(status, 404, "others' services are invisible");
        let (status, _, _) = hub
            .call(
                Some(&carol),
                Method::POST,
                &format!("/api/services/{id}/start?wait=60"),
                None,
            )
            .await;
        assert_eq!(status, 404);
        let (status, _, _) = hub
            .call(
                Some(&carol),
                Method::POST,
                "/api/bob/repo/services?wait=60",
                Some(small.clone()),
            )
            .await;
        assert_eq!(status, 403, "carol cannot create services for bob");
        let (_, mine, _) = hub
            .call(Some(&carol), Method::GET, "/api/services", None)
            .await;
        assert_eq!(mine["total"], 0);
        let (status, _, _) = hub
            .call(Some(&carol), Method::GET, "/api/services?all=true", None)
            .await;
        assert_eq!(status, 403);
        let (_, everyone) = hub.admin(Method::GET, "/api/services?all=true", None).await;
        assert_eq!(everyone["total"], 1);

        let cases = [
            (json!({"name": "x"}), "image"),
            (
                json!({"name": "x", "image": IMAGE, "image_id": 1}),
                "image_id",
            ),
            (
                json!({"name": "x", "image": IMAGE, "memory_limit": "2x"}),
                "memory_limit",
            ),
            (
                json!({"name": "x", "image": IMAGE, "cpu_limit": 0}),
                "cpu_limit",
            ),
            (
                json!({"name": "x", "image": IMAGE, "spec_id": 999}),
                "spec_id",
            ),
            (
                json!({"name": "x", "image": IMAGE, "privileged": true}),
                "privileged",
            ),
            (
                json!({"name": "x", "image": IMAGE, "volumes": {"/": "/host"}}),
                "volumes",
            ),
            (json!({"name": "bad name", "image": IMAGE}), "name"),
            (json!({"name": "x", "image": IMAGE, "port": 70000}), "port"),
        ];
        for (body, field) in cases {
            let (status, problem, _) = hub
                .call(
                    Some(&carol),
                    Method::POST,
                    "/api/carol/repo/services?wait=60",
                    Some(body.clone()),
                )
                .await;
            assert_eq!(
                (status, problem["field"].as_str()),
                (422, Some(field)),
                "{body}: {problem}"
            );
        }
        let gpu = json!({"name": "gpu", "image": IMAGE, "gpu_required": true});
        let (status, problem, _) = hub
            .call(
                Some(&carol),
                Method::POST,
                "/api/carol/repo/services?wait=60",
                Some(gpu),
            )
            .await;
        assert_eq!(status, 409, "{problem}");
        assert!(
            problem["detail"]
                .as_str()
                .expect("detail")
                .contains("no node can run it: 1 node: not a GPU server"),
            "{problem}"
        );
        let (_, mine, _) = hub
            .call(Some(&carol), Method::GET, "/api/services", None)
            .await;
        assert_eq!(mine["total"], 0, "refused creates leave nothing behind");
    })
    .await;
}

#[tokio::test]
async fn a_service_runs_through_an_agent_node() {
    let hub = start("service-agent").await;
    let agent = start_agent(
        &format!("hub-service-agent-{}", std::process::id()),
        "agent-key-456",
        "127.0.0.1:0",
    )
    .await;
    let agent_url = agent.url();
    let body = node(
        "remote",
        json!({"driver": "agent", "agent_url": agent_url, "agent_api_key": "agent-key-456"}),
    );
    let (status, created) = hub.admin(Method::POST, "/api/nodes", Some(body)).await;
    assert_eq!(
        (status, created["docker_status"].as_str()),
        (201, Some("connected")),
        "{created}"
    );

    let (_, admin) = hub.admin(Method::GET, "/api/users/me", None).await;
    let username = admin["name"].as_str().expect("name").to_owned();
    let service = json!({"name": "via-agent", "image": IMAGE, "memory_limit": "32m", "cpu_limit": 0.2,
        "command": ["sh", "-c", "echo through-the-agent; while true; do sleep 0.2; done"]});
    with_cleanup(&hub, async {
        let (status, created) = hub
            .admin(
                Method::POST,
                &format!("/api/{username}/tools/services?wait=60"),
                Some(service),
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
        assert_eq!(status, 200, "{started}");
        let text = wait_for_logs(&hub, &hub.admin, id, "through-the-agent").await;
        assert!(text.contains("through-the-agent"));
        let (_, live) = hub
            .admin(Method::GET, &format!("/api/services/{id}/status"), None)
            .await;
        assert_eq!(
            (
                live["container_status"].as_str(),
                live["node"]["driver"].as_str()
            ),
            (Some("running"), Some("agent"))
        );
        let (status, stats) = hub
            .admin(Method::GET, &format!("/api/services/{id}/stats"), None)
            .await;
        assert_eq!(status, 200);
        assert!(
            stats["stats"]["memory_limit_mb"].as_f64().is_some(),
            "the agent's stats shape: {stats}"
        );
        // The stats history reads the agent's shape too.
        berth_hub::stats_sampler::sample_all(&hub.state)
            .await
            .expect("sample");
        let (_, history) = hub
            .admin(
                Method::GET,
                &format!("/api/services/{id}/stats/history"),
                None,
            )
            .await;
        let point = &history["points"][0];
        assert_eq!(point["memory_limit_bytes"], 32 << 20, "{history}");
        assert!(point["memory_bytes"].as_i64() > Some(0), "{history}");
        assert!(point["pids"].as_i64() >= Some(1), "{history}");
        let (status, _) = hub
            .admin(Method::DELETE, &format!("/api/services/{id}?wait=60"), None)
            .await;
        assert_eq!(status, 200);
    })
    .await;
}

#[tokio::test]
async fn the_catalog_is_read_by_all_and_changed_by_admins() {
    let hub = start("catalog").await;
    let (_, dave) = hub.new_user("dave").await;
    let (status, image) = hub
        .admin(
            Method::POST,
            "/api/images",
            Some(json!({"name": "busybox", "reference": IMAGE})),
        )
        .await;
    assert_eq!(status, 201, "{image}");
    let (status, listed, _) = hub
        .call(Some(&dave), Method::GET, "/api/images", None)
        .await;
    assert_eq!(
        (status, listed[0]["reference"].as_str()),
        (200, Some(IMAGE))
    );
    let (status, _, _) = hub
        .call(
            Some(&dave),
            Method::POST,
            "/api/images",
            Some(json!({"name": "x", "reference": "y"})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, problem) = hub
        .admin(
            Method::POST,
            "/api/specs",
            Some(
                json!({"name": "gpu-half", "cpu_cores": 4, "memory": "16g", "memory_split": true}),
            ),
        )
        .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("gpu_memory_gb"))
    );
    let (status, spec) = hub
        .admin(Method::POST, "/api/specs", Some(json!({"name": "gpu-half", "cpu_cores": 4, "memory": "16g", "memory_split": true, "gpu_memory_gb": 12})))
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        (spec["cpu_millis"].as_i64(), spec["memory_bytes"].as_i64()),
        (Some(4000), Some(16 << 30))
    );
    let (status, _) = hub
        .admin(Method::DELETE, &format!("/api/specs/{}", spec["id"]), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = hub
        .admin(
            Method::DELETE,
            &format!("/api/images/{}", image["id"]),
            None,
        )
        .await;
    assert_eq!(status, 204);
}

/// Adds a connected simulated node `sim-gpu` with 8 cores, 64 GiB and two 24 GiB GPUs.
async fn add_gpu_node(hub: &Hub) {
    let mut gpu_node =
        berth_store::nodes::NodeRecord::new("sim-gpu", berth_hub::simulation::SIMULATED_DRIVER);
    gpu_node.docker_status = "connected".to_owned();
    gpu_node.server_type = "gpu".to_owned();
    gpu_node.cpu = "8".to_owned();
    gpu_node.memory = "64g".to_owned();
    gpu_node.gpu_count = 2;
    gpu_node.gpu_memory_gb = 24;
    let mut transaction = hub.state.store.begin().await.expect("tx");
    berth_store::nodes::insert(&mut transaction, &gpu_node)
        .await
        .expect("node");
    transaction.commit().await.expect("commit");
}

#[tokio::test]
async fn running_services_are_sampled_into_their_stats_history() {
    let hub = start("service-stats").await;
    add_local_node(&hub).await;
    add_gpu_node(&hub).await;
    let (_, alice) = hub.new_user("alice").await;
    let (_, bob) = hub.new_user("bob").await;
    with_cleanup(&hub, async {
        let create = |body: Value| {
            let alice = alice.clone();
            let hub = &hub;
            async move {
                let (status, created, _) = hub
                    .call(
                        Some(&alice),
                        Method::POST,
                        "/api/alice/demo/services?wait=60",
                        Some(body),
                    )
                    .await;
                assert_eq!(status, 200, "{created}");
                created["service_id"].as_i64().expect("id")
            }
        };
        let engine_service = create(json!({"name": "sleeper", "image": IMAGE, "start": true,
            "memory_limit": "64m", "command": ["sh", "-c", "while true; do sleep 1; done"]}))
        .await;
        let gpu_service = create(json!({"name": "gpu-model", "image": IMAGE, "start": true,
            "gpu_required": true, "gpu_count": 1, "memory_limit": "1g"}))
        .await;
        let stopped_service = create(json!({"name": "idle", "image": IMAGE, "start": false,
            "memory_limit": "64m", "command": ["sh", "-c", "sleep 60"]}))
        .await;

        for _ in 0..2 {
            let sampled = berth_hub::stats_sampler::sample_all(&hub.state)
                .await
                .expect("sample");
            assert_eq!(sampled, 2, "the two running services, not the stopped one");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let history = |id: i64, query: &'static str, token: String| {
            let hub = &hub;
            async move {
                hub.call(
                    Some(&token),
                    Method::GET,
                    &format!("/api/services/{id}/stats/history{query}"),
                    None,
                )
                .await
            }
        };
        let (status, engine, _) = history(engine_service, "", alice.clone()).await;
        assert_eq!(status, 200, "{engine}");
        let points = engine["points"].as_array().expect("points");
        assert_eq!(points.len(), 2, "{engine}");
        assert_eq!(points[0]["resolution_ms"], 0);
        assert!(points[0]["at_ms"].as_i64() < points[1]["at_ms"].as_i64());
        assert!(points[1]["memory_bytes"].as_i64() > Some(0), "{engine}");
        assert_eq!(points[1]["memory_limit_bytes"], 64 << 20, "{engine}");
        assert!(points[1]["pids"].as_i64() >= Some(1), "{engine}");
        assert!(points[1]["gpu_memory_bytes"].is_null());

        let (_, gpu, _) = history(gpu_service, "?minutes=5", alice.clone()).await;
        assert_eq!(gpu["minutes"], 5);
        let point = &gpu["points"][1];
        assert_eq!(
            (
                point["gpu_utilization_percent"].as_i64(),
                point["gpu_memory_bytes"].as_i64(),
                point["cpu_percent"].as_f64()
            ),
            (Some(40), Some(1 << 30), Some(25.0)),
            "{gpu}"
        );
        let (_, stopped, _) = history(stopped_service, "", alice.clone()).await;
        assert_eq!(stopped["points"], json!([]));

        let (status, problem, _) = history(engine_service, "?minutes=0", alice.clone()).await;
        assert_eq!((status, problem["field"].as_str()), (422, Some("minutes")));
        let (status, _, _) = history(engine_service, "", bob.clone()).await;
        assert_eq!(status, 404, "another user's history is not found");
    })
    .await;
}

#[tokio::test]
async fn a_server_that_ignores_sigterm_is_stopped_with_the_default_grace_and_stays_stopped() {
    let hub = start("stubborn").await;
    add_local_node(&hub).await;
    with_cleanup(&hub, async {
        // busybox httpd as PID 1 has no SIGTERM handler: only the engine's SIGKILL after the
        // grace period ends it, as with most model servers.
        let (status, created) = hub
            .admin(
                Method::POST,
                "/api/admin/stubborn/services?wait=60",
                Some(json!({
                    "name": "stubborn", "image": "berth-test/busybox:latest",
                    "cpu_limit": 0.1, "memory_limit": "16m", "start": true,
                    "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                })),
            )
            .await;
        assert_eq!(status, 200, "{created}");
        let id = created["service_id"].as_i64().expect("id");
        let began = std::time::Instant::now();
        let (status, stopped) = hub
            .admin(
                Method::POST,
                &format!("/api/services/{id}/stop?wait=60"),
                None,
            )
            .await;
        let took = began.elapsed();
        assert_eq!(
            (status, stopped["state"].as_str()),
            (200, Some("succeeded")),
            "{stopped}"
        );
        assert_eq!(stopped["service"]["status"], "stopped", "{stopped}");
        assert!(
            took >= Duration::from_secs(25),
            "the default 30 s grace was waited out, not cut short: {took:?}"
        );
        let (_, live) = hub
            .admin(Method::GET, &format!("/api/services/{id}/status"), None)
            .await;
        assert_eq!(live["container_status"], "exited", "{live}");
        // No later reconcile starts it again, and the stop is logged once.
        for _ in 0..3 {
            berth_hub::reconciler::round(&hub.state)
                .await
                .expect("round");
        }
        let (_, live) = hub
            .admin(Method::GET, &format!("/api/services/{id}/status"), None)
            .await;
        assert_eq!(
            (live["status"].as_str(), live["container_status"].as_str()),
            (Some("stopped"), Some("exited")),
            "{live}"
        );
        let actions = hub.actions_of_service(id).await;
        assert_eq!(
            actions
                .iter()
                .filter(|action| *action == "service.stop")
                .count(),
            1,
            "{actions:?}"
        );
        assert!(
            !actions.iter().any(|action| action.contains("start")),
            "{actions:?}"
        );
        assert!(
            !actions.iter().any(|action| action == "container.stop"),
            "no failed stop: {actions:?}"
        );

        // Unloading it (seed 004's verb, its 10 s grace) is a stop that lasts too.
        let (status, started) = hub
            .admin(
                Method::POST,
                &format!("/api/services/{id}/start?wait=60"),
                None,
            )
            .await;
        assert_eq!(
            (status, started["state"].as_str()),
            (200, Some("succeeded"))
        );
        let began = std::time::Instant::now();
        let (status, unloaded) = hub
            .admin(
                Method::POST,
                &format!("/api/services/{id}/unload?wait=60"),
                None,
            )
            .await;
        let took = began.elapsed();
        assert_eq!(
            (
                status,
                unloaded["state"].as_str(),
                unloaded["service"]["status"].as_str()
            ),
            (200, Some("succeeded"), Some("unloaded")),
            "{unloaded}"
        );
        assert!(
            took >= Duration::from_secs(8),
            "the unload's grace was waited out: {took:?}"
        );
        for _ in 0..3 {
            berth_hub::reconciler::round(&hub.state)
                .await
                .expect("round");
        }
        let (_, live) = hub
            .admin(Method::GET, &format!("/api/services/{id}/status"), None)
            .await;
        assert_eq!(
            (live["status"].as_str(), live["container_status"].as_str()),
            (Some("unloaded"), Some("exited")),
            "{live}"
        );
        let actions = hub.actions_of_service(id).await;
        assert_eq!(
            actions
                .iter()
                .filter(|action| *action == "service.unload")
                .count(),
            1,
            "{actions:?}"
        );
        assert!(
            !actions
                .iter()
                .any(|action| action == "container.stop" || action == "container.restart"),
            "no failed stop, no restart: {actions:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn seed_004s_model_file_becomes_a_model_service_on_its_gpu() {
    let runtimes: std::collections::BTreeMap<String, berth_hub::model_file::ModelRuntime> =
        yaml_serde::from_str(
            "torch:\n  image: serve/torch:2\n  command: [serve, '--model={model_path}', '--batch={batch_size}']\n  port: 9000\n  probe_path: /ping\n",
        )
        .expect("runtimes");
    let hub = support::start_with(
        "model-file",
        berth_hub::state::HubSettings {
            model_runtimes: runtimes,
            model_roots: vec!["/models".to_owned()],
            ..berth_hub::state::HubSettings::default()
        },
    )
    .await;
    add_gpu_node(&hub).await;
    let (_, alice) = hub.new_user("alice").await;
    // Seed 004's example, as `berth apply` sends it.
    let seed: Value = yaml_serde::from_str(
        "model_id: \"transformer\"\nmodel_path: \"/models/transformer.pt\"\ndevice: \"cuda:0\"\nbatch_size: 32\nmax_memory_mb: 4096\n",
    )
    .expect("seed 004's example");
    with_cleanup(&hub, async {
        let create = |body: Value| {
            let alice = alice.clone();
            let hub = &hub;
            async move {
                hub.call(
                    Some(&alice),
                    Method::POST,
                    "/api/alice/models/services?wait=60",
                    Some(body),
                )
                .await
            }
        };
        // Outside the hub's model roots, a user is refused, naming the field.
        let mut outside = seed.clone();
        outside["model_path"] = json!("/etc/passwd");
        let (status, problem, _) = create(json!({"name": "stolen", "model": outside})).await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (422, Some("model.model_path")),
            "{problem}"
        );

        let (status, created, _) = create(
            json!({"name": "transformer", "model": seed, "start": true, "cpu_limit": 1, "memory_limit": "1g"}),
        )
        .await;
        assert_eq!(status, 200, "{created}");
        let id = created["service_id"].as_i64().expect("id");
        let allocations = berth_hub::replicas::allocations_of(&hub.state, id)
            .await
            .expect("allocations");
        assert_eq!(
            (
                allocations[0].gpu_indices.clone(),
                allocations[0].gpu_memory_bytes
            ),
            (vec![0], 4 << 30),
            "cuda:0 with max_memory_mb 4096: a 4 GiB share of GPU 0"
        );
        let (_, service, _) = hub
            .call(Some(&alice), Method::GET, &format!("/api/services/{id}"), None)
            .await;
        let definition = &service["definition"];
        assert_eq!(definition["image"], "serve/torch:2", "{service}");
        assert_eq!(
            definition["command"],
            json!(["serve", "--model=/models/transformer.pt", "--batch=32"])
        );
        assert_eq!(definition["port"], 9000);
        assert_eq!(
            definition["model_mount"],
            json!(["/models/transformer.pt", "/models/transformer.pt"])
        );
        assert_eq!(definition["serving"]["model_names"], json!(["transformer"]));
        assert_eq!(definition["serving"]["probe_path"], "/ping");
        assert_eq!(definition["environment"]["BATCH_SIZE"], "32");
        // Seed 004's per-model resource metrics, from the stats sampler's round.
        support::start_gateway(&hub).await;
        let label = "{service=\"alice/transformer\"}";
        let mut metrics = String::new();
        for _ in 0..100 {
            berth_hub::stats_sampler::sample_all(&hub.state)
                .await
                .expect("sample");
            metrics = hub
                .call(Some(&hub.admin), Method::GET, "/metrics", None)
                .await
                .2;
            if metrics.contains(&format!("gpu_memory_mb{label}")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for name in ["cpu_usage_percent", "memory_usage_mb", "gpu_memory_mb"] {
            assert!(
                metrics.contains(&format!("{name}{label}")),
                "{name} in:\n{metrics}"
            );
        }
        // `device: cuda` takes the GPU with the most free memory (seed 004's
        // find_best_device): GPU 1, where best fit would have packed it onto GPU 0.
        let mut any = seed.clone();
        any["model_id"] = json!("small");
        any["device"] = json!("cuda");
        any["max_memory_mb"] = json!(2048);
        let (status, created, _) =
            create(json!({"name": "small", "model": any, "cpu_limit": 1, "memory_limit": "1g"}))
                .await;
        assert_eq!(status, 200, "{created}");
        let small = berth_hub::replicas::allocations_of(
            &hub.state,
            created["service_id"].as_i64().expect("id"),
        )
        .await
        .expect("allocations");
        assert_eq!(small[0].gpu_indices, vec![1], "the freest GPU");
        // The next one that asks for GPU 0 with more than is left there is refused, though GPU
        // 1 is free.
        let mut big = seed.clone();
        big["model_id"] = json!("big");
        big["max_memory_mb"] = json!(24 * 1024);
        let (status, problem, _) = create(json!({"name": "big", "model": big})).await;
        assert_eq!(status, 409, "{problem}");
    })
    .await;
}
