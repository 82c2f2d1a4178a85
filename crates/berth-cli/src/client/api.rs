//! A small HTTP client for the hub API that turns every failure into a message a person can act on.

use std::path::Path;

use reqwest::Method;
use serde_json::Value;

/// Talks to one hub with one token.
pub struct HubClient {
    base: String,
    token: String,
    http: reqwest::Client,
    /// The CA trusted besides the system's (PEM), for the WebSocket connections too.
    ca_pem: Option<Vec<u8>>,
}

impl HubClient {
    /// A client for the hub at `base` (no trailing slash needed).
    pub fn new(base: &str, token: String) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
            ca_pem: None,
        }
    }

    /// The same, trusting the CA certificate in `ca_file` (PEM) for the hub's TLS besides the
    /// system's.
    pub fn trusting(base: &str, token: String, ca_file: Option<&Path>) -> Result<Self, String> {
        let Some(ca_file) = ca_file else {
            return Ok(Self::new(base, token));
        };
        let pem = std::fs::read(ca_file).map_err(|err| {
            format!(
                "cannot read the hub's CA certificate {} ({err}); set BERTH_CA_FILE to the hub's ca.pem",
                ca_file.display()
            )
        })?;
        let ca = reqwest::Certificate::from_pem(&pem)
            .map_err(|err| format!("{}: not a PEM certificate ({err})", ca_file.display()))?;
        let http = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .map_err(|err| err.to_string())?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
            ca_pem: Some(pem),
        })
    }

    /// The TLS set-up of a `wss://` connection to the hub: the system's roots and the CA this
    /// client trusts; `None` (the library's own) when it trusts no CA of its own.
    pub fn websocket_tls(&self) -> Result<Option<tokio_tungstenite::Connector>, String> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let Some(pem) = &self.ca_pem else {
            return Ok(None);
        };
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(certificate);
        }
        for certificate in CertificateDer::pem_slice_iter(pem) {
            roots
                .add(certificate.map_err(|err| format!("the hub's CA certificate: {err}"))?)
                .map_err(|err| format!("the hub's CA certificate: {err}"))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Some(tokio_tungstenite::Connector::Rustls(
            std::sync::Arc::new(config),
        )))
    }

    /// Sends a request and returns the JSON answer (null for an empty one), or a message that
    /// says what failed and what to do.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|err| {
            let tls_hint = if self.base.starts_with("https://") {
                " If it serves TLS with its own CA (--tls-self-signed, berth pki), set BERTH_CA_FILE to that ca.pem."
            } else {
                ""
            };
            format!(
                "cannot reach the hub at {}: {err}. Is `berth up` (or `berth hub`) running? Set BERTH_URL to its address.{tls_hint}",
                self.base
            )
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.as_u16() == 401 {
            return Err(format!(
                "the hub at {} refused the token (revoked, expired, or from another hub): `berth login {}` saves a new one, or set BERTH_TOKEN",
                self.base, self.base
            ));
        }
        if !status.is_success() {
            let problem: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let detail = problem["detail"].as_str().unwrap_or(text.trim());
            return Err(match problem["field"].as_str() {
                Some(field) => format!(
                    "{method} {path} refused (HTTP {}): {detail} [field: {field}]",
                    status.as_u16()
                ),
                None => format!(
                    "{method} {path} failed (HTTP {}): {detail}",
                    status.as_u16()
                ),
            });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|err| format!("the hub answered {path} without JSON: {err}"))
    }

    /// The handshake request of a WebSocket to `path` (`ws://` for `http://`, `wss://` for
    /// `https://`), with the token.
    pub fn websocket_request(
        &self,
        path: &str,
    ) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, String> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = match self.base.split_once("://") {
            Some(("https", rest)) => format!("wss://{rest}{path}"),
            Some((_, rest)) => format!("ws://{rest}{path}"),
            None => format!("ws://{}{path}", self.base),
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|err| format!("{url} is not a WebSocket address: {err}"))?;
        let bearer = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| "the token has characters a header cannot carry".to_owned())?;
        request.headers_mut().insert("authorization", bearer);
        Ok(request)
    }

    /// The body of `GET path` as a stream of chunks.
    async fn stream(
        &self,
        path: &str,
    ) -> Result<impl futures_util::Stream<Item = reqwest::Result<axum::body::Bytes>>, String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|err| format!("cannot reach the hub at {}: {err}", self.base))?;
        if !response.status().is_success() {
            return Err(format!(
                "GET {path} failed (HTTP {})",
                response.status().as_u16()
            ));
        }
        Ok(response.bytes_stream())
    }

    /// Streams a text answer to standard output (logs with `follow`).
    pub async fn stream_to_stdout(&self, path: &str) -> Result<(), String> {
        use futures_util::StreamExt;
        use std::io::Write;
        let mut body = self.stream(path).await?;
        let mut out = std::io::stdout();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| format!("the log stream broke: {err}"))?;
            out.write_all(&chunk)
                .and_then(|()| out.flush())
                .map_err(|err| err.to_string())?;
        }
        Ok(())
    }

    /// Follows a Server-Sent Events stream, calling `each` with every event's data as JSON until
    /// the stream ends or `each` says to stop (returns false).
    pub async fn follow_events(
        &self,
        path: &str,
        mut each: impl FnMut(Value) -> bool,
    ) -> Result<(), String> {
        use futures_util::StreamExt;
        let mut body = self.stream(path).await?;
        let mut pending = String::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| format!("the event stream broke: {err}"))?;
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                let data: String = event
                    .lines()
                    .filter_map(|line| line.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect::<Vec<_>>()
                    .join("\n");
                if data.is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_str(&data)
                    .map_err(|err| format!("the hub sent an event that is not JSON: {err}"))?;
                if !each(value) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
