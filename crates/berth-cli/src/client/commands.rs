//! The client subcommands and what each sends to the hub.

use std::collections::HashMap;
use std::process::ExitCode;

use berth_core::calendar::utc_timestamp;
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};

use super::api::HubClient;
use super::progress;
use super::table;

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The hub's JSON, unchanged.
    Json,
}

/// Where the hub is and who is asking.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The hub's address (default: the current context's, else http://127.0.0.1:7700).
    #[arg(long, env = "BERTH_URL", global = true)]
    url: Option<String>,
    /// An API token (default: the current context's; `berth up` and `berth login` save one).
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Use this saved context instead of the current one (`berth context list`).
    #[arg(long, env = "BERTH_CONTEXT", global = true)]
    context: Option<String>,
    /// table or json.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
}

/// What to act on.
#[derive(Debug)]
pub enum Resource {
    /// Compute nodes.
    Node(NodeCommand),
    /// The image catalog.
    Image(ImageCommand),
    /// Product specs.
    Spec(SpecCommand),
    /// Services.
    Service(ServiceCommand),
    /// Users.
    User(UserCommand),
    /// The operation log.
    Ops(OpsFilter),
    /// A service declared in a YAML file: show the change, then apply it unless `dry_run`.
    Apply {
        /// The checked file.
        manifest: Box<super::manifest::Manifest>,
        /// Only show.
        dry_run: bool,
    },
}

/// `berth node …`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes with their connection status.
    List,
    /// Show one node.
    Show {
        /// Node id.
        id: i64,
    },
    /// Register a node; its connection is tested.
    Create(Box<NewNode>),
    /// Test a node's connection now.
    Test {
        /// Node id.
        id: i64,
    },
    /// Take new work on this node.
    Enable {
        /// Node id.
        id: i64,
    },
    /// Take no new work on this node.
    Disable {
        /// Node id.
        id: i64,
    },
    /// Delete a node (refused while services run there).
    Delete {
        /// Node id.
        id: i64,
    },
    /// Per node and per GPU: what allocations take, what the node has and what it last
    /// observed free (admin).
    Usage,
    /// Unlist a node and move every unpinned service off it (admin), following the drain.
    Drain {
        /// Node id.
        id: i64,
        /// Do not wait: print the operation and return.
        #[arg(long)]
        detach: bool,
    },
    /// Replace a node's labels (none given: no labels) (admin).
    Label {
        /// Node id.
        id: i64,
        /// KEY=VALUE pairs.
        labels: Vec<String>,
    },
}

/// Fields of `berth node create`.
#[derive(Debug, Args)]
pub struct NewNode {
    /// Node name.
    #[arg(long)]
    name: String,
    /// Public IP.
    #[arg(long)]
    public_ip: String,
    /// Private IP.
    #[arg(long)]
    private_ip: String,
    /// Docker API address (unix:///… or tcp://host:2376) for the docker driver.
    #[arg(long)]
    docker_address: Option<String>,
    /// Connect without TLS.
    #[arg(long)]
    no_tls: bool,
    /// CA certificate file (PEM).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Client certificate file (PEM).
    #[arg(long)]
    cert_file: Option<std::path::PathBuf>,
    /// Client key file (PEM).
    #[arg(long)]
    key_file: Option<std::path::PathBuf>,
    /// A `berth agent` URL, for the agent driver; its key is read from BERTH_AGENT_KEY.
    #[arg(long)]
    agent_url: Option<String>,
    /// gpu, cpu or edge.
    #[arg(long)]
    server_type: Option<String>,
    /// GPUs of the node.
    #[arg(long)]
    gpu_count: Option<i64>,
    /// Memory of one GPU, GB.
    #[arg(long)]
    gpu_memory_gb: Option<i64>,
    /// Lower is tried first.
    #[arg(long)]
    priority: Option<i64>,
    /// Share of work within a priority.
    #[arg(long)]
    weight: Option<i64>,
    /// A label services can require (`--constraint`), KEY=VALUE, repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
}

