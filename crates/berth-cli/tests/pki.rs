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
