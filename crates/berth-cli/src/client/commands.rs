//! The client subcommands and what each sends to the hub.

use std::collections::HashMap;
use std::process::ExitCode;

use berth_core::calendar::utc_timestamp;
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};

use super::api::HubClient;
use super::names;
use super::progress;
use super::table;

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// Aligned columns, with the ones a terminal has no room for.
    Wide,
    /// The hub's JSON, unchanged.
    Json,
    /// The hub's answer as YAML.
    Yaml,
}

impl Output {
    /// Whether this prints a table (and so names and units in place of ids and numbers).
    pub fn is_table(self) -> bool {
        matches!(self, Self::Table | Self::Wide)
    }
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
    /// table, wide, json or yaml.
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
    Service(super::service::ServiceCommand),
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
    /// Apply every file of a directory, again when one changes; unload a removed one's service.
    Watch {
        /// The directory.
        dir: std::path::PathBuf,
    },
}

/// `berth node …`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes with their connection status.
    List,
    /// Show one node.
    Show {
        /// Node name or id.
        node: String,
    },
    /// Register a node; its connection is tested.
    Create(Box<NewNode>),
    /// A single-use token, and the command that joins a new host with it (admin).
    JoinToken {
        /// The new node's name [default: the agent's SERVER_ID, else its host name].
        #[arg(long)]
        name: Option<String>,
        /// How long the token works, in seconds (60 to 86400).
        #[arg(long, default_value_t = 900)]
        ttl: u64,
    },
    /// Test a node's connection now.
    Test {
        /// Node name or id.
        node: String,
    },
    /// Take new work on this node.
    Enable {
        /// Node name or id.
        node: String,
    },
    /// Take no new work on this node.
    Disable {
        /// Node name or id.
        node: String,
    },
    /// Delete a node (refused while services run there).
    Delete {
        /// Node name or id.
        node: String,
    },
    /// Per node and per GPU: what allocations take, what the node has and what it last
    /// observed free (admin).
    Usage,
    /// Unlist a node and move every unpinned service off it (admin), following the drain.
    Drain {
        /// Node name or id.
        node: String,
        /// Do not wait: print the operation and return.
        #[arg(long)]
        detach: bool,
    },
    /// Replace a node's labels (none given: no labels) (admin).
    Label {
        /// Node name or id.
        node: String,
        /// KEY=VALUE pairs.
        labels: Vec<String>,
    },
    /// The images on a node, one row per tag (admin).
    Images {
        /// Node name or id.
        node: String,
    },
    /// Pull an image onto a node, following its layers and bytes (admin).
    Pull {
        /// Node name or id.
        node: String,
        /// The image reference.
        image: String,
        /// Do not wait: print the operation and return.
        #[arg(long)]
        detach: bool,
    },
    /// Remove an image from a node (admin); refused while a container uses it unless --force.
    Rmi {
        /// Node name or id.
        node: String,
        /// The image reference.
        image: String,
        /// Even while containers use it.
        #[arg(long)]
        force: bool,
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
    /// Take the CA and the hub's client certificate (issued now if missing) from this
    /// `berth pki` directory.
    #[arg(
        long,
        value_name = "PKI_DIR",
        num_args = 0..=1,
        default_missing_value = crate::pki::DEFAULT_DIR,
        conflicts_with_all = ["ca_file", "cert_file", "key_file", "no_tls"]
    )]
    tls_from_pki: Option<std::path::PathBuf>,
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
        /// Image name or id.
        image: String,
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
        /// Spec name or id.
        spec: String,
    },
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
    /// Delete a user (admin; refused while they own services).
    Delete {
        /// User name or id.
        user: String,
    },
    /// Quotas: how much a user may own (admin).
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// API tokens: list, create, reissue, revoke (your own; an admin names anyone's with --user).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `berth user quota …`
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set a user's limits; those not given stay as they are, `none` lifts one.
    Set {
        /// User name or id.
        user: String,
        /// Most services they may own.
        #[arg(long)]
        services: Option<String>,
        /// Most CPU cores over all their services.
        #[arg(long)]
        cpu: Option<String>,
        /// Most memory over all their services, e.g. 64g.
        #[arg(long)]
        memory: Option<String>,
        /// Most GPUs over all their services.
        #[arg(long)]
        gpus: Option<String>,
    },
}

