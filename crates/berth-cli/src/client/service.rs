//! `berth service …`: create, change, follow and inspect services; a service is named by its
//! name, `owner/name` or id everywhere.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::api::HubClient;
use super::commands::{OPERATION_COLUMNS, Output, pairs, print};
use super::{names, progress, table};

/// `berth service …`
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// My services (everyone's with --all, for admins).
    List {
        /// Everyone's.
        #[arg(long)]
        all: bool,
        /// Show it again every 2 seconds until interrupted.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Create a service (its containers are created, and started with --start); waits for the
    /// operation, showing its progress, unless --detach.
    Create(Box<NewService>),
    /// Start every replica and wait until they run.
    Start {
        /// Service name (yours), OWNER/NAME, or id.
        id: String,
        /// Do not wait: print the operation and return.
        #[arg(long)]
        detach: bool,
    },
    /// Stop every replica (SIGTERM, then SIGKILL after the grace period).
    Stop {
        /// Service name (yours), OWNER/NAME, or id.
        id: String,
        /// Grace period, seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u32,
        /// Do not wait: print the operation and return.
        #[arg(long)]
        detach: bool,
    },
    /// Restart each replica in turn (stop with the grace period, then start).
    Restart {
        /// Service name (yours), OWNER/NAME, or id.
        id: String,
        /// Grace period, seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u32,
        /// Do not wait: print the operation and return.
        #[arg(long)]
        detach: bool,
    },
    /// Load a model service (seed 004): start its replicas, making room at max_models, and wait
    /// until one is ready.
    Load {
        /// Service name (yours), OWNER/NAME, or id.
        id: String,
        /// Do not wait: print the operation and return.
        #[arg(long)]
        detach: bool,
    },
    /// Unload a model service: stop its replicas; its next gateway request starts it again.
    Unload {
        /// Service name (yours), OWNER/NAME, or id.
        id: String,
        /// Do not wait: print the operation and return.
        #[arg(long)]
        detach: bool,
    },
    /// Live status, node and URL.
    Status {
        /// Service name (yours), OWNER/NAME, or id.
        id: String,
        /// Show it again every 2 seconds until interrupted.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Change the image, environment or replica count: deployed as the next version (its
    /// containers are replaced, started again if it ran), followed to the end.
    Update(Box<ServiceUpdate>),
    /// Run a command in one of the service's containers (`-it` for a shell); exits with the
    /// command's exit code.
    Exec(super::exec::ExecArgs),
    /// Container output.
    Logs {
        /// Service name (yours), OWNER/NAME, or id.
        id: String,
        /// Last lines.
        #[arg(long, default_value_t = 100)]
        tail: u32,
        /// Keep following.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// One resource sample (CPU, memory, I/O) from the node.
    Stats {
        /// Service name (yours), OWNER/NAME, or id.
        id: String,
    },
    /// Deployment history.
    Deployments {
        /// Service name (yours), OWNER/NAME, or id.
        id: String,
    },
    /// Deploy an earlier version again.
    Rollback {
        /// Service name (yours), OWNER/NAME, or id.
        id: String,
        /// The version to go back to (default: the one before the current version).
        #[arg(long)]
        version: Option<i64>,
        /// Do not wait: print the operation and return.
        #[arg(long)]
        detach: bool,
    },
    /// Steer the rollout under way: pause it before its traffic moves, resume it, promote it
    /// (move the traffic now) or abort it (the previous version serves again).
    Rollout {
        /// pause, resume, promote or abort.
        #[arg(value_parser = ["pause", "resume", "promote", "abort"])]
        command: String,
        /// Service name (yours), OWNER/NAME, or id.
        id: String,
    },
    /// Move the service's container to another node (admin); its data volume stays behind.
    Migrate {
        /// Service name (yours), OWNER/NAME, or id.
        id: String,
        /// The node to move to (name or id); the scheduler chooses when not given.
        #[arg(long)]
        to: Option<String>,
        /// Do not wait: print the operation and return.
        #[arg(long)]
        detach: bool,
    },
    /// Remove the service and its containers.
    Delete {
        /// Service name (yours), OWNER/NAME, or id.
        id: String,
        /// Do not wait: print the operation and return.
        #[arg(long)]
        detach: bool,
    },
}

/// Fields of `berth service update`.
#[derive(Debug, Args)]
pub struct ServiceUpdate {
    /// Service name (yours), OWNER/NAME, or id.
    id: String,
    /// The new image reference.
    #[arg(long)]
    image: Option<String>,
    /// Set an environment variable, KEY=VALUE, repeatable.
    #[arg(long = "env", short = 'e')]
    environment: Vec<String>,
    /// Remove an environment variable, repeatable.
    #[arg(long = "unset-env")]
    unset: Vec<String>,
    /// How many replicas.
    #[arg(long)]
    replicas: Option<i64>,
    /// Only show what would change.
    #[arg(long)]
    dry_run: bool,
    /// Do not wait: print the operation and return.
    #[arg(long)]
    detach: bool,
}

/// Fields of `berth service create`.
#[derive(Debug, Args)]
pub struct NewService {
    /// Owner (default: you).
    #[arg(long)]
    user: Option<String>,
    /// Repository the service belongs to.
    #[arg(long, default_value = "default")]
    repo: String,
    /// Service name.
    #[arg(long)]
    name: String,
    /// Image reference.
    #[arg(long)]
    image: String,
    /// Size from this product spec (name or id).
    #[arg(long, alias = "spec-id")]
    spec: Option<String>,
    /// CPU cores (instead of a spec).
    #[arg(long)]
    cpu: Option<f64>,
    /// Memory, e.g. 2g (instead of a spec).
    #[arg(long)]
    memory: Option<String>,
    /// The HTTP port the service listens on.
    #[arg(long)]
    port: Option<u16>,
    /// Environment, KEY=VALUE, repeatable.
    #[arg(long = "env", short = 'e')]
    environment: Vec<String>,
    /// A node label every replica's node must carry, KEY=VALUE, repeatable.
    #[arg(long = "constraint")]
    constraints: Vec<String>,
    /// How many replicas.
    #[arg(long)]
    replicas: Option<i64>,
    /// Reachable through the gateway without a token.
    #[arg(long)]
    public: bool,
    /// Start each replica as soon as it is created.
    #[arg(long)]
    start: bool,
    /// Do not wait for the create: print its operation and return.
    #[arg(long)]
    detach: bool,
    /// The command, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
}

/// How often `--watch` shows its answer again.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

const SERVICE_COLUMNS: [(&str, &str); 6] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("STATUS", "status"),
    ("NODE", "node_id"),
    ("VERSION", "version"),
    ("IMAGE", "image"),
];

/// Prints what a change came to: the service as it stands once its operation ended (the
/// operation itself with `--detach` or `-o json`).
async fn changed(
    client: &HubClient,
    output: Output,
    accepted: Value,
    detach: bool,
) -> Result<(), String> {
    let operation = progress::follow(client, accepted, detach).await?;
    match (&operation["service"], detach, output) {
        (Value::Object(_), false, Output::Table | Output::Wide) => {
            let rows = with_node_names(client, output, vec![operation["service"].clone()]).await;
            print(output, &operation, Some(&rows), &SERVICE_COLUMNS)
        }
        _ => print(output, &operation, None, &OPERATION_COLUMNS),
    }
}

/// Service rows with their node's name in place of its id, for a table read by an admin (who
/// may read the nodes); as they are otherwise.
async fn with_node_names(client: &HubClient, output: Output, mut rows: Vec<Value>) -> Vec<Value> {
    if !output.is_table() {
        return rows;
    }
    let nodes = names::node_names(client).await;
    for row in &mut rows {
        names::name_in(row, "node_id", &nodes);
    }
    rows
}

/// `berth service stop|restart`: the verb with its grace period, followed like any change.
async fn with_grace(
    client: &HubClient,
    output: Output,
    id: i64,
    verb: &str,
    timeout: u32,
    detach: bool,
) -> Result<(), String> {
    let accepted = client
        .call(
            Method::POST,
            &format!("/api/services/{id}/{verb}"),
            Some(&json!({"timeout_seconds": timeout})),
        )
        .await?;
    changed(client, output, accepted, detach).await
}

/// Runs one `berth service` command.
pub async fn run(
    client: &HubClient,
    output: Output,
    command: ServiceCommand,
) -> Result<(), String> {
    match command {
        ServiceCommand::List { all, watch } => loop {
            let value = client
                .call(
                    Method::GET,
                    &format!("/api/services{}", if all { "?all=true" } else { "" }),
                    None,
                )
                .await?;
            let rows = with_node_names(
                client,
                output,
                value["services"].as_array().cloned().unwrap_or_default(),
            )
            .await;
            if watch && output.is_table() {
                print!("\x1b[2J\x1b[H");
            }
            print(output, &value, Some(&rows), &SERVICE_COLUMNS)?;
            if !watch {
                return Ok(());
            }
            tokio::time::sleep(WATCH_INTERVAL).await;
        },
        ServiceCommand::Create(new) => {
            let user = match new.user {
                Some(user) => user,
                None => client.call(Method::GET, "/api/users/me", None).await?["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            };
            let spec_id = match &new.spec {
                Some(spec) => Some(names::spec_id(client, spec).await?),
                None => None,
            };
            let environment = pairs("--env", &new.environment)?;
            let constraints = pairs("--constraint", &new.constraints)?;
            let mut body = json!({"name": new.name, "image": new.image, "environment": environment,
                "constraints": constraints, "is_public": new.public, "start": new.start});
            for (key, value) in [
                ("replicas", new.replicas.map(Value::from)),
                ("spec_id", spec_id.map(Value::from)),
                ("cpu_limit", new.cpu.map(Value::from)),
                ("memory_limit", new.memory.map(Value::from)),
                ("port", new.port.map(Value::from)),
                (
                    "command",
                    (!new.command.is_empty()).then(|| Value::from(new.command.clone())),
                ),
            ] {
                if let Some(value) = value {
                    body[key] = value;
                }
            }
            let accepted = client
                .call(
                    Method::POST,
                    &format!("/api/{user}/{}/services", new.repo),
                    Some(&body),
                )
                .await?;
            return changed(client, output, accepted, new.detach).await;
        }
        ServiceCommand::Start { id, detach } => {
            let id = names::service_id(client, &id).await?;
            let accepted = client
                .call(Method::POST, &format!("/api/services/{id}/start"), None)
                .await?;
            return changed(client, output, accepted, detach).await;
        }
        ServiceCommand::Stop {
            id,
            timeout,
            detach,
        } => {
            let id = names::service_id(client, &id).await?;
            return with_grace(client, output, id, "stop", timeout, detach).await;
        }
        ServiceCommand::Restart {
            id,
            timeout,
            detach,
        } => {
            let id = names::service_id(client, &id).await?;
            return with_grace(client, output, id, "restart", timeout, detach).await;
        }
        ServiceCommand::Load { id, detach } => {
            let id = names::service_id(client, &id).await?;
            let accepted = client
                .call(Method::POST, &format!("/api/services/{id}/load"), None)
                .await?;
            return changed(client, output, accepted, detach).await;
        }
        ServiceCommand::Unload { id, detach } => {
            let id = names::service_id(client, &id).await?;
            let accepted = client
                .call(Method::POST, &format!("/api/services/{id}/unload"), None)
                .await?;
            return changed(client, output, accepted, detach).await;
        }
        ServiceCommand::Status { id, watch } => {
            let id = names::service_id(client, &id).await?;
            loop {
                let status = client
                    .call(Method::GET, &format!("/api/services/{id}/status"), None)
                    .await?;
                if watch && output.is_table() {
                    // Clear the screen and go home, as `watch` does.
                    print!("\x1b[2J\x1b[H");
                }
                show_status(output, &status)?;
                if !watch {
                    return Ok(());
                }
                tokio::time::sleep(WATCH_INTERVAL).await;
            }
        }
        ServiceCommand::Update(update) => return update_service(client, output, *update).await,
        ServiceCommand::Exec(_) => Err("exec runs through client::run".to_owned()),
        ServiceCommand::Logs { id, tail, follow } => {
            let id = names::service_id(client, &id).await?;
            if follow {
                return client
                    .stream_to_stdout(&format!("/api/services/{id}/logs?tail={tail}&follow=true"))
                    .await;
            }
            let logs = client
                .call(
                    Method::GET,
                    &format!("/api/services/{id}/logs?tail={tail}"),
                    None,
                )
                .await?;
            if output.is_table() {
                print!("{}", logs["logs"].as_str().unwrap_or_default());
                return Ok(());
            }
            print(output, &logs, None, &[])
        }
        ServiceCommand::Stats { id } => {
            let id = names::service_id(client, &id).await?;
            let value = client
                .call(Method::GET, &format!("/api/services/{id}/stats"), None)
                .await?;
            let stats = &value["stats"];
            let count = |key: &str| stats[key].as_u64().unwrap_or(0);
            let row = json!({
                "cpu": stats["cpu_percent"].as_f64().map_or("-".to_owned(), |cpu| format!("{cpu:.1} %")),
                "memory": format!("{} of {} ({:.1} %)", table::bytes(count("memory_used_bytes")),
                    table::bytes(count("memory_limit_bytes")), stats["memory_percent"].as_f64().unwrap_or(0.0)),
                "network": format!("{} in, {} out", table::bytes(count("network_rx_bytes")), table::bytes(count("network_tx_bytes"))),
                "disk": format!("{} read, {} written", table::bytes(count("block_read_bytes")), table::bytes(count("block_write_bytes"))),
                "pids": count("pids"),
            });
            print(
                output,
                &value,
                Some(&[row]),
                &[
                    ("CPU", "cpu"),
                    ("MEMORY", "memory"),
                    ("NETWORK", "network"),
                    ("DISK", "disk"),
                    ("PIDS", "pids"),
                ],
            )
        }
        ServiceCommand::Deployments { id } => {
            let id = names::service_id(client, &id).await?;
            let value = client
                .call(
                    Method::GET,
                    &format!("/api/services/{id}/deployments"),
                    None,
                )
                .await?;
            let nodes = names::node_names(client).await;
            let now = table::now_ms();
            let rows: Vec<Value> = value["deployments"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut row| {
                    names::name_in(&mut row, "node_id", &nodes);
                    if let Some(at) = row["created_at"].as_i64() {
                        row["when"] = json!(table::ago(at, now));
                    }
                    row
                })
                .collect();
            print(
                output,
                &value,
                Some(&rows),
                &[
                    ("VERSION", "version"),
                    ("WHEN", "when"),
                    ("NODE", "node_id"),
                    ("NOTE", "note"),
                    ("IMAGE", "definition.image"),
                ],
            )
        }
        ServiceCommand::Rollback {
            id,
            version,
            detach,
        } => {
            let id = names::service_id(client, &id).await?;
            let version = match version {
                Some(version) => version,
                None => previous_version(client, id).await?,
            };
            let accepted = client
                .call(
                    Method::POST,
                    &format!("/api/services/{id}/rollback"),
                    Some(&json!({"version": version})),
                )
                .await?;
            return changed(client, output, accepted, detach).await;
        }
        ServiceCommand::Rollout { command, id } => {
            let id = names::service_id(client, &id).await?;
            client
                .call(
                    Method::POST,
                    &format!("/api/services/{id}/rollout/{command}"),
                    None,
                )
                .await?;
            println!("rollout of service {id}: {command} sent");
            Ok(())
        }
        ServiceCommand::Migrate { id, to, detach } => {
            let id = names::service_id(client, &id).await?;
            let placed = client
                .call(Method::GET, "/api/admin/containers", None)
                .await?;
            let row = placed["containers"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .find(|container| container["service_id"].as_i64() == Some(id))
                .and_then(|container| container["id"].as_i64())
                .ok_or_else(|| format!("service {id} has no placed container to move"))?;
            let body = match to {
                Some(node) => json!({"node_id": names::node_id(client, &node).await?}),
                None => json!({}),
            };
            let accepted = client
                .call(
                    Method::POST,
                    &format!("/api/admin/containers/{row}/migrate"),
                    Some(&body),
                )
                .await?;
            return changed(client, output, accepted, detach).await;
        }
        ServiceCommand::Delete { id, detach } => {
            let reference = id;
            let id = names::service_id(client, &reference).await?;
            let accepted = client
                .call(Method::DELETE, &format!("/api/services/{id}"), None)
                .await?;
            let operation = progress::follow(client, accepted, detach).await?;
            if !output.is_table() {
                return print(output, &operation, None, &[]);
            }
            if !detach {
                println!("service {reference} deleted");
            }
            Ok(())
        }
    }
}

/// The version before the service's current one, from its deployment history.
async fn previous_version(client: &HubClient, id: i64) -> Result<i64, String> {
    let service = client
        .call(Method::GET, &format!("/api/services/{id}"), None)
        .await?;
    let current = service["version"].as_i64().unwrap_or_default();
    let history = client
        .call(
            Method::GET,
            &format!("/api/services/{id}/deployments"),
            None,
        )
        .await?;
    history["deployments"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|deployment| deployment["version"].as_i64())
        .filter(|version| *version < current)
        .max()
        .ok_or_else(|| {
            format!("service {id} has only version {current}; there is nothing to roll back to")
        })
}

/// `berth service status`: the service, where the gateway serves it, and every replica with
/// its node, container state, readiness and address.
fn show_status(output: Output, status: &Value) -> Result<(), String> {
    if !output.is_table() {
        return print(output, status, None, &[]);
    }
    let replicas = status["replicas"].as_array().cloned().unwrap_or_default();
    let ready = replicas
        .iter()
        .filter(|replica| replica["ready"] == true)
        .count();
    println!(
        "{} (id {}), version {}: {}{}",
        table::cell(&status["service_name"]),
        status["id"],
        status["version"],
        table::cell(&status["status"]),
        match status["error_message"].as_str() {
            Some(error) if !error.is_empty() => format!(" ({error})"),
            _ => String::new(),
        }
    );
    match (
        status["service_url"].as_str(),
        status["serving"]["gateway_path"].as_str(),
    ) {
        (Some(url), _) => println!(
            "served at {url}: {ready} of {} replica(s) ready",
            replicas.len()
        ),
        (None, Some(path)) => println!("gateway path {path}: {ready} of {} ready", replicas.len()),
        (None, None) => println!("no port: not served through the gateway"),
    }
    if replicas.is_empty() {
        println!("no replicas placed (stopped, unloaded or waiting for room)");
        return Ok(());
    }
    let rows: Vec<Value> = replicas
        .into_iter()
        .map(|mut replica| {
            let node = replica["node_name"]
                .as_str()
                .map_or_else(|| table::cell(&replica["node_id"]), str::to_owned);
            replica["node"] = json!(if replica["node_down"] == true {
                format!("{node} (down)")
            } else {
                node
            });
            replica["short_id"] = json!(
                replica["container_id"]
                    .as_str()
                    .map(|id| id.chars().take(12).collect::<String>())
            );
            replica["ready_word"] = json!(if replica["ready"] == true {
                "yes"
            } else {
                "no"
            });
            replica
        })
        .collect();
    println!(
        "{}",
        table::render(
            &rows,
            &[
                ("REPLICA", "replica"),
                ("NODE", "node"),
                ("CONTAINER", "short_id"),
                ("STATE", "container_status"),
                ("READY", "ready_word"),
                ("ADDRESS", "address"),
                ("+GENERATION", "generation"),
            ],
            output == Output::Wide,
        )
    );
    Ok(())
}

/// `berth service update`: the flags' changes through `PATCH` as the service's next version
/// (after showing the changes; only them with `--dry-run`).
async fn update_service(
    client: &HubClient,
    output: Output,
    update: ServiceUpdate,
) -> Result<(), String> {
    let id = names::service_id(client, &update.id).await?;
    let mut body = json!({});
    if let Some(image) = update.image {
        body["image"] = json!(image);
    }
    if !update.environment.is_empty() || !update.unset.is_empty() {
        let service = client
            .call(Method::GET, &format!("/api/services/{id}"), None)
            .await?;
        let mut environment: BTreeMap<String, Value> = service["definition"]["environment"]
            .as_object()
            .map(|map| map.clone().into_iter().collect())
            .unwrap_or_default();
        environment.extend(pairs("--env", &update.environment)?);
        for key in &update.unset {
            if environment.remove(key).is_none() {
                return Err(format!(
                    "--unset-env {key}: the service has no such variable (it has: {})",
                    environment.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        body["environment"] = json!(environment);
    }
    if let Some(replicas) = update.replicas {
        body["replicas"] = json!(replicas);
    }
    let plan = client
        .call(
            Method::PATCH,
            &format!("/api/services/{id}?dry_run=true"),
            Some(&body),
        )
        .await?;
    let changes = plan["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        println!("service {} is already so; nothing changed", update.id);
        return Ok(());
    }
    if output.is_table() {
        for change in &changes {
            println!(
                "  {}: {} → {}",
                table::cell(&change["field"]),
                change["from"],
                change["to"]
            );
        }
    }
    if update.dry_run {
        return Ok(());
    }
    let accepted = client
        .call(Method::PATCH, &format!("/api/services/{id}"), Some(&body))
        .await?;
    changed(client, output, accepted, update.detach).await
}
