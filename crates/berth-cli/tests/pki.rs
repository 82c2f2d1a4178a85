//! `berth pki` as an operator runs it: a CA made once (a second is refused), certificates
//! issued with what to do with them (the `dockerd` flags for an engine's), nothing issued
//! without a CA, and `berth node create --tls-from-pki` sending the CA and the hub's client
//! certificate (issued on first use) with the node. That the certificates secure a real engine
//! connection is tested beside the Docker driver (`berth-docker/tests/tls.rs`).

mod processes;

use std::process::{Command, Output};

use processes::{fresh_dir, start_hub};
use reqwest::Method;

fn berth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .output()
        .expect("berth runs")
}

fn text(output: &Output) -> String {
    processes::output_text(output)
}

#[tokio::test]
async fn berth_pki_makes_a_ca_issues_certificates_and_nodes_take_them() {
    let dir = fresh_dir("pki");
    let pki = dir.join("pki");
    let pki_arg = pki.to_str().expect("path");

    let without = berth(&["pki", "issue", "client", "--name", "x", "--dir", pki_arg]);
    assert!(!without.status.success());
    assert!(
        text(&without).contains("berth pki init"),
        "{}",
        text(&without)
    );

    let init = berth(&["pki", "init", "--dir", pki_arg]);
    assert!(init.status.success(), "{}", text(&init));
    assert!(pki.join("ca.pem").exists() && pki.join("ca-key.pem").exists());
    let again = berth(&["pki", "init", "--dir", pki_arg]);
    assert!(!again.status.success(), "a second CA is refused");
    assert!(
        text(&again).contains("has a CA already"),
        "{}",
        text(&again)
    );

    let engine = berth(&[
        "pki",
        "issue",
        "docker-server",
        "--name",
        "gpu-01",
        "--san",
        "192.168.1.10",
        "--dir",
        pki_arg,
    ]);
    assert!(engine.status.success(), "{}", text(&engine));
    let said = text(&engine);
    assert!(
        said.contains("dockerd --tlsverify") && said.contains("gpu-01.pem"),
        "{said}"
    );
    let bad = berth(&["pki", "issue", "tpu", "--name", "x", "--dir", pki_arg]);
    assert!(!bad.status.success(), "{}", text(&bad));

    let (_hub_process, hub) = start_hub(&dir, "").await;
    let created = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "node",
            "create",
            "--name",
            "tls-node",
            "--public-ip",
            "127.0.0.1",
            "--private-ip",
            "127.0.0.1",
            "--docker-address",
            "tcp://127.0.0.1:9",
            "--tls-from-pki",
            pki_arg,
        ])
        .env("BERTH_URL", hub.base())
        .env("BERTH_TOKEN", hub.token())
        .output()
        .expect("berth node create");
    assert!(created.status.success(), "{}", text(&created));
    assert!(
        pki.join("hub-client.pem").exists(),
        "the hub's client certificate is issued"
    );
    let (_, nodes) = hub.call(Method::GET, "/api/nodes", None).await;
    let node = nodes
        .as_array()
        .and_then(|nodes| nodes.iter().find(|node| node["name"] == "tls-node"))
        .cloned()
        .unwrap_or_else(|| panic!("{nodes}"));
    assert_eq!(
        (
            node["use_tls"].as_bool(),
            node["ca_cert_set"].as_bool(),
            node["client_cert_set"].as_bool(),
            node["client_key_set"].as_bool()
        ),
        (Some(true), Some(true), Some(true), Some(true)),
        "{node}"
    );
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", hub.base()))
        .bearer_auth(hub.token())
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("berth_hub_node_certificate_expiry_timestamp_seconds{node=\"tls-node\",certificate=\"client\"}"),
        "the client certificate's expiry is exported: {metrics}"
    );
}

