//! The CLI's verbs as a user runs them through the binary against a `berth hub` process with the
//! local engine: names where ids were asked (service `name` and `owner/name`, node, spec, user),
//! tables in human units, `-o json|yaml|wide`, `service status` with every replica,
//! `service update`, `rollback` to the previous version by default, user quotas, token reissue
//! and user delete, and the generated completions and manual page.

mod processes;

use std::process::{Command, Output};
use std::time::Duration;

use futures_util::FutureExt;
use processes::{HubApi, IMAGE, fresh_dir, start_hub, wait_for};
use reqwest::Method;
use serde_json::Value;

fn berth(hub: &HubApi, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env("BERTH_URL", hub.base())
        .env("BERTH_TOKEN", token)
        .output()
        .expect("berth runs")
}

/// Standard output of a command that must succeed.
fn ok(hub: &HubApi, args: &[&str]) -> String {
    let output = berth(hub, hub.token(), args);
    assert!(
        output.status.success(),
        "berth {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Standard error of a command that must fail with exit code 1.
fn refused(hub: &HubApi, args: &[&str]) -> String {
    let output = berth(hub, hub.token(), args);
    assert_eq!(
        output.status.code(),
        Some(1),
        "berth {args:?} fails: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("{err}: {text}"))
}

#[tokio::test]
async fn verbs_take_names_and_print_tables_people_read() {
    let dir = fresh_dir("cli-verbs");
    let (_hub_process, hub) = start_hub(&dir, "").await;
    hub.add_local_node().await;
    let outcome = async {
        // Specs in cores and binary units, named by their name.
        ok(
            &hub,
            &[
                "spec", "create", "small", "--cpu", "0.25", "--memory", "32m",
            ],
        );
        let specs = ok(&hub, &["spec", "list"]);
        assert!(
            specs.contains("CPU (cores)") && specs.contains("0.25") && specs.contains("32 MiB"),
            "{specs}"
        );
        let created = ok(
            &hub,
            &[
                "service",
                "create",
                "--name",
                "web",
                "--image",
                IMAGE,
                "--spec",
                "small",
                "--port",
                "8080",
                "--replicas",
                "2",
                "--start",
                "-o",
                "json",
                "--",
                "sh",
                "-c",
                "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait",
            ],
        );
        let id = json(&created)["service_id"].as_i64().expect("an id");

        // Status: every replica with its node, state and readiness, and the gateway's URL.
        let status = wait_for(Duration::from_secs(30), "both replicas ready", || async {
            let text = ok(&hub, &["service", "status", "web"]);
            text.contains("2 of 2 replica(s) ready").then_some(text)
        })
        .await;
        let rows: Vec<&str> = status
            .lines()
            .filter(|line| line.contains("  local  "))
            .collect();
        assert_eq!(rows.len(), 2, "{status}");
        assert!(
            rows.iter()
                .all(|row| row.contains("local") && row.contains("yes")),
            "{status}"
        );
        assert!(status.contains("/s/admin/web/"), "{status}");
        let yaml: Value =
            yaml_serde::from_str(&ok(&hub, &["service", "status", "admin/web", "-o", "yaml"]))
                .expect("YAML");
        assert_eq!(yaml["id"].as_i64(), Some(id));
        assert_eq!(yaml["replicas"].as_array().map(Vec::len), Some(2), "{yaml}");
        let nobody = refused(&hub, &["service", "status", "nobody/web"]);
        assert!(nobody.contains("no user named \"nobody\""), "{nobody}");

        // The service list and the node show name the node; stats are a table, not JSON.
        let listed = ok(&hub, &["service", "list"]);
        assert!(listed.contains("web   running  local"), "{listed}");
        let node = ok(&hub, &["node", "show", "local"]);
        assert!(
            node.contains("Hardware") && node.contains("cores") && node.contains("web      0"),
            "{node}"
        );
        let wide = ok(&hub, &["node", "list", "-o", "wide"]);
        assert!(wide.contains("MESSAGE") && wide.contains("ready"), "{wide}");
        assert!(!ok(&hub, &["node", "list"]).contains("MESSAGE"));
        let unknown = refused(&hub, &["node", "show", "nowhere"]);
        assert!(unknown.contains("no node named \"nowhere\""), "{unknown}");
        // A node's images: listed, a pull followed to its (failed: no registry) end, a removal
        // refused while the service uses the image.
        let images = ok(&hub, &["node", "images", "local"]);
        assert!(images.contains(IMAGE) && images.contains("MiB"), "{images}");
        let pulled = refused(&hub, &["node", "pull", "local", "berth-test/absent:1"]);
        assert!(
            pulled.contains("node.image_pull") && pulled.contains("failed"),
            "{pulled}"
        );
        let in_use = refused(&hub, &["node", "rmi", "local", IMAGE]);
        assert!(
            in_use.contains("409") && in_use.contains("in use"),
            "{in_use}"
        );
        let stats = ok(&hub, &["service", "stats", "web"]);
        assert!(
            stats.starts_with("CPU") && stats.contains(" of 32 MiB"),
            "{stats}"
        );

        // Exec: the command's output and exit code; stdin with -i; a terminal with -t.
        let ran = berth(
            &hub,
            hub.token(),
            &[
                "service",
                "exec",
                "web",
                "--",
                "sh",
                "-c",
                "echo out-$((6*7)); exit 3",
            ],
        );
        assert_eq!(
            ran.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&ran.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&ran.stdout), "out-42\n");
        let mut piped = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args([
                "service",
                "exec",
                "web",
                "-i",
                "--replica",
                "1",
                "--",
                "sh",
                "-c",
                "tr a-z A-Z; tty || true",
            ])
            .env("BERTH_URL", hub.base())
            .env("BERTH_TOKEN", hub.token())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("berth runs");
        {
            use std::io::Write;
            let mut stdin = piped.stdin.take().expect("stdin");
            stdin.write_all(b"piped words\n").expect("write");
        }
        let piped = piped.wait_with_output().expect("ends");
        assert!(piped.status.success());
        let said = String::from_utf8_lossy(&piped.stdout).into_owned();
        assert!(
            said.starts_with("PIPED WORDS\n") && said.contains("not a tty"),
            "{said}"
        );
        let mut terminal = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["service", "exec", "web", "-it"])
            .env("BERTH_URL", hub.base())
            .env("BERTH_TOKEN", hub.token())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("berth runs");
        {
            use std::io::Write;
            let mut stdin = terminal.stdin.take().expect("stdin");
            stdin
                .write_all(b"tty; echo in-$((6*7))-term; exit 5\n")
                .expect("write");
            // The pipe stays open until the shell exits, as a person's terminal would.
            std::thread::sleep(Duration::from_millis(1500));
        }
        let terminal = terminal.wait_with_output().expect("ends");
        let said = String::from_utf8_lossy(&terminal.stdout).into_owned();
        assert_eq!(terminal.status.code(), Some(5), "{said}");
        assert!(
            said.contains("/dev/pts/") && said.contains("in-42-term"),
            "{said}"
        );
        let missing = refused(
            &hub,
            &["service", "exec", "web", "--replica", "9", "--", "true"],
        );
        assert!(missing.contains("no replica 9"), "{missing}");

        // Update: one variable and the replica count, as the next version.
        let updated = ok(
            &hub,
            &[
                "service",
                "update",
                "web",
                "--env",
                "STAGE=two",
                "--replicas",
                "1",
            ],
        );
        assert!(
            updated.contains("environment.STAGE: null → \"two\"")
                && updated.contains("replicas: 2 → 1"),
            "{updated}"
        );
        let service = hub.service(id).await;
        assert_eq!(
            (service["version"].as_i64(), service["replicas"].as_i64()),
            (Some(2), Some(1))
        );
        assert_eq!(service["definition"]["environment"]["STAGE"], "two");
        let same = ok(&hub, &["service", "update", "web", "--replicas", "1"]);
        assert!(same.contains("nothing changed"), "{same}");
        let unset = refused(&hub, &["service", "update", "web", "--unset-env", "NOPE"]);
        assert!(unset.contains("STAGE"), "{unset}");

        // Rollback without a version goes to the one before.
        ok(&hub, &["service", "rollback", "web"]);
        let service = hub.service(id).await;
        assert_eq!(service["version"].as_i64(), Some(3));
        assert!(
            service["definition"]["environment"]["STAGE"].is_null(),
            "{service}"
        );
        let history = ok(&hub, &["service", "deployments", "web"]);
        assert!(
            history.contains("rollback to version 1") && history.contains("local"),
            "{history}"
        );

        // The operation log by name, with names.
        let log = ok(&hub, &["ops", "--service", "web"]);
        assert!(
            log.contains("service.update")
                && log.contains("service.exec")
                && log.contains("service web")
                && log.contains("admin"),
            "{log}"
        );

        // Users: quotas, token reissue, delete — by name.
        let alice = json(&ok(&hub, &["user", "create", "alice", "-o", "json"]));
        let first = alice["token"].as_str().expect("token").to_owned();
        ok(
            &hub,
            &[
                "user", "quota", "set", "alice", "--cpu", "4", "--memory", "8g",
            ],
        );
        let users = ok(&hub, &["user", "list"]);
        assert!(
            users.contains("alice  user") && users.contains("8 GiB"),
            "{users}"
        );
        let nothing = refused(&hub, &["user", "quota", "set", "alice"]);
        assert!(nothing.contains("nothing to set"), "{nothing}");
        let bad = refused(&hub, &["user", "quota", "set", "alice", "--cpu", "lots"]);
        assert!(bad.contains("--cpu \"lots\" is not a number"), "{bad}");
        let tokens = json(&ok(
            &hub,
            &["user", "token", "list", "--user", "alice", "-o", "json"],
        ));
        let token_id = tokens["tokens"][0]["id"]
            .as_i64()
            .expect("token id")
            .to_string();
        let reissued = json(&ok(
            &hub,
            &[
                "user", "token", "reissue", &token_id, "--user", "alice", "-o", "json",
            ],
        ));
        let second = reissued["token"].as_str().expect("new token").to_owned();
        assert!(berth(&hub, &second, &["user", "me"]).status.success());
        let old = berth(&hub, &first, &["user", "me"]);
        assert_eq!(old.status.code(), Some(1), "the reissued token is revoked");
        ok(&hub, &["user", "delete", "alice"]);
        assert!(!ok(&hub, &["user", "list"]).contains("alice"));
        assert!(!berth(&hub, &second, &["user", "me"]).status.success());

        // Completions and the manual page come from the same command definitions.
        let completions = ok(&hub, &["completions", "bash"]);
        assert!(
            completions.contains("_berth") && completions.contains("rollback"),
            "bash completions"
        );
        assert!(ok(&hub, &["completions", "zsh"]).contains("#compdef berth"));
        assert!(ok(&hub, &["man"]).contains(".TH berth"));

        let (status, _) = hub
            .call(Method::DELETE, &format!("/api/services/{id}"), None)
            .await;
        assert_eq!(status, 202);
    };
    let result = std::panic::AssertUnwindSafe(outcome).catch_unwind().await;
    hub.delete_all_services().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