/// `berth user token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// List the tokens (names, creation, last use, expiry; never their text).
    List {
        /// Whose (user name or id; default: you).
        #[arg(long)]
        user: Option<String>,
    },
    /// Issue a token and print it once.
    Create {
        /// What it is for, e.g. ci or laptop.
        #[arg(long, default_value = "api")]
        name: String,
        /// Days until it expires (1–3650); without it, it lasts until revoked.
        #[arg(long)]
        expires_in_days: Option<i64>,
        /// Limit it to this service (name, owner/name or id; repeat for more): it then reaches
        /// only those, through the gateway and its /v1 front, and not the API.
        #[arg(long = "service")]
        services: Vec<String>,
        /// Whose (user name or id; default: you).
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token and issue its successor (same name and lifetime), printed once.
    Reissue {
        /// The token's id (from `berth user token list`).
        id: i64,
        /// Whose (user name or id; default: you).
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token at once (the API, the gateway and console sessions opened with it).
    Revoke {
        /// The token's id (from `berth user token list`).
        id: i64,
        /// Whose (user name or id; default: you).
        #[arg(long)]
        user: Option<String>,
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
    /// Only this service (name, OWNER/NAME or id).
    #[arg(long)]
    service: Option<String>,
    /// Only this node (name or id).
    #[arg(long)]
    node: Option<String>,
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
pub(super) fn pairs(
    flag: &str,
    values: &[String],
) -> Result<serde_json::Map<String, Value>, String> {
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
        let hub = super::context::resolve(super::context::Asked {
            url: args.url,
            token: args.token,
            context: args.context,
        })?;
        let client = HubClient::trusting(&hub.url, hub.token, hub.ca_file.as_deref())?;
        if let Resource::Service(super::service::ServiceCommand::Exec(exec)) = resource {
            return super::exec::run(&client, exec).await;
        }
        execute(&client, args.output, resource)
            .await
            .map(|()| ExitCode::SUCCESS)
    }
    .await;
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("berth: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn token_command(
    client: &HubClient,
    output: Output,
    command: TokenCommand,
) -> Result<(), String> {
    match command {
        TokenCommand::List { user } => {
            let user = names::user_id(client, user.as_deref()).await?;
            let value = client
                .call(Method::GET, &format!("/api/users/{user}/tokens"), None)
                .await?;
            let limited = value["tokens"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|token| token["services"].is_array());
            let service_names = if limited {
                names::service_names(client).await
            } else {
                HashMap::new()
            };
            let rows: Vec<Value> = value["tokens"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|token| {
                    let mut row = token.clone();
                    row["services"] = match token["services"].as_array() {
                        None => json!("all (and the API)"),
                        Some(ids) => json!(
                            ids.iter()
                                .filter_map(Value::as_i64)
                                .map(|id| service_names
                                    .get(&id)
                                    .cloned()
                                    .unwrap_or_else(|| id.to_string()))
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                    };
                    let now = table::now_ms();
                    for key in ["created_at", "last_used_at", "expires_at"] {
                        row[key] = token[key]
                            .as_i64()
                            .map_or(Value::Null, |ms| json!(table::ago(ms, now)));
                        row[&format!("{key}_utc")] = token[key]
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
                    ("CREATED", "created_at"),
                    ("LAST USED", "last_used_at"),
                    ("EXPIRES", "expires_at"),
                    ("SERVICES", "services"),
                    ("+CREATED (UTC)", "created_at_utc"),
                    ("+EXPIRES (UTC)", "expires_at_utc"),
                ],
            )?;
        }
        TokenCommand::Create {
            name,
            expires_in_days,
            services,
            user,
        } => {
            let user = names::user_id(client, user.as_deref()).await?;
            let mut service_ids = Vec::new();
            for service in &services {
                service_ids.push(names::service_id(client, service).await?);
            }
            let body = json!({"name": name, "expires_in_days": expires_in_days,
                "services": (!service_ids.is_empty()).then_some(service_ids)});
            let issued = client
                .call(
                    Method::POST,
                    &format!("/api/users/{user}/tokens"),
                    Some(&body),
                )
                .await?;
            if !output.is_table() {
                print(output, &issued, None, &[])?;
            } else {
                let until = issued["expires_at"]
                    .as_i64()
                    .map_or("until revoked".to_owned(), |ms| {
                        format!("until {} UTC", utc_timestamp(ms))
                    });
                let reach = if services.is_empty() {
                    String::new()
                } else {
                    format!(", for {} through the gateway only", services.join(", "))
                };
                println!(
                    "token {} ({name}, valid {until}{reach}; shown once):\n{}",
                    issued["id"],
                    issued["token"].as_str().unwrap_or("?")
                );
            }
        }
        TokenCommand::Reissue { id, user } => {
            let user = names::user_id(client, user.as_deref()).await?;
            let issued = client
                .call(
                    Method::POST,
                    &format!("/api/users/{user}/tokens/{id}/reissue"),
                    None,
                )
                .await?;
            if !output.is_table() {
                return print(output, &issued, None, &[]);
            }
            println!(
                "token {id} revoked; its successor {} ({}; shown once):\n{}",
                issued["id"],
                issued["name"].as_str().unwrap_or("?"),
                issued["token"].as_str().unwrap_or("?")
            );
        }
        TokenCommand::Revoke { id, user } => {
            let user = names::user_id(client, user.as_deref()).await?;
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

/// Prints `value` as `output` asks: JSON or YAML whole; a table of `rows` (or of `value` alone)
/// with `columns`.
pub(super) fn print(
    output: Output,
    value: &Value,
    rows: Option<&[Value]>,
    columns: &[(&str, &str)],
) -> Result<(), String> {
    let rows = rows.unwrap_or(std::slice::from_ref(value));
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Yaml => print!(
            "{}",
            yaml_serde::to_string(value).map_err(|err| err.to_string())?
        ),
        Output::Table => println!("{}", table::render(rows, columns, false)),
        Output::Wide => println!("{}", table::render(rows, columns, true)),
    }
    Ok(())
}

/// The columns of a node; `+` marks those only `-o wide` shows.
const NODE_USAGE_COLUMNS: [(&str, &str); 11] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("STATE", "state"),
    ("TYPE", "server_type"),
    ("CONTAINERS", "containers"),
    ("CPU (cores)", "cpu_allocated"),
    ("MEMORY", "memory_allocated"),
    ("GPUS allocated/total", "gpus"),
    ("+DRIVER", "driver"),
    ("+CHECK", "docker_status"),
    ("+MESSAGE", "status_message"),
];
async fn execute(client: &HubClient, output: Output, resource: Resource) -> Result<(), String> {
    match resource {
        Resource::Apply { manifest, dry_run } => {
            super::manifest::apply(client, &manifest, dry_run).await
        }
        Resource::Watch { dir } => super::watch::run(client, &dir).await,
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
                ImageCommand::Delete { image } => {
                    let id = names::image_id(client, &image).await?;
                    client
                        .call(Method::DELETE, &format!("/api/images/{id}"), None)
                        .await?;
                    println!("image {image} removed from the catalog");
                    return Ok(());
                }
            };
            let rows = value.as_array().cloned();
            print(
                output,
                &value,
                rows.as_deref(),
                &[("ID", "id"), ("NAME", "name"), ("REFERENCE", "reference")],
            )
        }
        Resource::Spec(command) => spec(client, output, command).await,
        Resource::Service(command) => super::service::run(client, output, command).await,
        Resource::User(command) => user(client, output, command).await,
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
            print(output, &operation, None, &OPERATION_COLUMNS)
        }
        Resource::Ops(filter) => operation_log(client, output, filter).await,
    }
}

/// `berth spec …`: sizes in cores and binary units.
async fn spec(client: &HubClient, output: Output, command: SpecCommand) -> Result<(), String> {
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
        SpecCommand::Delete { spec } => {
            let id = names::spec_id(client, &spec).await?;
            client
                .call(Method::DELETE, &format!("/api/specs/{id}"), None)
                .await?;
            println!("spec {spec} deleted");
            return Ok(());
        }
    };
    let rows: Vec<Value> = value
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![value.clone()])
        .into_iter()
        .map(|mut row| {
            row["cpu"] = json!(table::cores(row["cpu_millis"].as_u64().unwrap_or(0)));
            row["memory"] = json!(table::bytes(row["memory_bytes"].as_u64().unwrap_or(0)));
            row["gpus"] = json!(
                match (row["memory_split"].as_bool(), row["gpu_count"].as_i64()) {
                    (Some(true), _) => format!("share of {} GiB", row["gpu_memory_gb"]),
                    (_, Some(count)) if count > 0 => count.to_string(),
                    _ => "-".to_owned(),
                }
            );
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
            ("CPU (cores)", "cpu"),
            ("MEMORY", "memory"),
            ("GPUS", "gpus"),
        ],
    )
}

/// A quota flag's value: a number, or `none` for no limit (JSON null).
fn quota_value(flag: &str, text: &str, number: bool) -> Result<Value, String> {
    if text == "none" {
        return Ok(Value::Null);
    }
    if !number {
        return Ok(json!(text));
    }
    text.parse::<f64>()
        .ok()
        .filter(|value| *value >= 0.0)
        .map(|value| json!(value))
        .ok_or_else(|| format!("{flag} {text:?} is not a number (or `none` for no limit)"))
}

/// `berth user …`
async fn user(client: &HubClient, output: Output, command: UserCommand) -> Result<(), String> {
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
            if output.is_table() {
                println!(
                    "user {} created; token (shown once): {}",
                    created["user"]["name"].as_str().unwrap_or("?"),
                    created["token"].as_str().unwrap_or("?")
                );
                return Ok(());
            }
            created
        }
        UserCommand::Delete { user } => {
            let id = names::user_id(client, Some(&user)).await?;
            client
                .call(Method::DELETE, &format!("/api/users/{id}"), None)
                .await?;
            println!("user {user} deleted; their tokens no longer work");
            return Ok(());
        }
        UserCommand::Quota(QuotaCommand::Set {
            user,
            services,
            cpu,
            memory,
            gpus,
        }) => {
            let id = names::user_id(client, Some(&user)).await?;
            let mut body = json!({});
            for (key, flag, given, number) in [
                ("max_services", "--services", services, true),
                ("max_cpu_cores", "--cpu", cpu, true),
                ("max_memory", "--memory", memory, false),
                ("max_gpus", "--gpus", gpus, true),
            ] {
                if let Some(given) = given {
                    body[key] = quota_value(flag, &given, number)?;
                }
            }
            if body.as_object().is_some_and(serde_json::Map::is_empty) {
                return Err(
                    "nothing to set: give --services, --cpu, --memory or --gpus (a number, or none)"
                        .to_owned(),
                );
            }
            client
                .call(Method::PUT, &format!("/api/users/{id}"), Some(&body))
                .await?
        }
    };
    let rows: Vec<Value> = value
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![value.clone()])
        .into_iter()
        .map(|mut row| {
            let quotas = row["quotas"].clone();
            let limit = |key: &str, show: &dyn Fn(u64) -> String| {
                quotas[key].as_u64().map_or("-".to_owned(), show)
            };
            row["max_services"] = json!(limit("max_services", &|n| n.to_string()));
            row["max_cpu"] = json!(limit("max_cpu_millis", &table::cores));
            row["max_memory"] = json!(limit("max_memory_bytes", &table::bytes));
            row["max_gpus"] = json!(limit("max_gpus", &|n| n.to_string()));
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
            ("ROLE", "role"),
            ("MAX SERVICES", "max_services"),
            ("MAX CPU", "max_cpu"),
            ("MAX MEMORY", "max_memory"),
            ("MAX GPUS", "max_gpus"),
        ],
    )
}

