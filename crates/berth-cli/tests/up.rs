//! `berth up` as a user runs it: the binary starts the hub on SQLite, registers the local engine,
//! writes the admin token (0600), answers with it, stops cleanly on SIGTERM, and starts again
//! with everything intact.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &std::path::Path, port: u16) -> (Running, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["up", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--gateway-listen", "127.0.0.1:0"])
        .env("BERTH_CONFIG", cli_config(dir))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("berth up starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        let done = line.starts_with("try:");
        lines.push(line);
        if done {
            break;
        }
    }
    (Running(child), lines)
}

/// The CLI configuration the test's `berth up` and `berth` commands share.
fn cli_config(dir: &std::path::Path) -> std::path::PathBuf {
    dir.with_extension("cli").join("config.toml")
}

/// Runs `berth args` the way a new shell would: no BERTH_URL or BERTH_TOKEN, from a directory
/// without `berth-data`, with the test's CLI configuration.
fn bare_cli(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env_remove("BERTH_URL")
        .env_remove("BERTH_TOKEN")
        .env_remove("BERTH_CONTEXT")
        .env("BERTH_CONFIG", cli_config(dir))
        .current_dir(std::env::temp_dir())
        .output()
        .expect("berth client")
}

/// `berth up` saved a context the next command finds by itself; `berth login` adds another,
/// `berth context use` switches, and a refused token or an unknown context saves nothing.
fn contexts_lead_the_cli_to_the_hub(dir: &std::path::Path, port: u16, token: &str, text: &str) {
    assert!(
        text.contains(&format!("export BERTH_URL=http://127.0.0.1:{port}"))
            && text.contains("CLI context \"local\" saved"),
        "{text}"
    );
    let listed = bare_cli(dir, &["node", "list", "-o", "json"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let nodes: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_eq!(nodes[0]["name"], "local");
    let url = format!("http://127.0.0.1:{port}");
    let refused = bare_cli(
        dir,
        &["login", &url, "--name", "other", "--token", "berth_wrong"],
    );
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(said.contains("refused the token"), "{said}");
    let logged = bare_cli(dir, &["login", &url, "--name", "second", "--token", token]);
    let said = String::from_utf8_lossy(&logged.stdout).into_owned();
    assert!(said.contains("as admin (admin)"), "{said}");
    let contexts = bare_cli(dir, &["context", "list"]);
    let table = String::from_utf8_lossy(&contexts.stdout).into_owned();
    assert!(
        table.contains("*        second") && table.contains("local") && !table.contains("other"),
        "{table}"
    );
    assert!(bare_cli(dir, &["context", "use", "local"]).status.success());
    let unknown = bare_cli(dir, &["node", "list", "--context", "nope"]);
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no context named \"nope\""),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    let listed = bare_cli(dir, &["context", "list", "-o", "json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_eq!(listed["current"], "local", "{listed}");
    assert!(
        bare_cli(dir, &["context", "remove", "second"])
            .status
            .success()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn get(port: u16, path: &str, token: &str) -> (u16, Value) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

/// The body of the first successful answer from `url`, sent with `token`.
fn fetch_text(url: &str, token: &str) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if let Ok(response) = client.get(url).bearer_auth(token).send().await
                && response.status().is_success()
            {
                return response.text().await.unwrap_or_default();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{url} never answered");
    })
}

fn terminate(mut running: Running) {
    let pid = running.0.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = running.0.try_wait() {
            assert!(
                status.success(),
                "berth up exits 0 on SIGTERM, got {status}"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("berth up did not stop within 10 s of SIGTERM");
}

#[test]
fn berth_up_starts_serves_stops_and_resumes() {
    let dir = std::env::temp_dir().join(format!("berth-up-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let (running, lines) = start(&dir, port);
    let text = lines.join("\n");
    assert!(text.contains("node local: connected"), "{text}");
    assert!(text.contains(&format!("http://127.0.0.1:{port}")), "{text}");
    let token = std::fs::read_to_string(dir.join("admin-token"))
        .expect("token file")
        .trim()
        .to_owned();
    assert!(text.contains(&token), "the token is printed: {text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &std::path::Path| {
            std::fs::metadata(path).expect("meta").permissions().mode() & 0o777
        };
        assert_eq!(mode(&dir.join("admin-token")), 0o600);
        assert_eq!(mode(&dir.join("secret.key")), 0o600);
        assert_eq!(mode(&dir), 0o700);
    }
    let (status, nodes) = get(port, "/api/nodes", &token);
    assert_eq!(status, 200);
    assert_eq!(nodes[0]["name"], "local");
    assert_eq!(nodes[0]["docker_status"], "connected");
    contexts_lead_the_cli_to_the_hub(&dir, port, &token, &text);

    let cli = |token: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .env("BERTH_URL", format!("http://127.0.0.1:{port}"))
            .env("BERTH_TOKEN", token)
            .output()
            .expect("berth client")
    };
    let listed = cli(&token, &["node", "list", "--output", "json"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_eq!(listed[0]["name"], "local");
    let table = cli(&token, &["node", "list"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.starts_with("ID  NAME") && table.contains("local  ready"),
        "{table}"
    );
    for column in [
        "STATE",
        "CONTAINERS",
        "CPU (cores)",
        "MEMORY",
        "GPUS allocated/total",
    ] {
        assert!(table.contains(column), "{column} in {table}");
    }
    let created = cli(
        &token,
        &[
            "spec", "create", "small", "--cpu", "0.5", "--memory", "64m", "-o", "json",
        ],
    );
    assert!(created.status.success());
    let refused = cli(
        &token,
        &["spec", "create", "tiny", "--cpu", "0.5", "--memory", "1k"],
    );
    assert_eq!(refused.status.code(), Some(1));
    let message = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(message.contains("[field: memory]"), "{message}");
    let created = cli(
        &token,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--image",
            "berth-test/busybox:latest",
            "--spec-id",
            "1",
            "--port",
            "8080",
            "-o",
            "json",
            "--",
            "sh",
            "-c",
            "echo hello-e2e; exec httpd -f -p 8080 -h /www",
        ],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let service: Value = serde_json::from_slice(&created.stdout).expect("JSON");
    assert_eq!(service["state"], "succeeded", "{service}");
    let id = service["service_id"].to_string();
    let step = |args: &[&str]| {
        let output = cli(&token, args);
        assert!(
            output.status.success(),
            "berth {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let started = step(&["service", "start", &id]);
    assert!(started.contains("running"), "{started}");
    let mut logs = String::new();
    for _ in 0..50 {
        logs = step(&["service", "logs", &id, "--tail", "10"]);
        if logs.contains("hello-e2e") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(logs.contains("hello-e2e"), "{logs}");
    // A service is named by its name as well as its id.
    let status: Value =
        serde_json::from_str(&step(&["service", "status", "web", "-o", "json"])).expect("JSON");
    assert_eq!(status["id"].to_string(), id, "{status}");
    let unknown = cli(&token, &["service", "status", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no service named \"nope\""),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    let url = status["service_url"].as_str().expect("a URL").to_owned();
    assert!(url.contains("/s/admin/web/"), "the gateway's URL: {url}");
    let page = fetch_text(&url, &token);
    assert_eq!(page.trim(), "ok", "the service answers at {url}");
    assert!(step(&["service", "stats", &id]).contains("MEMORY"));
    let nowhere = cli(&token, &["service", "migrate", &id]);
    assert_eq!(nowhere.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&nowhere.stderr).contains("the node it moves away from"),
        "{}",
        String::from_utf8_lossy(&nowhere.stderr)
    );
    let usage = step(&["node", "usage"]);
    assert!(usage.contains("1/100"), "one container on local: {usage}");
    step(&["service", "stop", "web", "--timeout", "5"]);
    let rolled: Value = serde_json::from_str(&step(&[
        "service",
        "rollback",
        &id,
        "--version",
        "1",
        "-o",
        "json",
    ]))
    .expect("JSON");
    assert_eq!(
        (
            rolled["state"].as_str(),
            rolled["service"]["version"].as_i64()
        ),
        (Some("succeeded"), Some(2)),
        "{rolled}"
    );
    step(&["service", "delete", &id]);
    let log: Value =
        serde_json::from_str(&step(&["ops", "--service", &id, "-o", "json"])).expect("JSON");
    let mut actions: Vec<&str> = log["operations"]
        .as_array()
        .expect("ops")
        .iter()
        .filter_map(|op| op["action"].as_str())
        .collect();
    actions.reverse();
    assert_eq!(
        actions,
        vec![
            "service.create",
            "container.create",
            "service.start",
            "container.migrate",
            "service.stop",
            "service.rollback",
            "container.create",
            "service.delete"
        ]
    );
    let denied = cli("berth_wrong", &["node", "list"]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("berth login"));
    terminate(running);

    let (running, lines) = start(&dir, port);
    let text = lines.join("\n");
    assert!(
        text.contains("from"),
        "the second start reads the token file: {text}"
    );
    let (status, nodes) = get(port, "/api/nodes", &token);
    assert_eq!(
        (status, nodes.as_array().map(Vec::len)),
        (200, Some(1)),
        "one node local, not two"
    );
    let (_, log) = get(port, "/api/admin/operations", &token);
    let creates = log["operations"]
        .as_array()
        .expect("ops")
        .iter()
        .filter(|op| op["action"] == "node.create")
        .count();
    assert_eq!(creates, 1);
    terminate(running);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(dir.with_extension("cli")).ok();
}

#[test]
fn berth_up_logs_json_lines_for_collectors() {
    let dir = std::env::temp_dir().join(format!("berth-up-json-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["up", "--log-format", "json", "--data-dir"])
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--gateway-listen", "127.0.0.1:0"])
        .env("BERTH_CONFIG", cli_config(&dir))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berth up starts");
    let stderr = child.stderr.take().expect("stderr");
    let running = Running(child);
    fetch_text(&format!("http://127.0.0.1:{port}/health"), "");
    // Stopping logs its steps; every line is one JSON object.
    terminate(running);
    let lines: Vec<String> = BufReader::new(stderr)
        .lines()
        .map(|line| line.expect("text"))
        .collect();
    assert!(lines.len() >= 2, "the stop is logged: {lines:?}");
    for line in &lines {
        let entry: Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        assert!(
            entry["level"].is_string() && entry["fields"]["message"].is_string(),
            "{entry}"
        );
        assert!(!line.contains('\u{1b}'), "no colour codes: {line}");
    }
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(dir.with_extension("cli")).ok();
}
