//! The mManager wire format: request bodies with their defaults, and the response shapes its
//! clients read. Requests turn into a validated [`ContainerSpec`]; nothing here talks to Docker.

use std::collections::BTreeMap;

use berth_core::spec::{Command, ContainerPort, GpuRequest, GpuShare, RestartPolicy, VolumeTarget};
use berth_core::{ByteSize, ContainerSpec, SpecError};
use serde::{Deserialize, Deserializer, Serialize};

/// Label naming the agent (its `SERVER_ID`) that manages a container.
pub const LABEL_AGENT: &str = "berth.agent";
/// mManager's label on every container it made (`"true"`); the agent puts it on its own too.
pub const LABEL_MMANAGER_MANAGED: &str = "mmanager.managed";
/// mManager's label naming the `SERVER_ID` that made a container; the agent's own carry it too.
pub const LABEL_MMANAGER_SERVER: &str = "mmanager.server_id";

/// Whether a container with `labels` is one agent `server_id` manages: made by it, or by the
/// original mManager running on this host under the same `SERVER_ID` (adopted).
pub fn managed_by(labels: &std::collections::HashMap<String, String>, server_id: &str) -> bool {
    let label = |key: &str| labels.get(key).map(String::as_str);
    label(LABEL_AGENT) == Some(server_id)
        || (label(LABEL_MMANAGER_MANAGED) == Some("true")
            && label(LABEL_MMANAGER_SERVER) == Some(server_id))
}

/// Whether `labels` mark a container the original mManager made (none of this agent's labels).
pub fn made_by_mmanager(labels: &std::collections::HashMap<String, String>) -> bool {
    !labels.contains_key(LABEL_AGENT) && labels.contains_key(LABEL_MMANAGER_SERVER)
}

/// A number, or a string holding one (mManager's clients send `"0.5"`, which it accepted).
fn number_or_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Number(f64),
        Text(String),
    }
    match Loose::deserialize(deserializer)? {
        Loose::Number(number) => Ok(number),
        Loose::Text(text) => text
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a number"))),
    }
}

/// A host port as mManager's clients send it: a number, a string holding one (`"8083"`, which
/// mManager accepted) or null (any free port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort(pub Option<u16>);

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Loose {
            Port(Option<i64>),
            Text(String),
        }
        let refused = |given: &dyn std::fmt::Display| {
            serde::de::Error::custom(format!("{given} is not a host port (1-65535)"))
        };
        match Loose::deserialize(deserializer)? {
            Loose::Port(None) => Ok(Self(None)),
            Loose::Port(Some(port)) => u16::try_from(port)
                .map(|port| Self(Some(port)))
                .map_err(|_| refused(&port)),
            Loose::Text(text) => text
                .trim()
                .parse::<u16>()
                .map(|port| Self(Some(port)))
                .map_err(|_| refused(&format!("{text:?}"))),
        }
    }
}

/// `POST /containers/`: seed 001's container JSON plus the GPU instance fields of seed 002.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateContainerRequest {
    /// Container name.
    pub name: String,
    /// Image; it must exist on the node or be pullable.
    pub image: String,
    /// Shell-style string or argv list; null or empty runs the image's command.
    #[serde(default)]
    pub command: Option<Command>,
    /// Working directory; `/app` when omitted, the image's when null.
    #[serde(default = "default_working_dir")]
    pub working_dir: Option<String>,
    /// Environment.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// `"7860/tcp": 7860` (or `"7860"`, as mManager accepted).
    #[serde(default)]
    pub ports: BTreeMap<ContainerPort, HostPort>,
    /// The host address to publish the ports on (a Berth extension); every address when omitted.
    #[serde(default)]
    pub ports_host_ip: Option<std::net::IpAddr>,
    /// Host path or volume name → container path.
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeTarget>,
    /// Memory limit, `512m` when omitted.
    #[serde(default = "default_memory_limit")]
    pub memory_limit: ByteSize,
    /// CPU limit in cores, 1.0 when omitted.
    #[serde(default = "default_cpu_limit", deserialize_with = "number_or_text")]
    pub cpu_limit: f64,
    /// Restart policy, `unless-stopped` when omitted.
    #[serde(default = "default_restart_policy")]
    pub restart_policy: RestartPolicy,
    /// Docker network mode.
    #[serde(default)]
    pub network_mode: Option<String>,
    /// Networks to connect after create.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Must be false: Docker refuses it with a restart policy, and the agent removes containers itself.
    #[serde(default)]
    pub auto_remove: bool,
    /// Accepted for compatibility; containers always run detached.
    #[serde(default = "always")]
    pub detach: bool,
    /// Whole GPUs: a count, indices or `"all"`.
    #[serde(default)]
    pub gpus: Option<GpuRequest>,
    /// A GPU memory share through HAMi-core.
    #[serde(default)]
    pub gpu_share: Option<GpuShare>,
    /// Writable layer size.
    #[serde(default)]
    pub system_disk: Option<ByteSize>,
    /// Data disk volume `<name>-data` at `/data`.
    #[serde(default)]
    pub data_disk: Option<ByteSize>,
}