/// `berth ops`: the operation log with names in place of ids and times relative to now.
async fn operation_log(
    client: &HubClient,
    output: Output,
    filter: OpsFilter,
) -> Result<(), String> {
    let mut query = format!("page={}&size={}", filter.page, filter.size);
    if let Some(service) = &filter.service {
        query.push_str(&format!(
            "&service_id={}",
            names::service_id(client, service).await?
        ));
    }
    if let Some(node) = &filter.node {
        query.push_str(&format!("&node_id={}", names::node_id(client, node).await?));
    }
    if let Some(action) = filter.action {
        query.push_str(&format!("&action={action}"));
    }
    let value = client
        .call(Method::GET, &format!("/api/admin/operations?{query}"), None)
        .await?;
    if !output.is_table() {
        return print(output, &value, None, &[]);
    }
    let (users, nodes, services) = (
        names::user_names(client).await,
        names::node_names(client).await,
        names::service_names(client).await,
    );
    let now = table::now_ms();
    let rows: Vec<Value> = value["operations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut row| {
            if let Some(ms) = row["at"].as_i64() {
                row["when"] = json!(table::ago(ms, now));
                row["at"] = json!(utc_timestamp(ms));
            }
            names::name_in(&mut row, "user_id", &users);
            let kind = row["target_kind"].as_str().unwrap_or_default().to_owned();
            let id = row["target_id"]
                .as_str()
                .and_then(|id| id.parse::<i64>().ok());
            let named = id.and_then(|id| match kind.as_str() {
                "service" => services.get(&id),
                "node" => nodes.get(&id),
                "user" => users.get(&id),
                _ => None,
            });
            row["target"] = json!(match named {
                Some(name) => format!("{kind} {name}"),
                None => format!("{kind} {}", table::cell(&row["target_id"])),
            });
            row
        })
        .collect();
    let columns = [
        ("ID", "id"),
        ("WHEN", "when"),
        ("+AT (UTC)", "at"),
        ("USER", "user_id"),
        ("ACTION", "action"),
        ("TARGET", "target"),
        ("OUTCOME", "outcome"),
    ];
    print(output, &value, Some(&rows), &columns)
}

