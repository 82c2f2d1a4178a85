//! `ContainerSpec`: everything Berth puts into one container, and its validation.
//!
//! The shape follows the mManager container JSON (name, image, command, working_dir, environment,
//! ports, volumes, memory_limit, cpu_limit, restart_policy) plus the GPU instance fields of Docker
//! GPU Manage (system and data disk, whole GPUs, HAMi GPU memory shares). Parsing goes through
//! [`ContainerSpec::from_json`], which names the offending field on any error; [`ContainerSpec::validate`]
//! checks the rules serde cannot express.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::units::ByteSize;

/// Docker's smallest accepted memory limit (6 MiB).
pub const MIN_MEMORY_LIMIT: ByteSize = ByteSize::from_mib(6);
/// Largest CPU limit accepted, in cores; anything above is surely a typo.
pub const MAX_CPU_LIMIT: f64 = 1024.0;
/// Docker's smallest CPU limit, in cores (10,000,000 NanoCPUs).
pub const MIN_CPU_LIMIT: f64 = 0.01;

/// Refuses a CPU limit (`field`, in cores) that Docker would refuse or that is surely a typo.
pub fn check_cpu_cores(field: &str, cores: f64) -> Result<(), SpecError> {
    if cores.is_finite() && (MIN_CPU_LIMIT..=MAX_CPU_LIMIT).contains(&cores) {
        Ok(())
    } else {
        Err(SpecError::new(
            field,
            format!(
                "{cores} is not a number of cores from {MIN_CPU_LIMIT} (Docker's minimum) to {MAX_CPU_LIMIT}"
            ),
        ))
    }
}
/// Longest container name accepted.
pub const MAX_NAME_LEN: usize = 128;
/// Where the data disk volume is mounted inside the container.
pub const DATA_DISK_MOUNT: &str = "/data";
/// The HAMi-core build directory on a node when the node does not say otherwise.
pub const DEFAULT_HAMI_CORE_DIR: &str = "/root/HAMi-core/build";

/// A container's desired configuration, as given by a user, a YAML file or the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Container name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
    pub name: String,
    /// Image reference, e.g. `registry.example.com/ns/app:1.0`.
    pub image: String,
    /// Command: a string split as a POSIX shell would (no shell runs it), or an argv list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    /// Working directory inside the container (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Published ports: `"7860/tcp": 7860`; a null or 0 host port lets the engine choose one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<ContainerPort, Option<u16>>,
    /// The host address the ports are published on (`127.0.0.1`, a private address); every
    /// address of the host when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports_host_ip: Option<std::net::IpAddr>,
    /// Volumes: host path or volume name → container path (`"/app/data"`, `"/app/data:ro"` or
    /// `{"target": "/app/data", "read_only": true}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, VolumeTarget>,
    /// Memory limit in Docker's binary units (`"2GB"` = 2 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<ByteSize>,
    /// CPU limit in cores; fractions allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<f64>,
    /// Restart policy (`no`, `always`, `unless-stopped`, `on-failure[:N]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Labels on the container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Size of the container's writable layer (Docker storage option `size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_disk: Option<ByteSize>,
    /// A data disk: the named volume `<name>-data`, mounted at `/data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_disk: Option<ByteSize>,
    /// Whole GPUs: a count, explicit device indices, or `"all"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<GpuRequest>,
    /// A share of one GPU's memory, enforced by HAMi-core inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_share: Option<GpuShare>,
    /// Docker network mode (`bridge`, a network name, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
}

/// A validation failure, naming the field (a dotted path) and saying what was wrong with which value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Path of the offending field, e.g. `memory_limit` or `ports.7860/tcp`.
    pub field: String,
    /// What is wrong, with the value.
    pub message: String,
}

impl SpecError {
    /// An error for `field` saying `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A command: one string split like a shell would, or an argv list used as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    /// `"python app.py --port 7860"`.
    Shell(String),
    /// `["python", "app.py"]`.
    Argv(Vec<String>),
}

impl Command {
    /// The argv Docker receives as `Cmd`.
    pub fn argv(&self) -> Result<Vec<String>, SpecError> {
        match self {
            Command::Shell(text) => shlex::split(text).ok_or_else(|| {
                SpecError::new(
                    "command",
                    format!("{text:?} has an unclosed quote or a trailing backslash"),
                )
            }),
            Command::Argv(argv) => Ok(argv.clone()),
        }
    }
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The lower-case name Docker uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A port inside the container, written `7860/tcp` (`7860` alone means TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    /// The port number, 1–65535.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
}

impl ContainerPort {
    /// A TCP port.
    pub fn tcp(port: u16) -> Self {
        Self {
            port,
            protocol: Protocol::Tcp,
        }
    }
}

impl fmt::Display for ContainerPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol.as_str())
    }
}