/// `berth image …`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List the catalog.
    List,
    /// Add an image.
    Create {
        /// Name in the catalog.
        name: String,
        /// Registry reference.
        reference: String,
    },
    /// Remove an image from the catalog.
    Delete {
        /// Image id.
        id: i64,
    },
}

/// `berth spec …`
#[derive(Debug, Subcommand)]
pub enum SpecCommand {
    /// List product specs.
    List,
    /// Add a product spec.
    Create {
        /// Spec name.
        name: String,
        /// CPU cores.
        #[arg(long)]
        cpu: f64,
        /// Memory, e.g. 8g.
        #[arg(long)]
        memory: String,
        /// Whole GPUs.
        #[arg(long, default_value_t = 0)]
        gpus: i64,
        /// A share of one GPU with this many GiB instead of whole GPUs.
        #[arg(long)]
        gpu_memory_gb: Option<i64>,
    },
    /// Remove a spec.
    Delete {
        /// Spec id.
        id: i64,
    },
}

/// `berth service …`
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// My services (everyone's with --all, for admins).
    List {
        /// Everyone's.
        #[arg(long)]
        all: bool,
    },
    /// Create a service (its containers are created, and started with --start); waits for the
    /// operation, showing its progress, unless --detach.
    Create(Box<NewService>),
    /// Start every replica and wait until they run.
    Start {
        /// Service id or name.
        id: String,
        /// Do not wait: print the operation and return.
        #[arg(long)]
        detach: bool,
    },
    /// Stop every replica (SIGTERM, then SIGKILL after the grace period).
    Stop {
        /// Service id or name.
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
        /// Service id or name.
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
        /// Service id or name.
        id: String,
        /// Do not wait: print the operation and return.
        #[arg(long)]
        detach: bool,
    },
    /// Unload a model service: stop its replicas; its next gateway request starts it again.
    Unload {
        /// Service id or name.
        id: String,
        /// Do not wait: print the operation and return.
        #[arg(long)]
        detach: bool,
    },
    /// Live status, node and URL.
    Status {
        /// Service id or name.
        id: String,
    },
    /// Container output.
    Logs {
        /// Service id or name.
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
        /// Service id or name.
        id: String,
    },
    /// Deployment history.
    Deployments {
        /// Service id or name.
        id: String,
    },
    /// Deploy an earlier version again.
    Rollback {
        /// Service id or name.
        id: String,
        /// The version to go back to.
        #[arg(long)]
        version: i64,
    },
    /// Move the service's container to another node (admin); its data volume stays behind.
    Migrate {
        /// Service id or name.
        id: String,
        /// The node to move to; the scheduler chooses when not given.
        #[arg(long)]
        to: Option<i64>,
        /// Do not wait: print the operation and return.
        #[arg(long)]
        detach: bool,
    },
    /// Remove the service and its containers.
    Delete {
        /// Service id or name.
        id: String,
        /// Do not wait: print the operation and return.
        #[arg(long)]
        detach: bool,
    },
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
    /// Size from this product spec.
    #[arg(long)]
    spec_id: Option<i64>,
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

/// `berth user …`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Who am I.
    Me,
    /// List users (admin).
    List,
    /// Create a user and print their token once (admin).
    Create {
        /// User name.
        name: String,
        /// Make them an admin.
        #[arg(long)]
        admin: bool,
        /// Most services they may own.
        #[arg(long)]
        max_services: Option<i64>,
    },
    /// API tokens: list, create, revoke (your own; an admin names anyone's with --user).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `berth user token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// List the tokens (names, creation, last use, expiry; never their text).
    List {
        /// Whose (user id; default: you).
        #[arg(long)]
        user: Option<i64>,
    },
    /// Issue a token and print it once.
    Create {
        /// What it is for, e.g. ci or laptop.
        #[arg(long, default_value = "api")]
        name: String,
        /// Days until it expires (1–3650); without it, it lasts until revoked.
        #[arg(long)]
        expires_in_days: Option<i64>,
        /// Whose (user id; default: you).
        #[arg(long)]
        user: Option<i64>,
    },
    /// Revoke a token at once (the API, the gateway and console sessions opened with it).
    Revoke {
        /// The token's id (from `berth user token list`).
        id: i64,
        /// Whose (user id; default: you).
        #[arg(long)]
        user: Option<i64>,
    },
}

