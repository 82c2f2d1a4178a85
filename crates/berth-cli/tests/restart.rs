//! A hub killed (SIGKILL, as a crash would) while changes run. A change is acknowledged once its
//! intent and operation are committed (202 with the operation), so a restarted hub carries on
//! whatever it left unfinished: a create cut short ends with every replica once, a retried
//! create with the same Idempotency-Key (also across the restart) makes no second service, and
//! rounds of 30 concurrent changes killed at a random moment all end succeeded (or cancelled,
//! overtaken by a later change of the same service) with every service as it is wanted. A
//! rollout cut short is carried on with the previous version answering until the new one is
//! ready. With three hubs on PostgreSQL, 30 concurrent changes made through the followers while
//! the leader is killed all end clearly under the next leader, and the services converge.

mod processes;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use processes::{HubApi, IMAGE, LabelledContainers, engine, fresh_dir, start_hub, wait_for};
use reqwest::Method;
use serde_json::{Value, json};

const REPLICAS: usize = 24;

/// A server that ends on SIGTERM, so stops and restarts take no grace period.
const POLITE: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

fn create_body(name: &str, replicas: usize) -> Value {
    json!({"name": name, "image": IMAGE, "replicas": replicas, "start": true,
        "cpu_limit": 0.02, "memory_limit": "8m", "command": ["sh", "-c", POLITE]})
}

async fn user(hub: &HubApi) -> String {
    let (_, me) = hub.call(Method::GET, "/api/users/me", None).await;
    me["name"].as_str().expect("name").to_owned()
}

/// One container of a hub on the engine.
#[derive(Debug, Clone)]
struct Found {
    service: String,
    replica: String,
    state: String,
}

/// The containers carrying the label `label` (`berth.hub=…`), or whose names start with
/// `prefix` when no label is given.
async fn containers(label: Option<&str>, prefix: &str) -> Vec<Found> {
    let filter = label.unwrap_or("berth.replica");
    engine()
        .await
        .list(&[filter], true)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|container| container.name.starts_with(prefix))
        .map(|container| {
            let label = |key: &str| container.labels.get(key).cloned().unwrap_or_default();
            Found {
                service: label("berth.service"),
                replica: label("berth.replica"),
                state: container.state.clone(),
            }
        })
        .collect()
}

/// Waits until operation `id` ended; the operation.
async fn ended(hub: &HubApi, id: i64) -> Value {
    wait_for(
        Duration::from_secs(180),
        "the operation ends",
        || async move {
            let (status, operation) = hub
                .call(Method::GET, &format!("/api/operations/{id}?wait=5"), None)
                .await;
            (status == 200).then_some(operation)
        },
    )
    .await
}

/// The configuration of the hubs these tests kill: a check and a reconciler round a second.
const CONFIG: &str = "monitor_interval: 1\n";

/// A hub (in a directory named after `test`) with the local node, about to be killed: its
/// directory, process, API, containers' label, and a guard that removes those containers.
async fn hub_to_kill(
    test: &str,
) -> (
    std::path::PathBuf,
    processes::Process,
    HubApi,
    String,
    LabelledContainers,
) {
    let dir = fresh_dir(test);
    let (process, hub) = start_hub(&dir, CONFIG).await;
    let hub_label = processes::hub_label(&dir).await;
    let leftovers = LabelledContainers(vec![hub_label.clone()]);
    hub.add_local_node().await;
    (dir, process, hub, hub_label, leftovers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_cut_short_by_a_killed_hub_is_carried_on_after_the_restart() {
    let (dir, mut first_hub, hub, hub_label, _leftovers) = hub_to_kill("kill-mid-create").await;
    let owner = user(&hub).await;
    let name = format!("wide{}", std::process::id());
    let key = [("Idempotency-Key", "create-wide-once")];

    let (status, accepted) = hub
        .call_with(
            Method::POST,
            &format!("/api/{owner}/crash/services"),
            Some(create_body(&name, REPLICAS)),
            &key,
        )
        .await;
    assert_eq!(
        (status, accepted["state"].as_str()),
        (202, Some("running")),
        "acknowledged at once: {accepted}"
    );
    let operation = accepted["id"].as_i64().expect("operation");
    let service = accepted["service_id"].as_i64().expect("service");
    wait_for(Duration::from_secs(60), "some replicas exist", || {
        let prefix = name.clone();
        async move {
            let found = containers(None, &prefix).await;
            (found.len() >= 4).then_some(found)
        }
    })
    .await;
    first_hub.kill();

    let (_second_hub, hub) = start_hub(&dir, CONFIG).await;
    // The retry a client makes when its first answer is lost: the same key, the same operation.
    let (status, retried) = hub
        .call_with(
            Method::POST,
            &format!("/api/{owner}/crash/services"),
            Some(create_body(&name, REPLICAS)),
            &key,
        )
        .await;
    assert!(status == 200 || status == 202, "{retried}");
    assert_eq!(retried["id"].as_i64(), Some(operation), "{retried}");
    let finished = ended(&hub, operation).await;
    assert_eq!(finished["state"], "succeeded", "{finished}");
    let running = wait_for(Duration::from_secs(120), "every replica runs", || {
        let label = hub_label.clone();
        async move {
            let found = containers(Some(&label), "").await;
            (found.len() == REPLICAS && found.iter().all(|found| found.state == "running"))
                .then_some(found)
        }
    })
    .await;
    let replicas: BTreeSet<String> = running.into_iter().map(|found| found.replica).collect();
    assert_eq!(replicas.len(), REPLICAS, "each replica once");
    let (_, listed) = hub.call(Method::GET, "/api/services", None).await;
    assert_eq!(listed["total"], 1, "one service: {listed}");

    let (status, deleted) = hub
        .call(
            Method::DELETE,
            &format!("/api/services/{service}?wait=60"),
            None,
        )
        .await;
    assert_eq!(
        (status, deleted["state"].as_str()),
        (200, Some("succeeded"))
    );
    assert!(containers(Some(&hub_label), "").await.is_empty());
}

/// SplitMix64: the test's only randomness, seeded per round so a failure can be replayed.
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % bound
    }
}