impl FromStr for ContainerPort {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (number, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
        let protocol = match protocol.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            other => {
                return Err(format!(
                    "unknown protocol {other:?} in {text:?}; use tcp, udp or sctp"
                ));
            }
        };
        let port: u16 = number
            .parse()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| {
                format!("container port {number:?} in {text:?} is not a number from 1 to 65535")
            })?;
        Ok(Self { port, protocol })
    }
}

impl Serialize for ContainerPort {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ContainerPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a volume goes inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VolumeTarget {
    /// `"/app/data"`, or `"/app/data:ro"` for read-only (`:rw` is accepted too).
    Path(String),
    /// `{"target": "/app/data", "read_only": true}`.
    Detailed {
        /// Container path.
        target: String,
        /// Mount read-only.
        #[serde(default)]
        read_only: bool,
    },
}

impl VolumeTarget {
    /// The container path and the read-only flag.
    pub fn resolve(&self) -> (&str, bool) {
        match self {
            VolumeTarget::Path(text) => match text.rsplit_once(':') {
                Some((path, "ro")) => (path, true),
                Some((path, "rw")) => (path, false),
                _ => (text, false),
            },
            VolumeTarget::Detailed { target, read_only } => (target, *read_only),
        }
    }
}

/// The source of a mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A path on the host.
    Bind(String),
    /// A named Docker volume (created on first use).
    Volume(String),
}

/// One resolved mount of a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Host path or volume name.
    pub source: MountSource,
    /// Path inside the container.
    pub target: String,
    /// Read-only.
    pub read_only: bool,
}

/// Docker's restart policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never restart.
    No,
    /// Always restart.
    Always,
    /// Restart unless stopped by hand.
    UnlessStopped,
    /// Restart on a non-zero exit, at most this many times (`None`: no limit).
    OnFailure(Option<u32>),
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::Always => f.write_str("always"),
            RestartPolicy::UnlessStopped => f.write_str("unless-stopped"),
            RestartPolicy::OnFailure(None) => f.write_str("on-failure"),
            RestartPolicy::OnFailure(Some(count)) => write!(f, "on-failure:{count}"),
        }
    }
}

impl FromStr for RestartPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let policy = match text {
            "no" => RestartPolicy::No,
            "always" => RestartPolicy::Always,
            "unless-stopped" => RestartPolicy::UnlessStopped,
            "on-failure" => RestartPolicy::OnFailure(None),
            _ => {
                let count = text
                    .strip_prefix("on-failure:")
                    .and_then(|count| count.parse::<u32>().ok())
                    .ok_or_else(|| {
                        format!(
                            "{text:?} is not a restart policy; use no, always, unless-stopped, on-failure or on-failure:N"
                        )
                    })?;
                RestartPolicy::OnFailure(Some(count))
            }
        };
        Ok(policy)
    }
}

impl Serialize for RestartPolicy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RestartPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Whole GPUs for a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GpuRequest {
    /// Any `n` GPUs.
    Count(u32),
    /// These device indices.
    Devices(Vec<u32>),
    /// Every GPU of the node: the string `"all"`.
    All(AllGpus),
}

/// The literal `"all"` in a GPU request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllGpus {
    /// `"all"`.
    All,
}

/// A slice of one GPU's memory (and compute), enforced by HAMi-core's `libvgpu.so`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuShare {
    /// GPU memory for the container, in GiB (`CUDA_DEVICE_MEMORY_LIMIT=<n>g`).
    pub memory_gb: u32,
    /// Total memory of one GPU of the node, in GiB; the SM limit defaults to the same fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_gb: Option<u32>,
    /// Compute share in percent (`CUDA_DEVICE_SM_LIMIT`); by default `memory_gb / gpu_memory_gb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_limit_percent: Option<u8>,
    /// The node's HAMi-core build directory (default `/root/HAMi-core/build`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hami_core_dir: Option<String>,
}

impl GpuShare {
    /// The compute share in percent: as given, else the memory fraction (rounded up), else 100.
    pub fn effective_sm_limit(&self) -> u8 {
        if let Some(percent) = self.sm_limit_percent {
            return percent;
        }
        match self.gpu_memory_gb {
            Some(total) if total > 0 => {
                let percent = (u64::from(self.memory_gb) * 100).div_ceil(u64::from(total));
                u8::try_from(percent.clamp(1, 100)).unwrap_or(100)
            }
            _ => 100,
        }
    }