/// `berth ops show`.
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// One operation: its state, progress and error.
    Show {
        /// Operation id.
        id: i64,
        /// Wait until it ends, showing its progress.
        #[arg(long)]
        wait: bool,
    },
}

/// `berth ops` filters.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct OpsFilter {
    /// Show one operation instead of the list.
    #[command(subcommand)]
    command: Option<OpsCommand>,
    /// Only this service.
    #[arg(long)]
    service: Option<i64>,
    /// Only this node.
    #[arg(long)]
    node: Option<i64>,
    /// Only this action, e.g. node.create.
    #[arg(long)]
    action: Option<String>,
    /// Page, from 1.
    #[arg(long, default_value_t = 1)]
    page: i64,
    /// Rows per page.
    #[arg(long, default_value_t = 50)]
    size: i64,
}

/// `KEY=VALUE` arguments of `flag` as a JSON object.
fn pairs(flag: &str, values: &[String]) -> Result<serde_json::Map<String, Value>, String> {
    values
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(key, value)| (key.to_owned(), Value::from(value)))
                .ok_or_else(|| format!("{flag} {pair:?} is not KEY=VALUE"))
        })
        .collect()
}

fn read_pem(path: &Option<std::path::PathBuf>, what: &str) -> Result<Option<String>, String> {
    path.as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .map_err(|err| format!("cannot read the {what} {}: {err}", path.display()))
        })
        .transpose()
}

