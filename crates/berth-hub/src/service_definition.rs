//! What a service runs — image, command, environment, port, resources, GPUs — as stored with each
//! deployment version, and its translation into the container spec of one version on one node.

use std::collections::BTreeMap;

use berth_core::names::instance_name;
use berth_core::schedule::{GpuAssignment, GpuChoice};
use berth_core::spec::{ContainerPort, GpuRequest, GpuShare, RestartPolicy, VolumeTarget};
use berth_core::{ByteSize, ContainerSpec, SpecError};
pub use berth_gateway::serving::{Autoscale, RateLimit, ServingSettings, Warmup};
use berth_store::nodes::NodeRecord;
use serde::{Deserialize, Serialize};

use crate::model_file::ModelFile;

/// One version of a service's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDefinition {
    /// Image reference.
    pub image: String,
    /// Command argv; the image's when `None`.
    pub command: Option<Vec<String>>,
    /// Environment.
    pub environment: BTreeMap<String, String>,
    /// The HTTP port the service listens on inside the container (`GRADIO_SERVER_PORT`).
    pub port: Option<u16>,
    /// CPU, thousandths of a core.
    pub cpu_millis: i64,
    /// Memory, bytes.
    pub memory_bytes: i64,
    /// System disk, bytes.
    pub system_disk_bytes: Option<i64>,
    /// Data disk, bytes.
    pub data_disk_bytes: Option<i64>,
    /// Whole GPUs.
    pub gpu_count: i64,
    /// GPU memory of a share of one GPU, GiB (seed 002's memory split).
    pub gpu_share_gb: Option<i64>,
    /// Node labels the service's nodes must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub constraints: BTreeMap<String, String>,
    /// How the gateway serves it: routing, readiness probe, warmup, timeouts, scale to zero.
    #[serde(default)]
    pub serving: ServingSettings,
    /// The model file it was made from (seed 004), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelFile>,
    /// The model, mounted read-only from the node: (host path, container path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_mount: Option<(String, String)>,
    /// Only this GPU of its node (`device: cuda:N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_index: Option<u32>,
    /// Which GPU of a node a GPU share takes: the tightest fit, or the one with the most free.
    #[serde(default, skip_serializing_if = "is_best_fit")]
    pub gpu_choice: GpuChoice,
}

fn is_best_fit(choice: &GpuChoice) -> bool {
    *choice == GpuChoice::BestFit
}

/// Labels on every service container: the service id.
pub const LABEL_SERVICE: &str = "berth.service";
/// The deployment version of the container.
pub const LABEL_VERSION: &str = "berth.version";
/// The placement generation of the container; an older one than its service's is stale.
pub const LABEL_GENERATION: &str = "berth.generation";
/// The node the hub placed it on.
pub const LABEL_NODE: &str = "berth.node";
/// The hub that placed it.
pub const LABEL_HUB: &str = "berth.hub";

/// The container name of one replica of service `service_id` (named `name`) at `version` and
/// `generation`, placed by hub `hub_id`: fixed by those, so an interrupted launch's container is
/// found again.
pub fn container_name(
    hub_id: &str,
    name: &str,
    service_id: i64,
    replica: i64,
    version: i64,
    generation: i64,
) -> String {
    let hub: String = hub_id.chars().take(6).collect();
    instance_name(
        name,
        &format!("{hub}-s{service_id}-r{replica}-v{version}-g{generation}"),
    )
}
/// Which replica of its service it is.
pub const LABEL_REPLICA: &str = "berth.replica";

/// Where one container of a service goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The node.
    pub node: &'a NodeRecord,
    /// Which replica.
    pub replica: i64,
    /// The replica's placement generation.
    pub generation: i64,
    /// The hub's identity.
    pub hub_id: &'a str,
    /// The GPUs the scheduler gave it.
    pub gpus: &'a GpuAssignment,
    /// The node's address the gateway reaches it on: the only one its port is published on.
    pub publish_on: Option<std::net::IpAddr>,
}

fn bytes(value: i64) -> ByteSize {
    ByteSize::from_bytes(u64::try_from(value).unwrap_or(0))
}

impl ServiceDefinition {
    /// GPUs the definition needs on a node.
    pub fn gpus_needed(&self) -> i64 {
        if self.gpu_share_gb.is_some() {
            1
        } else {
            self.gpu_count
        }
    }

