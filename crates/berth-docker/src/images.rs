//! Images on a node and facts about the engine: list, inspect, remove, prune, engine info.

use std::collections::HashMap;

use bollard::query_parameters::{ListImagesOptions, PruneImagesOptions, RemoveImageOptions};
use serde::Serialize;

use crate::error::{EngineFailure, engine_failure};
use crate::{DockerDriver, DriverError};

/// An image on the node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageDetails {
    /// `sha256:…` id.
    pub id: String,
    /// Repository tags (`repo:tag`).
    pub repo_tags: Vec<String>,
    /// Size in bytes.
    pub size: i64,
    /// Creation time: RFC 3339 from inspect, Unix seconds as text from a list.
    pub created: String,
    /// The image's config (Env, Cmd, Labels, …), as the engine gives it; only from inspect.
    pub config: Option<serde_json::Value>,
    /// CPU architecture; only from inspect.
    pub architecture: Option<String>,
    /// Operating system; only from inspect.
    pub os: Option<String>,
}

/// What a prune removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneOutcome {
    /// Images (and layers) deleted.
    pub deleted: Vec<String>,
    /// Bytes freed.
    pub reclaimed_bytes: u64,
}

/// Facts about the engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineInfo {
    /// Engine version, e.g. `20.10.24`.
    pub server_version: String,
    /// Containers on the host, all states.
    pub containers: i64,
    /// Running containers on the host.
    pub running: i64,
    /// Stopped containers on the host.
    pub stopped: i64,
    /// Images on the host.
    pub images: i64,
    /// The engine's data root, e.g. `/var/lib/docker`.
    pub docker_root_dir: String,
    /// Storage driver, e.g. `overlay2`.
    pub storage_driver: String,
    /// Backing filesystem of the storage driver, when reported.
    pub backing_filesystem: Option<String>,
    /// CPUs the engine sees.
    pub cpus: i64,
    /// Memory the engine sees, bytes.
    pub memory_bytes: i64,
}

impl EngineInfo {
    /// Whether the engine can limit a container's writable layer (`size` storage option): overlay2
    /// on xfs (which also needs the `pquota` mount option, not visible here).
    pub fn system_disk_limit_supported(&self) -> bool {
        self.storage_driver == "overlay2" && self.backing_filesystem.as_deref() == Some("xfs")
    }
}

impl DockerDriver {
    /// Images on the node; dangling ones only with `all`.
    pub async fn list_images(&self, all: bool) -> Result<Vec<ImageDetails>, DriverError> {
        let filters =
            (!all).then(|| HashMap::from([("dangling".to_owned(), vec!["false".to_owned()])]));
        let options = ListImagesOptions {
            all: false,
            filters,
            ..Default::default()
        };
        let images = self
            .docker
            .list_images(Some(options))
            .await
            .map_err(|err| DriverError::for_engine(&self.address, err))?;
        Ok(images
            .into_iter()
            .map(|image| ImageDetails {
                id: image.id,
                repo_tags: image
                    .repo_tags
                    .into_iter()
                    .filter(|tag| tag != "<none>:<none>")
                    .collect(),
                size: image.size,
                created: image.created.to_string(),
                config: None,
                architecture: None,
                os: None,
            })
            .collect())
    }

    /// The image called `name`, or `None` when the node does not have it.
    pub async fn inspect_image(&self, name: &str) -> Result<Option<ImageDetails>, DriverError> {
        match self.docker.inspect_image(name).await {
            Ok(image) => Ok(Some(ImageDetails {
                id: image.id.unwrap_or_default(),
                repo_tags: image.repo_tags.unwrap_or_default(),
                size: image.size.unwrap_or(0),
                created: image.created.unwrap_or_default(),
                config: image
                    .config
                    .and_then(|config| serde_json::to_value(config).ok()),
                architecture: image.architecture,
                os: image.os,
            })),
            Err(err) => match engine_failure(&self.address, err) {
                EngineFailure::Status(404, _) => Ok(None),
                EngineFailure::Status(status, message) => {
                    Err(DriverError::Engine { status, message })
                }
                EngineFailure::Transport(err) => Err(err),
            },
        }
    }

    /// Removes an image; a missing one is `ImageNotFound`, one in use is an engine 409.
    pub async fn remove_image(&self, name: &str, force: bool) -> Result<Vec<String>, DriverError> {
        let options = RemoveImageOptions {
            force,
            noprune: false,
            platforms: None,
        };
        match self.docker.remove_image(name, Some(options), None).await {
            Ok(items) => Ok(items
                .into_iter()
                .filter_map(|item| item.deleted.or(item.untagged))
                .collect()),
            Err(err) => Err(match engine_failure(&self.address, err) {
                EngineFailure::Status(404, message) => DriverError::ImageNotFound {
                    image: name.to_owned(),
                    message,
                },
                EngineFailure::Status(status, message) => DriverError::Engine { status, message },
                EngineFailure::Transport(err) => err,
            }),
        }
    }

    /// Removes unused images: dangling ones, or with `all` every image no container uses.
    pub async fn prune_images(&self, all: bool) -> Result<PruneOutcome, DriverError> {
        let filters = HashMap::from([("dangling".to_owned(), vec![(!all).to_string()])]);
        let response = self
            .docker
            .prune_images(Some(PruneImagesOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|err| DriverError::for_engine(&self.address, err))?;
        Ok(PruneOutcome {
            deleted: response
                .images_deleted
                .unwrap_or_default()
                .into_iter()
                .filter_map(|item| item.deleted.or(item.untagged))
                .collect(),
            reclaimed_bytes: response.space_reclaimed.unwrap_or(0).max(0) as u64,
        })
    }

    /// Facts about the engine.
    pub async fn engine_info(&self) -> Result<EngineInfo, DriverError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|err| DriverError::for_engine(&self.address, err))?;
        let backing_filesystem = info.driver_status.as_ref().and_then(|status| {
            status.iter().find_map(|pair| match pair.as_slice() {
                [key, value] if key == "Backing Filesystem" => Some(value.clone()),
                _ => None,
            })
        });
        Ok(EngineInfo {
            server_version: info.server_version.unwrap_or_default(),
            containers: info.containers.unwrap_or(0),
            running: info.containers_running.unwrap_or(0),
            stopped: info.containers_stopped.unwrap_or(0) + info.containers_paused.unwrap_or(0),
            images: info.images.unwrap_or(0),
            docker_root_dir: info.docker_root_dir.unwrap_or_default(),
            storage_driver: info.driver.unwrap_or_default(),
            backing_filesystem,
            cpus: info.ncpu.unwrap_or(0),
            memory_bytes: info.mem_total.unwrap_or(0),
        })
    }
}
