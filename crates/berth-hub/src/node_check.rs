//! Testing a node's connection — the Docker engine directly (with its TLS material opened from the
//! store) or a `berth agent` / mManager over HTTP — and learning its hardware.

use std::time::Duration;

use berth_core::{ConnectionReport, ConnectionStatus};
use berth_docker::{DockerDriver, DockerEndpoint, TlsMaterial};
use berth_store::SecretBox;
use berth_store::nodes::NodeRecord;
use serde_json::{Value, json};

/// The outcome of a test: the report, and the hardware learned when connected.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCheck {
    /// connected / failed / unknown, with a message.
    pub report: ConnectionReport,
    /// Hardware and engine facts learned, when connected.
    pub observed: Option<Value>,
}

fn unknown(message: impl Into<String>) -> NodeCheck {
    NodeCheck {
        report: ConnectionReport {
            status: ConnectionStatus::Unknown,
            message: message.into(),
        },
        observed: None,
    }
}

fn failed(message: impl Into<String>) -> NodeCheck {
    NodeCheck {
        report: ConnectionReport {
            status: ConnectionStatus::Failed,
            message: message.into(),
        },
        observed: None,
    }
}

/// The Docker endpoint of a `docker` node, or why it cannot be tried.
pub fn docker_endpoint(node: &NodeRecord, secrets: &SecretBox) -> Result<DockerEndpoint, String> {
    let address = node.docker_address.trim();
    if address.is_empty() {
        return Err("no Docker address is set".to_owned());
    }
    let remote = address.starts_with("tcp://") || address.starts_with("https://");
    let tls = if node.use_tls && remote {
        let open = |sealed: &Option<String>, what: &str| -> Result<String, String> {
            let sealed = sealed
                .as_deref()
                .ok_or_else(|| format!("TLS is on but the {what} is not set"))?;
            secrets
                .open(sealed)
                .map_err(|err| format!("the stored {what} cannot be opened: {err}"))
        };
        Some(TlsMaterial {
            ca_pem: open(&node.ca_cert_sealed, "CA certificate")?,
            cert_pem: open(&node.client_cert_sealed, "client certificate")?,
            key_pem: open(&node.client_key_sealed, "client key")?,
        })
    } else {
        None
    };
    Ok(DockerEndpoint {
        address: address.to_owned(),
        tls,
        timeout_secs: berth_core::timeouts::ENGINE_CALL.as_secs(),
    })
}

/// When the first certificate of `pem` stops being valid, in Unix seconds; `None` when `pem`
/// holds no certificate that parses.
pub fn certificate_not_after(pem: &str) -> Option<i64> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let certificate = block.parse_x509().ok()?;
    Some(certificate.validity().not_after.timestamp())
}

/// The expiry (Unix seconds) of the client and CA certificates the hub holds for `node`'s
/// Docker TLS, as `(certificate, expiry)` pairs.
pub fn node_certificate_expiry(node: &NodeRecord, secrets: &SecretBox) -> Vec<(&'static str, i64)> {
    if !node.use_tls {
        return Vec::new();
    }
    [
        ("client", &node.client_cert_sealed),
        ("ca", &node.ca_cert_sealed),
    ]
    .into_iter()
    .filter_map(|(kind, sealed)| {
        let pem = secrets.open(sealed.as_deref()?).ok()?;
        Some((kind, certificate_not_after(&pem)?))
    })
    .collect()
}

/// Tests `node` now.
pub async fn check(node: &NodeRecord, secrets: &SecretBox, http: &reqwest::Client) -> NodeCheck {
    match node.driver.as_str() {
        "docker" => check_docker(node, secrets).await,
        "agent" => check_agent(node, secrets, http).await,
        other => unknown(format!("unknown driver {other:?}")),
    }
}