    /// The container spec of version `version` of service `service_id` (named `name`, owned by
    /// `owner`) at `target`. The name is fixed by the hub, service, version and generation, so a
    /// create repeated after an interruption finds the container of the first attempt.
    pub fn container_spec(
        &self,
        service_id: i64,
        name: &str,
        version: i64,
        owner: &str,
        target: &Target<'_>,
    ) -> Result<ContainerSpec, SpecError> {
        let node = target.node;
        let generation = target.generation;
        let mut environment = self.environment.clone();
        let mut ports = BTreeMap::new();
        if let Some(port) = self.port {
            environment.insert("GRADIO_SERVER_PORT".to_owned(), port.to_string());
            ports.insert(ContainerPort::tcp(port), None);
        }
        let labels = BTreeMap::from([
            (LABEL_SERVICE.to_owned(), service_id.to_string()),
            (LABEL_VERSION.to_owned(), version.to_string()),
            (LABEL_GENERATION.to_owned(), generation.to_string()),
            (LABEL_NODE.to_owned(), node.id.to_string()),
            (LABEL_HUB.to_owned(), target.hub_id.to_owned()),
            (LABEL_REPLICA.to_owned(), target.replica.to_string()),
            ("berth.owner".to_owned(), owner.to_owned()),
        ]);
        let gpu_share = self.gpu_share_gb.map(|memory_gb| GpuShare {
            memory_gb: u32::try_from(memory_gb).unwrap_or(u32::MAX),
            gpu_memory_gb: u32::try_from(node.gpu_memory_gb)
                .ok()
                .filter(|total| *total > 0),
            sm_limit_percent: None,
            hami_core_dir: Some(node.hami_core_dir.clone()).filter(|dir| !dir.is_empty()),
        });
        let gpus = match target.gpus {
            GpuAssignment::Whole(indices) => Some(GpuRequest::Devices(indices.clone())),
            GpuAssignment::Slice { index, .. } => Some(GpuRequest::Devices(vec![*index])),
            GpuAssignment::None => (self.gpu_count > 0 && gpu_share.is_none())
                .then(|| GpuRequest::Count(u32::try_from(self.gpu_count).unwrap_or(u32::MAX))),
        };
        let spec = ContainerSpec {
            name: container_name(
                target.hub_id,
                name,
                service_id,
                target.replica,
                version,
                generation,
            ),
            image: self.image.clone(),
            command: self.command.clone().map(berth_core::spec::Command::Argv),
            working_dir: None,
            environment,
            ports,
            ports_host_ip: target.publish_on,
            volumes: self
                .model_mount
                .iter()
                .map(|(host, inside)| {
                    (
                        host.clone(),
                        VolumeTarget::Detailed {
                            target: inside.clone(),
                            read_only: true,
                        },
                    )
                })
                .collect(),
            memory_limit: Some(bytes(self.memory_bytes)),
            cpu_limit: Some(self.cpu_millis as f64 / 1000.0),
            restart_policy: Some(RestartPolicy::UnlessStopped),
            labels,
            system_disk: self.system_disk_bytes.map(bytes),
            data_disk: self.data_disk_bytes.map(bytes),
            gpus,
            gpu_share,
            network_mode: None,
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_becomes_a_labelled_container_spec() {
        let definition = ServiceDefinition {
            image: "geo/model:1".into(),
            command: Some(vec!["python".into(), "app.py".into()]),
            environment: BTreeMap::from([("MODEL".into(), "m".into())]),
            port: Some(7860),
            cpu_millis: 1500,
            memory_bytes: 2 << 30,
            system_disk_bytes: None,
            data_disk_bytes: Some(10 << 30),
            gpu_count: 0,
            gpu_share_gb: Some(6),
            constraints: BTreeMap::new(),
            serving: ServingSettings::default(),
            model: None,
            model_mount: Some(("/srv/models/flood".into(), "/models/flood".into())),
            gpu_index: Some(1),
            gpu_choice: GpuChoice::BestFit,
        };
        let mut node = NodeRecord::new("gpu-01", "docker");
        node.id = 3;
        node.gpu_memory_gb = 24;
        node.hami_core_dir = "/opt/hami".into();
        assert_eq!(definition.gpus_needed(), 1);
        let slice = GpuAssignment::Slice {
            index: 1,
            memory_bytes: 6 << 30,
        };
        let target = Target {
            node: &node,
            replica: 1,
            generation: 3,
            hub_id: "0123456789abcdef",
            gpus: &slice,
            publish_on: Some(std::net::Ipv4Addr::LOCALHOST.into()),
        };
        let spec = definition
            .container_spec(42, "Flood Model", 2, "alice", &target)
            .expect("valid");
        assert_eq!(spec.name, "flood-model-012345-s42-r1-v2-g3");
        assert_eq!(spec.cpu_limit, Some(1.5));
        assert_eq!(
            spec.environment
                .get("GRADIO_SERVER_PORT")
                .map(String::as_str),
            Some("7860")
        );
        assert_eq!(spec.ports.get(&ContainerPort::tcp(7860)), Some(&None));
        assert_eq!(
            spec.ports_host_ip,
            Some(std::net::Ipv4Addr::LOCALHOST.into())
        );
        assert_eq!(
            spec.labels.get(LABEL_SERVICE).map(String::as_str),
            Some("42")
        );
        for (label, value) in [
            (LABEL_VERSION, "2"),
            (LABEL_GENERATION, "3"),
            (LABEL_NODE, "3"),
            (LABEL_HUB, "0123456789abcdef"),
            (LABEL_REPLICA, "1"),
        ] {
            assert_eq!(spec.labels.get(label).map(String::as_str), Some(value));
        }
        let share = spec.gpu_share.clone().expect("share");
        assert_eq!(
            (
                share.memory_gb,
                share.effective_sm_limit(),
                share.hami_core_dir()
            ),
            (6, 25, "/opt/hami")
        );
        assert_eq!(
            spec.gpus,
            Some(GpuRequest::Devices(vec![1])),
            "the slice's GPU"
        );
        assert_eq!(
            spec.data_volume().as_deref(),
            Some("flood-model-012345-s42-r1-v2-g3-data")
        );
        assert_eq!(
            spec.volumes.get("/srv/models/flood"),
            Some(&VolumeTarget::Detailed {
                target: "/models/flood".into(),
                read_only: true
            }),
            "the model, read-only"
        );
    }
}