fn default_working_dir() -> Option<String> {
    Some("/app".to_owned())
}

fn default_memory_limit() -> ByteSize {
    ByteSize::from_mib(512)
}

fn default_cpu_limit() -> f64 {
    1.0
}

fn default_restart_policy() -> RestartPolicy {
    RestartPolicy::UnlessStopped
}

fn always() -> bool {
    true
}

/// The labels the agent puts on a container it creates, besides the request's own.
pub struct AgentLabels<'a> {
    /// `SERVER_ID`.
    pub server_id: &'a str,
    /// Creation time, ISO 8601.
    pub created_at: String,
    /// The HAMi-core dir of this host, used when a GPU share does not name one.
    pub hami_core_dir: &'a str,
}

impl CreateContainerRequest {
    /// The validated container spec, with the agent's labels set over the request's.
    pub fn into_spec(
        self,
        agent: &AgentLabels<'_>,
    ) -> Result<(ContainerSpec, Vec<String>), SpecError> {
        if self.auto_remove {
            return Err(SpecError::new(
                "auto_remove",
                "true is not supported; remove the container with DELETE /containers/{id}",
            ));
        }
        let command = match self.command {
            Some(Command::Shell(text)) if text.trim().is_empty() => None,
            Some(Command::Argv(argv)) if argv.is_empty() => None,
            other => other,
        };
        let mut labels = self.labels;
        labels.insert(LABEL_MMANAGER_MANAGED.to_owned(), "true".to_owned());
        labels.insert(LABEL_MMANAGER_SERVER.to_owned(), agent.server_id.to_owned());
        labels.insert("mmanager.created_at".to_owned(), agent.created_at.clone());
        labels.insert(LABEL_AGENT.to_owned(), agent.server_id.to_owned());
        let gpu_share = self.gpu_share.map(|share| GpuShare {
            hami_core_dir: share
                .hami_core_dir
                .or_else(|| Some(agent.hami_core_dir.to_owned())),
            ..share
        });
        let spec = ContainerSpec {
            name: self.name,
            image: self.image,
            command,
            working_dir: self.working_dir.filter(|dir| !dir.is_empty()),
            environment: self.environment,
            ports: self
                .ports
                .into_iter()
                .map(|(container, HostPort(host))| (container, host))
                .collect(),
            ports_host_ip: self.ports_host_ip,
            volumes: self.volumes,
            memory_limit: Some(self.memory_limit),
            cpu_limit: Some(self.cpu_limit),
            restart_policy: Some(self.restart_policy),
            labels,
            system_disk: self.system_disk,
            data_disk: self.data_disk,
            gpus: self.gpus,
            gpu_share,
            network_mode: self.network_mode.filter(|mode| !mode.is_empty()),
        };
        spec.validate()?;
        for network in &self.networks {
            berth_core::spec::validate_name("networks", network)?;
        }
        Ok((spec, self.networks))
    }
}

/// A boolean query value in any of the spellings FastAPI accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryBool(pub bool);

impl<'de> Deserialize<'de> for QueryBool {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "t" | "y" => Ok(QueryBool(true)),
            "false" | "0" | "no" | "off" | "f" | "n" => Ok(QueryBool(false)),
            _ => Err(serde::de::Error::custom(format!(
                "{text:?} is not a boolean; use true or false"
            ))),
        }
    }
}

/// The answer to create, start, stop, restart and remove.
#[derive(Debug, Clone, Serialize)]
pub struct OperationResponse {
    /// Always true in a 2xx answer.
    pub success: bool,
    /// Full id on create; the path id as given otherwise.
    pub container_id: String,
    /// What happened.
    pub message: String,
    /// `create`, `start`, `stop`, `restart` or `remove`.
    pub operation: &'static str,
    /// When, ISO 8601 UTC.
    pub timestamp: String,
    /// Details of the change; null when nothing changed.
    pub details: Option<serde_json::Value>,
    /// Things the caller should know (limits not applied, engine warnings).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Resource use in the shape the GeoML-Hub status view reads.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceUsage {
    /// Percent of the whole host's CPU.
    pub cpu_percent: f64,
    /// Memory in use, MiB.
    pub memory_mb: f64,
    /// Memory in use, percent of the limit.
    pub memory_percent: f64,
}

/// `GET /containers/{id}` and the items of `GET /containers/`.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerInfo {
    /// Full id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Image.
    pub image: String,
    /// Docker status.
    pub status: String,
    /// Creation time.
    pub created_at: String,
    /// Start time (Docker's zero time when never).
    pub started_at: Option<String>,
    /// End time (Docker's zero time when never).
    pub finished_at: Option<String>,
    /// `"7860/tcp"` → host port, while running.
    pub ports: BTreeMap<String, u16>,
    /// Docker's network settings per network.
    pub networks: serde_json::Value,
    /// IP address on the first network.
    pub ip_address: Option<String>,
    /// `{memory, cpu_quota, cpu_period, nano_cpus}`.
    pub resource_limits: serde_json::Value,
    /// Current use, for a running container.
    pub resource_usage: Option<ResourceUsage>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Environment as a map.
    pub environment: BTreeMap<String, String>,
    /// `[{source, destination, mode, type}]`.
    pub mounts: Vec<serde_json::Value>,
}