/// `used/total` with binary units; `?` for an unknown total.
fn share_bytes(used: &Value, total: &Value) -> String {
    let used = table::bytes(used.as_u64().unwrap_or(0));
    match total.as_u64() {
        Some(total) => format!("{used}/{}", table::bytes(total)),
        None => format!("{used}/?"),
    }
}

/// Allocated/total CPU cores; `?` for an unknown total.
fn share_cores(used: &Value, total: &Value) -> String {
    let used = table::cores(used.as_u64().unwrap_or(0));
    match total.as_u64() {
        Some(total) => format!("{used}/{}", table::cores(total)),
        None => format!("{used}/?"),
    }
}

/// Each GPU as `index:allocated/total (seen free …)`.
fn gpu_summary(gpus: &Value) -> String {
    let described: Vec<String> = gpus
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|gpu| {
            let observed = gpu["observed_free_bytes"]
                .as_u64()
                .map(|free| format!(" seen free {}", table::bytes(free)))
                .unwrap_or_default();
            format!(
                "{}:{}{observed}",
                gpu["index"],
                share_bytes(&gpu["allocated_bytes"], &gpu["memory_bytes"]),
            )
        })
        .collect();
    if described.is_empty() {
        "-".to_owned()
    } else {
        described.join(" ")
    }
}

