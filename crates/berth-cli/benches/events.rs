//! What the node mirrors buy: a `berth hub` process with the local engine as its node (default
//! settings, but a monitor interval of an hour so only the engine's events can act), one
//! service of `busybox httpd` behind the gateway. Ten times each:
//! - the replica is killed behind Berth's back (the engine stops it at once): the time until the
//!   engine shows it running again, against the start of an identical container Berth does not
//!   manage (straight through the driver, in the same round);
//! - the engine restarts the replica, which comes back on a new port: the time until the gateway
//!   answers 200 through the new port.
//!
//! Prints the medians. Run with `cargo bench -p berth-cli --bench events` (needs the test image).

#[path = "../tests/processes/mod.rs"]
mod processes;

use std::time::{Duration, Instant};

use processes::{engine, engine_status, fresh_dir, start_hub};
use reqwest::Method;
use serde_json::json;

const ROUNDS: usize = 10;

const SERVER: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www";

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("events benchmark: built; run it with `cargo bench -p berth-cli --bench events`");
        return;
    }
    let dir = fresh_dir("events-bench");
    let (_hub_process, hub) = start_hub(&dir, "monitor_interval: 3600\n").await;
    hub.add_local_node().await;
    let engine = engine().await;
    let (_, me) = hub.call(Method::GET, "/api/users/me", None).await;
    let user = me["name"].as_str().expect("name").to_owned();
    let (status, created) = hub
        .call(
            Method::POST,
            &format!("/api/{user}/bench/services?wait=60"),
            Some(
                json!({"name": "evented", "image": processes::IMAGE, "memory_limit": "16m",
                "cpu_limit": 0.2, "command": ["sh", "-c", SERVER], "port": 8080, "start": true,
                "serving": {"probe_interval_seconds": 1}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["service_id"].as_i64().expect("id");
    let (_, status) = hub
        .call(Method::GET, &format!("/api/services/{id}/status"), None)
        .await;
    let url = status["service_url"]
        .as_str()
        .expect("gateway URL")
        .to_owned();
    let container = status["container_id"]
        .as_str()
        .expect("container")
        .to_owned();
    let client = reqwest::Client::new();
    let served = || async {
        client
            .get(&url)
            .bearer_auth(hub.token())
            .send()
            .await
            .is_ok_and(|response| response.status().is_success())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !served().await {
        assert!(Instant::now() < deadline, "the service never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The same server, not Berth's: the engine's own start time.
    let twin = format!("events-bench-twin-{}", std::process::id());
    let spec = berth_core::ContainerSpec::from_json_value(json!({"name": twin,
        "image": processes::IMAGE, "command": ["sh", "-c", SERVER], "ports": {"8080/tcp": null},
        "memory_limit": "16m", "cpu_limit": 0.2}))
    .expect("spec");
    engine.create(&spec, &mut |_| {}).await.expect("twin");

    let (mut mended, mut own_start, mut rerouted) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let began = Instant::now();
        engine.start(&twin).await.expect("start");
        own_start.push(began.elapsed().as_secs_f64());
        engine.stop(&twin, 0).await.expect("stop");

        // Killed behind Berth's back.
        engine.stop(&container, 0).await.expect("kill");
        let killed = Instant::now();
        while engine_status(&engine, &container).await.as_deref() != Some("running") {
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "never started again"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        mended.push(killed.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Restarted by the engine on a new port.
        let restarted = Instant::now();
        engine.restart(&container, 0).await.expect("restart");
        while !served().await {
            assert!(
                restarted.elapsed() < Duration::from_secs(60),
                "never served again"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        rerouted.push(restarted.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "killed behind Berth's back -> running again: median {:.2} s (the same container's own start, not Berth's: median {:.2} s); {ROUNDS} rounds",
        median(mended),
        median(own_start)
    );
    println!(
        "restarted by the engine on a new port -> served through the gateway: median {:.2} s; {ROUNDS} rounds",
        median(rerouted)
    );
    let _ = engine
        .remove(
            &twin,
            berth_docker::RemoveOptions {
                force: true,
                keep_data: false,
            },
        )
        .await;
    hub.delete_all_services().await;
}