    /// The HAMi-core directory to mount.
    pub fn hami_core_dir(&self) -> &str {
        self.hami_core_dir
            .as_deref()
            .unwrap_or(DEFAULT_HAMI_CORE_DIR)
    }
}

impl ContainerSpec {
    /// Parses a spec from JSON and validates it; any error names the field.
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let spec: ContainerSpec = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|err| field_error_from_serde(err.path().to_string(), err.inner()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Converts a JSON value into a spec and validates it; any error names the field.
    pub fn from_json_value(value: serde_json::Value) -> Result<Self, SpecError> {
        let spec: ContainerSpec = serde_path_to_error::deserialize(value)
            .map_err(|err| field_error_from_serde(err.path().to_string(), err.inner()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// The name of the data disk volume, when the spec has a data disk.
    pub fn data_volume(&self) -> Option<String> {
        self.data_disk
            .map(|_| crate::names::data_volume_name(&self.name))
    }

    /// The spec's mounts, volumes first in key order, then the data disk.
    pub fn mounts(&self) -> Vec<Mount> {
        let mut mounts: Vec<Mount> = self
            .volumes
            .iter()
            .map(|(source, target)| {
                let (path, read_only) = target.resolve();
                let source = if source.starts_with('/') {
                    MountSource::Bind(source.clone())
                } else {
                    MountSource::Volume(source.clone())
                };
                Mount {
                    source,
                    target: path.to_owned(),
                    read_only,
                }
            })
            .collect();
        if let Some(volume) = self.data_volume() {
            mounts.push(Mount {
                source: MountSource::Volume(volume),
                target: DATA_DISK_MOUNT.to_owned(),
                read_only: false,
            });
        }
        mounts
    }

    /// Checks every rule; the first failure is returned, naming its field.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name("name", &self.name)?;
        validate_image(&self.image)?;
        self.validate_command()?;
        if let Some(dir) = &self.working_dir {
            require_absolute("working_dir", dir)?;
        }
        for key in self.environment.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(SpecError::new(
                    format!("environment.{key}"),
                    format!("{key:?} is not a variable name (empty, or has '=' or NUL)"),
                ));
            }
        }
        self.validate_ports()?;
        self.validate_volumes()?;
        self.validate_resources()?;
        for key in self.labels.keys() {
            if key.trim().is_empty() {
                return Err(SpecError::new("labels", "a label key is empty"));
            }
        }
        self.validate_gpus()?;
        if let Some(mode) = &self.network_mode
            && mode.trim().is_empty()
        {
            return Err(SpecError::new(
                "network_mode",
                "is empty; omit it for the default bridge",
            ));
        }
        Ok(())
    }

    fn validate_command(&self) -> Result<(), SpecError> {
        let Some(command) = &self.command else {
            return Ok(());
        };
        let argv = command.argv()?;
        if argv.is_empty() {
            return Err(SpecError::new(
                "command",
                "is empty; omit it to run the image's default command",
            ));
        }
        if argv.iter().any(|arg| arg.contains('\0')) {
            return Err(SpecError::new("command", "an argument contains a NUL byte"));
        }
        Ok(())
    }

    fn validate_ports(&self) -> Result<(), SpecError> {
        let mut host_ports = BTreeSet::new();
        for (container, host) in &self.ports {
            if let Some(host) = host.filter(|port| *port != 0)
                && !host_ports.insert((host, container.protocol))
            {
                return Err(SpecError::new(
                    format!("ports.{container}"),
                    format!("host port {host} is published twice"),
                ));
            }
        }
        Ok(())
    }

    fn validate_volumes(&self) -> Result<(), SpecError> {
        let mut targets = BTreeSet::new();
        for (source, target) in &self.volumes {
            let field = format!("volumes.{source}");
            if source.starts_with('/') {
                if source.contains(':') {
                    return Err(SpecError::new(
                        field,
                        format!("host path {source:?} contains ':'"),
                    ));
                }
            } else {
                validate_name(&field, source).map_err(|_| {
                    SpecError::new(
                        &field,
                        format!("{source:?} is neither an absolute host path nor a volume name"),
                    )
                })?;
            }
            let (path, _) = target.resolve();
            require_absolute(&field, path)?;
            if !targets.insert(path.to_owned()) {
                return Err(SpecError::new(
                    field,
                    format!("container path {path:?} is mounted twice"),
                ));
            }
        }
        if self.data_disk.is_some() && targets.contains(DATA_DISK_MOUNT) {
            return Err(SpecError::new(
                "data_disk",
                format!("the data disk mounts at {DATA_DISK_MOUNT}, which a volume already uses"),
            ));
        }
        Ok(())
    }

    fn validate_resources(&self) -> Result<(), SpecError> {
        if let Some(memory) = self.memory_limit
            && memory < MIN_MEMORY_LIMIT
        {
            return Err(SpecError::new(
                "memory_limit",
                format!("{memory} is below Docker's minimum of {MIN_MEMORY_LIMIT}"),
            ));
        }
        if let Some(cpus) = self.cpu_limit {
            check_cpu_cores("cpu_limit", cpus)?;
        }
        for (field, size) in [
            ("system_disk", self.system_disk),
            ("data_disk", self.data_disk),
        ] {
            if size.is_some_and(|size| size.bytes() == 0) {
                return Err(SpecError::new(field, "is 0; omit it for no disk limit"));
            }
        }
        Ok(())
    }

    fn validate_gpus(&self) -> Result<(), SpecError> {
        match &self.gpus {
            Some(GpuRequest::Count(0)) => {
                return Err(SpecError::new(
                    "gpus",
                    "is 0; omit it for a container without GPUs",
                ));
            }
            Some(GpuRequest::Devices(devices)) => {
                if devices.is_empty() {
                    return Err(SpecError::new(
                        "gpus",
                        "lists no device; omit it for no GPUs",
                    ));
                }
                let unique: BTreeSet<_> = devices.iter().collect();
                if unique.len() != devices.len() {
                    return Err(SpecError::new(
                        "gpus",
                        format!("{devices:?} names a device twice"),
                    ));
                }
            }
            _ => {}
        }
        let Some(share) = &self.gpu_share else {
            return Ok(());
        };
        let one_gpu = match &self.gpus {
            None | Some(GpuRequest::Count(1)) => true,
            Some(GpuRequest::Devices(devices)) => devices.len() == 1,
            _ => false,
        };
        if !one_gpu {
            return Err(SpecError::new(
                "gpu_share",
                "a GPU memory share applies to one GPU; set gpus to 1 or one device index",
            ));
        }
        if share.memory_gb == 0 {
            return Err(SpecError::new(
                "gpu_share.memory_gb",
                "is 0; give the GiB of GPU memory",
            ));
        }
        if let Some(total) = share.gpu_memory_gb
            && share.memory_gb > total
        {
            return Err(SpecError::new(
                "gpu_share.memory_gb",
                format!("{} GiB is more than the GPU's {total} GiB", share.memory_gb),
            ));
        }
        if let Some(percent) = share.sm_limit_percent
            && !(1..=100).contains(&percent)
        {
            return Err(SpecError::new(
                "gpu_share.sm_limit_percent",
                format!("{percent} is not a percentage from 1 to 100"),
            ));
        }
        if let Some(dir) = &share.hami_core_dir {
            require_absolute("gpu_share.hami_core_dir", dir)?;
        }
        Ok(())
    }
}

fn field_error_from_serde(path: String, err: &serde_json::Error) -> SpecError {
    let field = if path.is_empty() || path == "." {
        "body".to_owned()
    } else {
        path
    };
    let message = err.to_string();
    let message = match message.find(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message,
    };
    SpecError::new(field, message)
}

/// Most replicas one service may ask for.
pub const MAX_REPLICAS: i64 = 200;

/// Checks a name against Docker's rule for container and volume names.
pub fn validate_name(field: &str, name: &str) -> Result<(), SpecError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !(first_ok && rest_ok) {
        return Err(SpecError::new(
            field,
            format!(
                "{name:?} is not a valid name: start with a letter or digit, then letters, digits, '_', '.' or '-'"
            ),
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(SpecError::new(
            field,
            format!("{name:?} is longer than {MAX_NAME_LEN} characters"),
        ));
    }
    Ok(())
}

fn validate_image(image: &str) -> Result<(), SpecError> {
    if image.trim().is_empty() {
        return Err(SpecError::new(
            "image",
            "is empty; name an image such as app:1.0",
        ));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SpecError::new(
            "image",
            format!("{image:?} contains whitespace"),
        ));
    }
    Ok(())
}

fn require_absolute(field: &str, path: &str) -> Result<(), SpecError> {
    if !path.starts_with('/') {
        return Err(SpecError::new(
            field,
            format!("{path:?} is not an absolute path"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
