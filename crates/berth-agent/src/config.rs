//! The agent's configuration: the mManager environment variables (`MMANAGER_API_KEY`, `SERVER_ID`,
//! `SERVER_TYPE`, `MAX_CONTAINERS`, `LOG_LEVEL`, `LOG_FILE`, `DOCKER_HOST`, `DOCKER_TIMEOUT`,
//! `HOST`, `PORT`) plus
//! Berth's own (`BERTH_AGENT_LISTEN`, `BERTH_AGENT_TLS_CERT`, `BERTH_AGENT_TLS_KEY`,
//! `BERTH_SIMULATED_GPUS`, `BERTH_HAMI_CORE_DIR`). Values are read through a lookup function, so
//! the command line can put flags in front of the environment and tests can use a map.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Serialize;
use thiserror::Error;

use crate::gpus::SimulatedGpus;

/// Environment key of the API key.
pub const ENV_API_KEY: &str = "MMANAGER_API_KEY";
/// Environment key of the server id.
pub const ENV_SERVER_ID: &str = "SERVER_ID";
/// Environment key of the server type.
pub const ENV_SERVER_TYPE: &str = "SERVER_TYPE";
/// Environment key of the container limit.
pub const ENV_MAX_CONTAINERS: &str = "MAX_CONTAINERS";
/// Environment key of the log level.
pub const ENV_LOG_LEVEL: &str = "LOG_LEVEL";
/// Environment key of the log file.
pub const ENV_LOG_FILE: &str = "LOG_FILE";
/// Environment key of the Docker address.
pub const ENV_DOCKER_HOST: &str = "DOCKER_HOST";
/// Environment key of the Docker request timeout, seconds.
pub const ENV_DOCKER_TIMEOUT: &str = "DOCKER_TIMEOUT";
/// Environment key of the listen address.
pub const ENV_LISTEN: &str = "BERTH_AGENT_LISTEN";
/// mManager's environment key of the address to listen on (without `BERTH_AGENT_LISTEN`).
pub const ENV_HOST: &str = "HOST";
/// mManager's environment key of the port to listen on (without `BERTH_AGENT_LISTEN`).
pub const ENV_PORT: &str = "PORT";
/// Environment key of the TLS certificate file (PEM) of the agent's own API.
pub const ENV_TLS_CERT: &str = "BERTH_AGENT_TLS_CERT";
/// Environment key of the TLS key file (PEM) of the agent's own API.
pub const ENV_TLS_KEY: &str = "BERTH_AGENT_TLS_KEY";
/// Environment key of simulated GPUs, e.g. `2xA100-80GB`.
pub const ENV_SIMULATED_GPUS: &str = "BERTH_SIMULATED_GPUS";
/// Environment key of the HAMi-core build directory on this host.
pub const ENV_HAMI_CORE_DIR: &str = "BERTH_HAMI_CORE_DIR";

/// The API key used when none is configured. Starting with it logs a warning.
pub const DEFAULT_API_KEY: &str = "mmanager-default-key";

/// The kind of server, as mManager names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerType {
    /// CPU server.
    Cpu,
    /// GPU server.
    Gpu,
    /// Edge server.
    Edge,
}

impl ServerType {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerType::Cpu => "cpu",
            ServerType::Gpu => "gpu",
            ServerType::Edge => "edge",
        }
    }
}

impl fmt::Display for ServerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServerType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(ServerType::Cpu),
            "gpu" => Ok(ServerType::Gpu),
            "edge" => Ok(ServerType::Edge),
            _ => Err("must be cpu, gpu or edge".to_owned()),
        }
    }
}

/// TLS for the agent's own API.
pub use berth_http::listen::ListenTls;