/// Runs one client command and prints its answer.
pub async fn run(args: ClientArgs, resource: Resource) -> ExitCode {
    let outcome = async {
        let (url, token) = super::context::resolve(super::context::Asked {
            url: args.url,
            token: args.token,
            context: args.context,
        })?;
        let client = HubClient::new(&url, token);
        execute(&client, args.output, resource).await
    }
    .await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("berth: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The user a token command is about: `user`, or the caller.
async fn user_or_me(client: &HubClient, user: Option<i64>) -> Result<i64, String> {
    if let Some(user) = user {
        return Ok(user);
    }
    let me = client.call(Method::GET, "/api/users/me", None).await?;
    me["id"]
        .as_i64()
        .ok_or_else(|| "the hub did not say who you are".to_owned())
}

async fn token_command(
    client: &HubClient,
    output: Output,
    command: TokenCommand,
) -> Result<(), String> {
    match command {
        TokenCommand::List { user } => {
            let user = user_or_me(client, user).await?;
            let value = client
                .call(Method::GET, &format!("/api/users/{user}/tokens"), None)
                .await?;
            let rows: Vec<Value> = value["tokens"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|token| {
                    let mut row = token.clone();
                    for key in ["created_at", "last_used_at", "expires_at"] {
                        row[key] = token[key]
                            .as_i64()
                            .map_or(Value::Null, |ms| json!(utc_timestamp(ms)));
                    }
                    row
                })
                .collect();
            print(
                output,
                &value,
                Some(&rows),
                &[
                    ("ID", "id"),
                    ("NAME", "name"),
                    ("CREATED (UTC)", "created_at"),
                    ("LAST USED", "last_used_at"),
                    ("EXPIRES", "expires_at"),
                ],
            );
        }
        TokenCommand::Create {
            name,
            expires_in_days,
            user,
        } => {
            let user = user_or_me(client, user).await?;
            let body = json!({"name": name, "expires_in_days": expires_in_days});
            let issued = client
                .call(
                    Method::POST,
                    &format!("/api/users/{user}/tokens"),
                    Some(&body),
                )
                .await?;
            if output == Output::Json {
                print(output, &issued, None, &[]);
            } else {
                let until = issued["expires_at"]
                    .as_i64()
                    .map_or("until revoked".to_owned(), |ms| {
                        format!("until {} UTC", utc_timestamp(ms))
                    });
                println!(
                    "token {} ({name}, valid {until}; shown once):\n{}",
                    issued["id"],
                    issued["token"].as_str().unwrap_or("?")
                );
            }
        }
        TokenCommand::Revoke { id, user } => {
            let user = user_or_me(client, user).await?;
            client
                .call(
                    Method::DELETE,
                    &format!("/api/users/{user}/tokens/{id}"),
                    None,
                )
                .await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

fn print(output: Output, value: &Value, rows: Option<&[Value]>, columns: &[(&str, &str)]) {
    match (output, rows) {
        (Output::Json, _) => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        (Output::Table, Some(rows)) => println!("{}", table::render(rows, columns)),
        (Output::Table, None) => {
            println!("{}", table::render(std::slice::from_ref(value), columns))
        }
    }
}

const NODE_COLUMNS: [(&str, &str); 7] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("DRIVER", "driver"),
    ("TYPE", "server_type"),
    ("ENABLED", "enabled"),
    ("STATUS", "docker_status"),
    ("MESSAGE", "status_message"),
];
const NODE_USAGE_COLUMNS: [(&str, &str); 11] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("DRIVER", "driver"),
    ("TYPE", "server_type"),
    ("ENABLED", "enabled"),
    ("STATUS", "docker_status"),
    ("HEALTH", "health"),
    ("CONTAINERS", "containers"),
    ("CPU", "cpu"),
    ("MEMORY", "memory"),
    ("GPUS allocated/total", "gpus"),
];
const SERVICE_COLUMNS: [(&str, &str); 6] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("STATUS", "status"),
    ("NODE", "node_id"),
    ("VERSION", "version"),
    ("IMAGE", "image"),
];

async fn execute(client: &HubClient, output: Output, resource: Resource) -> Result<(), String> {
    match resource {
        Resource::Apply { manifest, dry_run } => {
            super::manifest::apply(client, &manifest, dry_run).await
        }
        Resource::Node(command) => node(client, output, command).await,
        Resource::Image(command) => {
            let value = match command {
                ImageCommand::List => client.call(Method::GET, "/api/images", None).await?,
                ImageCommand::Create { name, reference } => {
                    client
                        .call(
                            Method::POST,
                            "/api/images",
                            Some(&json!({"name": name, "reference": reference})),
                        )
                        .await?
                }
                ImageCommand::Delete { id } => {
                    client
                        .call(Method::DELETE, &format!("/api/images/{id}"), None)
                        .await?
                }
            };
            let rows = value.as_array().cloned();
            print(
                output,
                &value,
                rows.as_deref(),
                &[("ID", "id"), ("NAME", "name"), ("REFERENCE", "reference")],
            );
            Ok(())
        }
        Resource::Spec(command) => {
            let value = match command {
                SpecCommand::List => client.call(Method::GET, "/api/specs", None).await?,
                SpecCommand::Create {
                    name,
                    cpu,
                    memory,
                    gpus,
                    gpu_memory_gb,
                } => {
                    let body = json!({"name": name, "cpu_cores": cpu, "memory": memory, "gpu_count": gpus,
                        "memory_split": gpu_memory_gb.is_some(), "gpu_memory_gb": gpu_memory_gb.unwrap_or(0)});
                    client.call(Method::POST, "/api/specs", Some(&body)).await?
                }
                SpecCommand::Delete { id } => {
                    client
                        .call(Method::DELETE, &format!("/api/specs/{id}"), None)
                        .await?
                }
            };
            let rows = value.as_array().cloned();
            let columns = [
                ("ID", "id"),
                ("NAME", "name"),
                ("CPU_MILLIS", "cpu_millis"),
                ("MEMORY", "memory_bytes"),
                ("GPUS", "gpu_count"),
            ];
            print(output, &value, rows.as_deref(), &columns);
            Ok(())
        }
        Resource::Service(command) => service(client, output, command).await,
        Resource::User(command) => {
            let value = match command {
                UserCommand::Token(command) => {
                    return token_command(client, output, command).await;
                }
                UserCommand::Me => client.call(Method::GET, "/api/users/me", None).await?,
                UserCommand::List => client.call(Method::GET, "/api/users", None).await?,
                UserCommand::Create {
                    name,
                    admin,
                    max_services,
                } => {
                    let body = json!({"name": name, "role": if admin { "admin" } else { "user" }, "max_services": max_services});
                    let created = client.call(Method::POST, "/api/users", Some(&body)).await?;
                    if output == Output::Table {
                        println!(
                            "user {} created; token (shown once): {}",
                            created["user"]["name"].as_str().unwrap_or("?"),
                            created["token"].as_str().unwrap_or("?")
                        );
                        return Ok(());
                    }
                    created
                }
            };
            let rows = value.as_array().cloned();
            print(
                output,
                &value,
                rows.as_deref(),
                &[("ID", "id"), ("NAME", "name"), ("ROLE", "role")],
            );
            Ok(())
        }
        Resource::Ops(OpsFilter {
            command: Some(OpsCommand::Show { id, wait }),
            ..
        }) => {
            let operation = client
                .call(Method::GET, &format!("/api/operations/{id}"), None)
                .await?;
            let operation = if wait {
                progress::follow(client, operation, false).await?
            } else {
                operation
            };
            print(output, &operation, None, &OPERATION_COLUMNS);
            Ok(())
        }
        Resource::Ops(filter) => {
            let mut query = format!("page={}&size={}", filter.page, filter.size);
            for (key, value) in [("service_id", filter.service), ("node_id", filter.node)] {
                if let Some(value) = value {
                    query.push_str(&format!("&{key}={value}"));
                }
            }
            if let Some(action) = filter.action {
                query.push_str(&format!("&action={action}"));
            }
            let value = client
                .call(Method::GET, &format!("/api/admin/operations?{query}"), None)
                .await?;
            let rows: Vec<Value> = value["operations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut row| {
                    if let Some(ms) = row["at"].as_i64() {
                        row["at"] = json!(utc_timestamp(ms));
                    }
                    row
                })
                .collect();
            let columns = [
                ("ID", "id"),
                ("AT (UTC)", "at"),
                ("USER", "user_id"),
                ("ACTION", "action"),
                ("TARGET", "target_id"),
                ("OUTCOME", "outcome"),
            ];
            print(output, &value, Some(&rows), &columns);
            Ok(())
        }
    }
}

/// `used/total` with binary units; `-` for an unknown total.
fn share(used: &Value, total: &Value, scale: f64, unit: &str) -> String {
    let used = used.as_f64().unwrap_or(0.0) / scale;
    match total.as_f64() {
        Some(total) => format!("{used:.1}/{:.1}{unit}", total / scale),
        None => format!("{used:.1}/-{unit}"),
    }
}

/// Each GPU as `index:allocated/total G (observed free G)`.
fn gpu_summary(gpus: &Value) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    let described: Vec<String> = gpus
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|gpu| {
            let observed = gpu["observed_free_bytes"]
                .as_f64()
                .map(|free| format!(" seen free {:.0}G", free / GIB))
                .unwrap_or_default();
            format!(
                "{}:{}{observed}",
                gpu["index"],
                share(&gpu["allocated_bytes"], &gpu["memory_bytes"], GIB, "G"),
            )
        })
        .collect();
    if described.is_empty() {
        "-".to_owned()
    } else {
        described.join(" ")
    }
}

