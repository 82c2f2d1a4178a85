//! `berth up`: the embedded default. Until the hub exists it connects to the local Docker engine
//! (node `local`), reports the connection as a compute node's status, and lists the containers
//! Berth manages there.

use std::process::ExitCode;

use berth_core::ConnectionStatus;
use berth_docker::translate::LABEL_MANAGED;
use berth_docker::{DockerDriver, DockerEndpoint};
use clap::Args;

/// Options of `berth up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// The local Docker engine.
    #[arg(long, env = "DOCKER_HOST", default_value = berth_docker::DEFAULT_DOCKER_HOST)]
    docker_host: String,
}

/// Checks the local engine and prints what Berth manages on it.
pub async fn run(args: UpArgs) -> ExitCode {
    if let Err(err) = crate::logging::init("info", None) {
        eprintln!("berth up: cannot set up logging: {err}");
    }
    let endpoint = DockerEndpoint::plain(args.docker_host);
    println!("Berth {} — embedded default", env!("CARGO_PKG_VERSION"));
    let report = endpoint.test_connection().await;
    println!(
        "node local  {}  {}  ({})",
        endpoint.address, report.status, report.message
    );
    if report.status != ConnectionStatus::Connected {
        eprintln!(
            "berth up: the local Docker engine is not reachable; start it or set DOCKER_HOST"
        );
        return ExitCode::FAILURE;
    }
    let containers = match DockerDriver::connect(&endpoint).await {
        Ok(driver) => driver.list(&[LABEL_MANAGED], true).await,
        Err(err) => Err(err),
    };
    match containers {
        Ok(containers) => {
            println!(
                "containers managed by Berth on node local: {}",
                containers.len()
            );
            for container in containers {
                println!(
                    "  {:<40} {:<10} {}",
                    container.name, container.state, container.image
                );
            }
            println!(
                "The hub (API, database, scheduler, gateway) is not part of this version yet."
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("berth up: {err}");
            ExitCode::FAILURE
        }
    }
}
