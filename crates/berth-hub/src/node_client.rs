//! Driving containers on a node: the Docker engine directly, or a `berth agent` (or an original
//! mManager) over its REST API. One enum, chosen from the node's driver, with the operations the
//! service lifecycle needs.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use berth_core::ContainerSpec;
use berth_docker::{DockerDriver, GpuMode, LogQuery, PullProgress, RemoveOptions};
use berth_http::Problem;
use berth_store::SecretBox;
use berth_store::nodes::NodeRecord;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::node_check::docker_endpoint;
use crate::simulation::SimulatedFleet;

/// A stream of log bytes.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// A container as a node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// The engine's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Docker status: `created`, `running`, `exited`, …
    pub status: String,
    /// `"7860/tcp"` → host port (empty in lists).
    pub ports: BTreeMap<String, u16>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl From<berth_docker::ContainerDetails> for ContainerState {
    fn from(details: berth_docker::ContainerDetails) -> Self {
        Self {
            id: details.id,
            name: details.name,
            status: details.status,
            ports: details.ports,
            labels: details.labels,
        }
    }
}

/// An agent's `{"7860/tcp": 32768}` as a map (entries that are not ports are skipped).
pub(crate) fn port_map(value: &Value) -> BTreeMap<String, u16> {
    value
        .as_object()
        .map(|ports| {
            ports
                .iter()
                .filter_map(|(key, port)| Some((key.clone(), u16::try_from(port.as_u64()?).ok()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// An agent's `{"key": "value"}` as a map (entries that are not strings are skipped).
pub(crate) fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// A connection to one node.
pub enum NodeClient {
    /// The Docker engine, directly.
    Docker(Box<DockerDriver>),
    /// A simulated node ([`crate::simulation`]).
    Simulated {
        /// The fleet.
        fleet: Arc<SimulatedFleet>,
        /// The node's id.
        node: i64,
    },
    /// A `berth agent` or mManager.
    Agent {
        /// Base URL without a trailing slash.
        base: String,
        /// The agent's API key.
        key: String,
        /// HTTP client.
        http: reqwest::Client,
    },
}

fn unavailable(node: &NodeRecord, message: impl std::fmt::Display) -> Problem {
    Problem::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        format!("node {} cannot be used: {message}", node.name),
    )
}

/// The CA the hub holds for agent `node`'s certificate (an agent that joined with a
/// certificate of the hub's PKI), if any.
pub fn agent_ca(
    node: &NodeRecord,
    secrets: &SecretBox,
) -> Result<Option<reqwest::Certificate>, String> {
    let Some(sealed) = node.ca_cert_sealed.as_deref().filter(|_| node.use_tls) else {
        return Ok(None);
    };
    let pem = secrets
        .open(sealed)
        .map_err(|err| format!("the stored CA certificate cannot be opened: {err}"))?;
    reqwest::Certificate::from_pem(pem.as_bytes())
        .map(Some)
        .map_err(|err| format!("the stored CA certificate is not PEM: {err}"))
}

/// The HTTP client for agent `node`: `shared`, or one like it that also trusts the node's CA.
pub fn agent_http(
    node: &NodeRecord,
    secrets: &SecretBox,
    shared: &reqwest::Client,
) -> Result<reqwest::Client, String> {
    let Some(ca) = agent_ca(node, secrets)? else {
        return Ok(shared.clone());
    };
    reqwest::Client::builder()
        .connect_timeout(berth_core::timeouts::AGENT_CONNECT)
        .timeout(berth_core::timeouts::AGENT_CALL)
        .add_root_certificate(ca)
        .build()
        .map_err(|err| err.to_string())
}

fn agent_error(node: &str, status: reqwest::StatusCode, body: &str) -> Problem {
    let detail = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|value| value["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned());
    let status = match status.as_u16() {
        404 => axum::http::StatusCode::NOT_FOUND,
        409 => axum::http::StatusCode::CONFLICT,
        422 => axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        _ => axum::http::StatusCode::BAD_GATEWAY,
    };
    Problem::new(status, format!("node {node} refused: {detail}"))
}

impl NodeClient {
    /// Connects to `node` with its stored credentials.
    pub async fn connect(
        node: &NodeRecord,
        secrets: &SecretBox,
        http: &reqwest::Client,
    ) -> Result<Self, Problem> {
        match node.driver.as_str() {
            "docker" => {
                let endpoint =
                    docker_endpoint(node, secrets).map_err(|reason| unavailable(node, reason))?;
                let driver = DockerDriver::connect_with(&endpoint, GpuMode::Nvidia, None)
                    .await
                    .map_err(|err| unavailable(node, err))?;
                Ok(NodeClient::Docker(Box::new(driver)))
            }
            "agent" => {
                let key = match node.agent_key_sealed.as_deref() {
                    Some(sealed) => secrets.open(sealed).map_err(|err| unavailable(node, err))?,
                    None => return Err(unavailable(node, "no agent API key is set")),
                };
                Ok(NodeClient::Agent {
                    base: node.agent_url.trim_end_matches('/').to_owned(),
                    key,
                    http: agent_http(node, secrets, http).map_err(|err| unavailable(node, err))?,
                })
            }
            other => Err(unavailable(node, format!("unknown driver {other:?}"))),
        }
    }

    async fn agent_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Problem> {
        self.agent_call_within(method, path, body, berth_core::timeouts::AGENT_CALL)
            .await
    }

    /// An agent call that may take up to `timeout`.
    async fn agent_call_within(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        timeout: std::time::Duration,
    ) -> Result<Value, Problem> {
        let NodeClient::Agent { base, key, http } = self else {
            return Err(Problem::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "not an agent node",
            ));
        };
        let mut request = http
            .request(method, format!("{base}{path}"))
            .timeout(timeout)
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|err| {
            if err.is_timeout() {
                Problem::new(
                    axum::http::StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "agent at {base} did not answer within {} s; it is slow or busy, not unreachable",
                        timeout.as_secs()
                    ),
                )
            } else {
                Problem::new(
                    axum::http::StatusCode::BAD_GATEWAY,
                    format!("agent at {base} is unreachable: {err}"),
                )
            }
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(agent_error(base, status, &text));
        }
        serde_json::from_str(&text).map_err(|err| {
            Problem::new(
                axum::http::StatusCode::BAD_GATEWAY,
                format!("agent at {base} answered without JSON: {err}"),
            )
        })
    }

    /// Creates the container (not started), pulling its image when the node lacks it and
    /// reporting each step of the pull to `progress` (an agent pulls on its own, unreported);
    /// returns its id and any warnings.
    pub async fn create(
        &self,
        spec: &ContainerSpec,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<(String, Vec<String>), Problem> {
        match self {
            NodeClient::Docker(driver) => {
                let created = driver.create(spec, progress).await?;
                Ok((created.id, created.warnings))
            }
            NodeClient::Simulated { fleet, node } => Ok((fleet.create(*node, spec)?, Vec::new())),
            NodeClient::Agent { .. } => {
                let mut body = serde_json::to_value(spec).unwrap_or_default();
                body["working_dir"] = json!(spec.working_dir);
                let created = self
                    .agent_call_within(
                        reqwest::Method::POST,
                        "/containers/",
                        Some(body),
                        berth_core::timeouts::AGENT_CREATE,
                    )
                    .await?;
                let id = created["container_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let warnings = created["warnings"]
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(|item| item.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok((id, warnings))
            }
        }
    }

    /// Starts the container.
    pub async fn start(&self, id: &str) -> Result<(), Problem> {
        match self {
            NodeClient::Docker(driver) => driver.start(id).await.map(|_| ()).map_err(Problem::from),
            NodeClient::Simulated { fleet, node } => fleet.set_status(*node, id, "running"),
            NodeClient::Agent { .. } => self
                .agent_call_within(
                    reqwest::Method::POST,
                    &format!("/containers/{id}/start"),
                    None,
                    berth_core::timeouts::CONTAINER_SETUP,
                )
                .await
                .map(|_| ()),
        }
    }

    /// Stops the container with a grace period.
    pub async fn stop(&self, id: &str, grace_secs: u32) -> Result<(), Problem> {
        match self {
            NodeClient::Simulated { fleet, node } => fleet.set_status(*node, id, "exited"),
            NodeClient::Docker(driver) => driver
                .stop(id, grace_secs)
                .await
                .map(|_| ())
                .map_err(Problem::from),
            NodeClient::Agent { .. } => self
                .agent_call_within(
                    reqwest::Method::POST,
                    &format!("/containers/{id}/stop?timeout={grace_secs}"),
                    None,
                    berth_core::timeouts::stop(grace_secs),
                )
                .await
                .map(|_| ()),
        }
    }

    /// Removes the container (forced) and its data volume; a missing one is fine.
    pub async fn remove(&self, id: &str) -> Result<(), Problem> {
        match self {
            NodeClient::Simulated { fleet, node } => fleet.remove(*node, id),
            NodeClient::Docker(driver) => driver
                .remove(
                    id,
                    RemoveOptions {
                        force: true,
                        keep_data: false,
                    },
                )
                .await
                .map(|_| ())
                .map_err(Problem::from),
            NodeClient::Agent { .. } => self
                .agent_call(
                    reqwest::Method::DELETE,
                    &format!("/containers/{id}?force=true"),
                    None,
                )
                .await
                .map(|_| ()),
        }
    }

    /// The container's status and published ports.
    pub async fn state(&self, id: &str) -> Result<ContainerState, Problem> {
        match self {
            NodeClient::Simulated { fleet, node } => fleet.state(*node, id),
            NodeClient::Docker(driver) => Ok(ContainerState::from(driver.inspect(id).await?)),
            NodeClient::Agent { .. } => {
                let info = self
                    .agent_call(reqwest::Method::GET, &format!("/containers/{id}"), None)
                    .await?;
                Ok(ContainerState {
                    id: info["id"].as_str().unwrap_or_default().to_owned(),
                    name: info["name"].as_str().unwrap_or_default().to_owned(),
                    status: info["status"].as_str().unwrap_or_default().to_owned(),
                    ports: port_map(&info["ports"]),
                    labels: string_map(&info["labels"]),
                })
            }
        }
    }

    /// Every container on the node carrying `label` (`key=value`), running or not.
    pub async fn list_labelled(&self, label: &str) -> Result<Vec<ContainerState>, Problem> {
        match self {
            NodeClient::Simulated { fleet, node } => fleet.list_labelled(*node, label),
            NodeClient::Docker(driver) => Ok(driver
                .list(&[label], true)
                .await?
                .into_iter()
                .map(|summary| ContainerState {
                    id: summary.id,
                    name: summary.name,
                    status: summary.state,
                    ports: BTreeMap::new(),
                    labels: summary.labels,
                })
                .collect()),
            NodeClient::Agent { .. } => {
                let (key, value) = label.split_once('=').unwrap_or((label, ""));
                let listed = self
                    .agent_call(reqwest::Method::GET, "/containers/?all=true", None)
                    .await?;
                Ok(listed["containers"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|info| ContainerState {
                        id: info["id"].as_str().unwrap_or_default().to_owned(),
                        name: info["name"].as_str().unwrap_or_default().to_owned(),
                        status: info["status"].as_str().unwrap_or_default().to_owned(),
                        ports: BTreeMap::new(),
                        labels: string_map(&info["labels"]),
                    })
                    .filter(|container| {
                        container.labels.get(key).map(String::as_str) == Some(value)
                    })
                    .collect())
            }
        }
    }

    /// The last `tail` lines of the container's output.
    pub async fn logs(&self, id: &str, tail: u32) -> Result<String, Problem> {
        match self {
            NodeClient::Simulated { fleet, node } => fleet.state(*node, id).map(|_| String::new()),
            NodeClient::Docker(driver) => {
                let query = LogQuery {
                    tail: Some(u64::from(tail)),
                    ..LogQuery::default()
                };
                Ok(driver.logs_text(id, &query).await?)
            }
            NodeClient::Agent { .. } => {
                let logs = self
                    .agent_call(
                        reqwest::Method::GET,
                        &format!("/containers/{id}/logs?lines={}", tail.max(1)),
                        None,
                    )
                    .await?;
                Ok(logs["logs"].as_str().unwrap_or_default().to_owned())
            }
        }
    }

    /// The container's output from the last `tail` lines on, as it comes.
    pub async fn follow_logs(&self, id: &str, tail: u32) -> Result<LogStream, Problem> {
        match self {
            NodeClient::Simulated { fleet, node } => {
                fleet.state(*node, id)?;
                Ok(Box::pin(futures_util::stream::empty()))
            }
            NodeClient::Docker(driver) => {
                let query = LogQuery {
                    tail: Some(u64::from(tail)),
                    follow: true,
                    ..LogQuery::default()
                };
                Ok(Box::pin(driver.logs(id, &query).map(|chunk| {
                    chunk
                        .map(|chunk| Bytes::from(chunk.text))
                        .map_err(std::io::Error::other)
                })))
            }
            NodeClient::Agent { base, key, http } => {
                let response = http
                    .get(format!(
                        "{base}/containers/{id}/logs?follow=true&tail={tail}"
                    ))
                    .bearer_auth(key)
                    .send()
                    .await
                    .map_err(|err| {
                        Problem::new(
                            axum::http::StatusCode::BAD_GATEWAY,
                            format!("agent at {base}: {err}"),
                        )
                    })?;
                if !response.status().is_success() {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    return Err(agent_error(base, status, &text));
                }
                Ok(Box::pin(
                    response
                        .bytes_stream()
                        .map(|chunk| chunk.map_err(std::io::Error::other)),
                ))
            }
        }
    }

    /// The node's images, one entry per tag: `reference`, `id`, `size_bytes`, `created`.
    pub async fn images(&self) -> Result<Vec<Value>, Problem> {
        match self {
            NodeClient::Simulated { .. } => Ok(Vec::new()),
            NodeClient::Docker(driver) => Ok(driver
                .list_images(false)
                .await?
                .into_iter()
                .flat_map(|image| {
                    image
                        .repo_tags
                        .iter()
                        .map(|reference| {
                            json!({"reference": reference, "id": image.id,
                                "size_bytes": image.size, "created": image.created})
                        })
                        .collect::<Vec<_>>()
                })
                .collect()),
            NodeClient::Agent { .. } => {
                let listed = self
                    .agent_call(reqwest::Method::GET, "/images/", None)
                    .await?;
                Ok(listed["images"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter(|item| item["repository"] != "<none>")
                    .map(|item| {
                        json!({
                            "reference": format!("{}:{}",
                                item["repository"].as_str().unwrap_or_default(),
                                item["tag"].as_str().unwrap_or_default()),
                            "id": item["id"], "size_bytes": item["size_bytes"],
                            "created": item["created"],
                        })
                    })
                    .collect())
            }
        }
    }

    /// Pulls `image` onto the node, reporting each step to `progress` (an agent pulls without
    /// reporting steps).
    pub async fn pull_image(
        &self,
        image: &str,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<(), Problem> {
        match self {
            NodeClient::Simulated { .. } => Err(Problem::new(
                axum::http::StatusCode::NOT_IMPLEMENTED,
                "a simulated node has no images",
            )),
            NodeClient::Docker(driver) => Ok(driver.pull_image(image, None, progress).await?),
            NodeClient::Agent { .. } => self
                .agent_call_within(
                    reqwest::Method::POST,
                    "/images/pull",
                    Some(json!({"image": image})),
                    berth_core::timeouts::PULL_INACTIVITY * 10,
                )
                .await
                .map(drop),
        }
    }

    /// Removes image `name` from the node (`force`: even while containers use it).
    pub async fn remove_image(&self, name: &str, force: bool) -> Result<(), Problem> {
        match self {
            NodeClient::Simulated { .. } => Err(Problem::new(
                axum::http::StatusCode::NOT_IMPLEMENTED,
                "a simulated node has no images",
            )),
            NodeClient::Docker(driver) => match driver.remove_image(name, force).await {
                Ok(_) => Ok(()),
                Err(berth_docker::DriverError::Engine {
                    status: 409,
                    message,
                }) => Err(Problem::new(
                    axum::http::StatusCode::CONFLICT,
                    format!("image {name} is in use ({message}); remove it with force"),
                )),
                Err(berth_docker::DriverError::Engine { status: 404, .. }) => Err(Problem::new(
                    axum::http::StatusCode::NOT_FOUND,
                    format!("the node has no image {name}"),
                )),
                Err(err) => Err(err.into()),
            },
            NodeClient::Agent { .. } => {
                let path = format!(
                    "/images/{}?force={force}",
                    name.replace('/', "%2F").replace(':', "%3A")
                );
                self.agent_call(reqwest::Method::DELETE, &path, None)
                    .await
                    .map(drop)
            }
        }
    }

    /// One stats sample of the container.
    pub async fn stats(&self, id: &str) -> Result<Value, Problem> {
        match self {
            NodeClient::Simulated { fleet, node } => fleet.stats(*node, id),
            NodeClient::Docker(driver) => {
                Ok(serde_json::to_value(driver.stats(id).await?).unwrap_or_default())
            }
            NodeClient::Agent { .. } => {
                self.agent_call(
                    reqwest::Method::GET,
                    &format!("/containers/{id}/stats"),
                    None,
                )
                .await
            }
        }
    }
}