/// One word for a node's state: `down` (the failure detector says so), `unreachable` or
/// another connection status when its last check failed, `disabled`, `draining`
/// (unlisted), else `ready`.
fn node_state(node: &Value, down: bool) -> &'static str {
    let status = node["docker_status"].as_str().unwrap_or_default();
    if down {
        "down"
    } else if status != "connected" {
        match status {
            "failed" | "unreachable" => "unreachable",
            "pending" | "" => "checking",
            _ => "suspect",
        }
    } else if node["enabled"] == false {
        "disabled"
    } else if node["listed"] == false {
        "draining"
    } else {
        "ready"
    }
}

/// Adds the resource view's figures to each node row: containers, CPU, memory and GPUs
/// allocated of total, and its one-word state (admins see all of it; others the plain list).
async fn with_usage(client: &HubClient, mut nodes: Value) -> Value {
    let usage = client
        .call(Method::GET, "/api/admin/resources/usage", None)
        .await
        .unwrap_or_default();
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
        let entry = row["id"].as_i64().and_then(|id| by_id.get(&id));
        let down = entry.is_some_and(|entry| entry["down"] == true);
        row["state"] = json!(node_state(row, down));
        let Some(entry) = entry else { continue };
        row["containers"] = json!(format!(
            "{}/{}",
            entry["containers"], entry["max_containers"]
        ));
        row["cpu_allocated"] = json!(share_cores(
            &entry["allocated"]["cpu_millis"],
            &entry["capacity"]["cpu_millis"],
        ));
        row["memory_allocated"] = json!(share_bytes(
            &entry["allocated"]["memory_bytes"],
            &entry["capacity"]["memory_bytes"],
        ));
        row["cpu_total"] = json!(
            entry["capacity"]["cpu_millis"]
                .as_u64()
                .map_or("?".to_owned(), table::cores)
        );
        row["memory_total"] = json!(
            entry["capacity"]["memory_bytes"]
                .as_u64()
                .map_or("?".to_owned(), table::bytes)
        );
        row["gpus"] = json!(gpu_summary(&entry["gpus"]));
    }
    nodes
}

