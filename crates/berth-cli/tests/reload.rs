//! The hub's configuration file reloaded while it runs: a changed quota takes effect without a
//! restart, and a bad file — on change or on SIGHUP — is refused while the running
//! configuration stays in force.

mod processes;

use std::time::Duration;

use processes::{HubApi, IMAGE, fresh_dir, start_hub, wait_for};
use reqwest::Method;
use serde_json::json;

async fn create(hub: &HubApi, owner: &str, name: &str) -> u16 {
    let (status, _) = hub
        .call(
            Method::POST,
            &format!("/api/{owner}/quota/services?wait=60"),
            Some(
                json!({"name": name, "image": IMAGE, "cpu_limit": 0.05, "memory_limit": "8m",
                "command": ["sleep", "60"]}),
            ),
        )
        .await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_quota_takes_effect_and_a_bad_file_is_refused() {
    let dir = fresh_dir("reload");
    let (hub_process, hub) = start_hub(&dir, "max_services_per_user: 1\n").await;
    hub.add_local_node().await;
    let (_, me) = hub.call(Method::GET, "/api/users/me", None).await;
    let owner = me["name"].as_str().expect("name").to_owned();
    let config = dir.join("hub.yaml");

    assert_eq!(create(&hub, &owner, "one").await, 200);
    assert_eq!(create(&hub, &owner, "two").await, 403, "quota of 1");

    std::fs::write(&config, "max_services_per_user: 3\n").expect("write");
    wait_for(Duration::from_secs(20), "the new quota is in force", || {
        let (hub, owner) = (&hub, owner.clone());
        async move { (create(hub, &owner, "two").await == 200).then_some(()) }
    })
    .await;

    // A bad file, written and then signalled: refused, and the quota of 3 stays.
    std::fs::write(
        &config,
        "max_services_per_user: 1\nplacement_policy: tetris\n",
    )
    .expect("write");
    let pid = hub_process.0.id().to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(signalled.success());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _) = hub.call(Method::GET, "/health", None).await;
    assert_eq!(status, 200, "the hub runs on");
    assert_eq!(create(&hub, &owner, "three").await, 200, "still 3");
    assert_eq!(create(&hub, &owner, "four").await, 403, "and not more");

    hub.delete_all_services().await;
}

/// Seed 000's `config.py` as written (its controllers' addresses moved to loopback, where the
/// tests may reach) starts a hub: its controllers are nodes, its quota and domain in force; with
/// `mmanager_enabled = False` written in, the reloaded file takes the controllers out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000s_config_py_starts_a_hub_and_mmanager_enabled_false_drops_its_controllers() {
    let dir = fresh_dir("config-py");
    let seed = include_str!("../../../deploy/hub/config.py.example")
        .replace("192.168.1.10", "127.0.0.1")
        .replace("192.168.1.11", "127.0.0.1");
    let (_hub_process, hub) = processes::start_hub_configured(&dir, "config.py", &seed).await;
    let names = || async {
        let (_, nodes) = hub.call(Method::GET, "/api/nodes", None).await;
        let mut names: Vec<String> = nodes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|node| node["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    };
    assert_eq!(names().await, ["mmanager-cpu-01", "mmanager-gpu-01"]);
    let (_, nodes) = hub.call(Method::GET, "/api/nodes", None).await;
    let cpu = nodes
        .as_array()
        .and_then(|nodes| nodes.iter().find(|node| node["name"] == "mmanager-cpu-01"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (cpu["weight"].as_i64(), cpu["priority"].as_i64()),
        (Some(80), Some(2)),
        "{cpu}"
    );

    std::fs::write(
        dir.join("config.py"),
        seed.replace("mmanager_enabled = True", "mmanager_enabled = False"),
    )
    .expect("write");
    wait_for(Duration::from_secs(20), "the controllers leave", || async {
        names().await.is_empty().then_some(())
    })
    .await;
}
