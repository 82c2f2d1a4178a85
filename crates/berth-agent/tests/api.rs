//! The agent's HTTP API against the real engine: every route, auth, the seed's example, scope,
//! limits, adoption after a restart, log streaming, metrics and bad input.

mod support;

use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use support::{FOREVER, KEY, TEST_IMAGE, free_port, json_of, server_id, start};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn container(name: &str, extra: Value) -> Value {
    let mut body = json!({"name": name, "image": TEST_IMAGE, "command": ["sh", "-c", FOREVER],
        "labels": {"berth.test": "agent"}});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

#[tokio::test]
async fn only_health_and_the_banner_are_open() {
    let agent = start("auth", &[]).await;
    let health = agent
        .anonymous(Method::GET, "/health")
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    assert!(
        health.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("application/json")
    );

    for path in [
        "/containers/",
        "/system",
        "/capabilities",
        "/metrics",
        "/images/",
    ] {
        let response = agent
            .anonymous(Method::GET, path)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    let wrong = agent
        .anonymous(Method::GET, "/containers/")
        .bearer_auth("nope")
        .send()
        .await
        .expect("request");
    let (status, body) = json_of(wrong).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (401, Some("Invalid API key"))
    );
    let format = agent
        .anonymous(Method::GET, "/containers/")
        .header("authorization", format!("Token {KEY}"));
    assert_eq!(format.send().await.expect("request").status(), 401);

    let described = agent
        .anonymous(Method::GET, "/openapi.json")
        .send()
        .await
        .expect("openapi");
    assert_eq!(described.status(), 200, "open as in mManager");
    let (status, _) = agent.call(Method::GET, "/containers/", None).await;
    assert_eq!(status, 200);
    let (status, body) = agent.call(Method::GET, "/no/such/route", None).await;
    assert_eq!((status, body["status"].as_u64()), (404, Some(404)));
    let (status, _) = agent.call(Method::PUT, "/containers/", None).await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn the_seed_example_runs_through_its_whole_life() {
    let agent = start("seed", &[]).await;
    let name = format!("{}-svc", server_id("seed"));
    let host_dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&host_dir).expect("dir");
    let port = free_port();
    let body = json!({
        "name": name, "image": TEST_IMAGE, "command": "sh -c 'echo ready; while true; do sleep 0.2; done'",
        "working_dir": "/app",
        "environment": {"MODEL_ID": "my-model", "GRADIO_SERVER_PORT": "7860"},
        "ports": {"7860/tcp": port},
        "volumes": {host_dir.to_str().expect("utf-8"): "/app/data"},
        "memory_limit": "2GB", "cpu_limit": 2.0, "restart_policy": "unless-stopped",
        "labels": {"berth.test": "agent"}
    });
    agent
        .with_cleanup(async {
            let (status, created) = agent
                .call(Method::POST, "/containers/", Some(body.clone()))
                .await;
            assert_eq!(status, 200, "{created}");
            assert_eq!(created["success"], true);
            assert_eq!(created["operation"], "create");
            let id = created["container_id"].as_str().expect("id").to_owned();
            assert_eq!(id.len(), 64);
            assert_eq!(created["details"]["status"], "created");

            let (status, info) = agent
                .call(Method::GET, &format!("/containers/{name}"), None)
                .await;
            assert_eq!(status, 200, "{info}");
            assert_eq!(info["id"], id.as_str());
            assert_eq!(info["status"], "created");
            assert_eq!(info["environment"]["MODEL_ID"], "my-model");
            assert_eq!(info["labels"]["mmanager.managed"], "true");
            assert_eq!(info["labels"]["berth.agent"], server_id("seed"));
            assert_eq!(info["resource_limits"]["memory"], 2u64 * 1024 * 1024 * 1024);
            assert_eq!(info["resource_limits"]["nano_cpus"], 2_000_000_000u64);
            let (status, by_prefix) = agent
                .call(Method::GET, &format!("/containers/{}", &id[..12]), None)
                .await;
            assert_eq!(
                (status, by_prefix["name"].as_str()),
                (200, Some(name.as_str()))
            );

            let (status, started) = agent
                .call(Method::POST, &format!("/containers/{id}/start"), None)
                .await;
            assert_eq!(
                (status, &started["details"]["status"]),
                (200, &json!("running")),
                "{started}"
            );
            let (_, again) = agent
                .call(Method::POST, &format!("/containers/{id}/start"), None)
                .await;
            assert_eq!(
                (again["success"].as_bool(), &again["details"]),
                (Some(true), &Value::Null)
            );

            let (_, info) = agent
                .call(Method::GET, &format!("/containers/{id}"), None)
                .await;
            assert_eq!(info["ports"]["7860/tcp"], port);
            assert!(
                info["resource_usage"]["memory_mb"].as_f64().is_some(),
                "{info}"
            );

            let (status, stats) = agent
                .call(Method::GET, &format!("/containers/{id}/stats"), None)
                .await;
            assert_eq!(status, 200, "{stats}");
            for field in [
                "cpu_percent",
                "memory_usage_mb",
                "memory_limit_mb",
                "memory_percent",
                "pids",
                "network_rx_bytes",
                "block_read_bytes",
                "timestamp",
            ] {
                assert!(!stats[field].is_null(), "stats lack {field}: {stats}");
            }
            assert_eq!(stats["memory_limit_mb"], 2048.0);
            assert!(stats["resource_usage"]["cpu_percent"].as_f64().is_some());

            let mut logs = Value::Null;
            for _ in 0..50 {
                logs = agent
                    .call(
                        Method::GET,
                        &format!("/containers/{id}/logs?lines=10"),
                        None,
                    )
                    .await
                    .1;
                if logs["lines"] == 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(logs["logs"], "ready\n", "{logs}");
            assert_eq!(logs["container_id"], id.as_str());

            let (status, stopped) = agent
                .call(
                    Method::POST,
                    &format!("/containers/{id}/stop?timeout=5"),
                    None,
                )
                .await;
            assert_eq!(
                (status, &stopped["details"]["status"]),
                (200, &json!("exited")),
                "{stopped}"
            );
            let (_, again) = agent
                .call(Method::POST, &format!("/containers/{id}/stop"), None)
                .await;
            assert_eq!(again["details"], Value::Null);
            assert!(
                again["message"]
                    .as_str()
                    .expect("message")
                    .contains("exited")
            );
            let (status, stats) = agent
                .call(Method::GET, &format!("/containers/{id}/stats"), None)
                .await;
            assert_eq!(status, 200, "stats of a stopped container: {stats}");

            let (status, restarted) = agent
                .call(
                    Method::POST,
                    &format!("/containers/{id}/restart?timeout=5"),
                    None,
                )
                .await;
            assert_eq!(
                (status, restarted["operation"].as_str()),
                (200, Some("restart"))
            );

            let (status, refused) = agent
                .call(Method::DELETE, &format!("/containers/{id}"), None)
                .await;
            assert_eq!(status, 409, "{refused}");
            assert!(
                refused["detail"]
                    .as_str()
                    .expect("detail")
                    .contains("force=true")
            );
            let (status, removed) = agent
                .call(
                    Method::DELETE,
                    &format!("/containers/{id}?force=true"),
                    None,
                )
                .await;
            assert_eq!(
                (status, removed["details"]["force"].as_bool()),
                (200, Some(true))
            );
            let (status, again) = agent
                .call(
                    Method::DELETE,
                    &format!("/containers/{id}?force=true"),
                    None,
                )
                .await;
            assert_eq!((status, &again["details"]), (200, &Value::Null));
            let (status, gone) = agent
                .call(Method::GET, &format!("/containers/{id}"), None)
                .await;
            assert_eq!(status, 404, "{gone}");
            assert_eq!(gone["detail"], format!("container does not exist: {id}"));
        })
        .await;
    std::fs::remove_dir_all(host_dir).ok();
}

#[tokio::test]
async fn other_containers_on_the_host_are_invisible() {
    let agent = start("scope", &[]).await;
    let stranger_name = format!("{}-stranger", server_id("scope"));
    let stranger = berth_core::ContainerSpec::from_json_value(
        json!({"name": stranger_name, "image": TEST_IMAGE, "command": ["sh", "-c", FOREVER], "labels": {"berth.test": "agent"}}),
    )
    .expect("spec");
    agent
        .state
        .driver
        .create(&stranger, &mut |_| {})
        .await
        .expect("create outside the agent");
    let mine = format!("{}-mine", server_id("scope"));
    agent
        .with_cleanup(async {
            let (status, _) = agent
                .call(
                    Method::POST,
                    "/containers/",
                    Some(container(&mine, json!({}))),
                )
                .await;
            assert_eq!(status, 200);
            let (_, list) = agent.call(Method::GET, "/containers/?all=true", None).await;
            let names: Vec<&str> = list["containers"]
                .as_array()
                .expect("list")
                .iter()
                .filter_map(|c| c["name"].as_str())
                .collect();
            assert_eq!(names, vec![mine.as_str()]);
            assert_eq!(
                (list["total"].as_u64(), list["stopped"].as_u64()),
                (Some(1), Some(1))
            );
            let (_, running_only) = agent
                .call(Method::GET, "/containers/?all=false", None)
                .await;
            assert_eq!(running_only["total"], 0);

            let (status, _) = agent
                .call(Method::GET, &format!("/containers/{stranger_name}"), None)
                .await;
            assert_eq!(status, 404);
            let (status, _) = agent
                .call(
                    Method::POST,
                    &format!("/containers/{stranger_name}/start"),
                    None,
                )
                .await;
            assert_eq!(status, 404);
            let (status, _) = agent
                .call(
                    Method::DELETE,
                    &format!("/containers/{stranger_name}?force=true"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "removing an unknown id is a no-op success");
            let still_there = agent
                .state
                .driver
                .inspect(&stranger_name)
                .await
                .expect("the stranger survives");
            assert_eq!(still_there.status, "created");
        })
        .await;
    let _ = agent
        .state
        .driver
        .remove(
            &stranger_name,
            berth_docker::RemoveOptions {
                force: true,
                keep_data: false,
            },
        )
        .await;
}

/// A container the original mManager made on this host (its labels, CpuQuota and CpuPeriod,
/// created before the agent started): the agent adopts it, lists it with its creation time,
/// reports its limits as mManager did, and stops and removes it; mManager's string-typed
/// numbers are accepted on create.
#[tokio::test]
async fn containers_the_original_mmanager_made_are_adopted() {
    use bollard::models::{ContainerCreateBody, HostConfig};
    use bollard::query_parameters::CreateContainerOptionsBuilder;
    let server = server_id("mmanager-made");
    let docker = match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("tcp://") => {
            bollard::Docker::connect_with_http(&host, 60, bollard::API_DEFAULT_VERSION)
        }
        _ => bollard::Docker::connect_with_local_defaults(),
    }
    .expect("engine");
    let made_by_mmanager = format!("{server}-legacy");
    let labels = std::collections::HashMap::from([
        ("mmanager.managed".to_owned(), "true".to_owned()),
        ("mmanager.server_id".to_owned(), server.clone()),
        (
            "mmanager.created_at".to_owned(),
            "2026-01-01T00:00:00+00:00".to_owned(),
        ),
        ("berth.test".to_owned(), "agent".to_owned()),
    ]);
    let legacy = docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name(&made_by_mmanager)
                    .build(),
            ),
            ContainerCreateBody {
                image: Some(TEST_IMAGE.to_owned()),
                cmd: Some(vec!["sh".into(), "-c".into(), FOREVER.into()]),
                labels: Some(labels),
                host_config: Some(HostConfig {
                    memory: Some(128 << 20),
                    cpu_period: Some(100_000),
                    cpu_quota: Some(50_000),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("created the way mManager did");
    docker
        .start_container(
            &legacy.id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .expect("started");
    let agent = start("mmanager-made", &[]).await;
    agent
        .with_cleanup(async {
            assert_eq!(agent.state.adopted().await.expect("counted"), 1);
            let (_, list) = agent.call(Method::GET, "/containers/?all=true", None).await;
            let item = list["containers"]
                .as_array()
                .expect("list")
                .iter()
                .find(|item| item["name"] == made_by_mmanager.as_str())
                .cloned()
                .unwrap_or_else(|| panic!("the legacy container is listed: {list}"));
            assert_eq!(item["status"], "running");
            assert!(
                item["created_at"]
                    .as_str()
                    .is_some_and(|at| at.starts_with("20")),
                "the engine's creation time: {item}"
            );
            let (status, info) = agent
                .call(
                    Method::GET,
                    &format!("/containers/{made_by_mmanager}"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{info}");
            assert_eq!(
                (
                    info["resource_limits"]["cpu_quota"].as_i64(),
                    info["resource_limits"]["cpu_period"].as_i64()
                ),
                (Some(50_000), Some(100_000))
            );

            // The agent's own: NanoCpus, reported as the same quota and period.
            let own = format!("{server}-own");
            let (status, created) = agent
                .call(
                    Method::POST,
                    "/containers/",
                    Some(container(
                        &own,
                        json!({"cpu_limit": "0.5", "ports": {"8080/tcp": "eighty"}}),
                    )),
                )
                .await;
            assert_eq!(
                (status, created["field"].as_str()),
                (422, Some("ports.8080/tcp")),
                "a text that is no port is refused: {created}"
            );
            let free = free_port().to_string();
            let (status, created) = agent
                .call(
                    Method::POST,
                    "/containers/",
                    Some(container(
                        &own,
                        json!({"cpu_limit": "0.5", "ports": {"8080/tcp": free}}),
                    )),
                )
                .await;
            assert_eq!(status, 200, "mManager's string numbers: {created}");
            let (_, info) = agent
                .call(Method::GET, &format!("/containers/{own}"), None)
                .await;
            let limits = &info["resource_limits"];
            assert_eq!(
                (
                    limits["cpu_quota"].as_i64(),
                    limits["cpu_period"].as_i64(),
                    limits["nano_cpus"].as_i64()
                ),
                (Some(50_000), Some(100_000), Some(500_000_000)),
                "{info}"
            );

            let (status, stopped) = agent
                .call(
                    Method::POST,
                    &format!("/containers/{made_by_mmanager}/stop?timeout=1"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{stopped}");
            let (status, removed) = agent
                .call(
                    Method::DELETE,
                    &format!("/containers/{made_by_mmanager}?force=true"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{removed}");
            assert!(
                docker
                    .inspect_container(
                        &legacy.id,
                        None::<bollard::query_parameters::InspectContainerOptions>
                    )
                    .await
                    .is_err(),
                "removed from the engine"
            );
        })
        .await;
}

#[tokio::test]
async fn the_container_limit_and_names_are_enforced() {
    let agent = start("limit", &[("MAX_CONTAINERS", "2")]).await;
    let prefix = server_id("limit");
    agent
        .with_cleanup(async {
            for index in 0..2 {
                let (status, body) = agent
                    .call(
                        Method::POST,
                        "/containers/",
                        Some(container(&format!("{prefix}-{index}"), json!({}))),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
            }
            let (status, refused) = agent
                .call(
                    Method::POST,
                    "/containers/",
                    Some(container(&format!("{prefix}-2"), json!({}))),
                )
                .await;
            assert_eq!(status, 409, "{refused}");
            assert!(
                refused["detail"]
                    .as_str()
                    .expect("detail")
                    .contains("MAX_CONTAINERS=2"),
                "{refused}"
            );
            assert!(
                agent
                    .state
                    .driver
                    .inspect(&format!("{prefix}-2"))
                    .await
                    .is_err(),
                "nothing created past the limit"
            );

            let (_, first) = agent
                .call(Method::GET, &format!("/containers/{prefix}-0"), None)
                .await;
            let (status, duplicate) = agent
                .call(
                    Method::POST,
                    "/containers/",
                    Some(container(&format!("{prefix}-0"), json!({}))),
                )
                .await;
            assert_eq!(status, 409);
            let detail = duplicate["detail"].as_str().expect("detail");
            assert!(
                detail.contains(first["id"].as_str().expect("id")),
                "{detail}"
            );
        })
        .await;
}

#[tokio::test]
async fn a_restarted_agent_adopts_its_containers() {
    let mut first = start("adopt", &[]).await;
    let name = format!("{}-kept", server_id("adopt"));
    let (_, created) = first
        .call(
            Method::POST,
            "/containers/",
            Some(container(&name, json!({}))),
        )
        .await;
    let id = created["container_id"].as_str().expect("id").to_owned();
    first
        .call(Method::POST, &format!("/containers/{id}/start"), None)
        .await;
    first.stop();
    drop(first);

    let second = start("adopt", &[]).await;
    second
        .with_cleanup(async {
            let (_, list) = second.call(Method::GET, "/containers/", None).await;
            let ids: Vec<&str> = list["containers"]
                .as_array()
                .expect("list")
                .iter()
                .filter_map(|c| c["id"].as_str())
                .collect();
            assert_eq!(ids, vec![id.as_str()], "the same container, once");
            let (status, stopped) = second
                .call(
                    Method::POST,
                    &format!("/containers/{name}/stop?timeout=5"),
                    None,
                )
                .await;
            assert_eq!(
                (status, &stopped["details"]["status"]),
                (200, &json!("exited"))
            );

            let other = start("adopt-other", &[]).await;
            let (_, list) = other.call(Method::GET, "/containers/?all=true", None).await;
            assert_eq!(list["total"], 0, "another server id does not see it");
        })
        .await;
}

#[tokio::test]
async fn logs_can_be_followed() {
    let agent = start("follow", &[]).await;
    let name = format!("{}-ticks", server_id("follow"));
    let ticking = container(
        &name,
        json!({"command": ["sh", "-c", "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done"]}),
    );
    agent
        .with_cleanup(async {
            agent
                .call(Method::POST, "/containers/", Some(ticking))
                .await;
            agent
                .call(Method::POST, &format!("/containers/{name}/start"), None)
                .await;
            let response = agent
                .request(
                    Method::GET,
                    &format!("/containers/{name}/logs?follow=true&tail=0&timestamps=true"),
                )
                .send()
                .await
                .expect("follow");
            assert_eq!(response.status(), 200);
            assert!(
                response.headers()["content-type"]
                    .to_str()
                    .expect("type")
                    .starts_with("text/plain")
            );
            let mut stream = response.bytes_stream();
            let mut text = String::new();
            let collected = tokio::time::timeout(Duration::from_secs(10), async {
                while text.matches("tick-").count() < 3 {
                    let chunk = stream.next().await.expect("more output").expect("chunk");
                    text.push_str(&String::from_utf8_lossy(&chunk));
                }
            })
            .await;
            assert!(
                collected.is_ok(),
                "three lines arrive while following: {text:?}"
            );
            assert!(text.starts_with("20"), "timestamps requested: {text:?}");

            let (status, body) = agent
                .call(
                    Method::GET,
                    &format!("/containers/{name}/logs?lines=0"),
                    None,
                )
                .await;
            assert_eq!((status, body["field"].as_str()), (422, Some("lines")));
            let (status, body) = agent
                .call(
                    Method::GET,
                    &format!("/containers/{name}/logs?follow=perhaps"),
                    None,
                )
                .await;
            assert_eq!((status, body["field"].as_str()), (422, Some("follow")));
        })
        .await;
}

#[tokio::test]
async fn bad_input_is_refused_by_field_and_creates_nothing() {
    let agent = start("bad", &[]).await;
    let name = format!("{}-x", server_id("bad"));
    agent
        .with_cleanup(async {
            let raw = agent
                .request(Method::POST, "/containers/")
                .header("content-type", "application/json")
                .body("{\"name\": \"x\", ")
                .send()
                .await
                .expect("send");
            let (status, body) = json_of(raw).await;
            assert_eq!(status, 422, "{body}");
            assert!(
                body["detail"].as_str().expect("detail").contains("EOF"),
                "{body}"
            );

            let cases = [
                (json!({"nickname": "x"}), "nickname"),
                (json!({"memory_limit": "2x"}), "memory_limit"),
                (json!({"cpu_limit": -1}), "cpu_limit"),
                (json!({"ports": {"7860/tcp": 70000}}), "ports.7860/tcp"),
                (json!({"restart_policy": "sometimes"}), "restart_policy"),
                (json!({"environment": {"PORT": 7860}}), "environment.PORT"),
                (json!({"auto_remove": true}), "auto_remove"),
                (json!({"image": ""}), "image"),
            ];
            for (extra, field) in cases {
                let (status, body) = agent
                    .call(
                        Method::POST,
                        "/containers/",
                        Some(container(&name, extra.clone())),
                    )
                    .await;
                assert_eq!(status, 422, "{extra}: {body}");
                assert_eq!(body["field"].as_str(), Some(field), "{extra}: {body}");
            }
            let (status, body) = agent
                .call(
                    Method::POST,
                    "/containers/",
                    Some(json!({"name": "bad name", "image": TEST_IMAGE})),
                )
                .await;
            assert_eq!((status, body["field"].as_str()), (422, Some("name")));
            let (_, list) = agent.call(Method::GET, "/containers/?all=true", None).await;
            assert_eq!(list["total"], 0, "nothing was created");
            let (status, body) = agent
                .call(Method::GET, "/containers/?all=maybe", None)
                .await;
            assert_eq!((status, body["field"].as_str()), (422, Some("all")));
        })
        .await;
}

#[tokio::test]
async fn files_and_directories_are_copied_in() {
    let agent = start("files", &[]).await;
    let name = format!("{}-files", server_id("files"));
    agent
        .with_cleanup(async {
            agent.call(Method::POST, "/containers/", Some(container(&name, json!({})))).await;
            agent.call(Method::POST, &format!("/containers/{name}/start"), None).await;

            let file = json!({"container_path": "/app/target.txt", "content_base64": b64(b"hello\n"), "file_name": "other.txt"});
            let (status, copied) = agent.call(Method::POST, &format!("/containers/{name}/files"), Some(file)).await;
            assert_eq!(status, 200, "{copied}");
            assert_eq!((copied["operation"].as_str(), copied["file_size"].as_u64()), (Some("copy_file"), Some(6)));
            let read = agent.state.driver.exec(&name, &["cat", "/app/other.txt"]).await.expect("exec");
            assert_eq!(read.stdout, "hello\n");

            let mut archive = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_size(7);
            header.set_mode(0o644);
            archive.append_data(&mut header, "model/weights", &b"weights"[..]).expect("append");
            let archive = archive.into_inner().expect("tar");
            agent.state.driver.exec(&name, &["sh", "-c", "mkdir -p /app/model && echo old > /app/model/stale"]).await.expect("exec");
            agent.call(Method::POST, &format!("/containers/{name}/stop?timeout=5"), None).await;
            let directory = json!({"container_path": "/app/model", "archive_base64": b64(&archive)});
            let (status, copied) = agent.call(Method::POST, &format!("/containers/{name}/directories"), Some(directory)).await;
            assert_eq!(status, 200, "{copied}");
            let listing = agent.state.driver.exec(&name, &["ls", "/app/model"]).await.expect("the container was started");
            assert_eq!(listing.stdout.trim(), "weights", "the old directory was replaced");

            let (status, body) = agent
                .call(Method::POST, &format!("/containers/{name}/files"), Some(json!({"container_path": "relative", "content_base64": "aGk="})))
                .await;
            assert_eq!((status, body["field"].as_str()), (422, Some("container_path")));
            let (status, body) = agent
                .call(Method::POST, &format!("/containers/{name}/files"), Some(json!({"container_path": "/app/x", "content_base64": "***"})))
                .await;
            assert_eq!((status, body["field"].as_str()), (422, Some("content_base64")));
            let (status, _) = agent
                .call(Method::POST, &format!("/containers/{name}/files"), Some(json!({"container_path": "/missing/dir/x", "content_base64": "aGk="})))
                .await;
            assert_eq!(status, 404);
        })
        .await;
}

#[tokio::test]
async fn images_are_listed_inspected_and_refused_by_the_engine_api() {
    let agent = start("images", &[]).await;
    let (status, list) = agent.call(Method::GET, "/images/", None).await;
    assert_eq!(status, 200);
    let found = list["images"]
        .as_array()
        .expect("images")
        .iter()
        .any(|image| image["repository"] == "berth-test/busybox" && image["tag"] == "latest");
    assert!(found, "{list}");
    let (status, image) = agent
        .call(Method::GET, "/images/berth-test%2Fbusybox%3Alatest", None)
        .await;
    assert_eq!(
        (status, image["exists"].as_bool()),
        (200, Some(true)),
        "{image}"
    );
    assert!(image["id"].as_str().expect("id").starts_with("sha256:"));
    let (status, missing) = agent
        .call(Method::GET, "/images/nothing%2Fhere%3A1", None)
        .await;
    assert_eq!((status, missing["exists"].as_bool()), (200, Some(false)));
    let (status, pulled) = agent
        .call(
            Method::POST,
            "/images/pull",
            Some(json!({"image": "127.0.0.1:1/berth/absent:1"})),
        )
        .await;
    assert_eq!(status, 404, "{pulled}");
    let (status, body) = agent
        .call(Method::POST, "/images/pull", Some(json!({"image": "a b"})))
        .await;
    assert_eq!((status, body["field"].as_str()), (422, Some("image")));
    let streamed = agent
        .request(Method::POST, "/images/pull?stream=true")
        .json(&json!({"image": "127.0.0.1:1/berth/absent:1"}))
        .send()
        .await
        .expect("stream");
    assert_eq!(streamed.headers()["content-type"], "application/x-ndjson");
    let text = streamed.text().await.expect("body");
    let last: Value = serde_json::from_str(text.lines().last().expect("a line")).expect("NDJSON");
    assert_eq!(last["status"], "error");
    let (status, _) = agent
        .call(Method::DELETE, "/images/nothing%2Fhere%3A1", None)
        .await;
    assert_eq!(status, 404);
    let (status, pruned) = agent.call(Method::POST, "/images/prune", None).await;
    assert_eq!((status, pruned["status"].as_str()), (200, Some("success")));
    let (_, still) = agent
        .call(Method::GET, "/images/berth-test%2Fbusybox%3Alatest", None)
        .await;
    assert_eq!(
        still["exists"], true,
        "a tagged image survives a dangling-only prune"
    );
}

#[tokio::test]
async fn node_documents_report_the_host_and_simulated_gpus() {
    let agent = start(
        "node",
        &[
            ("SERVER_TYPE", "gpu"),
            ("BERTH_SIMULATED_GPUS", "2xA100-80GB"),
        ],
    )
    .await;
    let (_, health) = json_of(
        agent
            .anonymous(Method::GET, "/health")
            .send()
            .await
            .expect("health"),
    )
    .await;
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["server_type"], "gpu");
    assert_eq!(health["containers"]["max_allowed"], 100);
    assert_eq!(health["capabilities"]["gpu_support"], true);
    assert!(
        health["capabilities"]["max_memory_gb"]
            .as_f64()
            .expect("memory")
            > 0.5
    );
    assert!(health["resources"]["cpu_cores"].as_u64().expect("cores") >= 1);

    let (_, capabilities) = agent.call(Method::GET, "/capabilities", None).await;
    assert_eq!(capabilities["simulated"], true);
    let gpus = capabilities["gpus"].as_array().expect("gpus");
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[1]["memory_total_bytes"], 80u64 * 1024 * 1024 * 1024);
    assert!(gpus.iter().all(|gpu| gpu["simulated"] == true));
    assert!(capabilities["system_disk_limit_supported"].is_boolean());
    assert!(capabilities["hami_core_available"].is_boolean());

    let (_, system) = agent.call(Method::GET, "/system", None).await;
    for field in [
        "hostname",
        "os",
        "kernel",
        "cpu_model",
        "cpu_cores",
        "memory_total_gb",
        "load_average",
        "docker_version",
    ] {
        assert!(!system[field].is_null(), "system lacks {field}: {system}");
    }
    assert!(system["disk_usage"]["total_gb"].as_f64().expect("disk") > 0.0);

    let (status, document) = agent.call(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.1.0");
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_json() {
    let agent = start("metrics", &[("BERTH_SIMULATED_GPUS", "1xL4-24GB")]).await;
    let name = format!("{}-m", server_id("metrics"));
    agent
        .with_cleanup(async {
            agent.call(Method::POST, "/containers/", Some(container(&name, json!({})))).await;
            agent.call(Method::POST, &format!("/containers/{name}/start"), None).await;
            let response = agent.request(Method::GET, "/metrics").send().await.expect("metrics");
            assert!(response.headers()["content-type"].to_str().expect("type").starts_with("application/openmetrics-text"));
            let text = response.text().await.expect("text");
            for line in ["mmanager_containers_total 1", "mmanager_containers_running 1", "mmanager_load_percentage 1.0"] {
                assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
            }
            for name in ["mmanager_memory_usage_bytes ", "mmanager_cpu_cores ", "mmanager_gpu_memory_total_bytes{",
                "berth_agent_http_requests_total{method=\"POST\",route=\"/containers/\",status=\"200\"} 1"] {
                assert!(text.contains(name), "missing {name:?} in\n{text}");
            }
            assert!(text.ends_with("# EOF\n"));
            check_with_promtool(&text);

            let (_, json) = agent.call(Method::GET, "/metrics?format=json", None).await;
            assert_eq!(json["metrics"]["mmanager_containers_running"], 1);
            assert_eq!(json["metrics"]["mmanager_info"]["server_id"], server_id("metrics"));
        })
        .await;
}

/// promtool parses the text (exit 1 on a parse error). Of its lint remarks only two are expected:
/// OpenMetrics counters read as lacking help text, and the seed's gauge name
/// `mmanager_containers_total`.
fn check_with_promtool(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) if std::env::var_os("CI").is_none() => {
            eprintln!("promtool not available ({err}); scripts/test installs it");
            return;
        }
        Err(err) => panic!("promtool is needed in CI: {err}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("promtool");
    let remarks = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert_ne!(
        output.status.code(),
        Some(1),
        "promtool could not parse the metrics: {remarks}"
    );
    for remark in remarks.lines().filter(|line| !line.trim().is_empty()) {
        let expected = remark.ends_with("no help text")
            || remark
                == "mmanager_containers_total non-counter metrics should not have \"_total\" suffix";
        assert!(expected, "unexpected promtool remark: {remark}");
    }
}

#[tokio::test]
async fn the_api_can_be_served_over_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca =
        rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("key"))
            .expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("sign");
    let dir = std::env::temp_dir().join(server_id("tls"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert_path, key_path) = (dir.join("agent.pem"), dir.join("agent-key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");

    let agent = start(
        "tls",
        &[
            ("BERTH_AGENT_TLS_CERT", cert_path.to_str().expect("utf-8")),
            ("BERTH_AGENT_TLS_KEY", key_path.to_str().expect("utf-8")),
        ],
    )
    .await;
    let client = reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA cert")])
        .build()
        .expect("client");
    let url = format!("https://{}/containers/", agent.address);
    let response = client
        .get(&url)
        .bearer_auth(KEY)
        .send()
        .await
        .expect("HTTPS request");
    assert_eq!(response.status(), 200);
    let plain = reqwest::Client::new()
        .get(format!("http://{}/health", agent.address))
        .send()
        .await;
    assert!(
        plain
            .map(|response| response.status() != 200)
            .unwrap_or(true),
        "plain HTTP is not served"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// One Server-Sent Event: its name, id and JSON data.
#[derive(Debug)]
struct StreamEvent {
    event: String,
    id: u64,
    data: Value,
}

/// Reads Server-Sent Events from `response` until `done` says so (or 20 s pass).
async fn read_events(
    response: reqwest::Response,
    mut done: impl FnMut(&[StreamEvent]) -> bool,
) -> Vec<StreamEvent> {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(&events) {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("no more events after {events:?}"))
            .expect("stream open")
            .expect("chunk");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = (String::new(), 0, Value::Null);
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    event = value.to_owned();
                } else if let Some(value) = line.strip_prefix("id: ") {
                    id = value.parse().expect("numeric id");
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(value).expect("JSON data");
                }
            }
            if !event.is_empty() {
                events.push(StreamEvent { event, id, data });
            }
        }
    }
    events
}

#[tokio::test]
async fn the_event_stream_shows_api_and_engine_changes_in_order_and_resumes() {
    let agent = start("events", &[]).await;
    let name = format!("{}-e", server_id("events"));
    agent
        .with_cleanup(async {
            for _ in 0..100 {
                if agent.state.mirror.is_synced() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let opened = agent
                .request(Method::GET, "/events")
                .send()
                .await
                .expect("events");
            assert_eq!(opened.status(), 200);
            assert!(
                opened.headers()["content-type"]
                    .to_str()
                    .expect("type")
                    .starts_with("text/event-stream")
            );
            let reader = tokio::spawn(read_events(opened, |events| {
                events.iter().any(|event| event.data["action"] == "destroy")
            }));

            let (status, created) = agent
                .call(
                    Method::POST,
                    "/containers/",
                    Some(container(&name, json!({"ports": {"8080/tcp": null}}))),
                )
                .await;
            assert_eq!(status, 200, "{created}");
            let id = created["container_id"].as_str().expect("id").to_owned();
            // A read right after the agent's own write sees it.
            let (_, listed) = agent.call(Method::GET, "/containers/?all=true", None).await;
            let item = listed["containers"]
                .as_array()
                .expect("list")
                .iter()
                .find(|item| item["id"] == id.as_str())
                .cloned()
                .expect("listed after create");
            assert_eq!(item["status"], "created");
            assert!(
                item["created_at"]
                    .as_str()
                    .is_some_and(|at| at.starts_with("20")),
                "{item}"
            );
            agent
                .call(Method::POST, &format!("/containers/{name}/start"), None)
                .await;
            let (_, listed) = agent.call(Method::GET, "/containers/", None).await;
            let item = &listed["containers"][0];
            assert_eq!(
                (item["id"].as_str(), item["status"].as_str()),
                (Some(id.as_str()), Some("running"))
            );
            assert!(
                item["ports"]["8080/tcp"]
                    .as_u64()
                    .is_some_and(|port| port > 0),
                "{item}"
            );
            // Behind the agent's back: the engine kills it.
            agent.state.driver.stop(&id, 0).await.expect("engine stop");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let (_, listed) = agent.call(Method::GET, "/containers/?all=true", None).await;
                if listed["containers"][0]["status"] == "exited" {
                    assert_eq!(listed["running"], 0);
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the list never showed the kill: {listed}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (status, _) = agent
                .call(
                    Method::DELETE,
                    &format!("/containers/{name}?force=true"),
                    None,
                )
                .await;
            assert_eq!(status, 200);
            let (_, listed) = agent.call(Method::GET, "/containers/?all=true", None).await;
            assert_eq!(listed["total"], 0, "gone from the list at once: {listed}");

            let events = reader.await.expect("reader");
            assert_eq!(events[0].event, "snapshot");
            assert_eq!(events[0].data["containers"], json!([]));
            let changes: Vec<&StreamEvent> = events[1..].iter().collect();
            assert!(
                changes
                    .iter()
                    .all(|event| event.event == "container" && event.data["id"] == id.as_str())
            );
            assert!(
                changes.windows(2).all(|pair| pair[1].id == pair[0].id + 1),
                "numbered in order"
            );
            let actions: Vec<&str> = changes
                .iter()
                .map(|event| event.data["action"].as_str().unwrap_or_default())
                .collect();
            let at = |action: &str| {
                actions
                    .iter()
                    .position(|seen| *seen == action)
                    .unwrap_or_else(|| panic!("no {action} in {actions:?}"))
            };
            assert!(
                at("create") < at("start") && at("start") < at("die") && at("die") < at("destroy"),
                "{actions:?}"
            );
            let started = changes[at("start")];
            assert_eq!(started.data["container"]["status"], "running");
            assert!(changes[at("destroy")].data["container"].is_null());

            // Resuming after the start gets exactly what followed it, by query or by header.
            let last = changes.last().expect("changes").id;
            for request in [
                agent.request(Method::GET, &format!("/events?since={}", started.id)),
                agent
                    .request(Method::GET, "/events")
                    .header("last-event-id", started.id.to_string()),
            ] {
                let resumed = read_events(request.send().await.expect("resume"), |events| {
                    events.last().is_some_and(|event| event.id == last)
                })
                .await;
                assert_eq!(resumed[0].id, started.id + 1);
                assert!(resumed.iter().all(|event| event.event == "container"));
            }
            // A number the agent never gave starts over from a snapshot.
            let fresh = read_events(
                agent
                    .request(Method::GET, &format!("/events?since={}", last + 1000))
                    .send()
                    .await
                    .expect("events"),
                |events| !events.is_empty(),
            )
            .await;
            assert_eq!((fresh[0].event.as_str(), fresh[0].id), ("snapshot", last));
            let (status, problem) = agent
                .call(Method::GET, "/events?since=yesterday", None)
                .await;
            assert!(status == 400 || status == 422, "{status} {problem}");
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|detail| detail.contains("since")),
                "{problem}"
            );
        })
        .await;
}
