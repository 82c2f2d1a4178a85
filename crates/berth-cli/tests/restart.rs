//! A hub killed in the middle of a create, as a crash would: the create was never acknowledged,
//! so on restart the reconciler rolls it back — the service and its allocations removed, every
//! container it had made removed — and the same create then succeeds with each replica once.

mod processes;

use std::collections::BTreeSet;
use std::time::Duration;

use processes::{HubApi, IMAGE, LabelledContainers, engine, fresh_dir, start_hub, wait_for};
use reqwest::Method;
use serde_json::{Value, json};

const REPLICAS: usize = 24;

fn create_body(name: &str) -> Value {
    json!({"name": name, "image": IMAGE, "replicas": REPLICAS, "start": true,
        "cpu_limit": 0.02, "memory_limit": "8m", "command": ["sleep", "3600"]})
}

async fn user(hub: &HubApi) -> String {
    let (_, me) = hub.call(Method::GET, "/api/users/me", None).await;
    me["name"].as_str().expect("name").to_owned()
}

/// The containers whose names start with `prefix`: (replica label, state, hub label).
async fn containers(prefix: &str) -> Vec<(String, String, String)> {
    engine()
        .await
        .list(&["berth.replica"], true)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|container| container.name.starts_with(prefix))
        .map(|container| {
            (
                container
                    .labels
                    .get("berth.replica")
                    .cloned()
                    .unwrap_or_default(),
                container.state,
                container
                    .labels
                    .get("berth.hub")
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_cut_short_by_a_killed_hub_is_rolled_back_and_can_be_made_again() {
    let dir = fresh_dir("kill-mid-create");
    let config = "monitor_interval: 1\n";
    let (mut first_hub, hub) = start_hub(&dir, config).await;
    hub.add_local_node().await;
    let owner = user(&hub).await;
    let name = format!("wide{}", std::process::id());

    let request = tokio::spawn({
        let (base, token, owner, name) = (
            hub.base().to_owned(),
            hub.token().to_owned(),
            owner.clone(),
            name.clone(),
        );
        async move {
            reqwest::Client::new()
                .post(format!("{base}/api/{owner}/crash/services"))
                .bearer_auth(token)
                .json(&create_body(&name))
                .send()
                .await
                .map(|response| response.status().as_u16())
        }
    });
    let made = wait_for(Duration::from_secs(60), "some replicas exist", || {
        let prefix = name.clone();
        async move {
            let found = containers(&prefix).await;
            (found.len() >= 4).then_some(found)
        }
    })
    .await;
    first_hub.kill();
    let hub_label = format!("berth.hub={}", made[0].2);
    let _leftovers = LabelledContainers(vec![hub_label]);
    assert!(
        matches!(request.await, Ok(Err(_))),
        "the create was cut short, never acknowledged"
    );
    let (_, listed) = hub.call(Method::GET, "/api/services", None).await;
    assert_eq!(listed["total"], Value::Null, "the hub is gone");

    let (_second_hub, hub) = start_hub(&dir, config).await;
    wait_for(Duration::from_secs(90), "the create is rolled back", || {
        let (hub, prefix) = (&hub, name.clone());
        async move {
            let (_, listed) = hub.call(Method::GET, "/api/services", None).await;
            (listed["total"] == 0 && containers(&prefix).await.is_empty()).then_some(())
        }
    })
    .await;
    let (_, log) = hub
        .call(
            Method::GET,
            "/api/admin/operations?action=service.create",
            None,
        )
        .await;
    let outcomes: Vec<&str> = log["operations"]
        .as_array()
        .expect("operations")
        .iter()
        .filter_map(|op| op["outcome"].as_str())
        .collect();
    assert!(outcomes.contains(&"rolled_back"), "{log}");

    let (status, created) = hub
        .call(
            Method::POST,
            &format!("/api/{owner}/crash/services"),
            Some(create_body(&name)),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let running = wait_for(Duration::from_secs(120), "every replica runs", || {
        let prefix = name.clone();
        async move {
            let found = containers(&prefix).await;
            (found.len() == REPLICAS && found.iter().all(|(_, state, _)| state == "running"))
                .then_some(found)
        }
    })
    .await;
    let replicas: BTreeSet<String> = running.into_iter().map(|(replica, _, _)| replica).collect();
    assert_eq!(replicas.len(), REPLICAS, "each replica once");
    let id = created["id"].as_i64().expect("id");
    let (status, _) = hub
        .call(Method::DELETE, &format!("/api/services/{id}"), None)
        .await;
    assert_eq!(status, 204);
}
