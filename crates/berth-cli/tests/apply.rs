//! `berth validate` and `berth apply` as a user runs them against a `berth hub` process with the
//! local engine: a mistake points at its line, a dry run changes nothing, apply creates the
//! service, a change of serving settings alone keeps the container, any other change replaces
//! it, and applying the same file again changes nothing. Node labels and service constraints
//! from the command line: a constraint no node meets is refused, relabelling the node lets it in.

mod processes;

use std::process::{Command, Output};

use futures_util::FutureExt;
use processes::{HubApi, IMAGE, fresh_dir, start_hub};
use reqwest::Method;
use serde_json::{Value, json};

fn berth(hub: &HubApi, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env("BERTH_URL", hub.base())
        .env("BERTH_TOKEN", hub.token())
        .output()
        .expect("berth runs")
}

fn text(output: &Output) -> String {
    processes::output_text(output)
}

fn manifest(environment: &str, probe_interval: u32) -> String {
    format!(
        "name: web\nrepo: site\nimage: {IMAGE}\nport: 8080\nmemory_limit: 16m\ncpu_limit: 0.1\n\
         command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait\"]\n\
         environment:\n  STAGE: {environment}\n\
         serving:\n  probe_interval_seconds: {probe_interval}\n"
    )
}

async fn container_and_version(hub: &HubApi, id: i64) -> (String, i64) {
    let service = hub.service(id).await;
    (
        service["container_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        service["version"].as_i64().unwrap_or_default(),
    )
}

#[tokio::test]
async fn validate_and_apply_create_update_and_leave_alone() {
    let dir = fresh_dir("apply");
    let (_hub_process, hub) = start_hub(&dir, "").await;
    hub.add_local_node().await;
    let file = dir.join("web.yaml");
    let path = file.to_str().expect("path");

    let outcome = async {
        std::fs::write(&file, manifest("one", 2).replace("port: 8080", "port: 0")).expect("write");
        let refused = berth(&hub, &["validate", "-f", path]);
        assert_eq!(refused.status.code(), Some(2));
        assert!(text(&refused).contains(":4:1: port"), "{}", text(&refused));

        std::fs::write(&file, manifest("one", 2)).expect("write");
        let valid = berth(&hub, &["validate", "-f", path]);
        assert!(valid.status.success(), "{}", text(&valid));
        assert!(
            text(&valid).contains("valid: service web in site"),
            "{}",
            text(&valid)
        );

        std::fs::write(
            &file,
            manifest("one", 2).replace("cpu_limit: 0.1", "cpu_limit: 64"),
        )
        .expect("write");
        let too_big = berth(&hub, &["apply", "-f", path, "--dry-run"]);
        assert_eq!(too_big.status.code(), Some(1));
        assert!(
            text(&too_big).contains("CPU asked 64 cores, free"),
            "the dry run places: {}",
            text(&too_big)
        );
        std::fs::write(&file, manifest("one", 2)).expect("write");
        let dry = berth(&hub, &["apply", "-f", path, "--dry-run"]);
        assert!(
            text(&dry).contains("+ create service web")
                && text(&dry).contains("started on node(s) local"),
            "{}",
            text(&dry)
        );
        let (_, listed) = hub.call(Method::GET, "/api/services", None).await;
        assert_eq!(listed["total"], 0, "a dry run creates nothing");

        let created = berth(&hub, &["apply", "-f", path]);
        assert!(created.status.success(), "{}", text(&created));
        let (_, listed) = hub.call(Method::GET, "/api/services", None).await;
        let id = listed["services"][0]["id"].as_i64().expect("created");
        assert_eq!(
            listed["services"][0]["status"], "running",
            "apply starts what it creates"
        );
        let (first_container, first_version) = container_and_version(&hub, id).await;
        assert_eq!(first_version, 1);

        std::fs::write(&file, manifest("one", 5)).expect("write");
        let served = berth(&hub, &["apply", "-f", path]);
        let said = text(&served);
        assert!(
            said.contains("serving.probe_interval_seconds: 2 → 5")
                && said.contains("containers stay"),
            "{said}"
        );
        assert_eq!(
            container_and_version(&hub, id).await,
            (first_container.clone(), 2),
            "same container, next version"
        );

        std::fs::write(&file, manifest("two", 5)).expect("write");
        let replaced = berth(&hub, &["apply", "-f", path]);
        let said = text(&replaced);
        assert!(
            said.contains("environment.STAGE: \"one\" → \"two\"")
                && said.contains("will be replaced"),
            "{said}"
        );
        let (container, version) = container_and_version(&hub, id).await;
        assert_eq!(version, 3);
        assert_ne!(
            container, first_container,
            "a new container for the new version"
        );

        let again = berth(&hub, &["apply", "-f", path]);
        assert!(text(&again).contains("is as declared"), "{}", text(&again));
        assert_eq!(container_and_version(&hub, id).await.1, 3);
    };
    let result = std::panic::AssertUnwindSafe(outcome).catch_unwind().await;
    hub.delete_all_services().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn node_labels_and_service_constraints_from_the_command_line() {
    let dir = fresh_dir("cli-labels");
    let (_hub_process, hub) = start_hub(&dir, "").await;
    let docker =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
    let created = berth(
        &hub,
        &[
            "node",
            "create",
            "--name",
            "local",
            "--public-ip",
            "127.0.0.1",
            "--private-ip",
            "127.0.0.1",
            "--docker-address",
            &docker,
            "--no-tls",
            "--label",
            "zone=a",
        ],
    );
    assert!(created.status.success(), "{}", text(&created));
    let (_, nodes) = hub.call(Method::GET, "/api/nodes", None).await;
    let node = &nodes.as_array().expect("nodes")[0];
    assert_eq!(node["labels"], json!({"zone": "a"}), "{node}");
    let id = node["id"].as_i64().expect("id").to_string();

    let service = |zone: &str| {
        berth(
            &hub,
            &[
                "service",
                "create",
                "--name",
                &format!("in-{zone}"),
                "--image",
                IMAGE,
                "--cpu",
                "0.1",
                "--memory",
                "16m",
                "--constraint",
                &format!("zone={zone}"),
                "--replicas",
                "2",
                "--",
                "sleep",
                "60",
            ],
        )
    };
    let refused = service("b");
    assert!(!refused.status.success());
    assert!(text(&refused).contains("label"), "{}", text(&refused));

    let relabelled = berth(&hub, &["node", "label", &id, "zone=b", "gpu=none"]);
    assert!(relabelled.status.success(), "{}", text(&relabelled));
    let placed = service("b");
    assert!(placed.status.success(), "{}", text(&placed));
    let (_, listed) = hub.call(Method::GET, "/api/services", None).await;
    assert_eq!(listed["services"][0]["replicas"], 2, "{listed}");

    let bad = berth(&hub, &["node", "label", &id, "zone"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).contains("is not KEY=VALUE"), "{}", text(&bad));
    hub.delete_all_services().await;
}

/// A watched directory of seed 004's model files, on the local engine, watched by `berth apply
/// --watch`: a file applied makes a model service with the model mounted read-only and the
/// runtime's command filled in; a changed file deploys the next version; a removed file unloads
/// the service.
#[tokio::test]
async fn a_watched_directory_of_model_files_is_applied_changed_and_unloaded() {
    watch_a_directory("apply-watch", Watcher::Cli).await;
}

/// The same with the hub's `model_watch_dir`: the hub applies the files as the first admin,
/// with a token of its own that a restart replaces.
#[tokio::test]
async fn the_hubs_model_watch_dir_applies_changes_and_unloads_model_files() {
    watch_a_directory("hub-watch", Watcher::Hub).await;
}

/// Who watches the directory.
#[derive(PartialEq)]
enum Watcher {
    Cli,
    Hub,
}

async fn watch_a_directory(test: &str, by: Watcher) {
    let dir = fresh_dir(test);
    let models = dir.join("models");
    let watched = dir.join("watched");
    std::fs::create_dir_all(&models).expect("dir");
    std::fs::create_dir_all(&watched).expect("dir");
    std::fs::write(models.join("transformer.pt"), "weights\n").expect("model");
    let mut config = format!(
        "model_roots: [{models}]\nmodel_runtimes:\n  busybox:\n    image: {IMAGE}\n    port: 8080\n    command: [sh, -c, \"echo {{model_id}} {{batch_size}} {{device}} {{model_path}} > /tmp/args; trap 'exit 0' TERM; httpd -f -p {{port}} -h /www & wait\"]\n",
        models = models.display()
    );
    if by == Watcher::Hub {
        config.push_str(&format!("model_watch_dir: {}\n", watched.display()));
    }
    let file = watched.join("transformer.yaml");
    let model_file = |batch: u32| {
        format!(
            "model_id: \"transformer\"\nmodel_path: \"{}\"\ndevice: \"cpu\"\nbatch_size: {batch}\ncpu_limit: 0.1\nmemory_limit: 32m\n",
            models.join("transformer.pt").display()
        )
    };
    std::fs::write(&file, model_file(32)).expect("write");
    let (_hub_process, hub) = start_hub(&dir, &config).await;
    hub.add_local_node().await;
    let mut watcher = (by == Watcher::Cli).then(|| {
        processes::Process(
            Command::new(env!("CARGO_BIN_EXE_berth"))
                .args(["apply", "--watch"])
                .arg(&watched)
                .env("BERTH_URL", hub.base())
                .env("BERTH_TOKEN", hub.token())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("berth apply --watch"),
        )
    });
    let outcome = async {
        let service = |wanted: &'static str, version: i64| {
            let hub = &hub;
            async move {
                let (_, listed) = hub.call(Method::GET, "/api/services", None).await;
                let found = listed["services"]
                    .as_array()?
                    .iter()
                    .find(|service| service["name"] == "transformer")?
                    .clone();
                let launched = wanted != "running"
                    || found["container_id"]
                        .as_str()
                        .is_some_and(|id| !id.is_empty());
                (found["status"] == wanted && found["version"] == version && launched)
                    .then_some(found)
            }
        };
        let created = processes::wait_for(
            std::time::Duration::from_secs(60),
            "the watched file applied",
            || service("running", 1),
        )
        .await;
        let exec = |command: &str| {
            berth(
                &hub,
                &["service", "exec", "transformer", "--", "sh", "-c", command],
            )
        };
        let args = exec("cat /tmp/args");
        assert_eq!(
            String::from_utf8_lossy(&args.stdout).trim(),
            "transformer 32 cpu /models/transformer.pt",
            "{}",
            text(&args)
        );
        let model = exec("cat /models/transformer.pt");
        assert_eq!(String::from_utf8_lossy(&model.stdout), "weights\n");
        let write = exec("echo changed > /models/transformer.pt");
        assert!(!write.status.success(), "the model is mounted read-only");
        assert_eq!(
            std::fs::read_to_string(models.join("transformer.pt")).expect("model"),
            "weights\n"
        );
        assert_eq!(
            created["definition"]["serving"]["model_names"],
            json!(["transformer"])
        );
        if by == Watcher::Hub {
            let (_, me) = hub.call(Method::GET, "/api/users/me", None).await;
            let (_, operations) = hub
                .call(
                    Method::GET,
                    "/api/admin/operations?action=service.create",
                    None,
                )
                .await;
            let created_by: Vec<&Value> = operations["operations"]
                .as_array()
                .map(|rows| rows.iter().map(|row| &row["user_id"]).collect())
                .unwrap_or_default();
            assert_eq!(
                created_by,
                [&me["id"]],
                "applied as the first admin: {operations}"
            );
            let (_, tokens) = hub
                .call(
                    Method::GET,
                    &format!("/api/users/{}/tokens", me["id"]),
                    None,
                )
                .await;
            assert!(
                tokens.to_string().contains("model-watch"),
                "the watcher's own token is listed: {tokens}"
            );
        }

        std::fs::write(&file, model_file(64)).expect("write");
        processes::wait_for(
            std::time::Duration::from_secs(60),
            "the changed file applied",
            || service("running", 2),
        )
        .await;
        // The new version's container takes over from the old one.
        processes::wait_for(
            std::time::Duration::from_secs(30),
            "the runtime started with the new batch size",
            || {
                let args = exec("cat /tmp/args");
                async move {
                    String::from_utf8_lossy(&args.stdout)
                        .starts_with("transformer 64 ")
                        .then_some(())
                }
            },
        )
        .await;

        std::fs::remove_file(&file).expect("remove");
        processes::wait_for(
            std::time::Duration::from_secs(60),
            "the removed file's service unloaded",
            || service("unloaded", 2),
        )
        .await;
    };
    let result = std::panic::AssertUnwindSafe(outcome).catch_unwind().await;
    if let Some(watcher) = &mut watcher {
        watcher.kill();
    }
    hub.delete_all_services().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