/// Everything the agent needs to start.
#[derive(Clone, PartialEq)]
pub struct AgentConfig {
    /// The Bearer key every route but `/health` and `/` requires.
    pub api_key: String,
    /// True when `api_key` is the well-known default.
    pub api_key_is_default: bool,
    /// This server's id, put on every container it creates.
    pub server_id: String,
    /// cpu, gpu or edge.
    pub server_type: ServerType,
    /// Most containers this agent manages at once.
    pub max_containers: u32,
    /// Log level (`DEBUG`, `INFO`, `WARNING`, `ERROR`; case-insensitive).
    pub log_level: String,
    /// Also write logs to this file.
    pub log_file: Option<PathBuf>,
    /// The Docker engine address.
    pub docker_host: String,
    /// Seconds before a Docker request gives up.
    pub docker_timeout_secs: u64,
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// TLS for the API, when set.
    pub tls: Option<ListenTls>,
    /// Simulated GPUs instead of NVML.
    pub simulated_gpus: Option<SimulatedGpus>,
    /// HAMi-core build directory on this host.
    pub hami_core_dir: String,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("api_key", &"<redacted>")
            .field("server_id", &self.server_id)
            .field("server_type", &self.server_type)
            .field("max_containers", &self.max_containers)
            .field("docker_host", &self.docker_host)
            .field("listen", &self.listen)
            .field("tls", &self.tls.is_some())
            .field("simulated_gpus", &self.simulated_gpus)
            .finish_non_exhaustive()
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{key}={value:?}: {reason}")]
pub struct ConfigError {
    /// The environment key (or the flag's key).
    pub key: &'static str,
    /// The value given (never the API key).
    pub value: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl AgentConfig {
    /// Reads the configuration through `lookup` (a flag, else the environment). Every value is
    /// checked; the first bad one is returned.
    pub fn load(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |key: &str| lookup(key).filter(|value| !value.trim().is_empty());
        let api_key = get(ENV_API_KEY).unwrap_or_else(|| DEFAULT_API_KEY.to_owned());
        let server_type = parse(ENV_SERVER_TYPE, get(ENV_SERVER_TYPE), ServerType::Cpu)?;
        let max_containers: u32 = parse(ENV_MAX_CONTAINERS, get(ENV_MAX_CONTAINERS), 100)?;
        if max_containers == 0 {
            return Err(ConfigError {
                key: ENV_MAX_CONTAINERS,
                value: "0".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        let docker_timeout_secs: u64 = parse(ENV_DOCKER_TIMEOUT, get(ENV_DOCKER_TIMEOUT), 60)?;
        // BERTH_AGENT_LISTEN, else mManager's HOST and PORT, else 0.0.0.0:8000.
        let listen: SocketAddr = match get(ENV_LISTEN) {
            Some(listen) => parse(
                ENV_LISTEN,
                Some(listen),
                SocketAddr::from(([0, 0, 0, 0], 8000)),
            )?,
            None => {
                let host = match get(ENV_HOST).as_deref() {
                    Some("localhost") => "127.0.0.1".to_owned(),
                    Some(host) => host.to_owned(),
                    None => "0.0.0.0".to_owned(),
                };
                let ip: std::net::IpAddr = parse(ENV_HOST, Some(host), [0, 0, 0, 0].into())?;
                let port: u16 = parse(ENV_PORT, get(ENV_PORT), 8000)?;
                SocketAddr::new(ip, port)
            }
        };
        let log_level = get(ENV_LOG_LEVEL).unwrap_or_else(|| "INFO".to_owned());
        if tracing_level(&log_level).is_none() {
            return Err(ConfigError {
                key: ENV_LOG_LEVEL,
                value: log_level,
                reason: "must be DEBUG, INFO, WARNING or ERROR".to_owned(),
            });
        }
        let tls = match (get(ENV_TLS_CERT), get(ENV_TLS_KEY)) {
            (Some(cert), Some(key)) => Some(ListenTls {
                cert: cert.into(),
                key: key.into(),
            }),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(ConfigError {
                    key: ENV_TLS_KEY,
                    value: String::new(),
                    reason: format!("{ENV_TLS_CERT}={cert} is set, so the key file is needed too"),
                });
            }
            (None, Some(key)) => {
                return Err(ConfigError {
                    key: ENV_TLS_CERT,
                    value: String::new(),
                    reason: format!(
                        "{ENV_TLS_KEY}={key} is set, so the certificate file is needed too"
                    ),
                });
            }
        };
        let simulated_gpus = get(ENV_SIMULATED_GPUS)
            .map(|text| {
                text.parse::<SimulatedGpus>().map_err(|reason| ConfigError {
                    key: ENV_SIMULATED_GPUS,
                    value: text.clone(),
                    reason,
                })
            })
            .transpose()?;
        let server_id = get(ENV_SERVER_ID).unwrap_or_else(|| "mmanager-default".to_owned());
        if let Err(err) = berth_core::spec::validate_name(ENV_SERVER_ID, &server_id) {
            return Err(ConfigError {
                key: ENV_SERVER_ID,
                value: server_id,
                reason: err.message,
            });
        }
        Ok(Self {
            api_key_is_default: api_key == DEFAULT_API_KEY,
            api_key,
            server_id,
            server_type,
            max_containers,
            log_level,
            log_file: get(ENV_LOG_FILE).map(PathBuf::from),
            docker_host: get(ENV_DOCKER_HOST)
                .unwrap_or_else(|| berth_docker::DEFAULT_DOCKER_HOST.to_owned()),
            docker_timeout_secs,
            listen,
            tls,
            simulated_gpus,
            hami_core_dir: get(ENV_HAMI_CORE_DIR)
                .unwrap_or_else(|| berth_core::spec::DEFAULT_HAMI_CORE_DIR.to_owned()),
        })
    }
}

/// The tracing level for an mManager-style level name.
pub fn tracing_level(name: &str) -> Option<&'static str> {
    match name.trim().to_ascii_uppercase().as_str() {
        "TRACE" => Some("trace"),
        "DEBUG" => Some("debug"),
        "INFO" => Some("info"),
        "WARNING" | "WARN" => Some("warn"),
        "ERROR" | "CRITICAL" => Some("error"),
        _ => None,
    }
}

fn parse<T: FromStr>(key: &'static str, value: Option<String>, default: T) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match value {
        None => Ok(default),
        Some(text) => text.trim().parse().map_err(|err: T::Err| ConfigError {
            key,
            value: text.clone(),
            reason: err.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        AgentConfig::load(|key| map.get(key).cloned())
    }

    #[test]
    fn defaults_follow_the_seed() {
        let config = load(&[]).expect("defaults are valid");
        assert_eq!(config.api_key, DEFAULT_API_KEY);
        assert!(config.api_key_is_default);
        assert_eq!(config.server_id, "mmanager-default");
        assert_eq!(config.server_type, ServerType::Cpu);
        assert_eq!(config.max_containers, 100);
        assert_eq!(config.docker_host, "unix:///var/run/docker.sock");
        assert_eq!(config.docker_timeout_secs, 60);
        assert_eq!(config.listen, "0.0.0.0:8000".parse().expect("addr"));
        assert_eq!(config.log_level, "INFO");
        assert!(config.tls.is_none() && config.simulated_gpus.is_none());
    }

    #[test]
    fn values_are_read_and_checked() {
        let config = load(&[
            (ENV_API_KEY, "k3y"),
            (ENV_SERVER_ID, "mmanager-gpu-01"),
            (ENV_SERVER_TYPE, "GPU"),
            (ENV_MAX_CONTAINERS, "30"),
            (ENV_LISTEN, "127.0.0.1:9000"),
            (ENV_SIMULATED_GPUS, "2xA100-80GB"),
            (ENV_LOG_LEVEL, "warning"),
        ])
        .expect("valid");
        assert!(!config.api_key_is_default);
        assert_eq!(config.server_type, ServerType::Gpu);
        assert_eq!(config.max_containers, 30);
        assert_eq!(
            config
                .simulated_gpus
                .as_ref()
                .expect("gpus")
                .devices()
                .len(),
            2
        );
        assert!(!format!("{config:?}").contains("k3y"));
        // mManager's HOST and PORT, when BERTH_AGENT_LISTEN is not set.
        let mmanager = load(&[(ENV_HOST, "127.0.0.1"), (ENV_PORT, "8002")]).expect("valid");
        assert_eq!(mmanager.listen, "127.0.0.1:8002".parse().expect("addr"));
        let port_only = load(&[(ENV_PORT, "8001")]).expect("valid");
        assert_eq!(port_only.listen, "0.0.0.0:8001".parse().expect("addr"));
        let both = load(&[(ENV_LISTEN, "127.0.0.1:9000"), (ENV_PORT, "8001")]).expect("valid");
        assert_eq!(both.listen.port(), 9000, "BERTH_AGENT_LISTEN wins");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (ENV_SERVER_TYPE, "tpu"),
            (ENV_MAX_CONTAINERS, "many"),
            (ENV_MAX_CONTAINERS, "0"),
            (ENV_DOCKER_TIMEOUT, "-1"),
            (ENV_LISTEN, "localhost"),
            (ENV_PORT, "80800"),
            (ENV_HOST, "agent.example.org"),
            (ENV_LOG_LEVEL, "LOUD"),
            (ENV_SIMULATED_GPUS, "A100"),
            (ENV_SERVER_ID, "bad id"),
            (ENV_TLS_CERT, "/etc/agent.pem"),
        ];
        for (key, value) in cases {
            let err = load(&[(key, value)]).expect_err(value);
            assert!(err.to_string().starts_with(err.key), "{err}");
            if key != ENV_TLS_CERT {
                assert_eq!(err.key, key, "{err}");
                assert!(err.to_string().contains(value), "{err}");
            }
        }
    }
}
