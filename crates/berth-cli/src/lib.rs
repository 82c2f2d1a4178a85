//! The `berth` command line: one binary with the hub, the node agent, the embedded default
//! (`berth up`) and the CLI client of the hub API. `main.rs` only parses and calls [`run`].

mod agent;
mod client;
mod gateway;
mod hub;
mod logging;
mod pki;
mod scheduler_bench;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Berth runs containers and ML model services on a fleet of Docker hosts, GPU-aware.
#[derive(Debug, Parser)]
#[command(name = "berth", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the embedded default: a hub on SQLite with the local Docker engine as node `local`.
    Up(up::UpArgs),
    /// Run the control plane: users, compute nodes, node monitor, operation log (REST API).
    Hub(hub::HubArgs),
    /// Run the mManager-compatible node controller on this Docker host.
    Agent(Box<agent::AgentArgs>),
    /// Run a gateway alone, following a hub's routes (several can serve behind a balancer).
    Gateway(gateway::GatewayArgs),
    /// Compute nodes, through the hub API.
    Node {
        /// Hub address, token, output.
        #[command(flatten)]
        client: client::ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: client::NodeCommand,
    },
    /// The image catalog, through the hub API.
    Image {
        /// Hub address, token, output.
        #[command(flatten)]
        client: client::ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: client::ImageCommand,
    },
    /// Product specs, through the hub API.
    Spec {
        /// Hub address, token, output.
        #[command(flatten)]
        client: client::ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: client::SpecCommand,
    },
    /// Services, through the hub API.
    Service {
        /// Hub address, token, output.
        #[command(flatten)]
        client: client::ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: client::ServiceCommand,
    },
    /// Users and tokens, through the hub API.
    User {
        /// Hub address, token, output.
        #[command(flatten)]
        client: client::ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: client::UserCommand,
    },
    /// The operation log (audit trail), through the hub API.
    Ops {
        /// Hub address, token, output.
        #[command(flatten)]
        client: client::ClientArgs,
        /// Filters.
        #[command(flatten)]
        filter: client::OpsFilter,
    },
    /// Replay a scenario (failures, recoveries) on simulated nodes and check the invariants.
    Sim {
        /// The scenario YAML file (see deploy/sim/).
        scenario: std::path::PathBuf,
        /// Where the scenario's database goes.
        #[arg(long, default_value = "berth-sim")]
        data_dir: std::path::PathBuf,
    },
    /// Save a hub's address and a token as a context and make it current.
    Login(client::context::LoginArgs),
    /// The saved hubs (contexts) the CLI talks to.
    Context {
        /// What to do.
        #[command(subcommand)]
        command: client::context::ContextCommand,
    },
    /// Print a shell completion script, e.g. `berth completions bash > /etc/bash_completion.d/berth`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `berth man | man -l -`.
    Man,
    /// The fleet's certificate authority for Docker TLS: make it, then sign certificates.
    Pki {
        /// What to do.
        #[command(subcommand)]
        command: pki::PkiCommand,
    },
    /// Benchmarks that print their figures.
    Bench {
        /// Which one.
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Apply a service declared in YAML: show what changes, then create it or deploy its next
    /// version.
    Apply {
        /// Hub address, token, output.
        #[command(flatten)]
        client: client::ClientArgs,
        /// The service file (or seed 004's model file).
        #[arg(
            short = 'f',
            long,
            required_unless_present = "watch",
            conflicts_with = "watch"
        )]
        file: Option<std::path::PathBuf>,
        /// Apply every YAML file of this directory, again whenever one changes, and unload the
        /// service of a file that is removed (seed 004's hot reload).
        #[arg(long, value_name = "DIR")]
        watch: Option<std::path::PathBuf>,
        /// Only show what would change.
        #[arg(long, conflicts_with = "watch")]
        dry_run: bool,
    },
    /// Check a service YAML file offline with the hub's rules; mistakes point at their line.
    Validate {
        /// The service file.
        #[arg(short = 'f', long)]
        file: std::path::PathBuf,
    },
}