/// `berth node show`: the node's hardware, labels, state and use, and the containers on it.
async fn show_node(client: &HubClient, output: Output, id: i64) -> Result<(), String> {
    let node = client
        .call(Method::GET, &format!("/api/nodes/{id}"), None)
        .await?;
    let mut rows = with_usage(client, json!([node])).await;
    let placed = client
        .call(Method::GET, "/api/admin/containers", None)
        .await
        .unwrap_or_default();
    let services = names::service_names(client).await;
    let containers: Vec<Value> = placed["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|container| container["node_id"].as_i64() == Some(id))
        .map(|container| {
            let mut row = container.clone();
            names::name_in(&mut row, "service_id", &services);
            row["cpu"] = json!(table::cores(container["cpu_millis"].as_u64().unwrap_or(0)));
            row["memory"] = json!(table::bytes(
                container["memory_bytes"].as_u64().unwrap_or(0)
            ));
            let indices: Vec<String> = container["gpu_indices"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(Value::to_string)
                .collect();
            row["gpus"] = json!(
                match (indices.is_empty(), container["gpu_memory_bytes"].as_u64()) {
                    (true, _) => "-".to_owned(),
                    (false, Some(share)) if share > 0 =>
                        format!("{} ({} share)", indices.join(","), table::bytes(share)),
                    (false, _) => indices.join(","),
                }
            );
            row
        })
        .collect();
    let node = rows[0].take();
    if output != Output::Table && output != Output::Wide {
        let mut whole = node;
        whole["containers_placed"] = json!(containers);
        return print(output, &whole, None, &[]);
    }
    let labels = node["labels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|labels| !labels.is_empty())
        .unwrap_or_else(|| "-".to_owned());
    let text = |key: &str| table::cell(&node[key]);
    let address = match text("driver").as_str() {
        "agent" => text("agent_url"),
        _ => text("docker_address"),
    };
    let gpus = match node["gpu_count"].as_i64() {
        Some(count) if count > 0 => format!(
            "{count} × {} GiB {}",
            node["gpu_memory_gb"],
            node["gpu_model"].as_str().unwrap_or_default()
        ),
        _ => "none".to_owned(),
    };
    for (label, value) in [
        ("Name", format!("{} (id {id})", text("name"))),
        ("State", text("state")),
        ("Connection", format!("{} via {address}", text("driver"))),
        (
            "Last check",
            format!("{}: {}", text("docker_status"), text("status_message")),
        ),
        (
            "Type",
            format!(
                "{}, priority {}, weight {}",
                text("server_type"),
                text("priority"),
                text("weight")
            ),
        ),
        (
            "Hardware",
            format!(
                "{} cores, {} memory, GPUs: {gpus}",
                text("cpu_total"),
                text("memory_total")
            ),
        ),
        ("Labels", labels),
        (
            "Allocated",
            format!(
                "containers {}, CPU {} cores, memory {}",
                text("containers"),
                text("cpu_allocated"),
                text("memory_allocated")
            ),
        ),
        ("GPUs allocated", text("gpus")),
        (
            "Addresses",
            format!(
                "public {}, private {}",
                text("public_ip"),
                text("private_ip")
            ),
        ),
    ] {
        println!("{label:<15} {value}");
    }
    println!();
    if containers.is_empty() {
        println!("no containers placed here");
    } else {
        println!(
            "{}",
            table::render(
                &containers,
                &[
                    ("SERVICE", "service_id"),
                    ("REPLICA", "replica"),
                    ("CONTAINER", "name"),
                    ("STATUS", "status"),
                    ("CPU", "cpu"),
                    ("MEMORY", "memory"),
                    ("GPUS", "gpus"),
                ],
                output == Output::Wide,
            )
        );
    }
    Ok(())
}

async fn node(client: &HubClient, output: Output, command: NodeCommand) -> Result<(), String> {
    let value = match command {
        NodeCommand::List | NodeCommand::Usage => {
            let nodes = client.call(Method::GET, "/api/nodes", None).await?;
            let nodes = with_usage(client, nodes).await;
            let rows = nodes.as_array().cloned();
            return print(output, &nodes, rows.as_deref(), &NODE_USAGE_COLUMNS);
        }
        NodeCommand::JoinToken { name, ttl } => {
            let issued = client
                .call(
                    Method::POST,
                    "/api/nodes/join-tokens",
                    Some(&json!({"name": name, "ttl_seconds": ttl})),
                )
                .await?;
            if output == Output::Json {
                return print(output, &issued, None, &[]);
            }
            println!(
                "join token (single use, valid for {} min): run on the new host\n\n  {}\n\nor, with the agent image:\n\n  {}\n\nThe node appears in `berth node list` once its agent answers.",
                ttl.div_ceil(60),
                issued["command"].as_str().unwrap_or_default(),
                issued["docker_run"].as_str().unwrap_or_default()
            );
            if issued["hub_url"]
                .as_str()
                .is_some_and(|url| url.starts_with("https://"))
            {
                println!(
                    "If the hub's certificate comes from its own CA (--tls-self-signed, berth pki), copy that ca.pem to the host and set BERTH_CA_FILE to it for the join."
                );
            }
            if issued["agent_tls_from_hub"] == true {
                println!(
                    "Add --tls-from-hub for the agent to serve TLS with a certificate of this hub's CA, signed at the join."
                );
            }
            return Ok(());
        }
        NodeCommand::Drain { node, detach } => {
            let id = names::node_id(client, &node).await?;
            let accepted = client
                .call(Method::POST, &format!("/api/nodes/{id}/drain"), None)
                .await?;
            let operation = progress::follow(client, accepted, detach).await?;
            print(output, &operation, None, &OPERATION_COLUMNS)?;
            if !detach && output == Output::Table {
                let moved = operation["detail"]["moved"].as_array().map_or(0, Vec::len);
                let pinned = operation["detail"]["pinned"].as_array().map_or(0, Vec::len);
                println!(
                    "node {node} drained: {moved} replica(s) moved, {pinned} pinned left in place"
                );
            }
            return Ok(());
        }
        NodeCommand::Show { node } => {
            let id = names::node_id(client, &node).await?;
            return show_node(client, output, id).await;
        }
        NodeCommand::Test { node } => {
            let id = names::node_id(client, &node).await?;
            client
                .call(Method::POST, &format!("/api/nodes/{id}/test"), None)
                .await?["node"]
                .clone()
        }
        NodeCommand::Enable { node } => {
            let id = names::node_id(client, &node).await?;
            client
                .call(
                    Method::POST,
                    &format!("/api/admin/controllers/{id}/enable"),
                    None,
                )
                .await?
        }
        NodeCommand::Disable { node } => {
            let id = names::node_id(client, &node).await?;
            client
                .call(
                    Method::POST,
                    &format!("/api/admin/controllers/{id}/disable"),
                    None,
                )
                .await?
        }
        NodeCommand::Delete { node } => {
            let id = names::node_id(client, &node).await?;
            client
                .call(Method::DELETE, &format!("/api/nodes/{id}"), None)
                .await?;
            println!("node {node} deleted");
            return Ok(());
        }
        NodeCommand::Images { node } => {
            let id = names::node_id(client, &node).await?;
            let listed = client
                .call(Method::GET, &format!("/api/nodes/{id}/images"), None)
                .await?;
            let rows: Vec<Value> = listed["images"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut row| {
                    row["size"] = json!(table::bytes(row["size_bytes"].as_u64().unwrap_or(0)));
                    row["short_id"] = json!(row["id"].as_str().map(|id| {
                        id.trim_start_matches("sha256:")
                            .chars()
                            .take(12)
                            .collect::<String>()
                    }));
                    row
                })
                .collect();
            return print(
                output,
                &listed,
                Some(&rows),
                &[("IMAGE", "reference"), ("ID", "short_id"), ("SIZE", "size")],
            );
        }
        NodeCommand::Pull {
            node,
            image,
            detach,
        } => {
            let id = names::node_id(client, &node).await?;
            let accepted = client
                .call(
                    Method::POST,
                    &format!("/api/nodes/{id}/images/pull"),
                    Some(&json!({"image": image})),
                )
                .await?;
            let operation = progress::follow(client, accepted, detach).await?;
            if output.is_table() && !detach {
                println!("{image} is on node {node}");
                return Ok(());
            }
            return print(output, &operation, None, &OPERATION_COLUMNS);
        }
        NodeCommand::Rmi { node, image, force } => {
            let id = names::node_id(client, &node).await?;
            let query = format!(
                "name={}&force={force}",
                image
                    .replace('%', "%25")
                    .replace('/', "%2F")
                    .replace(':', "%3A")
            );
            client
                .call(
                    Method::DELETE,
                    &format!("/api/nodes/{id}/images?{query}"),
                    None,
                )
                .await?;
            println!("{image} removed from node {node}");
            return Ok(());
        }
        NodeCommand::Label { node, labels } => {
            let id = names::node_id(client, &node).await?;
            let body = json!({"labels": pairs("label", &labels)?});
            client
                .call(Method::PUT, &format!("/api/nodes/{id}"), Some(&body))
                .await?
        }
        NodeCommand::Create(new) => {
            let mut body = json!({"name": new.name, "public_ip": new.public_ip, "private_ip": new.private_ip,
                "use_tls": !new.no_tls, "labels": pairs("--label", &new.labels)?});
            if let Some(dir) = &new.tls_from_pki {
                let (ca, cert, key) = crate::pki::client_material(dir)?;
                body["ca_cert"] = json!(ca);
                body["client_cert"] = json!(cert);
                body["client_key"] = json!(key);
            }
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
    let value = with_usage(client, json!([value])).await[0].take();
    print(output, &value, None, &NODE_USAGE_COLUMNS)
}

/// The columns of one operation.
pub(super) const OPERATION_COLUMNS: [(&str, &str); 6] = [
    ("ID", "id"),
    ("KIND", "kind"),
    ("STATE", "state"),
    ("SERVICE", "service_id"),
    ("STEP", "progress.step"),
    ("ERROR", "error"),
];