/// One change the soak sends: method, path, body, idempotency key.
fn change(random: &mut Seeded, owner: &str, services: &[i64], round: u64, n: u64) -> Request {
    let pick = |random: &mut Seeded| services[random.below(services.len() as u64) as usize];
    match random.below(6) {
        0 if !services.is_empty() => Request {
            method: Method::POST,
            path: format!("/api/services/{}/stop", pick(random)),
            key: None,
            body: None,
        },
        1 if !services.is_empty() => Request {
            method: Method::POST,
            path: format!("/api/services/{}/restart", pick(random)),
            key: None,
            body: None,
        },
        2 if !services.is_empty() => Request {
            method: Method::DELETE,
            path: format!("/api/services/{}", pick(random)),
            key: None,
            body: None,
        },
        3..=4 if !services.is_empty() => Request {
            method: Method::POST,
            path: format!("/api/services/{}/start", pick(random)),
            key: None,
            body: None,
        },
        _ => Request {
            method: Method::POST,
            path: format!("/api/{owner}/soak/services"),
            key: Some(format!("soak-{round}-{n}")),
            body: Some(create_body(&format!("soak-{round}-{n}"), 2)),
        },
    }
}

struct Request {
    method: Method,
    path: String,
    key: Option<String>,
    body: Option<Value>,
}

/// How what runs differs from what is wanted: every service's replicas once each, running when
/// it is wanted running, not running otherwise; no container of a service that is gone. `None`
/// when they agree.
async fn difference(hub: &HubApi, label: &str) -> Option<String> {
    let (_, listed) = hub.call(Method::GET, "/api/services", None).await;
    let Some(services) = listed["services"].as_array() else {
        return Some(format!("no list: {listed}"));
    };
    let wanted: BTreeMap<String, (String, u64)> = services
        .iter()
        .map(|service| {
            (
                service["id"].to_string(),
                (
                    service["status"].as_str().unwrap_or_default().to_owned(),
                    service["replicas"].as_u64().unwrap_or_default(),
                ),
            )
        })
        .collect();
    let found = containers(Some(label), "").await;
    let mut per_replica = BTreeMap::new();
    for container in &found {
        let Some((status, _)) = wanted.get(&container.service) else {
            return Some(format!(
                "a container of service {} which is gone",
                container.service
            ));
        };
        if (status == "running") != (container.state == "running") {
            return Some(format!(
                "service {} is {status} and its replica {} is {}; {}",
                container.service,
                container.replica,
                container.state,
                about(hub, &container.service).await
            ));
        }
        *per_replica
            .entry((container.service.clone(), container.replica.clone()))
            .or_insert(0) += 1;
    }
    for (id, (status, replicas)) in &wanted {
        for replica in 0..*replicas {
            let count = per_replica
                .get(&(id.clone(), replica.to_string()))
                .copied()
                .unwrap_or(0);
            if count != 1 {
                return Some(format!(
                    "service {id} ({status}) has {count} containers of replica {replica}; {}",
                    about(hub, id).await
                ));
            }
        }
    }
    None
}

