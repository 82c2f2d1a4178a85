//! The gateway on the real engine, with `busybox httpd` as the model service: each routing
//! policy's distribution, a streamed answer with least-loaded routing around it, warmup gating
//! and a failing probe leaving the rotation, scale from zero with 50 concurrent first requests,
//! idle unloading, LRU eviction at `max_models_per_node`, a WebSocket echo, HTTP/2, private
//! services and timeouts; gRPC passed through over HTTP/2 with its trailers, to an in-process
//! HTTP/2 server published as a simulated node's container port; and, against a hand-written
//! HTTP/1.1 replica, what the relay sends and keeps: rewritten heads, kept connections, bodies
//! whole, chunked answers streamed with their trailers, pipelining, and the hand-over to hyper.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_docker::DockerDriver;
use berth_hub::state::HubSettings;
use reqwest::Method;
use serde_json::{Value, json};
use support::{Hub, add_local_node, engine, start_gateway, start_with, with_cleanup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IMAGE: &str = "berth-test/busybox:latest";

/// A model server: `/` answers the container's hostname; `/cgi-bin/stream` writes `first <host>`
/// and waits for /tmp/go before `second`; `/cgi-bin/health` fails while /tmp/health says `sick`;
/// `/cgi-bin/slow` waits 5 s before answering; `/cgi-bin/second` waits 1 s and answers its query.
const MODEL: &str = r#"mkdir -p /www/cgi-bin
hostname > /www/index.html
printf '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho "first $(hostname)"\nwhile [ ! -f /tmp/go ]; do sleep 0.05; done\necho second\n' > /www/cgi-bin/stream
printf '#!/bin/sh\nif [ "$(cat /tmp/health 2>/dev/null)" = sick ]; then echo "Status: 500 Sick"; fi\necho "Content-Type: text/plain"\necho\necho health\n' > /www/cgi-bin/health
printf '#!/bin/sh\nsleep 5\necho "Content-Type: text/plain"\necho\necho slow\n' > /www/cgi-bin/slow
printf '#!/bin/sh\nsleep 1\necho "Content-Type: text/plain"\necho\necho "$QUERY_STRING"\n' > /www/cgi-bin/second
chmod +x /www/cgi-bin/*
trap 'exit 0' TERM
httpd -f -p 8080 -h /www &
wait"#;

/// A byte echo behind an HTTP/1.1 upgrade: `101 Switching Protocols`, then every byte back.
const ECHO: &str = r#"printf '#!/bin/sh\nup=0\nwhile read -r line; do case "$line" in *pgrade:*) up=1;; esac; [ "${#line}" -le 1 ] && break; done\nif [ $up = 1 ]; then printf "HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n\\r\\n"; exec cat; fi\nprintf "HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\nConnection: close\\r\\n\\r\\nok\\n"\n' > /bin/echo-server
chmod +x /bin/echo-server
trap 'exit 0' TERM
nc -ll -p 8080 -e /bin/echo-server &
wait"#;

fn settings() -> HubSettings {
    HubSettings {
        max_services_per_user: 50,
        ..HubSettings::default()
    }
}

/// Writes `content` to `path` inside `container`.
async fn put_file(engine: &DockerDriver, container: &str, path: &str, content: &str) {
    let (dir, name) = path.rsplit_once('/').expect("absolute path");
    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    archive
        .append_data(&mut header, name, content.as_bytes())
        .expect("tar");
    let bytes = archive.into_inner().expect("tar");
    engine
        .upload_archive(container, dir, bytes.into())
        .await
        .expect("upload");
}

/// A hub with the local engine as its node, and its gateway's address.
async fn hub_with_gateway(test: &str, settings: HubSettings) -> (Hub, SocketAddr) {
    let hub = start_with(test, settings).await;
    add_local_node(&hub).await;
    let gateway = start_gateway(&hub).await;
    (hub, gateway)
}

async fn admin_name(hub: &Hub) -> String {
    let (_, me) = hub.admin(Method::GET, "/api/users/me", None).await;
    me["name"].as_str().expect("name").to_owned()
}

/// Creates (and with `start`, starts) a model service of the admin; its id.
async fn create(hub: &Hub, name: &str, replicas: i64, serving: Value, start: bool) -> i64 {
    create_running(hub, name, replicas, serving, start, MODEL, false).await
}

async fn create_running(
    hub: &Hub,
    name: &str,
    replicas: i64,
    serving: Value,
    start: bool,
    script: &str,
    public: bool,
) -> i64 {
    let owner = admin_name(hub).await;
    let (status, created) = hub
        .admin(
            Method::POST,
            &format!("/api/{owner}/models/services?wait=60"),
            Some(json!({
                "name": name, "image": IMAGE, "memory_limit": "32m", "cpu_limit": 0.1,
                "command": ["sh", "-c", script], "port": 8080, "replicas": replicas,
                "start": start, "is_public": public, "serving": serving,
            })),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    created["service_id"].as_i64().expect("id")
}

async fn status_of(hub: &Hub, id: i64) -> Value {
    let (status, body) = hub
        .admin(Method::GET, &format!("/api/services/{id}/status"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until `ready` replicas of service `id` take traffic.
async fn wait_ready(hub: &Hub, id: i64, ready: u64) -> Value {
    for _ in 0..300 {
        let status = status_of(hub, id).await;
        if status["serving"]["ready_replicas"].as_u64() == Some(ready) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "service {id} never had {ready} ready replicas: {}",
        status_of(hub, id).await
    );
}

/// Hostname (12 characters of the container id) → container id, per replica.
fn containers(status: &Value) -> HashMap<String, String> {
    status["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|replica| {
            let id = replica["container_id"].as_str().expect("id").to_owned();
            (id[..12].to_owned(), id)
        })
        .collect()
}

fn container_of_replica(status: &Value, replica: i64) -> String {
    status["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .find(|entry| entry["replica"].as_i64() == Some(replica))
        .and_then(|entry| entry["container_id"].as_str())
        .expect("replica")
        .to_owned()
}

struct Caller {
    client: reqwest::Client,
    gateway: SocketAddr,
    token: String,
}

impl Caller {
    fn new(gateway: SocketAddr, token: &str) -> Self {
        Self {
            client: reqwest::Client::new(),
            gateway,
            token: token.to_owned(),
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut request = self
            .client
            .get(format!("http://{}{path}", self.gateway))
            .bearer_auth(&self.token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("gateway answers");
        let status = response.status().as_u16();
        (
            status,
            response.text().await.expect("body").trim().to_owned(),
        )
    }

    /// Who answered `count` requests: hostname → how many.
    async fn tally(&self, path: &str, count: usize) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for _ in 0..count {
            let (status, body) = self.get(path, &[]).await;
            assert_eq!(status, 200, "{body}");
            *seen.entry(body).or_default() += 1;
        }
        seen
    }
}

#[tokio::test]
async fn each_routing_policy_spreads_requests_as_configured() {
    let (hub, gateway) = hub_with_gateway("gateway-policies", settings()).await;
    with_cleanup(&hub, async {
        let owner = admin_name(&hub).await;
        let caller = Caller::new(gateway, &hub.admin);
        let round_robin = create(&hub, "rr", 3, json!({}), true).await;
        let weighted = create(
            &hub,
            "weighted",
            2,
            json!({"routing": {"policy": "weighted", "weights": {"0": 3, "1": 1}}}),
            true,
        )
        .await;
        let sticky = create(
            &hub,
            "sticky",
            2,
            json!({"routing": {"policy": "sticky", "affinity": {"header": "x-user"}}}),
            true,
        )
        .await;
        let random = create(
            &hub,
            "random",
            2,
            json!({"routing": {"policy": "random"}}),
            true,
        )
        .await;

        wait_ready(&hub, round_robin, 3).await;
        let seen = caller.tally(&format!("/s/{owner}/rr/"), 30).await;
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen.values().all(|count| *count == 10), "{seen:?}");

        let status = wait_ready(&hub, weighted, 2).await;
        let heavy = container_of_replica(&status, 0);
        let seen = caller.tally(&format!("/s/{owner}/weighted/"), 40).await;
        assert_eq!(seen.get(&heavy[..12]), Some(&30), "3:1 → {seen:?}");

        wait_ready(&hub, sticky, 2).await;
        let mut homes = std::collections::HashSet::new();
        for user in 0..20 {
            let key = format!("user-{user}");
            let mut answers = std::collections::HashSet::new();
            for _ in 0..4 {
                let (status, body) = caller
                    .get(&format!("/s/{owner}/sticky/"), &[("x-user", &key)])
                    .await;
                assert_eq!(status, 200);
                answers.insert(body);
            }
            assert_eq!(answers.len(), 1, "{key} always reaches one replica");
            homes.extend(answers);
        }
        assert_eq!(homes.len(), 2, "20 keys use both replicas");

        // A canary split: a fifth of the stable service's requests go to the canary service.
        let canary = create(&hub, "canary", 1, json!({}), true).await;
        let stable = create(
            &hub,
            "stable",
            1,
            json!({"routing": {"canary": {"percent": 20, "service": "canary"}}}),
            true,
        )
        .await;
        let canary_host = container_of_replica(&wait_ready(&hub, canary, 1).await, 0);
        wait_ready(&hub, stable, 1).await;
        let seen = caller.tally(&format!("/s/{owner}/stable/"), 200).await;
        let to_canary = seen.get(&canary_host[..12]).copied().unwrap_or(0);
        assert!((20..=60).contains(&to_canary), "20% of 200 → {seen:?}");

        wait_ready(&hub, random, 2).await;
        let seen = caller.tally(&format!("/s/{owner}/random/"), 100).await;
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(
            seen.values().all(|count| (25..=75).contains(count)),
            "{seen:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_streamed_answer_flows_as_written_and_least_loaded_routes_around_it() {
    let (hub, gateway) = hub_with_gateway("gateway-stream", settings()).await;
    let engine = engine().await;
    with_cleanup(&hub, async {
        let owner = admin_name(&hub).await;
        let id = create(
            &hub,
            "stream",
            2,
            json!({"routing": {"policy": "least_loaded"}}),
            true,
        )
        .await;
        let status = wait_ready(&hub, id, 2).await;
        let hosts = containers(&status);
        let mut streaming = reqwest::Client::new()
            .get(format!("http://{gateway}/s/{owner}/stream/cgi-bin/stream"))
            .bearer_auth(&hub.admin)
            .send()
            .await
            .expect("stream");
        assert_eq!(streaming.status(), 200);
        // The first line arrives while the replica is still writing: nothing is buffered.
        let first = streaming.chunk().await.expect("chunk").expect("first");
        let first = String::from_utf8_lossy(&first).trim().to_owned();
        let busy_host = first.strip_prefix("first ").expect("first line").to_owned();
        assert!(hosts.contains_key(&busy_host), "{first}");

        let caller = Caller::new(gateway, &hub.admin);
        let seen = caller.tally(&format!("/s/{owner}/stream/"), 10).await;
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            !seen.contains_key(&busy_host),
            "least loaded avoids the replica answering the stream: {seen:?}"
        );

        put_file(&engine, &hosts[&busy_host], "/tmp/go", "go").await;
        let mut rest = String::new();
        while let Some(chunk) = streaming.chunk().await.expect("chunk") {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert_eq!(rest.trim(), "second");
    })
    .await;
}

#[tokio::test]
async fn warmup_gates_traffic_and_a_failing_probe_leaves_the_rotation() {
    let (hub, gateway) = hub_with_gateway("gateway-warmup", settings()).await;
    let engine = engine().await;
    with_cleanup(&hub, async {
        let owner = admin_name(&hub).await;
        let path = format!("/s/{owner}/warm/");
        let id = create(
            &hub,
            "warm",
            2,
            json!({"probe_path": "/cgi-bin/health", "probe_interval_seconds": 1,
                   "warmup": {"path": "/warm", "method": "GET", "count": 3}}),
            true,
        )
        .await;
        // Both replicas listen and pass their probe, but /warm does not exist yet.
        let mut status = status_of(&hub, id).await;
        for _ in 0..100 {
            if status["serving"]["replicas"].as_array().map(Vec::len) == Some(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            status = status_of(&hub, id).await;
        }
        let caller = Caller::new(gateway, &hub.admin);
        let (code, body) = caller.get(&path, &[]).await;
        assert_eq!(code, 503, "no replica is warm: {body}");
        assert!(body.contains("no ready replica"), "{body}");

        let first = container_of_replica(&status, 0);
        let second = container_of_replica(&status, 1);
        put_file(&engine, &first, "/www/warm", "warm").await;
        wait_ready(&hub, id, 1).await;
        let seen = caller.tally(&path, 10).await;
        assert_eq!(
            seen.get(&first[..12]),
            Some(&10),
            "only the warm one: {seen:?}"
        );

        put_file(&engine, &second, "/www/warm", "warm").await;
        wait_ready(&hub, id, 2).await;
        assert_eq!(caller.tally(&path, 10).await.len(), 2);

        put_file(&engine, &first, "/tmp/health", "sick").await;
        wait_ready(&hub, id, 1).await;
        let seen = caller.tally(&path, 10).await;
        assert_eq!(
            seen.get(&second[..12]),
            Some(&10),
            "the sick one is out: {seen:?}"
        );

        put_file(&engine, &first, "/tmp/health", "ok").await;
        wait_ready(&hub, id, 2).await;
        assert_eq!(caller.tally(&path, 10).await.len(), 2, "back in rotation");
    })
    .await;
}

async fn loads_of(hub: &Hub, id: i64) -> usize {
    let (status, listed) = hub
        .admin(
            Method::GET,
            &format!("/api/admin/operations?service_id={id}&action=service.load&size=500"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{listed}");
    listed["operations"].as_array().expect("operations").len()
}

#[tokio::test]
async fn fifty_first_requests_to_an_unloaded_service_start_it_once_and_all_get_answers() {
    let (hub, gateway) = hub_with_gateway("gateway-wake", settings()).await;
    with_cleanup(&hub, async {
        let owner = admin_name(&hub).await;
        let id = create(&hub, "sleepy", 1, json!({"idle_timeout_seconds": 2}), false).await;
        let (status, unloaded) = hub
            .admin(
                Method::POST,
                &format!("/api/services/{id}/unload?wait=60"),
                None,
            )
            .await;
        assert_eq!(
            (status, unloaded["service"]["status"].as_str()),
            (200, Some("unloaded")),
            "{unloaded}"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let caller = Arc::new(Caller::new(gateway, &hub.admin));
        let path = format!("/s/{owner}/sleepy/");
        let answers = futures_util::future::join_all((0..50).map(|_| {
            let caller = Arc::clone(&caller);
            let path = path.clone();
            async move { caller.get(&path, &[]).await }
        }))
        .await;
        assert!(
            answers.iter().all(|(code, _)| *code == 200),
            "{:?}",
            answers
                .iter()
                .filter(|(code, _)| *code != 200)
                .collect::<Vec<_>>()
        );
        let status = status_of(&hub, id).await;
        assert_eq!(status["status"], "running");
        assert_eq!(status["serving"]["cold_starts"], 1, "{status}");
        assert_eq!(loads_of(&hub, id).await, 1, "one start for fifty requests");
        let hosts: std::collections::HashSet<&String> =
            answers.iter().map(|(_, body)| body).collect();
        assert_eq!(hosts.len(), 1, "one container answered them all");

        // Idle past its timeout, it is unloaded again (the wanted state first), and then its
        // container is stopped.
        let mut status = Value::Null;
        for _ in 0..200 {
            status = status_of(&hub, id).await;
            if status["status"] == "unloaded" && status["container_status"] != "running" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status["status"], "unloaded", "{status}");
        assert_ne!(status["container_status"], "running", "{status}");
        let (code, _) = caller.get(&path, &[]).await;
        assert_eq!(code, 200, "woken again");
        assert_eq!(loads_of(&hub, id).await, 2);
    })
    .await;
}

#[tokio::test]
async fn the_hubs_service_idle_timeout_unloads_services_that_set_no_idle_limit_of_their_own() {
    let (hub, _gateway) = hub_with_gateway(
        "gateway-hub-idle",
        HubSettings {
            service_idle_timeout: Some(Duration::from_secs(2)),
            ..settings()
        },
    )
    .await;
    with_cleanup(&hub, async {
        let plain = create(&hub, "plain", 1, json!({}), true).await;
        let own = create(&hub, "own", 1, json!({"idle_timeout_seconds": 3600}), true).await;
        let scaled = create(
            &hub,
            "scaled",
            1,
            json!({"autoscale": {"min": 1, "max": 2, "target_in_flight_per_replica": 4}}),
            true,
        )
        .await;
        let mut status = Value::Null;
        for _ in 0..100 {
            status = status_of(&hub, plain).await;
            if status["status"] == "unloaded" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            status["status"], "unloaded",
            "idle past the hub's service_idle_timeout: {status}"
        );
        for id in [own, scaled] {
            let status = status_of(&hub, id).await;
            assert_eq!(
                status["status"], "running",
                "its own idle limit or autoscale decides: {status}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn loading_past_max_models_unloads_the_least_recently_used_idle_service() {
    let (hub, gateway) = hub_with_gateway(
        "gateway-lru",
        HubSettings {
            max_models_per_node: 2,
            ..settings()
        },
    )
    .await;
    let engine = engine().await;
    with_cleanup(&hub, async {
        let owner = admin_name(&hub).await;
        let caller = Caller::new(gateway, &hub.admin);
        let mut ids = HashMap::new();
        for name in ["a", "b", "c"] {
            ids.insert(name, create(&hub, name, 1, json!({}), false).await);
        }
        let load = |name: &str| {
            let id = ids[name];
            let hub = &hub;
            async move {
                let (status, body) = hub
                    .admin(
                        Method::POST,
                        &format!("/api/services/{id}/load?wait=60"),
                        None,
                    )
                    .await;
                assert_eq!(
                    (
                        status,
                        body["state"].as_str(),
                        body["detail"]["ready"].as_bool()
                    ),
                    (200, Some("succeeded"), Some(true)),
                    "{body}"
                );
            }
        };
        let wanted = |name: &str| {
            let id = ids[name];
            let hub = &hub;
            async move {
                status_of(hub, id).await["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            }
        };
        load("a").await;
        load("b").await;
        assert_eq!(caller.get(&format!("/s/{owner}/a/"), &[]).await.0, 200);
        load("c").await;
        assert_eq!(wanted("b").await, "unloaded", "b was used least recently");
        assert_eq!(wanted("a").await, "running");

        // A request to b loads it again; a (used before c was loaded) makes room.
        assert_eq!(caller.get(&format!("/s/{owner}/b/"), &[]).await.0, 200);
        assert_eq!(wanted("a").await, "unloaded");
        assert_eq!(wanted("c").await, "running");

        // Never one with a request in flight: c is older than b but streaming, so b goes.
        let status = status_of(&hub, ids["c"]).await;
        let mut streaming = reqwest::Client::new()
            .get(format!("http://{gateway}/s/{owner}/c/cgi-bin/stream"))
            .bearer_auth(&hub.admin)
            .send()
            .await
            .expect("stream");
        streaming.chunk().await.expect("chunk").expect("first");
        assert_eq!(caller.get(&format!("/s/{owner}/b/"), &[]).await.0, 200);
        load("a").await;
        assert_eq!(wanted("b").await, "unloaded", "c is busy, so b goes");
        assert_eq!(wanted("c").await, "running");
        put_file(&engine, &container_of_replica(&status, 0), "/tmp/go", "go").await;
        while streaming.chunk().await.expect("chunk").is_some() {}
    })
    .await;
}

#[tokio::test]
async fn websockets_http2_private_services_and_timeouts() {
    let (hub, gateway) = hub_with_gateway(
        "gateway-protocols",
        HubSettings {
            service_domain: Some("models.test".to_owned()),
            ..settings()
        },
    )
    .await;
    with_cleanup(&hub, async {
        let owner = admin_name(&hub).await;
        // Bad serving settings are refused, naming the field, and create nothing.
        for (serving, field) in [
            (json!({"routing": {"policy": "sticky"}}), "routing.affinity"),
            (
                json!({"routing": {"canary": {"percent": 10, "service": "Not A Name"}}}),
                "serving.routing.canary.service",
            ),
            (
                json!({"routing": {"canary": {"percent": 101, "service": "v2"}}}),
                "routing.canary.percent",
            ),
            (json!({"probe_path": "health"}), "serving.probe_path"),
            (
                json!({"warmup": {"path": "/p", "count": 0}}),
                "serving.warmup.count",
            ),
            (json!({"timeout_seconds": 0}), "serving.timeout_seconds"),
            (
                json!({"max_concurrency_per_replica": 0}),
                "serving.max_concurrency_per_replica",
            ),
            (
                json!({"rate_limit": {"requests_per_second": 0}}),
                "serving.rate_limit.requests_per_second",
            ),
            (
                json!({"autoscale": {"min": 3, "max": 2, "target_in_flight_per_replica": 1}}),
                "serving.autoscale.min",
            ),
            (
                json!({"autoscale": {"max": 2}}),
                "serving.autoscale.target_in_flight_per_replica",
            ),
        ] {
            let (status, problem) = hub
                .admin(
                    Method::POST,
                    &format!("/api/{owner}/models/services?wait=60"),
                    Some(json!({"name": "bad", "image": IMAGE, "port": 8080, "serving": serving})),
                )
                .await;
            assert_eq!(
                (status, problem["field"].as_str()),
                (422, Some(field)),
                "{problem}"
            );
        }
        let (_, listed) = hub.admin(Method::GET, "/api/services", None).await;
        assert_eq!(listed["total"], 0, "nothing was created");
        let echo = create_running(&hub, "echo", 1, json!({}), true, ECHO, true).await;
        let model = create(&hub, "private", 1, json!({"timeout_seconds": 1}), true).await;
        wait_ready(&hub, echo, 1).await;
        wait_ready(&hub, model, 1).await;

        // A WebSocket handshake is passed on, and then bytes flow both ways.
        let mut socket = tokio::net::TcpStream::connect(gateway)
            .await
            .expect("connect");
        socket
            .write_all(
                format!(
                    "GET /s/{owner}/echo/chat HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .expect("handshake");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            socket.read_exact(&mut byte).await.expect("head");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        for message in ["hello", "model output, token by token"] {
            socket.write_all(message.as_bytes()).await.expect("send");
            let mut back = vec![0u8; message.len()];
            socket.read_exact(&mut back).await.expect("echo");
            assert_eq!(back, message.as_bytes());
        }
        // An open WebSocket counts as a request in flight (LRU never evicts it) until it closes.
        assert_eq!(status_of(&hub, echo).await["serving"]["in_flight"], 1);
        drop(socket);
        let mut in_flight = Value::Null;
        for _ in 0..100 {
            in_flight = status_of(&hub, echo).await["serving"]["in_flight"].clone();
            if in_flight == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(in_flight, 0, "closed");

        // HTTP/2 with prior knowledge reaches an HTTP/1.1 replica.
        let h2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .expect("client");
        let response = h2
            .get(format!("http://{gateway}/s/{owner}/private/"))
            .bearer_auth(&hub.admin)
            .send()
            .await
            .expect("h2");
        assert_eq!(
            (response.version(), response.status().as_u16()),
            (reqwest::Version::HTTP_2, 200)
        );

        // Private: no token 401, another user's 403; the owner's passes.
        let (_, stranger) = hub.new_user("stranger").await;
        let path = format!("/s/{owner}/private/");
        let anonymous = reqwest::get(format!("http://{gateway}{path}"))
            .await
            .expect("anonymous");
        assert_eq!(anonymous.status(), 401);
        assert_eq!(
            anonymous.headers()["content-type"],
            "application/problem+json"
        );
        assert_eq!(Caller::new(gateway, &stranger).get(&path, &[]).await.0, 403);
        // By host under the service domain, as well as by path.
        let by_host = reqwest::Client::new()
            .get(format!("http://{gateway}/"))
            .header("host", format!("private.{owner}.models.test"))
            .bearer_auth(&hub.admin)
            .send()
            .await
            .expect("by host");
        assert_eq!(by_host.status(), 200);
        // A public service needs no token.
        let public = reqwest::get(format!("http://{gateway}/s/{owner}/echo/"))
            .await
            .expect("public");
        assert_eq!(public.status(), 200);

        // Too slow: 504, naming the setting.
        let (code, body) = Caller::new(gateway, &hub.admin)
            .get(&format!("{path}cgi-bin/slow"), &[])
            .await;
        assert_eq!(code, 504, "{body}");
        assert!(body.contains("timeout_seconds"), "{body}");
        let (code, body) = Caller::new(gateway, &hub.admin)
            .get(&format!("/s/{owner}/nothing/"), &[])
            .await;
        assert_eq!(code, 404, "{body}");

        // The gateway's metrics, labelled by service.
        let (_, _, metrics) = hub
            .call(Some(&hub.admin), Method::GET, "/metrics", None)
            .await;
        let label = format!("service=\"{owner}/private\"");
        for name in [
            "inference_requests_total",
            "inference_duration_seconds_bucket",
        ] {
            assert!(
                metrics
                    .lines()
                    .any(|line| line.starts_with(name) && line.contains(&label)),
                "{name} for {label} in:\n{metrics}"
            );
        }
        assert!(
            metrics.contains("berth_gateway_errors_total{kind=\"timeout\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!("models_loaded{{{label}}} 1")),
            "{metrics}"
        );
    })
    .await;
}

/// Creates the public model service `service` (a JSON body) of the admin on a new simulated
/// node, publishes its container port at `upstream` (a server of the test's own) and waits until
/// it is ready; its id.
async fn serve_on_simulated_node(hub: &Hub, service: Value, upstream: u16) -> i64 {
    let name = service["name"].as_str().expect("name").to_owned();
    let port = service["port"].as_i64().expect("port");
    let node = support::add_simulated_node(hub, &format!("sim-{name}")).await;
    let owner = admin_name(hub).await;
    let (status, created) = hub
        .admin(
            Method::POST,
            &format!("/api/{owner}/models/services?wait=60"),
            Some(service),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["service_id"].as_i64().expect("id");
    let status = status_of(hub, id).await;
    let container = container_of_replica(&status, 0);
    // The replica went to the emptiest simulated node, this one or an earlier test service's.
    let placed_on = status["replicas"][0]["node_id"].as_i64().unwrap_or(node.id);
    hub.state
        .fleet
        .publish(placed_on, &container, &format!("{port}/tcp"), upstream)
        .expect("publish");
    hub.state.routes.touch(id);
    wait_ready(hub, id, 1).await;
    id
}

/// An HTTP/2-only server, as a gRPC server is: it answers with the request's body, the version
/// and path it saw, and a `grpc-status` trailer.
async fn start_grpc_like_server() -> u16 {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper::service::service_fn(
                |request: hyper::Request<hyper::body::Incoming>| async move {
                    let seen = format!("{:?} {}", request.version(), request.uri().path());
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .map(|collected| collected.to_bytes())
                        .unwrap_or_default();
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                    let frames = futures_util::stream::iter([
                        Ok::<_, std::convert::Infallible>(Frame::data(body)),
                        Ok(Frame::trailers(trailers)),
                    ]);
                    let response = hyper::Response::builder()
                        .header("content-type", "application/grpc")
                        .header("x-seen", seen)
                        .body(StreamBody::new(frames))
                        .expect("response");
                    Ok::<_, std::convert::Infallible>(response)
                },
            );
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn grpc_passes_through_over_http2_with_its_trailers() {
    use http_body_util::{BodyExt, Full};
    let hub = start_with("gateway-grpc", settings()).await;
    let gateway = start_gateway(&hub).await;
    let owner = admin_name(&hub).await;
    let upstream = start_grpc_like_server().await;
    serve_on_simulated_node(
        &hub,
        json!({"name": "grpc", "image": IMAGE, "port": 50051, "start": true, "is_public": true,
            "serving": {"http2": true, "probe_path": "/grpc.health.v1.Health/Check"}}),
        upstream,
    )
    .await;

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    let request = hyper::Request::post(format!(
        "http://{gateway}/s/{owner}/grpc/model.Predictor/Predict"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(bytes::Bytes::from_static(b"\0\0\0\0\x05input")))
    .expect("request");
    let response = client.request(request).await.expect("gateway answers");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-seen"],
        "HTTP/2.0 /model.Predictor/Predict",
        "the replica got HTTP/2 and the path without the gateway's prefix"
    );
    let collected = response.into_body().collect().await.expect("body");
    assert_eq!(
        collected
            .trailers()
            .and_then(|trailers| trailers.get("grpc-status")),
        Some(&hyper::header::HeaderValue::from_static("0")),
        "trailers pass through"
    );
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x05input");
}

#[tokio::test]
async fn a_placement_that_does_not_fit_evicts_the_least_recently_used_idle_model_service() {
    let (hub, gateway) = hub_with_gateway(
        "gateway-evict",
        HubSettings {
            evict_idle_for_capacity: true,
            ..settings()
        },
    )
    .await;
    with_cleanup(&hub, async {
        let owner = admin_name(&hub).await;
        let (_, node) = hub.admin(Method::GET, "/api/nodes", None).await;
        let cores = node["nodes"][0]["observed"]["cpu_cores"]
            .as_f64()
            .or_else(|| {
                node["nodes"][0]["cpu"]
                    .as_str()
                    .and_then(|cpu| cpu.parse().ok())
            })
            .unwrap_or(2.0);
        // Each service takes most of the node's CPU, so two cannot be placed together.
        let big = (cores * 0.6 * 10.0).floor() / 10.0;
        let body = |name: &str| {
            json!({"name": name, "image": IMAGE, "memory_limit": "32m", "cpu_limit": big,
                "command": ["sh", "-c", MODEL], "port": 8080, "start": true})
        };
        let caller = Caller::new(gateway, &hub.admin);
        let (status, first) = hub
            .admin(
                Method::POST,
                &format!("/api/{owner}/models/services?wait=60"),
                Some(body("first")),
            )
            .await;
        assert_eq!(status, 200, "{first}");
        let first = first["service_id"].as_i64().expect("id");
        wait_ready(&hub, first, 1).await;

        // Running, with no idle timeout: not evictable, so the second does not fit.
        let (status, refused) = hub
            .admin(
                Method::POST,
                &format!("/api/{owner}/models/services?wait=60"),
                Some(body("second")),
            )
            .await;
        assert_eq!(status, 409, "{refused}");
        assert!(
            refused["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("CPU"),
            "{refused}"
        );

        // Unloaded, it keeps its reservation until a placement needs it: then it is evicted.
        let (status, _) = hub
            .admin(
                Method::POST,
                &format!("/api/services/{first}/unload?wait=60"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let (status, second) = hub
            .admin(
                Method::POST,
                &format!("/api/{owner}/models/services?wait=60"),
                Some(body("second")),
            )
            .await;
        assert_eq!(status, 200, "{second}");
        let second = second["service_id"].as_i64().expect("id");
        let evicted = status_of(&hub, first).await;
        assert_eq!(evicted["status"], "unloaded");
        assert_eq!(
            evicted["replicas"].as_array().map(Vec::len),
            Some(0),
            "{evicted}"
        );
        let (_, log) = hub
            .admin(
                Method::GET,
                &format!("/api/admin/operations?service_id={first}&action=service.evict"),
                None,
            )
            .await;
        assert_eq!(log["total"], 1, "the eviction is logged: {log}");

        // A request to the evicted one while the other runs: no room, a 503 that says so.
        wait_ready(&hub, second, 1).await;
        let (code, body_text) = caller.get(&format!("/s/{owner}/first/"), &[]).await;
        assert_eq!(code, 503, "{body_text}");
        // Right after, a request is refused with that reason, without trying again.
        let (code, again) = caller.get(&format!("/s/{owner}/first/"), &[]).await;
        assert_eq!(code, 503, "{again}");
        assert!(again.contains("could not be loaded"), "{again}");
        let (_, _, metrics) = hub
            .call(Some(&hub.admin), Method::GET, "/metrics", None)
            .await;
        assert!(
            metrics.contains(&format!(
                "model_load_failures_total{{service=\"{owner}/first\"}} 1"
            )),
            "one failed load: {metrics}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Once the other is unloaded, the request places the evicted one again and is answered.
        let (status, _) = hub
            .admin(
                Method::POST,
                &format!("/api/services/{second}/unload?wait=60"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        // A table refresh that read the database just before the unload may show `second`
        // running for one more refresh (every second); let it pass.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (code, body_text) = caller.get(&format!("/s/{owner}/first/"), &[]).await;
        assert_eq!(code, 200, "{body_text}");
        assert_eq!(
            status_of(&hub, first).await["replicas"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        assert_eq!(status_of(&hub, second).await["status"], "unloaded");
    })
    .await;
}

/// What a hand-written HTTP/1.1 replica saw: per request, its connection's number, its head and
/// its body.
#[derive(Default)]
struct Seen {
    requests: std::sync::Mutex<Vec<(usize, String, Vec<u8>)>>,
}

impl Seen {
    /// The requests that came through the gateway (probes carry no `x-forwarded-for`).
    fn forwarded(&self) -> Vec<(usize, String, Vec<u8>)> {
        self.requests
            .lock()
            .expect("seen")
            .iter()
            .filter(|(_, head, _)| head.contains("x-forwarded-for"))
            .cloned()
            .collect()
    }
}

/// A keep-alive HTTP/1.1 replica written by hand, to see exactly what the gateway sends:
/// `/echo` answers its own request head and body (with a length); `/chunked` sends a chunk,
/// waits for `release`, then the last chunk and a trailer; `/close` answers without a length
/// and closes; `/forget` answers and then closes without saying so.
async fn start_http1_replica() -> (u16, Arc<Seen>, Arc<tokio::sync::Notify>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Seen::default());
    let release = Arc::new(tokio::sync::Notify::new());
    let (seen_by_server, release_by_server) = (Arc::clone(&seen), Arc::clone(&release));
    tokio::spawn(async move {
        for number in 0.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (seen, release) = (Arc::clone(&seen_by_server), Arc::clone(&release_by_server));
            tokio::spawn(replica_connection(number, stream, seen, release));
        }
    });
    (port, seen, release)
}

async fn replica_connection(
    number: usize,
    mut stream: tokio::net::TcpStream,
    seen: Arc<Seen>,
    release: Arc<tokio::sync::Notify>,
) {
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        buffer.drain(..head_end);
        let lower = head.to_ascii_lowercase();
        let length = lower
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map(|value| value.trim().parse::<usize>().expect("length"));
        let body = if let Some(length) = length {
            while buffer.len() < length {
                let mut chunk = [0u8; 65536];
                let read = stream.read(&mut chunk).await.expect("body");
                assert!(read > 0, "body cut short");
                buffer.extend_from_slice(&chunk[..read]);
            }
            buffer.drain(..length).collect()
        } else if lower.contains("transfer-encoding: chunked") {
            while !buffer.ends_with(b"0\r\n\r\n") {
                let mut chunk = [0u8; 4096];
                let read = stream.read(&mut chunk).await.expect("chunks");
                assert!(read > 0, "chunks cut short");
                buffer.extend_from_slice(&chunk[..read]);
            }
            std::mem::take(&mut buffer)
        } else {
            Vec::new()
        };
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        seen.requests
            .lock()
            .expect("seen")
            .push((number, head.clone(), body.clone()));
        if path.starts_with("/chunked") {
            let first = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-done\r\n\r\n2\r\nab\r\n";
            stream.write_all(first).await.expect("first chunk");
            release.notified().await;
            let rest = b"4\r\ncdef\r\n0\r\nx-done: yes\r\n\r\n";
            stream.write_all(rest).await.expect("last chunk");
        } else if path.starts_with("/close") {
            let answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close";
            let _ = stream.write_all(answer).await;
            return;
        } else {
            let mut answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                head.len() + body.len()
            )
            .into_bytes();
            answer.extend_from_slice(head.as_bytes());
            answer.extend_from_slice(&body);
            stream.write_all(&answer).await.expect("answer");
            if path.starts_with("/forget") {
                return;
            }
        }
    }
}

/// Reads one answer with a `Content-Length` from `stream`: its head and body.
async fn read_answer(stream: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> (String, String) {
    loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end + 4]).into_owned();
            let length = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse::<usize>().expect("length"));
            if buffer.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&buffer[end + 4..end + 4 + length]).into_owned();
                buffer.drain(..end + 4 + length);
                return (head, body);
            }
        }
        let mut chunk = [0u8; 65536];
        let read = stream.read(&mut chunk).await.expect("answer");
        assert!(
            read > 0,
            "the gateway closed the connection; so far: {buffer:?}"
        );
        buffer.extend_from_slice(&chunk[..read]);
    }
}

#[tokio::test]
async fn plain_http11_keeps_its_connections_streams_its_framing_and_hands_over_the_rest() {
    use http_body_util::{BodyExt, Full};
    let hub = start_with("gateway-relay", settings()).await;
    let gateway = start_gateway(&hub).await;
    let owner = admin_name(&hub).await;
    let (upstream, seen, release) = start_http1_replica().await;
    serve_on_simulated_node(
        &hub,
        json!({"name": "relay", "image": IMAGE, "port": 9000, "start": true, "is_public": true,
            "serving": {"probe_path": "/probe"}}),
        upstream,
    )
    .await;
    let base = format!("/s/{owner}/relay");
    let get = |uri: &str| {
        hyper::Request::get(uri)
            .body(Full::new(bytes::Bytes::new()))
            .expect("request")
    };

    // One client connection, several requests: one connection to the replica carries them.
    let stream = tokio::net::TcpStream::connect(gateway)
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(connection);
    let request = hyper::Request::get(format!("{base}/echo?x=1"))
        .header("host", "models.test")
        .header("x-forwarded-for", "10.1.1.1")
        .header("connection", "keep-alive, x-drop")
        .header("x-drop", "hop")
        .header("x-keep", "end to end")
        .body(Full::new(bytes::Bytes::new()))
        .expect("request");
    let answer = sender.send_request(request).await.expect("echo");
    assert_eq!(answer.status(), 200);
    let echoed = answer.into_body().collect().await.expect("body").to_bytes();
    let echoed = String::from_utf8_lossy(&echoed).into_owned();
    assert!(echoed.starts_with("GET /echo?x=1 HTTP/1.1\r\n"), "{echoed}");
    for line in [
        format!("host: 127.0.0.1:{upstream}"),
        "x-forwarded-for: 10.1.1.1, 127.0.0.1".to_owned(),
        "x-forwarded-host: models.test".to_owned(),
        format!("x-forwarded-prefix: {base}"),
        "x-keep: end to end".to_owned(),
    ] {
        assert!(
            echoed.contains(&format!("{line}\r\n")),
            "{line} in {echoed}"
        );
    }
    assert!(!echoed.to_ascii_lowercase().contains("x-drop"), "{echoed}");

    // A request body with a length passes whole, whatever its size.
    let large: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let request = hyper::Request::post(format!("{base}/echo"))
        .body(Full::new(bytes::Bytes::from(large.clone())))
        .expect("request");
    let answer = sender.send_request(request).await.expect("post");
    let echoed = answer.into_body().collect().await.expect("body").to_bytes();
    assert!(echoed.ends_with(&large), "the body arrived whole");

    // A chunked answer streams: its first chunk arrives before the replica writes the last.
    let request = get(&format!("{base}/chunked"));
    let answer = sender.send_request(request).await.expect("chunked");
    let mut body = answer.into_body();
    let first = body
        .frame()
        .await
        .expect("a frame")
        .expect("first chunk")
        .into_data()
        .expect("data");
    assert_eq!(&first[..], b"ab");
    release.notify_one();
    let rest = body.collect().await.expect("rest");
    assert_eq!(
        rest.trailers().and_then(|trailers| trailers.get("x-done")),
        Some(&hyper::header::HeaderValue::from_static("yes")),
        "the trailer passes"
    );
    assert_eq!(&rest.to_bytes()[..], b"cdef");

    // The replica closing a kept connection unannounced costs the next request nothing.
    let request = get(&format!("{base}/forget"));
    assert_eq!(
        sender.send_request(request).await.expect("forget").status(),
        200
    );
    let request = get(&format!("{base}/echo?after-forget"));
    assert_eq!(
        sender.send_request(request).await.expect("after").status(),
        200
    );
    let forwarded = seen.forwarded();
    let connections: Vec<usize> = forwarded.iter().map(|(number, _, _)| *number).collect();
    assert_eq!(forwarded.len(), 5, "{forwarded:?}");
    assert!(
        connections[..4]
            .iter()
            .all(|number| *number == connections[0]),
        "one replica connection until it was closed: {connections:?}"
    );
    assert_ne!(connections[4], connections[0], "then a new one");

    // An answer without a length ends with its connection: the client's closes after it.
    let request = get(&format!("{base}/close"));
    let answer = sender.send_request(request).await.expect("close");
    assert_eq!(answer.headers()["connection"], "close");
    let body = answer.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"until close");

    // Pipelined requests are answered in order; a refusal of a request with a body (read
    // past) keeps the connection; a chunked request body goes to the general path, which
    // serves the rest of the connection.
    let mut raw = tokio::net::TcpStream::connect(gateway)
        .await
        .expect("connect");
    raw.write_all(
        format!(
            "GET {base}/echo?first HTTP/1.1\r\nHost: g\r\n\r\n\
             GET {base}/echo?second HTTP/1.1\r\nHost: g\r\n\r\n\
             POST /s/{owner}/nothing/ HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\n\r\nhello\
             POST {base}/echo?chunked HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n\
             GET {base}/echo?after HTTP/1.1\r\nHost: g\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("pipeline");
    let mut buffer = Vec::new();
    let (_, first) = read_answer(&mut raw, &mut buffer).await;
    let (_, second) = read_answer(&mut raw, &mut buffer).await;
    assert!(first.starts_with("GET /echo?first "), "{first}");
    assert!(second.starts_with("GET /echo?second "), "{second}");
    let (head, problem) = read_answer(&mut raw, &mut buffer).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(head.contains("application/problem+json"), "{head}");
    assert!(problem.contains("nothing"), "{problem}");
    let (head, chunked) = read_answer(&mut raw, &mut buffer).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(chunked.starts_with("POST /echo?chunked "), "{chunked}");
    assert!(chunked.contains("hello"), "{chunked}");
    let (_, after) = read_answer(&mut raw, &mut buffer).await;
    assert!(after.starts_with("GET /echo?after "), "{after}");
}

/// Polls `check` every 50 ms for at most `seconds`; whether it held.
async fn within(seconds: u64, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn the_gateway_and_the_reconciler_follow_the_engines_events() {
    let (hub, gateway) = hub_with_gateway("gateway-events", settings()).await;
    // No monitor runs here: only the node's events can bring a killed replica back.
    tokio::spawn(berth_hub::node_watch::run(
        Arc::clone(&hub.state),
        std::future::pending(),
    ));
    let engine = engine().await;
    with_cleanup(&hub, async {
        let owner = admin_name(&hub).await;
        let path = format!("/s/{owner}/evented/");
        let id = create(
            &hub,
            "evented",
            1,
            json!({"probe_interval_seconds": 1}),
            true,
        )
        .await;
        wait_ready(&hub, id, 1).await;
        let caller = Caller::new(gateway, &hub.admin);
        assert_eq!(caller.get(&path, &[]).await.0, 200);
        let container = container_of_replica(&status_of(&hub, id).await, 0);
        let published = async |container: &str| {
            engine
                .inspect(container)
                .await
                .expect("inspect")
                .ports
                .get("8080/tcp")
                .copied()
        };
        let before = published(&container).await.expect("published");

        // The engine restarts the replica, which comes back on another port.
        engine.restart(&container, 0).await.expect("restart");
        let after = published(&container).await.expect("published again");
        assert_ne!(before, after, "a restart publishes on a new port");
        assert!(
            within(10, async || caller.get(&path, &[]).await.0 == 200).await,
            "the gateway routes to the new port: {}",
            status_of(&hub, id).await
        );

        // Killed behind Berth's back: started again from the node's events, and recorded.
        engine.stop(&container, 0).await.expect("kill");
        assert!(
            within(15, async || {
                engine
                    .inspect(&container)
                    .await
                    .is_ok_and(|details| details.status == "running")
                    && hub
                        .actions_of_service(id)
                        .await
                        .iter()
                        .any(|action| action == "container.restart")
            })
            .await,
            "the replica was started again"
        );
        assert!(
            within(10, async || caller.get(&path, &[]).await.0 == 200).await,
            "served again after the restart"
        );
        let (_, _, metrics) = hub
            .call(Some(&hub.admin), Method::GET, "/metrics", None)
            .await;
        for line in [
            "berth_hub_node_mirrors{status=\"following\"} 1",
            "berth_hub_node_mirror_differences 0",
        ] {
            assert!(
                metrics.lines().any(|seen| seen == line),
                "{line} in\n{metrics}"
            );
        }
    })
    .await;
}

/// The value of the metric line starting with `name` and carrying `label`, from `/metrics`.
async fn metric(hub: &Hub, name: &str, label: &str) -> Option<f64> {
    let (_, _, metrics) = hub
        .call(Some(&hub.admin), Method::GET, "/metrics", None)
        .await;
    metrics
        .lines()
        .find(|line| line.starts_with(name) && line.contains(label))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn a_busy_replica_queues_requests_in_order_refuses_past_the_queue_and_limits_rates() {
    let (hub, gateway) = hub_with_gateway("gateway-flow", settings()).await;
    with_cleanup(&hub, async {
        let owner = admin_name(&hub).await;
        let id = create(
            &hub,
            "queued",
            1,
            json!({"max_concurrency_per_replica": 1, "queue_size": 9}),
            true,
        )
        .await;
        wait_ready(&hub, id, 1).await;
        let client = reqwest::Client::new();
        let url = format!("http://{gateway}/s/{owner}/queued/cgi-bin/second");
        let began = std::time::Instant::now();
        // Ten requests arrive in order — each sent once the one before is in service or
        // queued — and the replica takes one at a time, 1 s each.
        let label = format!("service=\"{owner}/queued\"");
        let mut requests = Vec::new();
        for n in 0..10 {
            if n > 1 {
                let queued = (n - 1) as f64;
                let mut seen = None;
                for _ in 0..250 {
                    seen = metric(&hub, "berth_gateway_queue_length", &label).await;
                    if seen == Some(queued) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(4)).await;
                }
                assert_eq!(seen, Some(queued), "request {} waits in the queue", n - 1);
            }
            let (client, url, token) = (client.clone(), url.clone(), hub.admin.clone());
            requests.push(tokio::spawn(async move {
                let response = client
                    .get(format!("{url}?{n}"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("answer");
                let status = response.status().as_u16();
                let body = response.text().await.expect("body");
                (n, status, body.trim().to_owned(), began.elapsed())
            }));
            if n == 0 {
                // The first is in service before the second is sent.
                let mut serving = 0;
                for _ in 0..250 {
                    serving = status_of(&hub, id).await["serving"]["replicas"][0]["in_flight"]
                        .as_u64()
                        .unwrap_or(0);
                    if serving == 1 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(4)).await;
                }
                assert_eq!(serving, 1, "the first request is in service");
            }
        }
        let mut waiting = None;
        for _ in 0..50 {
            waiting = metric(&hub, "berth_gateway_queue_length", &label).await;
            if waiting == Some(9.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(waiting, Some(9.0), "one in service, nine waiting");
        // The eleventh finds the queue full.
        let refused = client
            .get(format!("{url}?10"))
            .bearer_auth(&hub.admin)
            .send()
            .await
            .expect("answer");
        assert_eq!(refused.status().as_u16(), 429);
        assert_eq!(
            refused
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok()),
            Some("1")
        );
        assert_eq!(
            refused
                .headers()
                .get("content-type")
                .and_then(|value| value.to_str().ok()),
            Some("application/problem+json")
        );
        let problem: Value = refused.json().await.expect("problem");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|detail| detail.contains("serving.queue_size")),
            "{problem}"
        );
        let mut answers = Vec::new();
        for request in requests {
            answers.push(request.await.expect("task"));
        }
        answers.sort_by_key(|answer| answer.3);
        for (place, (n, status, body, _)) in answers.iter().enumerate() {
            assert_eq!((*status, body.as_str()), (200, n.to_string().as_str()));
            assert_eq!(*n, place, "answered in the order they arrived: {answers:?}");
        }
        for pair in answers.windows(2) {
            assert!(
                pair[1].3 - pair[0].3 >= Duration::from_millis(900),
                "one at a time: {answers:?}"
            );
        }
        assert_eq!(
            metric(
                &hub,
                "berth_gateway_rejections_total",
                &format!("{label},reason=\"queue_full\"")
            )
            .await,
            Some(1.0)
        );
        assert_eq!(
            metric(&hub, "berth_gateway_queue_wait_seconds_count", &label).await,
            Some(9.0),
            "nine waited"
        );

        // A rate limit per caller: two at once, then one per second; other callers unaffected.
        let limited = create_running(
            &hub,
            "limited",
            1,
            json!({"rate_limit": {"requests_per_second": 1, "burst": 2}}),
            true,
            MODEL,
            true,
        )
        .await;
        wait_ready(&hub, limited, 1).await;
        let (_, other) = hub.new_user("other").await;
        let limited_url = format!("http://{gateway}/s/{owner}/limited/");
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let response = client
                .get(&limited_url)
                .bearer_auth(&hub.admin)
                .send()
                .await
                .expect("answer");
            statuses.push(response.status().as_u16());
            if response.status() == 429 {
                assert!(response.headers().contains_key("retry-after"));
            }
        }
        assert_eq!(statuses, [200, 200, 429]);
        let response = client
            .get(&limited_url)
            .bearer_auth(&other)
            .send()
            .await
            .expect("answer");
        assert_eq!(
            response.status(),
            200,
            "another user has a bucket of its own"
        );
    })
    .await;
}

/// An OpenAI-compatible model server named `name`: `POST /v1/chat/completions` answers JSON with
/// `usage` (7 prompt, 3 completion tokens) and whether it saw an `Authorization` header; with
/// `"stream": true` it sends one SSE event, waits for `release`, then an event with `usage` (5,
/// 2) and `[DONE]`. Anything else answers 200 (its probe).
async fn start_openai_like_server(name: &'static str, release: Arc<tokio::sync::Notify>) -> u16 {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let release = Arc::clone(&release);
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let release = Arc::clone(&release);
                    async move {
                        let authorized = request.headers().contains_key("authorization");
                        let path = request.uri().path().to_owned();
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|collected| collected.to_bytes())
                            .unwrap_or_default();
                        let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let (sender, receiver) = tokio::sync::mpsc::channel::<
                            Result<Frame<bytes::Bytes>, std::convert::Infallible>,
                        >(4);
                        let mut response = hyper::Response::builder();
                        if path == "/v1/chat/completions" && asked["stream"] == true {
                            response = response.header("content-type", "text/event-stream");
                            tokio::spawn(async move {
                                let first = format!(
                                    "data: {}\n\n",
                                    json!({"model": name, "choices": [{"delta": {"content": "first"}}]})
                                );
                                let _ = sender.send(Ok(Frame::data(first.into()))).await;
                                release.notified().await;
                                let last = format!(
                                    "data: {}\n\ndata: [DONE]\n\n",
                                    json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
                                );
                                let _ = sender.send(Ok(Frame::data(last.into()))).await;
                            });
                        } else {
                            response = response.header("content-type", "application/json");
                            let answer = json!({"server": name, "model": asked["model"],
                                "authorization_seen": authorized, "path": path,
                                "usage": {"prompt_tokens": 7, "completion_tokens": 3}});
                            let _ = sender
                                .send(Ok(Frame::data(answer.to_string().into())))
                                .await;
                        }
                        let frames = futures_util::stream::unfold(receiver, |mut receiver| async {
                            receiver.recv().await.map(|frame| (frame, receiver))
                        });
                        Ok::<_, std::convert::Infallible>(
                            response.body(StreamBody::new(frames)).expect("response"),
                        )
                    }
                },
            );
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn the_openai_front_routes_by_model_streams_counts_usage_and_honours_key_limits() {
    let hub = start_with("gateway-openai", settings()).await;
    let gateway = start_gateway(&hub).await;
    let (_, me) = hub.admin(Method::GET, "/api/users/me", None).await;
    let admin_id = me["id"].as_i64().expect("id");
    let release = Arc::new(tokio::sync::Notify::new());
    let llama = serve_on_simulated_node(
        &hub,
        json!({"name": "llama", "image": IMAGE, "port": 8000, "start": true,
            "serving": {"model_names": ["llama-3", "llama"]}}),
        start_openai_like_server("llama", Arc::clone(&release)).await,
    )
    .await;
    serve_on_simulated_node(
        &hub,
        json!({"name": "qwen", "image": IMAGE, "port": 8000, "start": true,
            "serving": {"model_names": ["qwen"]}}),
        start_openai_like_server("qwen", Arc::clone(&release)).await,
    )
    .await;
    let client = reqwest::Client::new();
    let v1 = |path: &str| format!("http://{gateway}/v1/{path}");
    let models = |token: Option<String>| {
        let (client, url) = (client.clone(), v1("models"));
        async move {
            let mut request = client.get(url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let listed: Value = request
                .send()
                .await
                .expect("models")
                .json()
                .await
                .expect("json");
            listed["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|model| model["id"].as_str().expect("id").to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        models(Some(hub.admin.clone())).await,
        ["llama", "llama-3", "qwen"]
    );
    assert!(
        models(None).await.is_empty(),
        "private models are not listed without a key"
    );
    let chat = |token: Option<&str>, body: Value| {
        let mut request = client.post(v1("chat/completions")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    // Routed by the model name (an alias too); the Berth key does not reach the server.
    let answer = chat(
        Some(&hub.admin),
        json!({"model": "llama-3", "messages": []}),
    )
    .await
    .expect("answer");
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.expect("json");
    assert_eq!(
        (&body["server"], &body["authorization_seen"], &body["path"]),
        (
            &json!("llama"),
            &json!(false),
            &json!("/v1/chat/completions")
        )
    );

    // Unknown models, missing keys and bodies without a model, in OpenAI's error shape.
    let unknown = chat(Some(&hub.admin), json!({"model": "gpt-9"}))
        .await
        .expect("answer");
    assert_eq!(unknown.status(), 404);
    let problem: Value = unknown.json().await.expect("json");
    assert_eq!(
        (
            &problem["error"]["code"],
            &problem["error"]["type"],
            &problem["error"]["param"]
        ),
        (
            &json!("model_not_found"),
            &json!("invalid_request_error"),
            &json!("model")
        )
    );
    let anonymous = chat(None, json!({"model": "qwen"})).await.expect("answer");
    assert_eq!(anonymous.status(), 401);
    let no_model = chat(Some(&hub.admin), json!({"messages": []}))
        .await
        .expect("answer");
    assert_eq!(no_model.status(), 400);
    assert_eq!(
        no_model.json::<Value>().await.expect("json")["error"]["param"],
        "model"
    );

    // A key limited to llama reaches llama alone, and not the API.
    let (status, issued) = hub
        .admin(
            Method::POST,
            &format!("/api/users/{admin_id}/tokens"),
            Some(json!({"name": "llama-only", "services": [llama]})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let limited = issued["token"].as_str().expect("token").to_owned();
    assert_eq!(models(Some(limited.clone())).await, ["llama", "llama-3"]);
    let other = chat(Some(&limited), json!({"model": "qwen"}))
        .await
        .expect("answer");
    assert_eq!(other.status(), 404, "qwen is out of the key's reach");
    let own = chat(Some(&limited), json!({"model": "llama"}))
        .await
        .expect("answer");
    assert_eq!(own.status(), 200);
    let (status, _, _) = hub
        .call(Some(&limited), Method::GET, "/api/services", None)
        .await;
    assert_eq!(status, 403, "a limited key is for the gateway only");
    let (status, problem) = hub
        .admin(
            Method::POST,
            &format!("/api/users/{admin_id}/tokens"),
            Some(json!({"services": [999_999]})),
        )
        .await;
    assert_eq!((status, problem["field"].as_str()), (404, Some("services")));

    // Streamed chunk by chunk: the first event arrives while the server holds the last.
    let mut stream = chat(
        Some(&hub.admin),
        json!({"model": "llama", "stream": true, "messages": []}),
    )
    .await
    .expect("answer");
    assert_eq!(stream.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
        .await
        .expect("the first event comes before the last is written")
        .expect("chunk")
        .expect("data");
    assert!(
        String::from_utf8_lossy(&first).contains("first"),
        "{first:?}"
    );
    release.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.chunk().await.expect("chunk") {
        rest.extend_from_slice(&chunk);
    }
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));

    // Usage counted per service, model, user and kind; and in the service's status.
    let admin_name = me["name"].as_str().expect("name");
    for (model, user, kind, count) in [
        ("llama-3", admin_name, "prompt", 7.0),
        ("llama", admin_name, "prompt", 7.0 + 5.0),
        ("llama", admin_name, "completion", 3.0 + 2.0),
    ] {
        let label = format!(
            "service=\"{admin_name}/llama\",model=\"{model}\",user=\"{user}\",kind=\"{kind}\""
        );
        let mut seen = None;
        for _ in 0..50 {
            seen = metric(&hub, "berth_gateway_tokens_total", &label).await;
            if seen == Some(count) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(seen, Some(count), "{label}");
    }
    let status = status_of(&hub, llama).await;
    assert_eq!(
        status["serving"]["tokens"],
        json!({"prompt": 19, "completion": 8})
    );
    // The stats history keeps them: each sample the tokens since the one before, none twice.
    for _ in 0..2 {
        berth_hub::stats_sampler::sample_all(&hub.state)
            .await
            .expect("sampled");
        let (_, history) = hub
            .admin(
                Method::GET,
                &format!("/api/services/{llama}/stats/history"),
                None,
            )
            .await;
        let points = history["points"].as_array().expect("points");
        let sum = |field: &str| {
            points
                .iter()
                .map(|point| point[field].as_i64().unwrap_or_default())
                .sum::<i64>()
        };
        assert_eq!(
            (sum("prompt_tokens"), sum("completion_tokens")),
            (19, 8),
            "{history}"
        );
    }
}

/// The replicas of service `id` as its status lists them.
async fn replica_count(hub: &Hub, id: i64) -> usize {
    status_of(hub, id).await["replicas"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn load_scales_a_service_out_and_back_and_an_idle_one_to_zero() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (hub, gateway) = hub_with_gateway("gateway-autoscale", settings()).await;
    tokio::spawn(berth_hub::scaling::run(
        Arc::clone(&hub.state),
        std::future::pending(),
    ));
    with_cleanup(&hub, async {
        let owner = admin_name(&hub).await;
        let id = create(
            &hub,
            "elastic",
            1,
            json!({"autoscale": {"min": 1, "max": 3, "target_in_flight_per_replica": 1,
                "scale_up_seconds": 1, "scale_down_delay_seconds": 3}}),
            true,
        )
        .await;
        wait_ready(&hub, id, 1).await;
        // Three clients each keep a 1 s request in flight until told to stop.
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("http://{gateway}/s/{owner}/elastic/cgi-bin/second");
        let mut clients = Vec::new();
        for _ in 0..3 {
            let (stop, url, token) = (Arc::clone(&stop), url.clone(), hub.admin.clone());
            clients.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let status = client
                        .get(&url)
                        .bearer_auth(&token)
                        .send()
                        .await
                        .map_or(0, |response| response.status().as_u16());
                    statuses.push(status);
                }
                statuses
            }));
        }
        wait_ready(&hub, id, 3).await;
        stop.store(true, Ordering::Relaxed);
        let mut answered = 0;
        for client in clients {
            let statuses = client.await.expect("client");
            assert!(
                statuses.iter().all(|status| *status == 200),
                "no request failed while the service grew: {statuses:?}"
            );
            answered += statuses.len();
        }
        assert!(answered >= 3, "{answered}");
        // Without load, back to the minimum after the delay; the replicas that stay stay.
        for _ in 0..300 {
            if replica_count(&hub, id).await == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(replica_count(&hub, id).await, 1);
        let (_, log) = hub
            .admin(
                Method::GET,
                &format!("/api/admin/operations?service_id={id}&action=service.scale&size=500"),
                None,
            )
            .await;
        let reasons: Vec<String> = log["operations"]
            .as_array()
            .expect("operations")
            .iter()
            .map(|operation| {
                operation["detail"]["reason"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        assert!(
            reasons.len() >= 2
                && reasons
                    .iter()
                    .all(|reason| reason.starts_with("autoscale: ")),
            "each step logged with its reason: {reasons:?}"
        );

        // min: 0 unloads a service left without requests; its next request loads it again.
        let idle = create(
            &hub,
            "sleepy",
            1,
            json!({"autoscale": {"min": 0, "max": 2, "target_rps_per_replica": 5,
                "scale_down_delay_seconds": 2}}),
            true,
        )
        .await;
        wait_ready(&hub, idle, 1).await;
        let mut wanted = String::new();
        for _ in 0..200 {
            wanted = status_of(&hub, idle).await["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if wanted == "unloaded" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(wanted, "unloaded");
        let woken = reqwest::Client::new()
            .get(format!("http://{gateway}/s/{owner}/sleepy/"))
            .bearer_auth(&hub.admin)
            .send()
            .await
            .expect("answer");
        let status = woken.status();
        let body = woken.text().await.unwrap_or_default();
        assert_eq!(status, 200, "the next request loads it: {body}");
    })
    .await;
}

/// Four clients asking `url` one request after another until `stop`: every answer's status
/// and body.
fn load_on(
    url: String,
    token: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(u16, String)>>> {
    (0..4)
        .map(|_| {
            let (url, token, stop) = (url.clone(), token.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut answers = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let answer = match client.get(&url).bearer_auth(&token).send().await {
                        Ok(response) => (
                            response.status().as_u16(),
                            response.text().await.unwrap_or_default().trim().to_owned(),
                        ),
                        Err(err) => (0, err.to_string()),
                    };
                    answers.push(answer);
                }
                answers
            })
        })
        .collect()
}

async fn answers_of(
    clients: Vec<tokio::task::JoinHandle<Vec<(u16, String)>>>,
) -> Vec<(u16, String)> {
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.expect("client"));
    }
    all
}

#[tokio::test]
async fn a_new_version_rolls_out_under_load_and_one_that_never_gets_ready_is_undone() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (hub, gateway) = hub_with_gateway("gateway-rollout", settings()).await;
    with_cleanup(&hub, async {
        let owner = admin_name(&hub).await;
        let id = create(
            &hub,
            "rolling",
            2,
            json!({"probe_interval_seconds": 1, "rollout_deadline_seconds": 8}),
            true,
        )
        .await;
        let first = containers(&wait_ready(&hub, id, 2).await);
        let url = format!("http://{gateway}/s/{owner}/rolling/");

        // A new version under load: no request fails, each is answered by one version.
        let stop = Arc::new(AtomicBool::new(false));
        let clients = load_on(url.clone(), hub.admin.clone(), Arc::clone(&stop));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, operation) = hub
            .admin(
                Method::PATCH,
                &format!("/api/services/{id}?wait=60"),
                Some(json!({"environment": {"VERSION": "2"}})),
            )
            .await;
        assert_eq!(
            (status, operation["state"].as_str()),
            (200, Some("succeeded")),
            "{operation}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let answers = answers_of(clients).await;
        let second = containers(&wait_ready(&hub, id, 2).await);
        assert!(
            first.keys().all(|host| !second.contains_key(host)),
            "new containers"
        );
        let failed: Vec<_> = answers
            .iter()
            .filter(|(status, _)| *status != 200)
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {} failed: {failed:?}",
            failed.len(),
            answers.len()
        );
        assert!(
            answers
                .iter()
                .all(|(_, host)| first.contains_key(host) || second.contains_key(host)),
            "every answer from one of the two versions"
        );
        assert!(
            answers.iter().any(|(_, host)| first.contains_key(host)),
            "old served"
        );
        assert!(
            answers.iter().any(|(_, host)| second.contains_key(host)),
            "new served"
        );
        let engine = engine().await;
        for container in first.values() {
            assert!(
                engine.inspect(container).await.is_err(),
                "the previous version's container {container} is retired"
            );
        }

        // A version whose replicas never pass their probe is undone; traffic never reaches it.
        let stop = Arc::new(AtomicBool::new(false));
        let clients = load_on(url, hub.admin.clone(), Arc::clone(&stop));
        let (status, operation) = hub
            .admin(
                Method::PATCH,
                &format!("/api/services/{id}?wait=60"),
                Some(json!({"command": ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]})),
            )
            .await;
        stop.store(true, Ordering::Relaxed);
        let answers = answers_of(clients).await;
        assert_eq!(
            (status, operation["state"].as_str()),
            (200, Some("failed")),
            "{operation}"
        );
        let error = operation["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("rolled back") && error.contains("rollout_deadline_seconds"),
            "{error}"
        );
        assert!(
            answers
                .iter()
                .all(|(status, host)| *status == 200 && second.contains_key(host)),
            "only the running version answered: {answers:?}"
        );
        let (_, service) = hub
            .admin(Method::GET, &format!("/api/services/{id}"), None)
            .await;
        assert_eq!(service["version"], 4, "version 3 undone as version 4");
        assert_eq!(
            service["definition"]["environment"]["VERSION"], "2",
            "the previous definition serves again"
        );
        let after = containers(&wait_ready(&hub, id, 2).await);
        assert_eq!(after, second, "the same containers serve");
    })
    .await;
}

#[tokio::test]
async fn routing_rules_send_requests_to_some_replicas_or_another_service() {
    let hub = start_with("gateway-rules", settings()).await;
    let node = add_local_node(&hub).await;
    let gateway = start_gateway(&hub).await;
    with_cleanup(&hub, async {
        let (status, _) = hub
            .admin(
                Method::PUT,
                &format!("/api/nodes/{node}"),
                Some(json!({"labels": {"zone": "a"}})),
            )
            .await;
        assert_eq!(status, 200);
        let owner = admin_name(&hub).await;
        let (status, problem) = hub
            .admin(
                Method::POST,
                &format!("/api/{owner}/models/services"),
                Some(json!({"name": "bad", "image": IMAGE, "port": 8080,
                    "serving": {"rules": [{"path_prefix": "/v2"}]}})),
            )
            .await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (422, Some("serving.rules[0].replicas")),
            "{problem}"
        );
        let other = create(&hub, "other", 1, json!({}), true).await;
        let id = create(
            &hub,
            "ruled",
            2,
            json!({"rules": [
                {"header": {"name": "X-Tier", "value": "gold"}, "replicas": [1]},
                {"path_prefix": "/index", "query": {"name": "to", "value": "other"},
                    "service": "other"},
                {"header": {"name": "X-Zone", "value": "a"}, "node_labels": {"zone": "a"}},
                {"header": {"name": "X-Zone", "value": "b"}, "node_labels": {"zone": "b"}},
            ]}),
            true,
        )
        .await;
        let ruled = wait_ready(&hub, id, 2).await;
        let other_status = wait_ready(&hub, other, 1).await;
        let host_of = |status: &Value, replica: i64| -> String {
            container_of_replica(status, replica)[..12].to_owned()
        };
        let caller = Caller::new(gateway, &hub.admin);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..6 {
            let (code, host) = caller
                .get(&format!("/s/{owner}/ruled/"), &[("x-tier", "gold")])
                .await;
            assert_eq!(code, 200);
            assert_eq!(host.trim(), host_of(&ruled, 1), "gold goes to replica 1");
            let (code, host) = caller
                .get(&format!("/s/{owner}/ruled/index.html?to=other"), &[])
                .await;
            assert_eq!(code, 200);
            assert_eq!(
                host.trim(),
                host_of(&other_status, 0),
                "to=other goes to other"
            );
        }
        for _ in 0..4 {
            let (_, host) = caller.get(&format!("/s/{owner}/ruled/"), &[]).await;
            seen.insert(host.trim().to_owned());
        }
        assert_eq!(
            seen.len(),
            2,
            "the rest by the policy over both replicas: {seen:?}"
        );
        let (code, _) = caller
            .get(&format!("/s/{owner}/ruled/"), &[("x-zone", "a")])
            .await;
        assert_eq!(code, 200, "replicas on nodes labelled zone=a answer");
        let (code, detail) = caller
            .get(&format!("/s/{owner}/ruled/"), &[("x-zone", "b")])
            .await;
        assert_eq!(code, 503, "no replica runs on a zone=b node");
        assert!(detail.contains("routing rule"), "{detail}");
    })
    .await;
}

/// Waits until operation `id`'s progress step mentions `word`; its row.
async fn operation_saying(hub: &Hub, id: i64, word: &str) -> Value {
    for _ in 0..300 {
        let (_, operation) = hub
            .admin(Method::GET, &format!("/api/operations/{id}"), None)
            .await;
        if operation.to_string().contains(word) {
            return operation;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("operation {id} never said {word:?}");
}

#[tokio::test]
async fn a_canary_rollout_pauses_split_then_is_aborted_or_promoted() {
    let (hub, gateway) = hub_with_gateway("gateway-canary-rollout", settings()).await;
    with_cleanup(&hub, async {
        let owner = admin_name(&hub).await;
        let id = create(
            &hub,
            "careful",
            1,
            json!({"probe_interval_seconds": 1, "routing": {"canary": {"percent": 50}},
                "rules": [{"header": {"name": "X-Pin", "value": "v1"}, "version": 1}]}),
            true,
        )
        .await;
        let first = containers(&wait_ready(&hub, id, 1).await);
        let caller = Caller::new(gateway, &hub.admin);
        let hosts = || async {
            let mut seen = std::collections::HashSet::new();
            for _ in 0..40 {
                let (code, host) = caller.get(&format!("/s/{owner}/careful/"), &[]).await;
                assert_eq!(code, 200);
                seen.insert(host.trim().to_owned());
            }
            seen
        };
        let new_version = |version: &str| {
            let hub = &hub;
            let version = version.to_owned();
            async move {
                let (status, operation) = hub
                    .admin(
                        Method::PATCH,
                        &format!("/api/services/{id}"),
                        Some(json!({"environment": {"VERSION": version}})),
                    )
                    .await;
                assert_eq!(status, 202, "{operation}");
                operation["id"].as_i64().expect("operation")
            }
        };
        let (status, _) = hub
            .admin(
                Method::POST,
                &format!("/api/services/{id}/rollout/promote"),
                None,
            )
            .await;
        assert_eq!(status, 409, "no rollout under way");

        // Paused at the canary: half the requests go to the new version, half to the old.
        let operation = new_version("2").await;
        operation_saying(&hub, operation, "paused").await;
        let split = hosts().await;
        assert_eq!(split.len(), 2, "both versions answer: {split:?}");
        assert!(split.iter().any(|host| first.contains_key(host)));
        for _ in 0..10 {
            let (code, host) = caller
                .get(&format!("/s/{owner}/careful/"), &[("x-pin", "v1")])
                .await;
            assert_eq!(code, 200);
            assert!(
                first.contains_key(host.trim()),
                "a rule by version keeps X-Pin: v1 on version 1: {host}"
            );
        }
        let (status, _) = hub
            .admin(
                Method::POST,
                &format!("/api/services/{id}/rollout/abort"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let ended = operation_saying(&hub, operation, "aborted by its owner").await;
        assert_eq!(ended["state"], "failed", "{ended}");
        assert!(
            hosts().await.iter().all(|host| first.contains_key(host)),
            "the previous version alone serves again"
        );

        // Paused again, then promoted: the new version takes everything.
        let operation = new_version("3").await;
        operation_saying(&hub, operation, "paused").await;
        let (status, _) = hub
            .admin(
                Method::POST,
                &format!("/api/services/{id}/rollout/promote"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let (_, ended) = hub
            .admin(
                Method::GET,
                &format!("/api/operations/{operation}?wait=30"),
                None,
            )
            .await;
        assert_eq!(ended["state"], "succeeded", "{ended}");
        let promoted = hosts().await;
        assert!(
            promoted.len() == 1 && promoted.iter().all(|host| !first.contains_key(host)),
            "only the new version: {promoted:?}"
        );
        assert!(
            hub.actions_of_service(id)
                .await
                .iter()
                .filter(|action| *action == "service.rollout")
                .count()
                == 2,
            "each command logged"
        );
    })
    .await;
}

#[tokio::test]
async fn max_surge_rolls_out_a_batch_at_a_time_without_a_failed_request() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (hub, gateway) = hub_with_gateway("gateway-surge", settings()).await;
    with_cleanup(&hub, async {
        let owner = admin_name(&hub).await;
        let id = create(
            &hub,
            "surging",
            3,
            json!({"probe_interval_seconds": 1, "max_surge": 1}),
            true,
        )
        .await;
        let first = containers(&wait_ready(&hub, id, 3).await);
        let stop = Arc::new(AtomicBool::new(false));
        let clients = load_on(
            format!("http://{gateway}/s/{owner}/surging/"),
            hub.admin.clone(),
            Arc::clone(&stop),
        );
        // Count the service's running containers on the engine while the rollout goes.
        let most = Arc::new(AtomicUsize::new(0));
        let counter = {
            let (most, stop) = (Arc::clone(&most), Arc::clone(&stop));
            let labels = [
                format!("berth.service={id}"),
                format!("berth.hub={}", hub.state.hub_id),
            ];
            tokio::spawn(async move {
                let engine = engine().await;
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(listed) = engine.list(&labels, false).await {
                        most.fetch_max(listed.len(), Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let (status, operation) = hub
            .admin(
                Method::PATCH,
                &format!("/api/services/{id}?wait=90"),
                Some(json!({"environment": {"VERSION": "2"}})),
            )
            .await;
        stop.store(true, Ordering::Relaxed);
        let _ = counter.await;
        let answers = answers_of(clients).await;
        assert_eq!(
            (status, operation["state"].as_str()),
            (200, Some("succeeded")),
            "{operation}"
        );
        assert!(
            answers.iter().all(|(status, _)| *status == 200),
            "no request failed: {answers:?}"
        );
        assert_eq!(
            most.load(Ordering::Relaxed),
            4,
            "never more than the 3 replicas and 1 surging"
        );
        let after = containers(&wait_ready(&hub, id, 3).await);
        assert!(after.keys().all(|host| !first.contains_key(host)));
    })
    .await;
}

/// The metric names a PromQL expression reads: identifiers outside label matchers, ranges,
/// strings and `by (…)` clauses that are not functions or keywords.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let skip_to = |from: usize, close: char| {
        chars[from..]
            .iter()
            .position(|c| *c == close)
            .map_or(chars.len(), |at| from + at + 1)
    };
    let mut names = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        if c == '{' {
            at = skip_to(at, '}');
        } else if c == '[' {
            at = skip_to(at, ']');
        } else if c == '"' {
            at = skip_to(at + 1, '"');
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = at;
            while at < chars.len() && (chars[at].is_ascii_alphanumeric() || chars[at] == '_') {
                at += 1;
            }
            let word: String = chars[start..at].iter().collect();
            let mut next = at;
            while next < chars.len() && chars[next] == ' ' {
                next += 1;
            }
            if matches!(word.as_str(), "by" | "without" | "on" | "ignoring") {
                at = skip_to(next, ')');
            } else if chars.get(next) != Some(&'(')
                && !matches!(
                    word.as_str(),
                    "and"
                        | "or"
                        | "unless"
                        | "bool"
                        | "offset"
                        | "sum"
                        | "avg"
                        | "min"
                        | "max"
                        | "count"
                        | "group"
                        | "topk"
                        | "bottomk"
                )
            {
                names.push(word);
            }
        } else {
            at += 1;
        }
    }
    names
}

/// The sample names of a `/metrics` text.
fn exported(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// `deploy/…` of the repository.
fn deployed(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path)
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = deployed("prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
    ] {
        let ran = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian's prometheus package; scripts/test installs it)");
        assert!(
            ran.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&ran.stdout),
            String::from_utf8_lossy(&ran.stderr)
        );
    }
}

/// Every metric the Grafana dashboards query and the alert rules read (but those a first event
/// brings: a failed load, a TLS node's certificate, and Prometheus's own `up`) is on
/// a running hub's or agent's `/metrics` once a model service answered, was rate-limited,
/// unloaded and woken, and its stats were sampled.
#[tokio::test]
async fn the_dashboards_and_alert_rules_query_metrics_the_hub_and_agent_export() {
    let hub = start_with("gateway-dashboards", settings()).await;
    let gateway = start_gateway(&hub).await;
    let agent = support::start_agent_with(
        "dashboards",
        "dash-key",
        "127.0.0.1:0",
        &[("BERTH_SIMULATED_GPUS", "1xA100-80GB")],
    )
    .await;
    let release = Arc::new(tokio::sync::Notify::new());
    let id = serve_on_simulated_node(
        &hub,
        json!({"name": "dash", "image": IMAGE, "port": 8000, "start": true,
            "serving": {"model_names": ["dash-model"], "max_concurrency_per_replica": 4,
                "rate_limit": {"requests_per_second": 5, "burst": 2}}}),
        start_openai_like_server("dash", release).await,
    )
    .await;
    let client = reqwest::Client::new();
    let chat = || {
        client
            .post(format!("http://{gateway}/v1/chat/completions"))
            .bearer_auth(&hub.admin)
            .json(&json!({"model": "dash-model", "messages": []}))
            .send()
    };
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(chat().await.expect("answer").status().as_u16());
    }
    assert_eq!(codes, [200, 200, 429], "the third is over the burst");
    let (status, _) = hub
        .admin(
            Method::POST,
            &format!("/api/services/{id}/unload?wait=60"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(chat().await.expect("answer").status(), 200, "woken");
    let missing = client
        .get(format!("http://{gateway}/s/nobody/nothing/"))
        .send()
        .await
        .expect("answer");
    assert_eq!(missing.status(), 404);
    berth_hub::stats_sampler::sample_all(&hub.state)
        .await
        .expect("sampled");

    let (_, _, hub_text) = hub
        .call(Some(&hub.admin), Method::GET, "/metrics", None)
        .await;
    let capabilities = client
        .get(format!("{}/capabilities", agent.url()))
        .bearer_auth("dash-key")
        .send()
        .await
        .expect("capabilities");
    assert_eq!(capabilities.status(), 200);
    let agent_text = client
        .get(format!("{}/metrics", agent.url()))
        .bearer_auth("dash-key")
        .send()
        .await
        .expect("agent metrics")
        .text()
        .await
        .expect("text");
    let mut available = exported(&hub_text);
    available.extend(exported(&agent_text));

    let first_event = [
        "up",
        "model_load_failures_total",
        "berth_hub_node_certificate_expiry_timestamp_seconds",
    ];
    let mut queried: Vec<(String, String)> = Vec::new();
    let boards: Vec<std::path::PathBuf> = std::fs::read_dir(deployed("grafana"))
        .expect("dashboards")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "json")
        })
        .collect();
    assert_eq!(
        boards.len(),
        4,
        "fleet, node, service, model serving: {boards:?}"
    );
    for path in boards {
        let board: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        let panels = board["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{}", path.display());
        for panel in panels {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                for name in metric_names(expr) {
                    if !first_event.contains(&name.as_str()) {
                        queried.push((format!("{}: {}", path.display(), panel["title"]), name));
                    }
                }
            }
        }
    }
    let rules: Value = yaml_serde::from_str(
        &std::fs::read_to_string(deployed("prometheus/alerts.yml")).expect("rules"),
    )
    .expect("YAML");
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            for name in metric_names(rule["expr"].as_str().expect("expr")) {
                if !first_event.contains(&name.as_str()) {
                    queried.push((format!("alert {}", rule["alert"]), name));
                }
            }
        }
    }
    assert!(queried.len() > 40, "{queried:?}");
    let absent: Vec<&(String, String)> = queried
        .iter()
        .filter(|(_, name)| !available.contains(name))
        .collect();
    assert!(
        absent.is_empty(),
        "queried but not exported: {absent:?}\nexported: {available:?}"
    );
    assert_eq!(
        metric_names(
            "sum by (le, service) (rate(x_seconds_bucket{a=\"b\"}[5m])) / on (service) y_total > 3"
        ),
        ["x_seconds_bucket", "y_total"]
    );
    agent.kill().await;
}
