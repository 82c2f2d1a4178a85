//! Leader takeover: two `berth hub` processes on one PostgreSQL database with the default lease
//! (5 s, renewed every second) and a public service on the local engine. Ten times the leading
//! hub is killed (SIGKILL) and the time until the other one leads is taken, while a client sends
//! requests to the service through the surviving hub's gateway, one after another, counting
//! those not answered 200 — and another client does the same through a gateway process of its
//! own (`berth gateway`) following both hubs; the killed hub then comes back as a follower.
//! Run with `BERTH_TEST_POSTGRES_URL=postgres://…/db cargo bench -p berth-cli --bench leader`
//! (`scripts/start-test-postgres` prints one; about two minutes).

#[path = "../tests/processes/mod.rs"]
mod processes;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use processes::{
    HubApi, IMAGE, LabelledContainers, database_hub_label, free_port, fresh_dir, leader_among,
    leadership, postgres_database, start_elected_hub, start_gateway, wait_for,
};
use reqwest::Method;
use serde_json::json;

const ROUNDS: usize = 10;
const LEASE_SECONDS: u64 = 5;

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("leader benchmark: built; run it with `cargo bench -p berth-cli --bench leader`");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(database) = postgres_database("leader_bench").await else {
        println!("leader benchmark: set BERTH_TEST_POSTGRES_URL (scripts/start-test-postgres)");
        return;
    };
    let dir = fresh_dir("leader-bench");
    let client = reqwest::Client::new();
    let ports = [free_port(), free_port()];
    let gateways = [free_port(), free_port()];
    let start = |which: usize| {
        start_elected_hub(
            &database,
            &dir.join(["a", "b"][which]),
            (ports[which], gateways[which]),
            LEASE_SECONDS,
            "",
        )
    };
    let mut hubs = vec![start(0)];
    leader_among(&client, &ports[..1], "the first hub leads").await;
    let token = std::fs::read_to_string(dir.join("a").join("admin-token")).expect("token");
    let hub = HubApi::at(
        format!("http://127.0.0.1:{}", ports[0]),
        token.trim().to_owned(),
    );
    hubs.push(start(1));
    wait_for(Duration::from_secs(30), "the second hub answers", || {
        leadership(&client, ports[1])
    })
    .await;
    hub.add_local_node().await;
    let (_, me) = hub.call(Method::GET, "/api/users/me", None).await;
    let _leftovers = LabelledContainers(vec![database_hub_label(&database).await]);
    let script = "trap 'exit 0' TERM; mkdir -p /www; echo ok > /www/index.html; httpd -f -p 8080 -h /www & wait";
    let (status, created) = hub
        .call(
            Method::POST,
            &format!(
                "/api/{}/bench/services?wait=60",
                me["name"].as_str().unwrap_or("admin")
            ),
            Some(
                json!({"name": "web", "image": IMAGE, "memory_limit": "16m", "cpu_limit": 0.1,
                "command": ["sh", "-c", script], "port": 8080, "is_public": true, "start": true}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let path = format!("/s/{}/web/", me["name"].as_str().unwrap_or("admin"));
    let process_port = free_port();
    let hub_urls: Vec<String> = ports
        .iter()
        .map(|port| format!("http://127.0.0.1:{port}"))
        .collect();
    let _gateway_process = start_gateway(
        &dir.join("edge"),
        &hub_urls,
        token.trim(),
        (process_port, free_port()),
    );
    for gateway in [gateways[0], gateways[1], process_port] {
        let url = format!("http://127.0.0.1:{gateway}{path}");
        wait_for(Duration::from_secs(30), "both gateways serve it", || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let answer = client.get(url).send().await.ok()?;
                (answer.status() == 200).then_some(())
            }
        })
        .await;
    }

    let mut takeovers = Vec::with_capacity(ROUNDS);
    let (mut lost_total, mut sent_total) = (0, 0);
    let (mut process_lost_total, mut process_sent_total) = (0, 0);
    for round in 1..=ROUNDS {
        let (leading, _) = leader_among(&client, &ports, "a hub leads").await;
        let killed = ports
            .iter()
            .position(|port| *port == leading)
            .expect("a port");
        let survivor = 1 - killed;
        // Requests through the survivor's gateway and the gateway process for the whole
        // takeover.
        let running = Arc::new(AtomicBool::new(true));
        let survivors = load(
            &client,
            format!("http://127.0.0.1:{}{path}", gateways[survivor]),
            &running,
        );
        let process = load(
            &client,
            format!("http://127.0.0.1:{process_port}{path}"),
            &running,
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed_at = Instant::now();
        hubs[killed].kill();
        let (new_leader, term) =
            leader_among(&client, &ports[survivor..=survivor], "the survivor leads").await;
        let took = killed_at.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        running.store(false, Ordering::Relaxed);
        let (sent, lost) = survivors.await.expect("load");
        let (process_sent, process_lost) = process.await.expect("load");
        println!(
            "round {round}: hub on {leading} killed, hub on {new_leader} leads in term {term} after {:.2} s; lost {lost} of {sent} requests through its gateway, {process_lost} of {process_sent} through the gateway process",
            took.as_secs_f64()
        );
        takeovers.push(took);
        sent_total += sent;
        lost_total += lost;
        process_sent_total += process_sent;
        process_lost_total += process_lost;
        hubs[killed] = start(killed);
        let url = format!("http://127.0.0.1:{}{path}", gateways[killed]);
        wait_for(
            Duration::from_secs(30),
            "the killed hub's gateway serves again",
            || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let answer = client.get(url).send().await.ok()?;
                    (answer.status() == 200).then_some(())
                }
            },
        )
        .await;
    }
    takeovers.sort();
    let seconds = |duration: Duration| duration.as_secs_f64();
    println!(
        "leader killed -> other hub leads (lease {LEASE_SECONDS} s): median {:.2} s, min {:.2} s, max {:.2} s over {ROUNDS} rounds",
        seconds(takeovers[ROUNDS / 2]),
        seconds(takeovers[0]),
        seconds(takeovers[ROUNDS - 1])
    );
    println!("requests through the surviving gateway lost: {lost_total} of {sent_total}");
    println!(
        "requests through the gateway process lost: {process_lost_total} of {process_sent_total}"
    );
    let survivor = HubApi::at(
        format!("http://127.0.0.1:{}", ports[0]),
        token.trim().to_owned(),
    );
    let id = created["service_id"].as_i64().unwrap_or_default();
    survivor
        .call(Method::DELETE, &format!("/api/services/{id}?wait=60"), None)
        .await;
}

/// A client sending requests to `url` one after another while `running`: how many it sent and
/// how many were not answered 200.
fn load(
    client: &reqwest::Client,
    url: String,
    running: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    let (client, running) = (client.clone(), Arc::clone(running));
    tokio::spawn(async move {
        let (mut sent, mut lost) = (0, 0);
        while running.load(Ordering::Relaxed) {
            let answered = client
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .is_ok_and(|answer| answer.status() == 200);
            sent += 1;
            if !answered {
                lost += 1;
            }
        }
        (sent, lost)
    })
}
