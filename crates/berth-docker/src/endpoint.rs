//! Where a Docker engine is and how to reach it: a unix socket, plain TCP, or TCP with mutual TLS
//! from PEM text held in memory.
//!
//! TLS trusts only the node's own CA (no system roots) and presents the node's client
//! certificate. The PEM text never leaves this module in a log line or an error message: the
//! `Debug` form of [`TlsMaterial`] redacts it.

use std::fmt;
use std::sync::Arc;

use berth_core::{ConnectionReport, ConnectionStatus};
use bollard::{API_DEFAULT_VERSION, BollardRequest, Docker};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::DriverError;

/// The default address of the local engine.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// The PEM texts of a node's TLS setup: the CA that signed the engine's certificate, and the client
/// certificate and key Berth presents.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    /// CA certificate(s), PEM.
    pub ca_pem: String,
    /// Client certificate chain, PEM.
    pub cert_pem: String,
    /// Client private key, PEM.
    pub key_pem: String,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &"<redacted>")
            .field("cert_pem", &"<redacted>")
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// How to reach one Docker engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerEndpoint {
    /// `unix:///path/docker.sock`, `tcp://host:port`, `http://…` or `https://…`.
    pub address: String,
    /// Mutual TLS material; required for `https://`, optional for `tcp://`.
    pub tls: Option<TlsMaterial>,
    /// Seconds before a request to the engine gives up.
    pub timeout_secs: u64,
}

impl DockerEndpoint {
    /// The local engine at `address` without TLS, with a 120 s request timeout.
    pub fn plain(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            tls: None,
            timeout_secs: 120,
        }
    }

    /// The endpoint `DOCKER_HOST` names, or the default unix socket.
    pub fn from_docker_host_env() -> Self {
        let address = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|value| !value.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_owned());
        Self::plain(address)
    }

    /// A bollard client for this endpoint. No request is made yet.
    pub(crate) fn client(&self) -> Result<Docker, DriverError> {
        let address = self.address.trim();
        let timeout = self.timeout_secs;
        if let Some(path) = address.strip_prefix("unix://") {
            if !std::path::Path::new(path).exists() {
                return Err(DriverError::EngineUnreachable {
                    address: address.to_owned(),
                    message: format!("socket {path} does not exist; is the Docker engine running?"),
                });
            }
            return Docker::connect_with_unix(address, timeout, API_DEFAULT_VERSION)
                .map_err(|err| DriverError::for_engine(address, err));
        }
        let host = address
            .strip_prefix("tcp://")
            .or_else(|| address.strip_prefix("https://"))
            .or_else(|| address.strip_prefix("http://"))
            .ok_or_else(|| {
                DriverError::InvalidEndpoint(format!(
                    "{address:?} is not unix://PATH, tcp://HOST:PORT, http://HOST:PORT or https://HOST:PORT"
                ))
            })?
            .trim_end_matches('/');
        if host.is_empty() {
            return Err(DriverError::InvalidEndpoint(format!(
                "{address:?} names no host"
            )));
        }
        match (&self.tls, address.starts_with("https://")) {
            (Some(material), _) => tls_client(address, host, material, timeout),
            (None, true) => Err(DriverError::InvalidEndpoint(format!(
                "{address:?} asks for TLS but no CA, client certificate and key were given"
            ))),
            (None, false) => {
                Docker::connect_with_http(&format!("http://{host}"), timeout, API_DEFAULT_VERSION)
                    .map_err(|err| DriverError::for_engine(address, err))
            }
        }
    }

    /// Tries the connection: `connected` with the engine's version, `failed` with the reason, or
    /// `unknown` when there is nothing to try (no address).
    pub async fn test_connection(&self) -> ConnectionReport {
        if self.address.trim().is_empty() {
            return ConnectionReport {
                status: ConnectionStatus::Unknown,
                message: "no Docker address is configured".to_owned(),
            };
        }
        let outcome = async {
            let docker = self.client()?;
            docker
                .ping()
                .await
                .map_err(|err| DriverError::for_engine(&self.address, err))?;
            docker
                .version()
                .await
                .map_err(|err| DriverError::for_engine(&self.address, err))
        }
        .await;
        match outcome {
            Ok(version) => ConnectionReport {
                status: ConnectionStatus::Connected,
                message: format!(
                    "Docker {} (API {}) on {}",
                    version.version.unwrap_or_default(),
                    version.api_version.unwrap_or_default(),
                    version.os.unwrap_or_default()
                ),
            },
            Err(DriverError::InvalidEndpoint(message)) => ConnectionReport {
                status: ConnectionStatus::Unknown,
                message,
            },
            Err(err) => ConnectionReport {
                status: ConnectionStatus::Failed,
                message: err.to_string(),
            },
        }
    }
}