/// `berth hub --tls-self-signed`: the API is served over TLS (HTTP/2 by ALPN) with a
/// certificate of the data directory's own CA, made on first start; the CLI trusts that CA
/// through `BERTH_CA_FILE` and refuses the hub without it.
#[tokio::test]
async fn the_hub_serves_tls_with_its_own_ca_and_the_cli_trusts_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = fresh_dir("hub-tls");
    let port = processes::free_port();
    let gateway_port = processes::free_port();
    let _hub = processes::Process(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("hub")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--gateway-listen", &format!("127.0.0.1:{gateway_port}")])
            .arg("--database-url")
            .arg(format!("sqlite://{}", dir.join("berth.db").display()))
            .arg("--data-dir")
            .arg(&dir)
            .arg("--tls-self-signed")
            .env("BERTH_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("berth hub"),
    );
    let ca = dir.join("pki").join("ca.pem");
    let url = format!("https://127.0.0.1:{port}");
    let version = processes::wait_for(
        std::time::Duration::from_secs(30),
        "the hub answers over TLS",
        || {
            let (ca, url) = (ca.clone(), url.clone());
            async move {
                let pem = std::fs::read(&ca).ok()?;
                let client = reqwest::Client::builder()
                    .add_root_certificate(reqwest::Certificate::from_pem(&pem).ok()?)
                    .build()
                    .ok()?;
                let answer = client.get(format!("{url}/health")).send().await.ok()?;
                (answer.status() == 200).then(|| answer.version())
            }
        },
    )
    .await;
    assert_eq!(version, reqwest::Version::HTTP_2, "HTTP/2 by ALPN");
    let trusting = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&ca).expect("ca")).expect("pem"),
        )
        .build()
        .expect("client");
    // The console's cookies are Secure over the hub's own TLS, as behind a TLS proxy.
    let sign_in = trusting
        .get(format!("{url}/sign-in"))
        .send()
        .await
        .expect("the sign-in page");
    let cookies: Vec<_> = sign_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().expect("text").to_owned())
        .collect();
    assert!(
        !cookies.is_empty() && cookies.iter().all(|cookie| cookie.contains("; Secure")),
        "{cookies:?}"
    );
    // The gateway serves TLS with the same certificate.
    let gateway = trusting
        .get(format!("https://127.0.0.1:{gateway_port}/s/admin/nothing/"))
        .send()
        .await
        .expect("the gateway answers over TLS");
    assert_eq!(gateway.status(), 404);
    assert_eq!(gateway.version(), reqwest::Version::HTTP_2);
    let token = std::fs::read_to_string(dir.join("admin-token")).expect("token");
    let list = |ca_file: Option<&std::path::Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
        command
            .args(["node", "list"])
            .env("BERTH_URL", &url)
            .env("BERTH_TOKEN", token.trim())
            .env_remove("BERTH_CA_FILE");
        if let Some(ca_file) = ca_file {
            command.env("BERTH_CA_FILE", ca_file);
        }
        command.output().expect("berth node list")
    };
    let trusted = list(Some(&ca));
    assert!(trusted.status.success(), "{}", text(&trusted));
    let untrusted = list(None);
    assert!(!untrusted.status.success(), "{}", text(&untrusted));
    assert!(
        text(&untrusted).contains("BERTH_CA_FILE"),
        "the refusal says what to set: {}",
        text(&untrusted)
    );

    // A join command names the hub as it was reached, over TLS; an agent trusting the hub's CA
    // joins with it.
    let issued = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["node", "join-token", "--name", "tls-joined"])
        .env("BERTH_URL", &url)
        .env("BERTH_TOKEN", token.trim())
        .env("BERTH_CA_FILE", &ca)
        .output()
        .expect("berth node join-token");
    let said = text(&issued);
    let command = said
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("berth agent --join"))
        .unwrap_or_else(|| panic!("{said}"))
        .to_owned();
    assert!(command.contains(&format!("--join {url} ")), "{command}");
    assert!(said.contains("BERTH_CA_FILE"), "{said}");
    let join_token = command.split_whitespace().last().expect("token").to_owned();
    // The agent asks the hub's CA for its certificate. A host the hub's own certificate names
    // is refused, and the refusal leaves the token usable.
    let agent_port = processes::free_port();
    let agent = |advertise: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
        command
            .args([
                "agent",
                "--join",
                &url,
                "--token",
                &join_token,
                "--tls-from-hub",
            ])
            .args(["--advertise", advertise])
            .arg("--data-dir")
            .arg(dir.join("agent"))
            .env("BERTH_AGENT_LISTEN", format!("127.0.0.2:{agent_port}"))
            .env("BERTH_CA_FILE", &ca)
            .env("SERVER_ID", "tls-joined")
            .env("LOG_LEVEL", "WARNING");
        command
    };
    let refused = agent(&format!("https://127.0.0.1:{agent_port}"))
        .output()
        .expect("berth agent");
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("agent_url") && text(&refused).contains("127.0.0.1"),
        "{}",
        text(&refused)
    );
    let _agent = processes::Process(
        agent(&format!("https://127.0.0.2:{agent_port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("berth agent --join --tls-from-hub"),
    );
    let node = processes::wait_for(
        std::time::Duration::from_secs(30),
        "the agent joined the TLS hub and the hub reaches it over TLS",
        || {
            let (trusting, url, token) = (trusting.clone(), url.clone(), token.clone());
            async move {
                let nodes: serde_json::Value = trusting
                    .get(format!("{url}/api/nodes"))
                    .bearer_auth(token.trim())
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                nodes
                    .as_array()?
                    .iter()
                    .find(|node| {
                        node["name"] == "tls-joined" && node["docker_status"] == "connected"
                    })
                    .cloned()
            }
        },
    )
    .await;
    assert_eq!(
        node["agent_url"],
        format!("https://127.0.0.2:{agent_port}"),
        "{node}"
    );
    // The agent's listener serves the certificate the hub's CA signed; without that CA it is
    // not trusted.
    let health = trusting
        .get(format!("https://127.0.0.2:{agent_port}/health"))
        .send()
        .await
        .expect("the agent answers over TLS");
    assert_eq!(health.status(), 200);
    assert!(
        reqwest::Client::new()
            .get(format!("https://127.0.0.2:{agent_port}/health"))
            .send()
            .await
            .is_err(),
        "the agent's certificate is of the hub's CA, not a public one"
    );
    let key = dir.join("agent").join("agent-key.pem");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key)
            .expect("the key is kept")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // `berth service exec` reaches the hub over wss:// trusting the same CA (on a node the hub
    // drives over Docker: exec does not go through agents).
    let admin = |method: Method, path: &str, body: Option<serde_json::Value>| {
        let (trusting, url, token) = (trusting.clone(), url.clone(), token.clone());
        let path = path.to_owned();
        async move {
            let mut request = trusting
                .request(method, format!("{url}{path}"))
                .bearer_auth(token.trim());
            if let Some(body) = body {
                request = request.json(&body);
            }
            let answer = request.send().await.expect("the hub answers");
            let status = answer.status().as_u16();
            (
                status,
                answer.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let docker =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
    let (status, node) = admin(
        Method::POST,
        "/api/nodes",
        Some(
            serde_json::json!({"name": "local", "public_ip": "127.0.0.1",
            "private_ip": "127.0.0.1", "docker_address": docker, "use_tls": false,
            "labels": {"reached": "docker"}}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{node}");
    let (status, created) = admin(
        Method::POST,
        "/api/admin/tls/services?wait=60",
        Some(serde_json::json!({
            "name": "shell", "image": processes::IMAGE, "memory_limit": "16m", "cpu_limit": 0.1,
            "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"], "start": true,
            "constraints": {"reached": "docker"},
        })),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let ran = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "service",
            "exec",
            "shell",
            "--",
            "sh",
            "-c",
            "echo over-wss; exit 3",
        ])
        .env("BERTH_URL", &url)
        .env("BERTH_TOKEN", token.trim())
        .env("BERTH_CA_FILE", &ca)
        .output()
        .expect("berth service exec");
    let id = created["service_id"].as_i64().expect("id");
    let (status, _) = admin(Method::DELETE, &format!("/api/services/{id}?wait=60"), None).await;
    assert!(status < 300, "the service is removed: {status}");
    assert_eq!(ran.status.code(), Some(3), "{}", text(&ran));
    assert!(text(&ran).contains("over-wss"), "{}", text(&ran));
}
