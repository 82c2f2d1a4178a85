//! A node joins with one command: `berth node join-token` on the hub prints the command, a
//! `berth agent --join … --token …` process on the new host registers itself with it, the node
//! is connected with the hardware its agent reports and takes a service; the token works once,
//! and the agent, restarted without it, serves again with the key it kept.

mod processes;

use std::process::{Command, Stdio};
use std::time::Duration;

use processes::{HubApi, IMAGE, Process, free_port, fresh_dir, start_hub, wait_for};
use reqwest::Method;
use serde_json::{Value, json};

/// `berth agent --join` with `token` (none: a restart that relies on the kept key).
fn join_agent(
    hub: &HubApi,
    token: Option<&str>,
    server_id: &str,
    port: u16,
    data: &std::path::Path,
) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
    command
        .arg("agent")
        .args(["--join", hub.base()])
        .arg("--data-dir")
        .arg(data)
        .env("SERVER_ID", server_id)
        .env("BERTH_AGENT_LISTEN", format!("127.0.0.1:{port}"))
        .env("LOG_LEVEL", "WARNING")
        .env_remove("MMANAGER_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    Process(command.spawn().expect("berth agent --join"))
}

/// Node `name` once it is connected.
async fn connected(hub: &HubApi, name: &str) -> Value {
    wait_for(
        Duration::from_secs(30),
        "the joined node is connected",
        || async move {
            let (_, nodes) = hub.call(Method::GET, "/api/nodes", None).await;
            nodes
                .as_array()?
                .iter()
                .find(|node| node["name"] == name && node["docker_status"] == "connected")
                .cloned()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_joins_with_a_single_use_token_and_takes_services() {
    let dir = fresh_dir("join");
    let (_hub_process, hub) = start_hub(&dir, "monitor_interval: 1\n").await;
    let server_id = format!("joined-{}", std::process::id());

    // The CLI prints the command to run on the new host.
    let printed = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["node", "join-token", "--ttl", "600"])
        .env("BERTH_URL", hub.base())
        .env("BERTH_TOKEN", hub.token())
        .output()
        .expect("berth node join-token");
    let text = String::from_utf8_lossy(&printed.stdout).into_owned();
    assert!(printed.status.success(), "{text}");
    let command_line = text
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("berth agent --join"))
        .unwrap_or_else(|| panic!("the command is printed: {text}"))
        .to_owned();
    assert!(command_line.contains(hub.base()), "{command_line}");
    assert!(text.contains("docker run"), "{text}");
    let token = command_line
        .split_whitespace()
        .skip_while(|word| *word != "--token")
        .nth(1)
        .expect("token")
        .to_owned();

    let port = free_port();
    let data = dir.join("agent");
    let mut agent = join_agent(&hub, Some(&token), &server_id, port, &data);
    let node = connected(&hub, &server_id).await;
    assert_eq!(node["driver"], "agent");
    assert_eq!(node["agent_url"], format!("http://127.0.0.1:{port}"));
    assert_eq!(node["agent_api_key_set"], true, "a key of its own: {node}");
    assert_eq!(node["origin"], "join");
    let kept: Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("joined.json")).expect("the key is kept"),
    )
    .expect("JSON");
    let key = kept["api_key"].as_str().expect("key").to_owned();
    // The agent answers its own key only, and reports its hardware to the hub.
    let client = reqwest::Client::new();
    let capabilities = |key: String| {
        client
            .get(format!("http://127.0.0.1:{port}/capabilities"))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(
        capabilities(key.clone()).await.expect("answer").status(),
        200
    );
    assert_eq!(
        capabilities("mmanager-default-key".to_owned())
            .await
            .expect("answer")
            .status(),
        401,
        "not the well-known default key"
    );

    // The token is spent: a second join with it is refused and makes no node.
    let (status, refused) = hub
        .call(
            Method::POST,
            "/api/nodes/join",
            Some(json!({"token": token, "agent_url": "http://127.0.0.1:9", "server_id": "again"})),
        )
        .await;
    assert_eq!(status, 401, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("used or expired"),
        "{refused}"
    );
    let (_, nodes) = hub.call(Method::GET, "/api/nodes", None).await;
    assert_eq!(nodes.as_array().map(Vec::len), Some(1), "{nodes}");

    // A service goes to the joined node.
    let (_, me) = hub.call(Method::GET, "/api/users/me", None).await;
    let owner = me["name"].as_str().expect("name");
    let (status, created) = hub
        .call(
            Method::POST,
            &format!("/api/{owner}/joined/services?wait=60"),
            Some(json!({"name": "on-joined", "image": IMAGE, "start": true, "cpu_limit": 0.05,
                "memory_limit": "8m", "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]})),
        )
        .await;
    assert_eq!(
        (status, created["state"].as_str()),
        (200, Some("succeeded")),
        "{created}"
    );
    let service = created["service_id"].as_i64().expect("service");
    let status = hub.service(service).await;
    assert_eq!(status["status"], "running", "{status}");
    assert_eq!(status["node_id"], node["id"], "{status}");

    // Restarted without a token, the agent serves again with the key it kept.
    agent.kill();
    let _agent = join_agent(&hub, None, &server_id, port, &data);
    wait_for(Duration::from_secs(30), "the agent serves again", || {
        let request = capabilities(key.clone());
        async move { (request.await.ok()?.status() == 200).then_some(()) }
    })
    .await;
    hub.delete_all_services().await;
}