async fn check_docker(node: &NodeRecord, secrets: &SecretBox) -> NodeCheck {
    let endpoint = match docker_endpoint(node, secrets) {
        Ok(endpoint) => endpoint,
        Err(reason) => return unknown(reason),
    };
    let report = endpoint.test_connection().await;
    if report.status != ConnectionStatus::Connected {
        return NodeCheck {
            report,
            observed: None,
        };
    }
    let observed = match DockerDriver::connect(&endpoint).await {
        Ok(driver) => driver.engine_info().await.ok().map(|info| {
            json!({
                "source": "docker",
                "docker_version": info.server_version,
                "cpu_cores": info.cpus,
                "memory_bytes": info.memory_bytes,
                "containers": info.containers,
                "containers_running": info.running,
                "storage_driver": info.storage_driver,
                "system_disk_limit_supported": info.system_disk_limit_supported(),
            })
        }),
        Err(_) => None,
    };
    NodeCheck { report, observed }
}

async fn check_agent(node: &NodeRecord, secrets: &SecretBox, http: &reqwest::Client) -> NodeCheck {
    let base = node.agent_url.trim().trim_end_matches('/');
    if base.is_empty() {
        return unknown("no agent URL is set");
    }
    let http = &match crate::node_client::agent_http(node, secrets, http) {
        Ok(http) => http,
        Err(err) => return unknown(err),
    };
    let health = match http
        .get(format!("{base}/health"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(response) if response.status().is_success() => match response.json::<Value>().await {
            Ok(body) => body,
            Err(err) => {
                return failed(format!(
                    "the agent at {base} answered /health without JSON: {err}"
                ));
            }
        },
        Ok(response) => {
            return failed(format!(
                "the agent at {base} answered /health with HTTP {}",
                response.status()
            ));
        }
        Err(err) => return failed(format!("the agent at {base} is unreachable: {err}")),
    };
    let key = match node
        .agent_key_sealed
        .as_deref()
        .map(|sealed| secrets.open(sealed))
        .transpose()
    {
        Ok(key) => key,
        Err(err) => return unknown(format!("the stored agent API key cannot be opened: {err}")),
    };
    let capabilities = match &key {
        Some(key) => {
            match http
                .get(format!("{base}/capabilities"))
                .bearer_auth(key)
                .send()
                .await
            {
                Ok(response) if response.status().is_success() => {
                    response.json::<Value>().await.ok()
                }
                Ok(response) if response.status().as_u16() == 401 => {
                    return failed(format!(
                        "the agent at {base} refused the API key (HTTP 401)"
                    ));
                }
                _ => None,
            }
        }
        None => None,
    }
    .unwrap_or_else(|| health["capabilities"].clone());
    let message = format!(
        "agent {} ({}), Docker {}",
        health["server_id"].as_str().unwrap_or("?"),
        health["status"].as_str().unwrap_or("?"),
        health["docker_version"].as_str().unwrap_or("?")
    );
    let observed = json!({
        "source": "agent",
        "docker_version": health["docker_version"],
        "cpu_cores": capabilities["max_cpu_cores"],
        "memory_gb": capabilities["max_memory_gb"],
        "gpus": capabilities["gpus"],
        "gpu_support": capabilities["gpu_support"],
        "simulated": capabilities["simulated"],
        "load_percentage": health["load_percentage"],
        "containers": health["containers"],
        "server_type": health["server_type"],
        "max_containers": capabilities["max_containers"],
    });
    NodeCheck {
        report: ConnectionReport {
            status: ConnectionStatus::Connected,
            message,
        },
        observed: Some(observed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificates_expiry_is_read_from_its_pem() {
        let mut params =
            rcgen::CertificateParams::new(vec!["docker.example.org".to_owned()]).expect("params");
        params.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let key = rcgen::KeyPair::generate().expect("key");
        let pem = params.self_signed(&key).expect("certificate").pem();
        assert_eq!(certificate_not_after(&pem), Some(1_925_078_400));
        assert_eq!(certificate_not_after("not a certificate"), None);
    }
}