/// Adds the resource view's figures to each node row (for admins; others see the plain list).
async fn with_usage(client: &HubClient, mut nodes: Value) -> Value {
    let Ok(usage) = client
        .call(Method::GET, "/api/admin/resources/usage", None)
        .await
    else {
        return nodes;
    };
    let by_id: HashMap<i64, Value> = usage["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|entry| Some((entry["node_id"].as_i64()?, entry.clone())))
        .collect();
    for row in nodes
        .as_array_mut()
        .map(Vec::as_mut_slice)
        .unwrap_or_default()
    {
        let Some(entry) = row["id"].as_i64().and_then(|id| by_id.get(&id)) else {
            continue;
        };
        row["containers"] = json!(format!(
            "{}/{}",
            entry["containers"], entry["max_containers"]
        ));
        row["cpu"] = json!(share(
            &entry["allocated"]["cpu_millis"],
            &entry["capacity"]["cpu_millis"],
            1000.0,
            ""
        ));
        row["memory"] = json!(share(
            &entry["allocated"]["memory_bytes"],
            &entry["capacity"]["memory_bytes"],
            (1u64 << 30) as f64,
            "G"
        ));
        row["gpus"] = json!(gpu_summary(&entry["gpus"]));
        row["health"] = json!(if entry["down"] == true { "down" } else { "up" });
    }
    nodes
}

async fn node(client: &HubClient, output: Output, command: NodeCommand) -> Result<(), String> {
    let value = match command {
        NodeCommand::List | NodeCommand::Usage => {
            let nodes = client.call(Method::GET, "/api/nodes", None).await?;
            let nodes = with_usage(client, nodes).await;
            let rows = nodes.as_array().cloned();
            print(output, &nodes, rows.as_deref(), &NODE_USAGE_COLUMNS);
            return Ok(());
        }
        NodeCommand::Drain { id, detach } => {
            let accepted = client
                .call(Method::POST, &format!("/api/nodes/{id}/drain"), None)
                .await?;
            let operation = progress::follow(client, accepted, detach).await?;
            print(output, &operation, None, &OPERATION_COLUMNS);
            if !detach && output == Output::Table {
                let moved = operation["detail"]["moved"].as_array().map_or(0, Vec::len);
                let pinned = operation["detail"]["pinned"].as_array().map_or(0, Vec::len);
                println!(
                    "node {id} drained: {moved} replica(s) moved, {pinned} pinned left in place"
                );
            }
            return Ok(());
        }
        NodeCommand::Show { id } => {
            client
                .call(Method::GET, &format!("/api/nodes/{id}"), None)
                .await?
        }
        NodeCommand::Test { id } => client
            .call(Method::POST, &format!("/api/nodes/{id}/test"), None)
            .await?["node"]
            .clone(),
        NodeCommand::Enable { id } => {
            client
                .call(
                    Method::POST,
                    &format!("/api/admin/controllers/{id}/enable"),
                    None,
                )
                .await?
        }
        NodeCommand::Disable { id } => {
            client
                .call(
                    Method::POST,
                    &format!("/api/admin/controllers/{id}/disable"),
                    None,
                )
                .await?
        }
        NodeCommand::Delete { id } => {
            client
                .call(Method::DELETE, &format!("/api/nodes/{id}"), None)
                .await?;
            println!("node {id} deleted");
            return Ok(());
        }
        NodeCommand::Label { id, labels } => {
            let body = json!({"labels": pairs("label", &labels)?});
            client
                .call(Method::PUT, &format!("/api/nodes/{id}"), Some(&body))
                .await?
        }
        NodeCommand::Create(new) => {
            let mut body = json!({"name": new.name, "public_ip": new.public_ip, "private_ip": new.private_ip,
                "use_tls": !new.no_tls, "labels": pairs("--label", &new.labels)?});
            let fields = [
                ("docker_address", new.docker_address.map(Value::from)),
                ("agent_url", new.agent_url.clone().map(Value::from)),
                (
                    "driver",
                    new.agent_url.as_ref().map(|_| Value::from("agent")),
                ),
                ("server_type", new.server_type.map(Value::from)),
                ("gpu_count", new.gpu_count.map(Value::from)),
                ("gpu_memory_gb", new.gpu_memory_gb.map(Value::from)),
                ("priority", new.priority.map(Value::from)),
                ("weight", new.weight.map(Value::from)),
                (
                    "ca_cert",
                    read_pem(&new.ca_file, "CA certificate")?.map(Value::from),
                ),
                (
                    "client_cert",
                    read_pem(&new.cert_file, "client certificate")?.map(Value::from),
                ),
                (
                    "client_key",
                    read_pem(&new.key_file, "client key")?.map(Value::from),
                ),
                (
                    "agent_api_key",
                    std::env::var("BERTH_AGENT_KEY").ok().map(Value::from),
                ),
            ];
            for (key, value) in fields {
                if let Some(value) = value {
                    body[key] = value;
                }
            }
            client.call(Method::POST, "/api/nodes", Some(&body)).await?
        }
    };
    let rows = value.as_array().cloned();
    print(output, &value, rows.as_deref(), &NODE_COLUMNS);
    Ok(())
}

/// The columns of one operation.
const OPERATION_COLUMNS: [(&str, &str); 6] = [
    ("ID", "id"),
    ("KIND", "kind"),
    ("STATE", "state"),
    ("SERVICE", "service_id"),
    ("STEP", "progress.step"),
    ("ERROR", "error"),
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
        (Value::Object(_), false, Output::Table) => {
            let rows = with_node_names(client, output, vec![operation["service"].clone()]).await;
            print(output, &operation, Some(&rows), &SERVICE_COLUMNS)
        }
        _ => print(output, &operation, None, &OPERATION_COLUMNS),
    }
    Ok(())
}