/// The benchmarks of `berth bench`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Placements per second and GPU packing of the scheduler on a synthetic cluster.
    Scheduler(scheduler_bench::SchedulerBenchArgs),
}

/// Runs `berth sim`: exit 0 when every invariant held after every step.
async fn simulate(path: &std::path::Path, data_dir: &std::path::Path) -> ExitCode {
    let scenario = match berth_hub::scenario::Scenario::load(path) {
        Ok(scenario) => scenario,
        Err(err) => {
            eprintln!("berth sim: {err}");
            return ExitCode::from(2);
        }
    };
    let outcome =
        match berth_hub::scenario::run(&scenario, data_dir, &mut |line| println!("{line}")).await {
            Ok(outcome) => outcome,
            Err(err) => {
                eprintln!("berth sim: {err}");
                return ExitCode::FAILURE;
            }
        };
    let broken = outcome
        .checks
        .iter()
        .any(|(_, check)| check.duplicates > 0 || check.overcommitted_nodes > 0);
    let settled = outcome
        .checks
        .last()
        .is_none_or(|(_, check)| check.stale_containers == 0 && check.replicas_on_down_nodes == 0);
    println!(
        "moved {}, removed {}, repaired {}; invariants {}",
        outcome.moved,
        outcome.removed,
        outcome.repaired,
        if !broken && settled { "held" } else { "BROKEN" }
    );
    if !broken && settled {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Writes `bytes` to standard output; a reader that stopped early (`| head`) is no error.
fn to_stdout(bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    match std::io::stdout().write_all(bytes) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("cannot write to standard output: {err}"))
        }
        _ => Ok(()),
    }
}

/// Exit 0, or print the message and exit 1.
fn report(outcome: Result<(), String>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("berth: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one parsed command line and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Agent(args) => agent::run(*args).await,
        Command::Hub(args) => hub::run(args).await,
        Command::Gateway(args) => gateway::run(args).await,
        Command::Node { client, command } => {
            client::run(client, client::Resource::Node(command)).await
        }
        Command::Image { client, command } => {
            client::run(client, client::Resource::Image(command)).await
        }
        Command::Spec { client, command } => {
            client::run(client, client::Resource::Spec(command)).await
        }
        Command::Service { client, command } => {
            client::run(client, client::Resource::Service(command)).await
        }
        Command::User { client, command } => {
            client::run(client, client::Resource::User(command)).await
        }
        Command::Ops { client, filter } => client::run(client, client::Resource::Ops(filter)).await,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "berth", &mut script);
            report(to_stdout(&script))
        }
        Command::Man => {
            let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            let mut roff = Vec::new();
            report(
                page.render(&mut roff)
                    .map_err(|err| format!("cannot render the manual page: {err}"))
                    .and_then(|()| to_stdout(&roff)),
            )
        }
        Command::Login(args) => report(client::context::login(args).await),
        Command::Context { command } => report(client::context::manage(command)),
        Command::Sim { scenario, data_dir } => simulate(&scenario, &data_dir).await,
        Command::Pki { command } => pki::run(command),
        Command::Bench {
            command: BenchCommand::Scheduler(args),
        } => scheduler_bench::run(args),
        Command::Apply {
            client,
            watch: Some(dir),
            ..
        } => client::run(client, client::Resource::Watch { dir }).await,
        Command::Apply { file: None, .. } => {
            eprintln!("berth apply: give -f FILE or --watch DIR");
            ExitCode::from(2)
        }
        Command::Apply {
            client,
            file: Some(file),
            dry_run,
            ..
        } => match client::manifest::load(&file) {
            Ok(manifest) => {
                let manifest = Box::new(manifest);
                client::run(client, client::Resource::Apply { manifest, dry_run }).await
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::from(2)
            }
        },
        Command::Validate { file } => match client::manifest::load(&file) {
            Ok(manifest) => {
                println!(
                    "{}: valid: {}",
                    file.display(),
                    client::manifest::summary(&manifest)
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::from(2)
            }
        },
    }
}