/// The rustls client configuration for a node: only its CA as root, its client pair for auth.
pub fn tls_client_config(material: &TlsMaterial) -> Result<ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(material.ca_pem.as_bytes()) {
        let cert = cert.map_err(|err| format!("CA certificate is not valid PEM: {err}"))?;
        roots
            .add(cert)
            .map_err(|err| format!("CA certificate is not usable: {err}"))?;
    }
    if roots.is_empty() {
        return Err("CA certificate: no PEM certificate found".to_owned());
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(material.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|err| format!("client certificate is not valid PEM: {err}"))?;
    if chain.is_empty() {
        return Err("client certificate: no PEM certificate found".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes())
        .map_err(|err| format!("client key is not a valid PEM private key: {err}"))?;
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|err| format!("client certificate and key do not form a usable pair: {err}"))
}

fn tls_client(
    address: &str,
    host: &str,
    material: &TlsMaterial,
    timeout: u64,
) -> Result<Docker, DriverError> {
    let config = tls_client_config(material).map_err(|message| DriverError::Tls {
        address: address.to_owned(),
        message,
    })?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    let client = Arc::new(Client::builder(TokioExecutor::new()).build(connector));
    let transport = move |request: BollardRequest| {
        let client = Arc::clone(&client);
        async move {
            client
                .request(request)
                .await
                .map_err(|err| bollard::errors::Error::HyperLegacyError { err })
        }
    };
    Docker::connect_with_custom_transport(
        transport,
        Some(format!("https://{host}")),
        timeout,
        API_DEFAULT_VERSION,
    )
    .map_err(|err| DriverError::for_engine(address, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material() -> TlsMaterial {
        TlsMaterial {
            ca_pem: "CA SECRET".into(),
            cert_pem: "CERT SECRET".into(),
            key_pem: "KEY SECRET".into(),
        }
    }

    #[test]
    fn debug_never_shows_pem_text() {
        let endpoint = DockerEndpoint {
            tls: Some(material()),
            ..DockerEndpoint::plain("tcp://10.0.0.5:2376")
        };
        let shown = format!("{endpoint:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn garbage_pem_is_a_clear_error() {
        let err = tls_client_config(&material()).expect_err("not PEM");
        assert!(err.contains("CA certificate"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[test]
    fn addresses_are_checked() {
        let bad = DockerEndpoint::plain("ftp://host")
            .client()
            .expect_err("bad scheme");
        assert!(matches!(bad, DriverError::InvalidEndpoint(_)), "{bad}");
        let missing = DockerEndpoint::plain("unix:///nonexistent/docker.sock")
            .client()
            .expect_err("no socket");
        assert!(
            matches!(missing, DriverError::EngineUnreachable { .. }),
            "{missing}"
        );
        let no_tls = DockerEndpoint::plain("https://host:2376")
            .client()
            .expect_err("no material");
        assert!(
            matches!(no_tls, DriverError::InvalidEndpoint(_)),
            "{no_tls}"
        );
    }

    #[tokio::test]
    async fn connection_test_sorts_outcomes() {
        let unknown = DockerEndpoint::plain("").test_connection().await;
        assert_eq!(unknown.status, ConnectionStatus::Unknown);
        let refused = DockerEndpoint {
            timeout_secs: 5,
            ..DockerEndpoint::plain("tcp://127.0.0.1:1")
        }
        .test_connection()
        .await;
        assert_eq!(
            refused.status,
            ConnectionStatus::Failed,
            "{}",
            refused.message
        );
        assert!(
            refused.message.contains("unreachable"),
            "{}",
            refused.message
        );
    }
}