/// Service rows with their node's name in place of its id, for a table read by an admin (who
/// may read the nodes); as they are otherwise.
async fn with_node_names(client: &HubClient, output: Output, rows: Vec<Value>) -> Vec<Value> {
    let nodes = match output {
        Output::Table => client.call(Method::GET, "/api/nodes", None).await,
        Output::Json => return rows,
    };
    let names: HashMap<i64, String> = nodes
        .map(|nodes| {
            nodes
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(|node| Some((node["id"].as_i64()?, node["name"].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    rows.into_iter()
        .map(|mut row| {
            if let Some(name) = row["node_id"].as_i64().and_then(|id| names.get(&id)) {
                row["node_id"] = json!(name);
            }
            row
        })
        .collect()
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

/// The id of the service `reference` names: an id as it is, else the name of one of the
/// caller's own services.
async fn service_id(client: &HubClient, reference: &str) -> Result<i64, String> {
    if let Ok(id) = reference.parse::<i64>() {
        return Ok(id);
    }
    let listed = client.call(Method::GET, "/api/services", None).await?;
    listed["services"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .find(|service| service["name"].as_str() == Some(reference))
        .and_then(|service| service["id"].as_i64())
        .ok_or_else(|| {
            format!(
                "you have no service named {reference:?}; `berth service list` shows your services (an admin names another user's service by its id)"
            )
        })
}

async fn service(
    client: &HubClient,
    output: Output,
    command: ServiceCommand,
) -> Result<(), String> {
    let value = match command {
        ServiceCommand::List { all } => {
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
            print(output, &value, Some(&rows), &SERVICE_COLUMNS);
            return Ok(());
        }
        ServiceCommand::Create(new) => {
            let user = match new.user {
                Some(user) => user,
                None => client.call(Method::GET, "/api/users/me", None).await?["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            };
            let environment = pairs("--env", &new.environment)?;
            let constraints = pairs("--constraint", &new.constraints)?;
            let mut body = json!({"name": new.name, "image": new.image, "environment": environment,
                "constraints": constraints, "is_public": new.public, "start": new.start});
            for (key, value) in [
                ("replicas", new.replicas.map(Value::from)),
                ("spec_id", new.spec_id.map(Value::from)),
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
            let id = service_id(client, &id).await?;
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
            let id = service_id(client, &id).await?;
            return with_grace(client, output, id, "stop", timeout, detach).await;
        }
        ServiceCommand::Restart {
            id,
            timeout,
            detach,
        } => {
            let id = service_id(client, &id).await?;
            return with_grace(client, output, id, "restart", timeout, detach).await;
        }
        ServiceCommand::Load { id, detach } => {
            let id = service_id(client, &id).await?;
            let accepted = client
                .call(Method::POST, &format!("/api/services/{id}/load"), None)
                .await?;
            return changed(client, output, accepted, detach).await;
        }
        ServiceCommand::Unload { id, detach } => {
            let id = service_id(client, &id).await?;
            let accepted = client
                .call(Method::POST, &format!("/api/services/{id}/unload"), None)
                .await?;
            return changed(client, output, accepted, detach).await;
        }
        ServiceCommand::Status { id } => {
            let id = service_id(client, &id).await?;
            client
                .call(Method::GET, &format!("/api/services/{id}/status"), None)
                .await?
        }
        ServiceCommand::Logs { id, tail, follow } => {
            let id = service_id(client, &id).await?;
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
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&logs).unwrap_or_default()
                ),
                Output::Table => print!("{}", logs["logs"].as_str().unwrap_or_default()),
            }
            return Ok(());
        }
        ServiceCommand::Stats { id } => {
            let id = service_id(client, &id).await?;
            let value = client
                .call(Method::GET, &format!("/api/services/{id}/stats"), None)
                .await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&value["stats"]).unwrap_or_default()
            );
            return Ok(());
        }
        ServiceCommand::Deployments { id } => {
            let id = service_id(client, &id).await?;
            let value = client
                .call(
                    Method::GET,
                    &format!("/api/services/{id}/deployments"),
                    None,
                )
                .await?;
            let rows = value["deployments"].as_array().cloned().unwrap_or_default();
            print(
                output,
                &value,
                Some(&rows),
                &[
                    ("VERSION", "version"),
                    ("NODE", "node_id"),
                    ("NOTE", "note"),
                    ("IMAGE", "definition.image"),
                ],
            );
            return Ok(());
        }
        ServiceCommand::Rollback { id, version } => {
            let id = service_id(client, &id).await?;
            let accepted = client
                .call(
                    Method::POST,
                    &format!("/api/services/{id}/rollback"),
                    Some(&json!({"version": version})),
                )
                .await?;
            return changed(client, output, accepted, false).await;
        }
        ServiceCommand::Migrate { id, to, detach } => {
            let id = service_id(client, &id).await?;
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
            let body = to.map_or_else(|| json!({}), |node| json!({"node_id": node}));
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
            let id = service_id(client, &id).await?;
            let accepted = client
                .call(Method::DELETE, &format!("/api/services/{id}"), None)
                .await?;
            let operation = progress::follow(client, accepted, detach).await?;
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&operation).unwrap_or_default()
                ),
                Output::Table if detach => {}
                Output::Table => println!("service {id} deleted"),
            }
            return Ok(());
        }
    };
    if let Some(pending) = value.get("pending").and_then(Value::as_str) {
        eprintln!("berth: not finished yet: {pending}");
    }
    let columns: &[(&str, &str)] = if value.get("container_status").is_some() {
        &[
            ("ID", "id"),
            ("NAME", "service_name"),
            ("STATUS", "status"),
            ("CONTAINER", "container_status"),
            ("NODE", "node.name"),
            ("URL", "service_url"),
        ]
    } else {
        &SERVICE_COLUMNS
    };
    print(output, &value, None, columns);
    Ok(())
}
