//! An engine slower than the short calls' timeout: a relay on loopback in front of the real
//! engine holds every answer to a container create and to a stop for 12 s (past the 10 s of an
//! inspect or a list). A create with `start` and a stop through it are slow, and they succeed:
//! nothing is reported unreachable, nothing is undone, and the service ends as it was asked.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use support::{node, start, with_cleanup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};

const HOLD: Duration = Duration::from_secs(12);

/// The engine's unix socket.
fn engine_socket() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|host| host.strip_prefix("unix://").map(str::to_owned))
        .unwrap_or_else(|| "/var/run/docker.sock".to_owned())
}

/// A TCP relay to the engine that holds the answer to each create or stop request for `HOLD`.
async fn slow_relay() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(engine) = UnixStream::connect(engine_socket()).await else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_engine, mut to_engine) = engine.into_split();
                let slow = Arc::new(AtomicBool::new(false));
                let flag = Arc::clone(&slow);
                let upstream = tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let read = match from_client.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => read,
                        };
                        let text = String::from_utf8_lossy(&buffer[..read]);
                        let line = text.lines().next().unwrap_or_default();
                        if line.starts_with("POST ")
                            && (line.contains("/containers/create") || line.contains("/stop"))
                        {
                            flag.store(true, Ordering::SeqCst);
                        }
                        if to_engine.write_all(&buffer[..read]).await.is_err() {
                            return;
                        }
                    }
                });
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    let read = match from_engine.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => read,
                    };
                    if slow.swap(false, Ordering::SeqCst) {
                        tokio::time::sleep(HOLD).await;
                    }
                    if to_client.write_all(&buffer[..read]).await.is_err() {
                        break;
                    }
                }
                upstream.abort();
            });
        }
    });
    format!("tcp://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_engine_makes_changes_slow_never_unreachable() {
    let hub = start("slow-engine").await;
    let relay = slow_relay().await;
    let (status, created) = hub
        .admin(
            Method::POST,
            "/api/nodes",
            Some(node(
                "slow",
                json!({"docker_address": relay, "use_tls": false}),
            )),
        )
        .await;
    assert_eq!(
        (status, created["docker_status"].as_str()),
        (201, Some("connected")),
        "{created}"
    );
    with_cleanup(&hub, async {
        let began = Instant::now();
        let (status, made) = hub
            .admin(
                Method::POST,
                "/api/admin/slow/services?wait=120",
                Some(
                    json!({"name": "patient", "image": "berth-test/busybox:latest",
                    "cpu_limit": 0.1, "memory_limit": "16m", "start": true,
                    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]}),
                ),
            )
            .await;
        let took = began.elapsed();
        assert_eq!(
            (status, made["state"].as_str()),
            (200, Some("succeeded")),
            "{made}"
        );
        assert!(took >= HOLD, "the engine's answer was held: {took:?}");
        assert_eq!(made["service"]["status"], "running");
        let id = made["service_id"].as_i64().expect("id");
        let (_, live) = hub
            .admin(Method::GET, &format!("/api/services/{id}/status"), None)
            .await;
        assert_eq!(live["container_status"], "running", "{live}");

        let began = Instant::now();
        let (status, stopped) = hub
            .admin(
                Method::POST,
                &format!("/api/services/{id}/stop?wait=120"),
                None,
            )
            .await;
        let took = began.elapsed();
        assert_eq!(
            (status, stopped["state"].as_str()),
            (200, Some("succeeded")),
            "{stopped}"
        );
        assert!(took >= HOLD, "the stop's answer was held: {took:?}");
        let (_, live) = hub
            .admin(Method::GET, &format!("/api/services/{id}/status"), None)
            .await;
        assert_eq!(
            (live["status"].as_str(), live["container_status"].as_str()),
            (Some("stopped"), Some("exited")),
            "{live}"
        );
        let actions = hub.actions_of_service(id).await;
        let (_, log) = hub
            .admin(
                Method::GET,
                &format!("/api/admin/operations?service_id={id}"),
                None,
            )
            .await;
        assert!(
            !log.to_string().contains("unreachable") && !log.to_string().contains("\"failed\""),
            "nothing failed, nothing unreachable: {actions:?} {log}"
        );
    })
    .await;
}
