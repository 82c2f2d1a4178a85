//! An agent served in-process on 127.0.0.1 against the real engine, a client for it, and clean-up
//! of everything a test's agent created.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use berth_agent::{AgentConfig, AgentState, api};
use berth_docker::RemoveOptions;
use berth_http::listen::TlsFiles;
use futures_util::FutureExt;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

/// The test image.
pub const TEST_IMAGE: &str = "berth-test/busybox:latest";
/// The key every test agent uses.
pub const KEY: &str = "test-key-0123456789";

/// A running agent and a client for it.
pub struct TestAgent {
    /// Where it listens.
    pub address: SocketAddr,
    /// Its state (driver, config).
    pub state: Arc<AgentState>,
    client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The agent's server id for `test`, unique to this process.
pub fn server_id(test: &str) -> String {
    format!("berth-it-{}-{test}", std::process::id())
}

/// Starts an agent whose configuration is the defaults plus `settings`.
pub async fn start(test: &str, settings: &[(&str, &str)]) -> TestAgent {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut values: HashMap<String, String> = HashMap::from([
        ("MMANAGER_API_KEY".to_owned(), KEY.to_owned()),
        ("SERVER_ID".to_owned(), server_id(test)),
        ("BERTH_AGENT_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
    ]);
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        values.insert("DOCKER_HOST".to_owned(), host);
    }
    for (key, value) in settings {
        values.insert((*key).to_owned(), (*value).to_owned());
    }
    let config = AgentConfig::load(|key| values.get(key).cloned()).expect("valid config");
    let tls = config
        .tls
        .as_ref()
        .map(|tls| Arc::new(TlsFiles::load(tls.clone()).expect("TLS files")));
    let state = AgentState::connect(config)
        .await
        .unwrap_or_else(|err| panic!("Docker engine unreachable: {err}"));
    assert!(
        state.driver.image_exists(TEST_IMAGE).await.expect("lookup"),
        "run scripts/build-test-image"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    let (sender, receiver) = tokio::sync::oneshot::channel::<()>();
    let router = api::router(Arc::clone(&state));
    tokio::spawn(berth_http::listen::serve(
        listener,
        router,
        tls,
        async move {
            let _ = receiver.await;
        },
    ));
    TestAgent {
        address,
        state,
        client: reqwest::Client::new(),
        shutdown: Some(sender),
    }
}

impl TestAgent {
    /// A request with the right key.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("http://{}{path}", self.address))
            .bearer_auth(KEY)
    }

    /// A request with no key.
    pub fn anonymous(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("http://{}{path}", self.address))
    }

    /// Sends with the key and returns the status and JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .request(method, path)
            .header("content-type", "application/json");
        if let Some(body) = body {
            request = request.json(&body);
        }
        json_of(request.send().await.expect("request")).await
    }

    /// Stops serving.
    pub fn stop(&mut self) {
        if let Some(sender) = self.shutdown.take() {
            let _ = sender.send(());
        }
    }

    /// Runs `body`, then force-removes every container this agent's server id labels, even when
    /// `body` panicked.
    pub async fn with_cleanup<F: Future<Output = ()>>(&self, body: F) {
        let outcome = AssertUnwindSafe(body).catch_unwind().await;
        let label = self.state.scope_label();
        if let Ok(containers) = self.state.driver.list(&[&label], true).await {
            for container in containers {
                let _ = self
                    .state
                    .driver
                    .remove(
                        &container.id,
                        RemoveOptions {
                            force: true,
                            keep_data: false,
                        },
                    )
                    .await;
            }
        }
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The status and JSON body of a response.
pub async fn json_of(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("not JSON (status {status}): {text}"));
    (status, value)
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A command that runs until stopped and exits 0 on SIGTERM.
pub const FOREVER: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";