/// Every acknowledged operation ends succeeded, cancelled, or failed with a reason; then the
/// services converge within 90 s: every replica once, running when it is wanted running, not
/// running otherwise, no container of a service that is gone. `when` and `log` (the hub's log's
/// end) go into a failure's message.
async fn ended_clearly_and_converged(
    hub: &HubApi,
    acknowledged: &[i64],
    label: &str,
    when: &str,
    log: impl Fn() -> String,
) {
    for id in acknowledged {
        let operation = ended(hub, *id).await;
        assert!(
            matches!(operation["state"].as_str(), Some("succeeded" | "cancelled"))
                || (operation["state"] == "failed"
                    && operation["error"]
                        .as_str()
                        .is_some_and(|error| !error.is_empty())),
            "{when}: operation {id} ended unclearly: {operation}"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while let Some(difference) = difference(hub, label).await {
        assert!(
            std::time::Instant::now() < deadline,
            "{when}: the services did not converge within 90 s: {difference}\nthe hub's log ends: {}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Service `id`'s status and operations as the hub reports them, for a failure's message.
async fn about(hub: &HubApi, id: &str) -> String {
    let (_, live) = hub
        .call(Method::GET, &format!("/api/services/{id}/status"), None)
        .await;
    let (_, log) = hub
        .call(Method::GET, &format!("/api/services/{id}/operations"), None)
        .await;
    format!("its status: {live}; its operations: {log}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_acknowledged_before_a_kill_all_finish_and_converge_after_restarts() {
    let rounds: u64 = std::env::var("BERTH_SOAK_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(3);
    let dir = fresh_dir("kill-soak");
    let config = "monitor_interval: 1\nmax_services_per_user: 1000\n";
    let (mut process, mut hub) = start_hub(&dir, config).await;
    hub.add_local_node().await;
    let owner = user(&hub).await;
    let label = processes::hub_label(&dir).await;
    let guard = LabelledContainers(vec![label.clone()]);
    for round in 0..rounds {
        let mut random = Seeded(round * 7919 + 17);
        let (_, listed) = hub.call(Method::GET, "/api/services", None).await;
        let services: Vec<i64> = listed["services"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|service| service["id"].as_i64())
            .collect();
        let requests: Vec<Request> = (0..30)
            .map(|n| change(&mut random, &owner, &services, round, n))
            .collect();
        let kill_after = Duration::from_millis(100 + random.below(1400));
        let hub_ref = &hub;
        let sent = futures_util::future::join_all(requests.iter().map(|request| async move {
            let headers: Vec<(&str, &str)> = request
                .key
                .as_deref()
                .map(|key| vec![("Idempotency-Key", key)])
                .unwrap_or_default();
            let (status, answer) = hub_ref
                .call_with(
                    request.method.clone(),
                    &request.path,
                    request.body.clone(),
                    &headers,
                )
                .await;
            (status, answer)
        }));
        let killer = async {
            tokio::time::sleep(kill_after).await;
        };
        let (answers, ()) = tokio::join!(sent, killer);
        process.kill();
        let acknowledged: Vec<i64> = answers
            .iter()
            .filter(|(status, _)| *status == 202 || *status == 200)
            .filter_map(|(_, answer)| answer["id"].as_i64())
            .collect();
        for (status, answer) in &answers {
            assert!(
                matches!(status, 0 | 200 | 202 | 404 | 409),
                "round {round}: an answer that is neither an acknowledgement nor a clear refusal: {status} {answer}"
            );
        }

        (process, hub) = start_hub(&dir, config).await;
        ended_clearly_and_converged(
            &hub,
            &acknowledged,
            &label,
            &format!("round {round}"),
            || processes::log_tail(&dir, 40),
        )
        .await;
    }
    drop(process);
    drop(guard);
}

/// A server whose `VERSION` is what it answers; version 2 takes a while before it listens, so
/// a rollout to it waits for it.
const VERSIONED: &str = "echo $VERSION > /www/index.html; [ $VERSION = 1 ] || sleep 6; \
     trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait";

/// The gateway URL of service `id`, once its status names one and it answers 200.
async fn answering_url(hub: &HubApi, id: i64) -> String {
    wait_for(
        Duration::from_secs(60),
        "the service answers",
        || async move {
            let status = hub
                .call(Method::GET, &format!("/api/services/{id}/status"), None)
                .await
                .1;
            let url = status["service_url"].as_str()?.to_owned();
            let answered = reqwest::Client::new()
                .get(&url)
                .bearer_auth(hub.token())
                .send()
                .await
                .ok()?;
            (answered.status() == 200).then_some(url)
        },
    )
    .await
}

/// A rollout the hub is killed in the middle of is carried on by the restarted hub with the
/// previous version still answering: from the first answer after the restart on, every request
/// is answered, by version 1 until version 2 is ready, then by version 2; the previous
/// container is removed once the rollout ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_cut_short_by_a_killed_hub_keeps_the_previous_version_serving() {
    let (dir, mut first_hub, hub, hub_label, _leftovers) = hub_to_kill("kill-mid-rollout").await;
    let owner = user(&hub).await;
    let (status, created) = hub
        .call(
            Method::POST,
            &format!("/api/{owner}/crash/services?wait=60"),
            Some(
                json!({"name": "rolling", "image": IMAGE, "port": 8080, "start": true,
                "cpu_limit": 0.05, "memory_limit": "16m", "environment": {"VERSION": "1"},
                "command": ["sh", "-c", VERSIONED],
                "serving": {"probe_interval_seconds": 1}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["service_id"].as_i64().expect("service");
    answering_url(&hub, id).await;
    let first_container = hub.service(id).await["container_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (status, accepted) = hub
        .call(
            Method::PATCH,
            &format!("/api/services/{id}"),
            Some(json!({"environment": {"VERSION": "2"}})),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let operation = accepted["id"].as_i64().expect("operation");
    // Killed while version 2's replica is created and not yet listening.
    wait_for(Duration::from_secs(30), "version 2's container", || {
        let label = hub_label.clone();
        async move { (containers(Some(&label), "").await.len() == 2).then_some(()) }
    })
    .await;
    first_hub.kill();

    let (_second_hub, hub) = start_hub(&dir, CONFIG).await;
    let url = answering_url(&hub, id).await;
    let client = reqwest::Client::new();
    let mut answers: Vec<(u16, String)> = Vec::new();
    loop {
        let answer = client
            .get(&url)
            .bearer_auth(hub.token())
            .send()
            .await
            .expect("the gateway answers");
        let status = answer.status().as_u16();
        answers.push((
            status,
            answer.text().await.unwrap_or_default().trim().to_owned(),
        ));
        let (_, progress) = hub
            .call(Method::GET, &format!("/api/operations/{operation}"), None)
            .await;
        if progress["state"] != "running" || answers.len() > 600 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let finished = ended(&hub, operation).await;
    assert_eq!(finished["state"], "succeeded", "{finished}");
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "every request answered: {answers:?}"
    );
    let versions: Vec<&str> = answers.iter().map(|(_, body)| body.as_str()).collect();
    assert_eq!(
        versions.first(),
        Some(&"1"),
        "version 1 serves while version 2 starts: {versions:?}"
    );
    let switched = versions.iter().position(|version| *version == "2");
    assert!(
        switched.is_none_or(|at| versions[at..].iter().all(|version| *version == "2")),
        "once version 2 takes the traffic, it alone answers: {versions:?}"
    );
    let after = client
        .get(&url)
        .bearer_auth(hub.token())
        .send()
        .await
        .expect("answer");
    assert_eq!(after.text().await.unwrap_or_default().trim(), "2");
    wait_for(
        Duration::from_secs(30),
        "version 1's container removed",
        || {
            let (label, first) = (hub_label.clone(), first_container.clone());
            async move {
                let found = engine().await.list(&[label.as_str()], true).await.ok()?;
                (!found.iter().any(|container| container.id == first)).then_some(())
            }
        },
    )
    .await;
}

/// Three hubs on PostgreSQL: 30 concurrent changes through the two followers, the leader killed
/// at a random moment while they run. A follower leads; every acknowledged change ends clearly
/// under it, and every service converges with each replica once: no duplicate container, no
/// replica lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_followers_all_finish_when_the_leader_is_killed() {
    let Some(database) = processes::postgres_database("ha_changes").await else {
        return;
    };
    // The hubs' identity made first, so that the guard, dropped after every hub, removes what
    // they made (a hub still running would make it again).
    let label = processes::database_hub_label(&database).await;
    let _guard = LabelledContainers(vec![label.clone()]);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = fresh_dir("ha-changes");
    let client = reqwest::Client::new();
    let mut cluster = processes::start_three_elected_hubs(
        &database,
        &dir,
        "monitor_interval: 1\nmax_services_per_user: 1000\n",
    )
    .await;
    let (ports, gateways) = (cluster.ports, cluster.gateways);
    let api = &cluster.api;
    let owner = user(&api[0]).await;
    let mut services = Vec::new();
    for number in 0..4 {
        let (status, created) = api[0]
            .call(
                Method::POST,
                &format!("/api/{owner}/soak/services?wait=60"),
                Some(create_body(&format!("before-{number}"), 2)),
            )
            .await;
        assert_eq!(status, 200, "{created}");
        services.push(created["service_id"].as_i64().expect("id"));
    }

    let mut random = Seeded(20_261_204);
    let requests: Vec<Request> = (0..30)
        .map(|n| change(&mut random, &owner, &services, 0, n))
        .collect();
    let kill_after = Duration::from_millis(100 + random.below(900));
    let api_ref = &api;
    let sent = futures_util::future::join_all(requests.iter().enumerate().map(
        |(n, request)| async move {
            let headers: Vec<(&str, &str)> = request
                .key
                .as_deref()
                .map(|key| vec![("Idempotency-Key", key)])
                .unwrap_or_default();
            api_ref[1 + n % 2]
                .call_with(
                    request.method.clone(),
                    &request.path,
                    request.body.clone(),
                    &headers,
                )
                .await
        },
    ));
    let killer = async {
        tokio::time::sleep(kill_after).await;
        cluster.processes[0].kill();
    };
    let (answers, ()) = tokio::join!(sent, killer);
    for (status, answer) in &answers {
        assert!(
            matches!(status, 0 | 200 | 202 | 404 | 409 | 502 | 503),
            "an answer that is neither an acknowledgement nor a clear refusal: {status} {answer}"
        );
    }
    let acknowledged: Vec<i64> = answers
        .iter()
        .filter(|(status, _)| *status == 202 || *status == 200)
        .filter_map(|(_, answer)| answer["id"].as_i64())
        .collect();
    let (new_leader, term) =
        processes::leader_among(&client, &ports[1..], "a follower leads").await;
    assert_eq!(term, 2);
    let leading = &api[ports
        .iter()
        .position(|port| *port == new_leader)
        .expect("port")];
    ended_clearly_and_converged(leading, &acknowledged, &label, "after the takeover", || {
        processes::log_tail(
            &dir.join(if new_leader == ports[1] { "b" } else { "c" }),
            40,
        )
    })
    .await;

    // An unloaded service is woken by a request to a follower's gateway: the follower asks the
    // leader to load it, then serves the request.
    let follower = (1..3)
        .find(|which| ports[*which] != new_leader)
        .expect("a follower");
    let body = json!({"name": "sleeper", "image": IMAGE, "cpu_limit": 0.02, "memory_limit": "8m",
        "port": 8080, "is_public": true, "start": true, "command": ["sh", "-c",
        "trap 'exit 0' TERM; mkdir -p /www; echo awake > /www/index.html; httpd -f -p 8080 -h /www & wait"]});
    let (status, created) = leading
        .call(
            Method::POST,
            &format!("/api/{owner}/soak/services?wait=60"),
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["service_id"].as_i64().expect("id");
    let (status, unloaded) = api[follower]
        .call(
            Method::POST,
            &format!("/api/services/{id}/unload?wait=60"),
            None,
        )
        .await;
    assert_eq!(
        (status, unloaded["state"].as_str()),
        (200, Some("succeeded")),
        "{unloaded}"
    );
    // The follower's route table learns of the unload within a second (its full comparison);
    // until then it may answer 503 for the replica that is gone. Nothing but a wake-up loads
    // the service again.
    let url = format!("http://127.0.0.1:{}/s/{owner}/sleeper/", gateways[follower]);
    let answers = std::sync::Mutex::new(Vec::new());
    let woken = wait_for(
        Duration::from_secs(60),
        "a follower's gateway wakes it",
        || {
            let (url, answers) = (url.clone(), &answers);
            async move {
                let answer = reqwest::Client::new()
                    .get(&url)
                    .timeout(Duration::from_secs(90))
                    .send()
                    .await
                    .ok()?;
                let status = answer.status();
                let text = answer.text().await.unwrap_or_default();
                answers
                    .lock()
                    .expect("answers")
                    .push(format!("{status} {text}"));
                (status == 200).then_some(text)
            }
        },
    )
    .await;
    let answers = answers.into_inner().expect("answers");
    assert_eq!(woken.trim(), "awake", "{answers:?}");
    let refused = answers.len() - 1;
    println!("woken through a follower after {refused} refusal(s): {answers:?}");
    leading.delete_all_services().await;
}
