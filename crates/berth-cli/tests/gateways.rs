//! Gateways in processes of their own (`berth gateway --hub …`) in front of three hubs on
//! PostgreSQL: both serve a private service from the table they follow while the leading hub is
//! killed, without losing a request; their traffic (and a follower hub's) reaches the new
//! leader's counts; a follower's stream of an operation the leader carries out follows it to its
//! end; a route change (an unload) reaches the gateways, and a request through one wakes the
//! service again.

mod processes;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use processes::{IMAGE, LabelledContainers, fresh_dir, start_gateway, wait_for};
use reqwest::Method;
use serde_json::{Value, json};

/// A private web service of two replicas that ignores SIGTERM, as busybox httpd does.
fn service_body(name: &str) -> Value {
    json!({"name": name, "image": IMAGE, "replicas": 2, "cpu_limit": 0.02, "memory_limit": "8m",
        "port": 8080, "start": true, "command": ["sh", "-c",
        "mkdir -p /www; echo served > /www/index.html; exec httpd -f -p 8080 -h /www"]})
}

/// Status and body of one request through a gateway.
async fn ask(client: &reqwest::Client, url: &str, token: &str) -> (u16, String) {
    match client
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(60))
        .send()
        .await
    {
        Ok(answer) => {
            let status = answer.status().as_u16();
            (status, answer.text().await.unwrap_or_default())
        }
        Err(err) => (0, err.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_serve_through_a_change_of_leader_without_losing_a_request() {
    let Some(database) = processes::postgres_database("gateways").await else {
        return;
    };
    // The hubs' identity made first, so that the guard, dropped after every hub, removes what
    // they made (a hub still running would make it again).
    let _guard = LabelledContainers(vec![processes::database_hub_label(&database).await]);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = fresh_dir("gateways");
    let client = reqwest::Client::new();
    let mut cluster =
        processes::start_three_elected_hubs(&database, &dir, "monitor_interval: 1\n").await;
    let (ports, hub_gateways, token) = (cluster.ports, cluster.gateways, cluster.token.clone());
    let api = &cluster.api;
    let (_, me) = api[0].call(Method::GET, "/api/users/me", None).await;
    let owner = me["name"].as_str().expect("name").to_owned();
    let (status, created) = api[0]
        .call(
            Method::POST,
            &format!("/api/{owner}/edge/services?wait=60"),
            Some(service_body("edge")),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["service_id"].as_i64().expect("id");

    let hubs: Vec<String> = ports
        .iter()
        .map(|port| format!("http://127.0.0.1:{port}"))
        .collect();
    let gateway_ports = [
        (processes::free_port(), processes::free_port()),
        (processes::free_port(), processes::free_port()),
    ];
    let _gateways = [
        start_gateway(&dir.join("edge-1"), &hubs, &token, gateway_ports[0]),
        start_gateway(&dir.join("edge-2"), &hubs, &token, gateway_ports[1]),
    ];
    let urls: Vec<String> = gateway_ports
        .iter()
        .map(|(port, _)| format!("http://127.0.0.1:{port}/s/{owner}/edge/"))
        .collect();
    for url in &urls {
        wait_for(
            Duration::from_secs(30),
            "a gateway serves the service",
            || async {
                let (status, body) = ask(&client, url, &token).await;
                (status == 200 && body.trim() == "served").then_some(())
            },
        )
        .await;
        // A private service: no token, or one that is not Berth's, is refused by the gateway.
        let anonymous = client.get(url).send().await.expect("answer");
        assert_eq!(anonymous.status(), 401);
        let (status, _) = ask(&client, url, "berth_not-a-token").await;
        assert_eq!(status, 401);
    }
    let (_, health) = ask(
        &client,
        &format!("http://127.0.0.1:{}/health", gateway_ports[0].1),
        "",
    )
    .await;
    let health: Value = serde_json::from_str(&health).expect("health");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["services"], 1, "{health}");

    // Four clients, two on each gateway, while the leading hub is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|n| {
            let (url, token, stop) = (urls[n % 2].clone(), token.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    answers.push(ask(&client, &url, &token).await);
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.processes[0].kill();
    let (new_leader, _) = processes::leader_among(&client, &ports[1..], "a follower leads").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for answers in clients {
        let answers = answers.await.expect("client");
        let failed: Vec<&(u16, String)> = answers
            .iter()
            .filter(|(status, body)| *status != 200 || body.trim() != "served")
            .collect();
        assert!(
            failed.is_empty(),
            "requests lost across the takeover: {failed:?}"
        );
        served += answers.len();
    }
    assert!(served > 20, "only {served} requests were answered");

    // The gateways' traffic reaches the new leader's counts (reported every second).
    let leading = &api[ports
        .iter()
        .position(|port| *port == new_leader)
        .expect("port")];
    wait_for(
        Duration::from_secs(15),
        "the new leader counts the gateways' requests",
        || async {
            let (_, status) = leading
                .call(Method::GET, &format!("/api/services/{id}/status"), None)
                .await;
            (status["serving"]["requests"].as_u64() > Some(0)).then_some(())
        },
    )
    .await;

    // A follower hub's own gateway reports its traffic to the leader the same way.
    let requests = async || -> u64 {
        let (_, status) = leading
            .call(Method::GET, &format!("/api/services/{id}/status"), None)
            .await;
        status["serving"]["requests"].as_u64().unwrap_or(0)
    };
    let follower = (1..3)
        .find(|which| ports[*which] != new_leader)
        .expect("a follower");
    let counted = requests().await;
    let through_follower = format!(
        "http://127.0.0.1:{}/s/{owner}/edge/",
        hub_gateways[follower]
    );
    for _ in 0..5 {
        let (status, body) = ask(&client, &through_follower, &token).await;
        assert_eq!((status, body.trim()), (200, "served"));
    }
    wait_for(
        Duration::from_secs(15),
        "the leader counts a follower's requests",
        || async { (requests().await >= counted + 5).then_some(()) },
    )
    .await;

    // An unload reaches both gateways' tables; a request through one loads it again.
    let revision = async |admin_port: u16| -> String {
        let (_, health) = ask(
            &client,
            &format!("http://127.0.0.1:{admin_port}/health"),
            "",
        )
        .await;
        let health: Value = serde_json::from_str(&health).expect("health");
        health["revision"].as_str().expect("revision").to_owned()
    };
    let before = [
        revision(gateway_ports[0].1).await,
        revision(gateway_ports[1].1).await,
    ];
    // The unload is asked of a follower, which passes it to the leader; the follower's own
    // stream of the operation, and its wait for it, follow the leader's work to its end.
    let (status, accepted) = api[follower]
        .call(Method::POST, &format!("/api/services/{id}/unload"), None)
        .await;
    assert_eq!(status, 202, "{accepted}");
    let operation = accepted["id"].as_i64().expect("operation");
    let stream = client
        .get(format!(
            "{}/api/operations/{operation}/events",
            api[follower].base()
        ))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("events")
        .text()
        .await
        .expect("the stream ends with the operation");
    let last: Value = stream
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .next_back()
        .and_then(|data| serde_json::from_str(data.trim()).ok())
        .expect("an event");
    assert_eq!(last["state"], "succeeded", "{stream}");
    let (_, waited) = api[follower]
        .call(
            Method::GET,
            &format!("/api/operations/{operation}?wait=30"),
            None,
        )
        .await;
    assert_eq!(waited["state"], "succeeded", "{waited}");
    for (which, (_, admin_port)) in gateway_ports.iter().enumerate() {
        wait_for(
            Duration::from_secs(10),
            "a gateway sees the unload",
            || async { (revision(*admin_port).await != before[which]).then_some(()) },
        )
        .await;
    }
    let (status, body) = ask(&client, &urls[1], &token).await;
    assert_eq!(
        (status, body.trim()),
        (200, "served"),
        "the request loads it"
    );
    let (_, after) = leading
        .call(Method::GET, &format!("/api/services/{id}/status"), None)
        .await;
    assert_eq!(after["status"], "running", "{after}");
    let (_, metrics) = ask(
        &client,
        &format!("http://127.0.0.1:{}/metrics", gateway_ports[1].1),
        "",
    )
    .await;
    let cold_start = format!("model_cold_starts_total{{service=\"{owner}/edge\"}} 1");
    assert!(
        metrics.lines().any(|line| line == cold_start),
        "the gateway that woke it counts one cold start: {metrics}"
    );
}