/// `GET /containers/`.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerList {
    /// The containers.
    pub containers: Vec<ContainerInfo>,
    /// How many.
    pub total: usize,
    /// How many are running.
    pub running: usize,
    /// How many are not.
    pub stopped: usize,
}

/// `POST /containers/{id}/files`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRequest {
    /// Absolute path; the file lands in its directory.
    pub container_path: String,
    /// The content, base64.
    #[serde(default)]
    pub content_base64: Option<String>,
    /// File name; `file` when null.
    #[serde(default)]
    pub file_name: Option<String>,
    /// Accepted and ignored.
    #[serde(default)]
    pub is_directory: bool,
}

/// `POST /containers/{id}/directories`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryRequest {
    /// Absolute path of the directory; the archive is extracted into its parent.
    pub container_path: String,
    /// A tar archive (plain, gzip, bzip2 or xz), base64.
    pub archive_base64: String,
    /// Delete `container_path` first (default true).
    #[serde(default = "always")]
    pub remove_existing: bool,
}

/// The answer to the file and directory copies.
#[derive(Debug, Clone, Serialize)]
pub struct FileOpResponse {
    /// Always true in a 2xx answer.
    pub success: bool,
    /// The path id as given.
    pub container_id: String,
    /// What happened.
    pub message: String,
    /// `copy_file` or `copy_directory`.
    pub operation: &'static str,
    /// `container_path` as sent.
    pub file_path: String,
    /// Decoded bytes.
    pub file_size: usize,
    /// When.
    pub timestamp: String,
}

/// `POST /images/pull`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// Image reference.
    pub image: String,
    /// Registry credentials.
    #[serde(default)]
    pub auth: Option<RegistryAuth>,
    /// Accepted and ignored.
    #[serde(default)]
    pub platform: Option<String>,
}

/// Registry credentials of a pull.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn agent() -> AgentLabels<'static> {
        AgentLabels {
            server_id: "gpu-01",
            created_at: "2025-01-22T08:30:00+00:00".into(),
            hami_core_dir: "/opt/hami",
        }
    }

    fn request(value: serde_json::Value) -> CreateContainerRequest {
        serde_json::from_value(value).expect("parses")
    }

    #[test]
    fn omitted_fields_take_mmanager_defaults() {
        let (spec, networks) = request(json!({"name": "svc", "image": "img"}))
            .into_spec(&agent())
            .expect("valid");
        assert_eq!(spec.working_dir.as_deref(), Some("/app"));
        assert_eq!(spec.memory_limit, Some(ByteSize::from_mib(512)));
        assert_eq!(spec.cpu_limit, Some(1.0));
        assert_eq!(spec.restart_policy, Some(RestartPolicy::UnlessStopped));
        assert_eq!(
            spec.labels.get(LABEL_AGENT).map(String::as_str),
            Some("gpu-01")
        );
        assert_eq!(
            spec.labels.get("mmanager.server_id").map(String::as_str),
            Some("gpu-01")
        );
        assert!(networks.is_empty());
    }

    #[test]
    fn explicit_nulls_and_empties_mean_the_image_defaults() {
        let (spec, _) =
            request(json!({"name": "svc", "image": "img", "working_dir": null, "command": ""}))
                .into_spec(&agent())
                .expect("valid");
        assert_eq!(spec.working_dir, None);
        assert_eq!(spec.command, None);
    }

    #[test]
    fn the_agent_labels_win_and_gpu_shares_get_the_host_hami_dir() {
        let (spec, _) = request(json!({"name": "svc", "image": "img",
            "labels": {"berth.agent": "someone-else", "team": "geo"}, "gpu_share": {"memory_gb": 4}}))
        .into_spec(&agent())
        .expect("valid");
        assert_eq!(
            spec.labels.get(LABEL_AGENT).map(String::as_str),
            Some("gpu-01")
        );
        assert_eq!(spec.labels.get("team").map(String::as_str), Some("geo"));
        assert_eq!(spec.gpu_share.expect("share").hami_core_dir(), "/opt/hami");
    }

    #[test]
    fn auto_remove_and_bad_networks_are_refused_by_field() {
        let err = request(json!({"name": "svc", "image": "img", "auto_remove": true}))
            .into_spec(&agent())
            .expect_err("refused");
        assert_eq!(err.field, "auto_remove");
        let err = request(json!({"name": "svc", "image": "img", "networks": ["bad net"]}))
            .into_spec(&agent())
            .expect_err("refused");
        assert_eq!(err.field, "networks");
    }

    #[test]
    fn query_booleans_accept_fastapi_spellings() {
        for (text, value) in [
            ("true", true),
            ("1", true),
            ("yes", true),
            ("off", false),
            ("0", false),
        ] {
            let parsed: QueryBool = serde_json::from_value(json!(text)).expect(text);
            assert_eq!(parsed.0, value);
        }
        assert!(serde_json::from_value::<QueryBool>(json!("maybe")).is_err());
    }
}
