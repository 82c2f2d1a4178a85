//! `berth pki init|issue`: the fleet's certificate authority in a directory (by default
//! `berth-data/pki`, beside `berth up`'s data), and the certificates it signs, with what to do
//! with them: the `dockerd` flags for a Docker engine's certificate, `berth node create
//! --tls-from-pki` for the hub's client certificate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use berth_docker::pki::{self, Purpose};
use clap::Subcommand;

/// Where `berth pki` keeps the CA unless told otherwise.
pub const DEFAULT_DIR: &str = "berth-data/pki";

/// The name of the client certificate `berth node create --tls-from-pki` uses (and issues when
/// it is missing).
pub const HUB_CLIENT: &str = "hub-client";

/// `berth pki …`
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Make the CA (once): ca.pem and ca-key.pem (0600).
    Init {
        /// The PKI directory.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Sign a certificate: docker-server (a Docker engine's TLS listener), client (the hub, as
    /// the engines' client), agent or hub (their own TLS listeners).
    Issue {
        /// docker-server, client, agent or hub.
        #[arg(value_parser = ["docker-server", "client", "agent", "hub"])]
        purpose: String,
        /// Its name: the certificate's common name and its files' (NAME.pem, NAME-key.pem).
        #[arg(long)]
        name: String,
        /// A host name or IP address it is valid for; repeatable (default: the name).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// The PKI directory.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
}

/// Runs a `berth pki` command.
pub fn run(command: PkiCommand) -> ExitCode {
    let outcome = match command {
        PkiCommand::Init { dir } => pki::init(&dir).map(|made| {
            println!(
                "CA made: {} (key {}, keep it private)\nnext: berth pki issue docker-server --name HOST --san HOST_IP --dir {}",
                made.cert.display(),
                made.key.display(),
                dir.display()
            );
        }),
        PkiCommand::Issue {
            purpose,
            name,
            sans,
            dir,
        } => {
            let purpose = Purpose::parse(&purpose).unwrap_or(Purpose::Client);
            pki::issue(&dir, purpose, &name, &sans).map(|issued| {
                println!(
                    "issued {} (key {})",
                    issued.cert.display(),
                    issued.key.display()
                );
                println!("{}", next_step(&dir, purpose, &issued));
            })
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("berth pki: {err}");
            ExitCode::FAILURE
        }
    }
}

/// What to do with a certificate just issued.
fn next_step(dir: &Path, purpose: Purpose, issued: &pki::Issued) -> String {
    let ca = dir.join(pki::CA_CERT);
    match purpose {
        Purpose::DockerServer => format!(
            "copy {ca}, {cert} and {key} to the engine's host and start dockerd with\n  \
             dockerd --tlsverify --tlscacert={ca} --tlscert={cert} --tlskey={key} -H=0.0.0.0:2376 -H=unix:///var/run/docker.sock\n\
             (or the same in /etc/docker/daemon.json: \"tlsverify\": true, \"tlscacert\", \"tlscert\", \"tlskey\", \"hosts\"),\n\
             then add it: berth node create --name NAME --public-ip IP --private-ip IP --docker-address tcp://IP:2376 --tls-from-pki {dir}",
            ca = ca.display(),
            cert = issued.cert.display(),
            key = issued.key.display(),
            dir = dir.display(),
        ),
        Purpose::Client => format!(
            "the hub presents it to engines that trust {}: berth node create … --tls-from-pki {} uses {HUB_CLIENT}",
            ca.display(),
            dir.display()
        ),
        Purpose::Agent => format!(
            "start the agent with BERTH_AGENT_TLS_CERT={} BERTH_AGENT_TLS_KEY={}; clients trust {}",
            issued.cert.display(),
            issued.key.display(),
            ca.display()
        ),
        Purpose::Hub => format!(
            "clients of the hub trust {} for this certificate",
            ca.display()
        ),
    }
}

/// The CA certificate, and the hub's client certificate and key (issued now when the
/// directory has none), for `berth node create --tls-from-pki DIR`.
pub fn client_material(dir: &Path) -> Result<(String, String, String), String> {
    let issued = pki::Issued {
        cert: dir.join(format!("{HUB_CLIENT}.pem")),
        key: dir.join(format!("{HUB_CLIENT}-key.pem")),
    };
    let issued = if issued.cert.exists() && issued.key.exists() {
        issued
    } else {
        pki::issue(dir, Purpose::Client, HUB_CLIENT, &[]).map_err(|err| err.to_string())?
    };
    let ca = pki::ca_pem(dir).map_err(|err| err.to_string())?;
    let (cert, key) = pki::read_issued(&issued).map_err(|err| err.to_string())?;
    Ok((ca, cert, key))
}
