//! Operations as resources: a change answers 202 with its operation and `Location`; `?wait=`
//! returns it ended; its progress counts replicas; its live stream (Server-Sent Events) ends with
//! the end; a retried create with the same Idempotency-Key makes one service; a stop followed at
//! once by a start leaves the service running (the later change wins, the earlier one ends
//! succeeded or cancelled); a restart stops and starts every replica; bad input names its field
//! and changes nothing; another user cannot see the operation.

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Hub, add_simulated_node, start, with_cleanup};

async fn wait_for_end(hub: &Hub, token: &str, id: i64) -> Value {
    let (status, operation, _) = hub
        .call(
            Some(token),
            Method::GET,
            &format!("/api/operations/{id}?wait=30"),
            None,
        )
        .await;
    assert_eq!(status, 200, "ended within the wait: {operation}");
    operation
}

/// The simulated node's containers of service `id`: their statuses.
fn simulated_statuses(hub: &Hub, node: i64, id: i64) -> Vec<String> {
    let service = id.to_string();
    hub.state
        .fleet
        .all_containers()
        .into_iter()
        .filter(|(on, container)| {
            *on == node && container.labels.get("berth.service") == Some(&service)
        })
        .map(|(_, container)| container.status)
        .collect()
}

#[tokio::test]
async fn a_change_is_an_operation_that_can_be_waited_for_streamed_and_retried() {
    let hub = start("operations").await;
    let node = add_simulated_node(&hub, "sim").await;
    let (_, alice) = hub.new_user("alice").await;
    let (_, bob) = hub.new_user("bob").await;
    let body = json!({"name": "svc", "image": "sim/model:1", "replicas": 3, "start": true,
        "cpu_limit": 0.5, "memory_limit": "64m"});
    with_cleanup(&hub, async {
        let response = reqwest::Client::new()
            .post(format!("http://{}/api/alice/ops/services", hub.address))
            .bearer_auth(&alice)
            .header("Idempotency-Key", "first-create")
            .json(&body)
            .send()
            .await
            .expect("create");
        assert_eq!(response.status(), 202);
        let location = response.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
        let accepted: Value = response.json().await.expect("json");
        let id = accepted["id"].as_i64().expect("operation id");
        assert_eq!(location, format!("/api/operations/{id}"));
        assert_eq!(accepted["kind"], "service.create", "{accepted}");
        assert!(
            matches!(accepted["state"].as_str(), Some("running" | "succeeded")),
            "{accepted}"
        );
        let service = accepted["service_id"].as_i64().expect("service id");

        let ended = wait_for_end(&hub, &alice, id).await;
        assert_eq!(ended["state"], "succeeded", "{ended}");
        assert_eq!(
            (
                ended["progress"]["steps_done"].as_u64(),
                ended["progress"]["steps_total"].as_u64()
            ),
            (Some(3), Some(3)),
            "{ended}"
        );
        assert!(ended["finished_at"].as_i64() >= ended["at"].as_i64());
        assert_eq!(ended["service"]["status"], "running", "{ended}");
        assert_eq!(
            simulated_statuses(&hub, node.id, service),
            vec!["running"; 3]
        );

        // The same create again with the same key: the first one's operation, no second service.
        let (status, again, _) = hub
            .call(Some(&alice), Method::GET, "/api/services", None)
            .await;
        assert_eq!((status, again["total"].as_i64()), (200, Some(1)));
        let retried = reqwest::Client::new()
            .post(format!("http://{}/api/alice/ops/services", hub.address))
            .bearer_auth(&alice)
            .header("Idempotency-Key", "first-create")
            .json(&body)
            .send()
            .await
            .expect("retry");
        assert_eq!(retried.status(), 200, "the first one's operation, ended");
        let retried: Value = retried.json().await.expect("json");
        assert_eq!(retried["id"].as_i64(), Some(id), "{retried}");
        let (_, listed, _) = hub
            .call(Some(&alice), Method::GET, "/api/services", None)
            .await;
        assert_eq!(listed["total"], 1, "{listed}");
        // The key with another request is refused, naming the first operation.
        let other = reqwest::Client::new()
            .post(format!("http://{}/api/alice/ops/services", hub.address))
            .bearer_auth(&alice)
            .header("Idempotency-Key", "first-create")
            .json(&json!({"name": "other", "image": "sim/model:1"}))
            .send()
            .await
            .expect("other");
        assert_eq!(other.status(), 409);
        let other: Value = other.json().await.expect("json");
        assert!(
            other["detail"]
                .as_str()
                .is_some_and(|detail| detail.contains(&format!("operation {id}"))),
            "{other}"
        );

        // The live stream of a restart: events until the end, the last one succeeded.
        let (status, restart, _) = hub
            .call(
                Some(&alice),
                Method::POST,
                &format!("/api/services/{service}/restart"),
                Some(json!({"timeout_seconds": 1})),
            )
            .await;
        // 202 while it runs; 200 when a quick restart already ended as the answer was made.
        assert!(
            matches!(status, 200 | 202) && restart["kind"] == "service.restart",
            "{status} {restart}"
        );
        let restart_id = restart["id"].as_i64().expect("id");
        let stream = reqwest::Client::new()
            .get(format!(
                "http://{}/api/operations/{restart_id}/events",
                hub.address
            ))
            .bearer_auth(&alice)
            .send()
            .await
            .expect("stream");
        assert_eq!(stream.status(), 200);
        assert!(
            stream.headers()["content-type"]
                .to_str()
                .is_ok_and(|kind| kind.starts_with("text/event-stream"))
        );
        let text = tokio::time::timeout(Duration::from_secs(30), stream.text())
            .await
            .expect("the stream ends with the operation")
            .expect("text");
        let events: Vec<Value> = text
            .split("\n\n")
            .filter_map(|event| {
                event
                    .lines()
                    .find_map(|line| line.strip_prefix("data: "))
                    .and_then(|data| serde_json::from_str(data).ok())
            })
            .collect();
        assert!(!events.is_empty(), "{text}");
        assert!(text.contains("event: operation"), "{text}");
        let last = events.last().expect("last");
        assert_eq!(
            (last["id"].as_i64(), last["state"].as_str()),
            (Some(restart_id), Some("succeeded")),
            "{text}"
        );
        assert_eq!(last["detail"]["replicas"], 3, "{last}");

        // Stop, then start at once without waiting: the later change wins.
        let (status, stop, _) = hub
            .call(
                Some(&alice),
                Method::POST,
                &format!("/api/services/{service}/stop"),
                None,
            )
            .await;
        // 202, or 200 when the stop on the simulated node ended before the answer was made.
        assert!(
            status == 202 || (status == 200 && stop["state"] == "succeeded"),
            "{status} {stop}"
        );
        let (status, start_again, _) = hub
            .call(
                Some(&alice),
                Method::POST,
                &format!("/api/services/{service}/start"),
                None,
            )
            .await;
        assert!(
            status == 202 || (status == 200 && start_again["state"] == "succeeded"),
            "{status} {start_again}"
        );
        let stop_end = wait_for_end(&hub, &alice, stop["id"].as_i64().expect("id")).await;
        let start_end = wait_for_end(&hub, &alice, start_again["id"].as_i64().expect("id")).await;
        assert!(
            matches!(stop_end["state"].as_str(), Some("succeeded" | "cancelled")),
            "{stop_end}"
        );
        assert_eq!(start_end["state"], "succeeded", "{start_end}");
        assert_eq!(start_end["service"]["status"], "running");
        assert_eq!(
            simulated_statuses(&hub, node.id, service),
            vec!["running"; 3]
        );

        // The service's operations, newest first, with their kinds.
        let (status, listed, _) = hub
            .call(
                Some(&alice),
                Method::GET,
                &format!("/api/services/{service}/operations"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let kinds: Vec<&str> = listed["operations"]
            .as_array()
            .expect("operations")
            .iter()
            .filter_map(|operation| operation["kind"].as_str())
            .filter(|kind| kind.starts_with("service."))
            .collect();
        assert_eq!(
            kinds,
            vec![
                "service.start",
                "service.stop",
                "service.restart",
                "service.create"
            ]
        );

        // Bob sees none of it.
        for path in [
            format!("/api/operations/{id}"),
            format!("/api/operations/{id}/events"),
            format!("/api/services/{service}/operations"),
        ] {
            let (status, problem, _) = hub.call(Some(&bob), Method::GET, &path, None).await;
            assert_eq!(
                (status, problem["status"].as_u64()),
                (404, Some(404)),
                "{path}"
            );
        }

        // Bad input names its field and changes nothing.
        let (status, problem, _) = hub
            .call(
                Some(&alice),
                Method::POST,
                &format!("/api/services/{service}/stop?wait=601"),
                None,
            )
            .await;
        assert_eq!((status, problem["field"].as_str()), (422, Some("wait")));
        let bad_key = reqwest::Client::new()
            .post(format!("http://{}/api/alice/ops/services", hub.address))
            .bearer_auth(&alice)
            .header("Idempotency-Key", "has space")
            .json(&json!({"name": "keyed", "image": "sim/model:1"}))
            .send()
            .await
            .expect("bad key");
        assert_eq!(bad_key.status(), 422);
        let problem: Value = bad_key.json().await.expect("json");
        assert_eq!(problem["field"], "Idempotency-Key");
        let (_, status_now, _) = hub
            .call(
                Some(&alice),
                Method::GET,
                &format!("/api/services/{service}"),
                None,
            )
            .await;
        assert_eq!(
            status_now["status"], "running",
            "the refused stop changed nothing"
        );
        let (_, listed, _) = hub
            .call(Some(&alice), Method::GET, "/api/services", None)
            .await;
        assert_eq!(listed["total"], 1);

        // A delete is an operation too; once it ended the service is gone.
        let (status, deleted, _) = hub
            .call(
                Some(&alice),
                Method::DELETE,
                &format!("/api/services/{service}?wait=30"),
                None,
            )
            .await;
        assert_eq!(
            (status, deleted["state"].as_str(), deleted["kind"].as_str()),
            (200, Some("succeeded"), Some("service.delete"))
        );
        assert!(simulated_statuses(&hub, node.id, service).is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_create_whose_image_is_missing_fails_in_the_users_terms_and_keeps_nothing() {
    let hub = start("operations-missing").await;
    support::add_local_node(&hub).await;
    let (_, alice) = hub.new_user("alice").await;
    with_cleanup(&hub, async {
        let (status, ended, _) = hub
            .call(
                Some(&alice),
                Method::POST,
                "/api/alice/ops/services?wait=60",
                Some(
                    json!({"name": "ghost", "image": "berth-test/does-not-exist:1",
                    "cpu_limit": 0.1, "memory_limit": "16m", "start": true}),
                ),
            )
            .await;
        assert_eq!(
            (status, ended["state"].as_str()),
            (200, Some("failed")),
            "{ended}"
        );
        let error = ended["error"].as_str().expect("error");
        assert!(
            error.contains("berth-test/does-not-exist:1")
                && error.contains("create the service again"),
            "{error}"
        );
        let (_, listed, _) = hub
            .call(Some(&alice), Method::GET, "/api/services", None)
            .await;
        assert_eq!(listed["total"], 0, "nothing kept: {listed}");
    })
    .await;
}

/// Opens a `running` operation row as an interrupted hub would have left it.
async fn leave_unfinished(
    hub: &Hub,
    action: &str,
    target: (&str, i64),
    service: Option<i64>,
    detail: Value,
) -> i64 {
    let mut transaction = hub.state.store.begin().await.expect("tx");
    let id = berth_store::operations::open(
        &mut transaction,
        &berth_store::operations::NewOperation {
            user_id: None,
            action: action.to_owned(),
            target_kind: target.0.to_owned(),
            target_id: target.1.to_string(),
            node_id: None,
            service_id: service,
            outcome: "running".to_owned(),
            detail,
        },
        None,
    )
    .await
    .expect("operation");
    transaction.commit().await.expect("commit");
    id
}

/// Replica 0 of `service`: its node and generation.
async fn replica_zero(hub: &Hub, service: i64) -> (i64, i64) {
    let mut connection = hub.state.store.acquire().await.expect("connection");
    let allocation = berth_store::allocations::for_replica(&mut connection, service, 0)
        .await
        .expect("read")
        .expect("placed");
    (allocation.node_id, allocation.generation)
}

#[tokio::test]
async fn migrates_and_drains_are_operations_that_a_restarted_hub_carries_on() {
    let hub = start("operations-moves").await;
    let first = add_simulated_node(&hub, "sim-a").await;
    let second = add_simulated_node(&hub, "sim-b").await;
    let (_, alice) = hub.new_user("alice").await;
    with_cleanup(&hub, async {
        let (status, created, _) = hub
            .call(
                Some(&alice),
                Method::POST,
                "/api/alice/ops/services?wait=30",
                Some(
                    json!({"name": "mover", "image": "sim/model:1", "start": true,
                    "cpu_limit": 0.5, "memory_limit": "64m"}),
                ),
            )
            .await;
        assert_eq!(
            (status, created["state"].as_str()),
            (200, Some("succeeded"))
        );
        let service = created["service_id"].as_i64().expect("service");
        let (on, generation) = replica_zero(&hub, service).await;
        let other = if on == first.id { second.id } else { first.id };

        // A migrate answers with its operation at once; waited for, it moved the replica.
        let (_, placed) = hub.admin(Method::GET, "/api/admin/containers", None).await;
        let row = placed["containers"][0]["id"].as_i64().expect("row");
        let (status, accepted) = hub
            .admin(
                Method::POST,
                &format!("/api/admin/containers/{row}/migrate"),
                None,
            )
            .await;
        assert_eq!(
            (status, accepted["kind"].as_str()),
            (202, Some("container.migrate")),
            "{accepted}"
        );
        let moved = wait_for_end(&hub, &hub.admin, accepted["id"].as_i64().expect("id")).await;
        assert_eq!(moved["state"], "succeeded", "{moved}");
        assert_eq!(replica_zero(&hub, service).await, (other, generation + 1));
        assert_eq!(simulated_statuses(&hub, other, service), vec!["running"]);
        assert!(
            simulated_statuses(&hub, on, service).is_empty(),
            "old one removed"
        );

        // A migrate the hub stopped during, after the move landed: resumed, it moves nothing.
        let done_before = leave_unfinished(
            &hub,
            "container.migrate",
            ("service", service),
            Some(service),
            json!({"replica": 0, "from_generation": generation}),
        )
        .await;
        // One the hub stopped before it moved anything, and a drain of the node it is on.
        let (now_on, now_generation) = replica_zero(&hub, service).await;
        let drain = leave_unfinished(&hub, "node.drain", ("node", now_on), None, json!({})).await;
        let resumed = berth_hub::service_work::resume(&hub.state)
            .await
            .expect("resume");
        assert_eq!(resumed, 2);
        let carried = wait_for_end(&hub, &hub.admin, done_before).await;
        assert_eq!(carried["state"], "succeeded", "{carried}");
        // It reports where the replica is: where the first migrate put it, or where the
        // resumed drain (running beside it) moved it; it moved nothing itself (checked below:
        // one generation past the first migrate, not two).
        let reported = carried["detail"]["generation"]
            .as_i64()
            .expect("generation");
        assert!(
            reported == now_generation || reported == now_generation + 1,
            "{carried}"
        );
        let drained = wait_for_end(&hub, &hub.admin, drain).await;
        assert_eq!(drained["state"], "succeeded", "{drained}");
        assert_eq!(drained["detail"]["moved"].as_array().map(Vec::len), Some(1));
        assert_eq!(replica_zero(&hub, service).await, (on, now_generation + 1));
        assert!(simulated_statuses(&hub, now_on, service).is_empty());
        assert_eq!(simulated_statuses(&hub, on, service), vec!["running"]);

        // A drain through the API: the node is unlisted with the operation, and the replica
        // leaves; pinned services stay.
        let (status, accepted) = hub
            .admin(
                Method::POST,
                &format!("/api/nodes/{on}/drain?wait=30"),
                None,
            )
            .await;
        assert_eq!(
            (
                status,
                accepted["state"].as_str(),
                accepted["kind"].as_str()
            ),
            (200, Some("succeeded"), Some("node.drain")),
            "{accepted}"
        );
        assert_eq!(replica_zero(&hub, service).await.0, now_on);
        let (_, node) = hub
            .admin(Method::GET, &format!("/api/nodes/{on}"), None)
            .await;
        assert_eq!(node["listed"], false, "{node}");
        let (status, problem) = hub
            .admin(Method::POST, "/api/nodes/99999/drain", None)
            .await;
        assert_eq!(status, 404, "{problem}");
    })
    .await;
}

#[tokio::test]
async fn a_move_queued_after_a_start_neither_cancels_it_nor_is_cancelled() {
    let hub = start("operations-move-beside").await;
    add_simulated_node(&hub, "sim-a").await;
    add_simulated_node(&hub, "sim-b").await;
    let (_, alice) = hub.new_user("alice").await;
    with_cleanup(&hub, async {
        let (_, created, _) = hub
            .call(
                Some(&alice),
                Method::POST,
                "/api/alice/ops/services?wait=30",
                Some(json!({"name": "queued", "image": "sim/model:1",
                    "cpu_limit": 0.5, "memory_limit": "64m"})),
            )
            .await;
        let service = created["service_id"].as_i64().expect("service");
        let (_, placed) = hub.admin(Method::GET, "/api/admin/containers", None).await;
        let row = placed["containers"][0]["id"].as_i64().expect("row");
        // Both queue behind a change that holds the service.
        let held = hub.state.claim(service).expect("free");
        let (_, start, _) = hub
            .call(
                Some(&alice),
                Method::POST,
                &format!("/api/services/{service}/start"),
                None,
            )
            .await;
        let (_, migrate) = hub
            .admin(
                Method::POST,
                &format!("/api/admin/containers/{row}/migrate"),
                None,
            )
            .await;
        drop(held);
        let start = wait_for_end(&hub, &alice, start["id"].as_i64().expect("id")).await;
        let migrate = wait_for_end(&hub, &hub.admin, migrate["id"].as_i64().expect("id")).await;
        assert_eq!(start["state"], "succeeded", "{start}");
        assert_eq!(migrate["state"], "succeeded", "{migrate}");
        assert_eq!(migrate["service"]["status"], "running", "{migrate}");
        assert_eq!(replica_zero(&hub, service).await.1, 2, "moved once");
    })
    .await;
}

/// 30 clients create the same service name at once, 3 others create their own names in the
/// same moments, and 30 more send one create with one `Idempotency-Key`: creates committed
/// together answer each on its own.
#[tokio::test]
async fn thirty_clients_on_one_name_or_one_key_get_one_service_and_the_others_are_untouched() {
    let hub = start("operations-one-name").await;
    add_simulated_node(&hub, "sim").await;
    let (_, alice) = hub.new_user("alice").await;
    with_cleanup(&hub, async {
        let client = reqwest::Client::new();
        let create = |name: String, key: Option<&'static str>| {
            let mut request = client
                .post(format!("http://{}/api/alice/race/services", hub.address))
                .bearer_auth(&alice)
                .json(
                    &json!({"name": name, "image": "sim/model:1", "cpu_limit": 0.1,
                    "memory_limit": "16m"}),
                );
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            async move {
                let response = request.send().await.expect("create");
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.expect("json"))
            }
        };
        let same_name = (0..30).map(|_| create("contested".to_owned(), None));
        // The default quota is 5 services: the contested one, the keyed one and 3 more.
        let own_names = (0..3).map(|at| create(format!("own-{at}"), None));
        let same_key = (0..30).map(|_| create("keyed".to_owned(), Some("one-key")));
        let (same_name, own_names, same_key) = tokio::join!(
            futures_util::future::join_all(same_name),
            futures_util::future::join_all(own_names),
            futures_util::future::join_all(same_key),
        );

        let accepted: Vec<&Value> = same_name
            .iter()
            .filter(|(status, _)| *status == 202)
            .map(|(_, body)| body)
            .collect();
        assert_eq!(accepted.len(), 1, "{same_name:?}");
        for (status, body) in &same_name {
            if *status != 202 {
                assert_eq!(*status, 409, "{body}");
                assert!(
                    body["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("contested")),
                    "{body}"
                );
            }
        }
        for (status, body) in &own_names {
            assert_eq!(*status, 202, "a create beside the contested ones: {body}");
        }
        let operations: std::collections::HashSet<i64> = same_key
            .iter()
            .map(|(status, body)| {
                assert!(matches!(status, 200 | 202), "{status} {body}");
                body["id"].as_i64().expect("operation id")
            })
            .collect();
        assert_eq!(operations.len(), 1, "one key, one operation: {same_key:?}");

        let (status, listed, _) = hub
            .call(Some(&alice), Method::GET, "/api/services", None)
            .await;
        assert_eq!(status, 200);
        let mut names: Vec<&str> = listed["services"]
            .as_array()
            .expect("services")
            .iter()
            .filter_map(|service| service["name"].as_str())
            .collect();
        names.sort_unstable();
        let mut expected: Vec<String> = (0..3).map(|at| format!("own-{at}")).collect();
        expected.extend(["contested".to_owned(), "keyed".to_owned()]);
        expected.sort_unstable();
        assert_eq!(names, expected, "{listed}");
        let ended = wait_for_end(&hub, &alice, accepted[0]["id"].as_i64().expect("id")).await;
        assert_eq!(ended["state"], "succeeded", "{ended}");
    })
    .await;
}
