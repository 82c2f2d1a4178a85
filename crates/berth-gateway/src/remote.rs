//! A gateway process of its own (`berth gateway --hub URL …`): its control plane is a hub it
//! reaches over the API with an admin's token. It follows the hub's route table with blocking
//! queries ([`super::feed`]) and serves from its own copy, so requests never wait on the hub or
//! the database; it asks the hub who holds a caller's token (remembered for a few seconds) and
//! to load an unloaded service, and reports its traffic every second. Given several hubs it
//! moves to the next when one does not answer, and while none does it goes on serving the
//! table it has.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use berth_http::Problem;
use berth_store::users::Bearer;
use futures_util::future::BoxFuture;
use hyper::StatusCode;
use prometheus_client::registry::Registry;
use serde_json::Value;

use super::control::{Control, load_through_api};
use super::feed::{self, CHECKED_TOKEN_HEADER, RouteSnapshot};
use super::routes::{RouteTable, ServiceRoutes, now_millis};
use crate::metrics::ModelMetrics;

/// How long a route query waits at the hub for a change.
const ROUTE_WAIT: Duration = Duration::from_secs(30);

/// How often traffic is reported.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// How long a token's holder (or its absence) is taken from memory before the hub is asked
/// again: a revoked token stops working at this gateway within this.
const BEARER_FRESH: Duration = Duration::from_secs(10);

/// While no hub answers, a holder known this recently still passes.
const BEARER_KEPT: Duration = Duration::from_secs(300);

/// The most token holders remembered.
const MOST_BEARERS: usize = 10_000;

/// Pause after a hub did not answer, before the next is asked.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The hubs a gateway process follows, and its own table.
pub struct RemoteHub {
    hubs: Vec<String>,
    token: String,
    http: reqwest::Client,
    /// This process among the hub's gateways: its name and a start-up nonce.
    reporter: String,
    routes: RouteTable,
    registry: Registry,
    models: ModelMetrics,
    domain: RwLock<Option<Arc<str>>>,
    /// Which of `hubs` is asked now.
    current: AtomicUsize,
    bearers: Mutex<HashMap<String, (Instant, Option<Bearer>)>>,
    revision: RwLock<String>,
    /// When the table was last confirmed by a hub, ms since the epoch (0: never).
    synced_ms: AtomicU64,
}

impl RemoteHub {
    /// Follows `hubs` (base URLs, tried in turn) with the admin token `token`, through `http`
    /// (which trusts the hubs' certificates); `name` names this gateway in the hub's counts.
    pub fn new(hubs: Vec<String>, token: String, http: reqwest::Client, name: &str) -> Self {
        let mut registry = Registry::default();
        let models = ModelMetrics::register(&mut registry);
        let nonce = now_millis() ^ u64::from(std::process::id()).rotate_left(40);
        Self {
            hubs: hubs
                .into_iter()
                .map(|hub| hub.trim_end_matches('/').to_owned())
                .collect(),
            token,
            http,
            reporter: format!("{name}#{nonce:x}"),
            routes: RouteTable::default(),
            registry,
            models,
            domain: RwLock::new(None),
            current: AtomicUsize::new(0),
            bearers: Mutex::new(HashMap::new()),
            revision: RwLock::new(String::new()),
            synced_ms: AtomicU64::new(0),
        }
    }

    /// The hub asked now.
    pub fn hub(&self) -> &str {
        let index = self.current.load(Ordering::Relaxed) % self.hubs.len().max(1);
        self.hubs.get(index).map_or("", String::as_str)
    }

    /// The next hub is asked from now on (the one asked did not answer).
    fn move_on(&self, from: &str) {
        if self.hub() == from {
            self.current.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Fetches the route table once: at once without a revision, else when it differs from
    /// the one held or after [`ROUTE_WAIT`]; then mirrors it.
    pub async fn sync(&self) -> Result<(), String> {
        let hub = self.hub().to_owned();
        let after = self.revision.read().map(|r| r.clone()).unwrap_or_default();
        let url = if after.is_empty() {
            format!("{hub}/api/gateway/routes")
        } else {
            format!(
                "{hub}/api/gateway/routes?after={after}&wait={}",
                ROUTE_WAIT.as_secs()
            )
        };
        let request = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .timeout(ROUTE_WAIT + Duration::from_secs(10));
        let answered = async {
            let response = request.send().await.map_err(|err| err.to_string())?;
            let status = response.status();
            if !status.is_success() {
                let body: Value = response.json().await.unwrap_or_default();
                return Err(format!(
                    "HTTP {status}: {}",
                    body["detail"].as_str().unwrap_or("no reason given")
                ));
            }
            response
                .json::<RouteSnapshot>()
                .await
                .map_err(|err| format!("an unreadable route table: {err}"))
        }
        .await;
        let snapshot = match answered {
            Ok(snapshot) => snapshot,
            Err(err) => {
                self.move_on(&hub);
                return Err(format!("{hub}: {err}"));
            }
        };
        if snapshot.revision != after {
            feed::mirror(&self.routes, &snapshot.services);
            if let Ok(mut domain) = self.domain.write() {
                *domain = snapshot.service_domain.as_deref().map(Arc::from);
            }
            if let Ok(mut revision) = self.revision.write() {
                *revision = snapshot.revision;
            }
        }
        self.synced_ms.store(now_millis(), Ordering::Relaxed);
        Ok(())
    }

    /// Keeps the table in step with the hubs until `stop` completes.
    pub async fn follow(&self, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut failing = false;
        loop {
            tokio::select! {
                () = &mut stop => return,
                synced = self.sync() => match synced {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!(hub = self.hub(), "Following the hub's routes again.");
                    }
                    Ok(()) => {}
                    Err(err) => {
                        if !failing {
                            tracing::warn!(error = %err, "The hub did not give its routes; serving the table held, trying the next hub.");
                        }
                        failing = true;
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                },
            }
        }
    }

    /// Tells the hub this gateway's traffic every second until `stop` completes.
    pub async fn report(&self, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut ticks = tokio::time::interval(REPORT_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = ticks.tick() => {}
            }
            let report = feed::usage_of(&self.routes, &self.reporter);
            if report.services.is_empty() {
                continue;
            }
            let hub = self.hub().to_owned();
            let sent = self
                .http
                .post(format!("{hub}/api/gateway/usage"))
                .bearer_auth(&self.token)
                .json(&report)
                .timeout(REPORT_EVERY * 5)
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    tracing::debug!(%hub, status = %response.status(), "A usage report was refused.");
                }
                Err(err) => tracing::debug!(%hub, error = %err, "A usage report did not arrive."),
            }
        }
    }

    /// What `/health` of the gateway process says: the hub followed, the table's revision and
    /// size, and how long ago a hub last confirmed it.
    pub fn health(&self) -> Value {
        let synced = self.synced_ms.load(Ordering::Relaxed);
        serde_json::json!({
            "status": if synced > 0 { "ok" } else { "starting" },
            "hub": self.hub(),
            "revision": self.revision.read().map(|r| r.clone()).unwrap_or_default(),
            "services": self.routes.all().len(),
            "synced_seconds_ago": (synced > 0)
                .then(|| now_millis().saturating_sub(synced) as f64 / 1000.0),
        })
    }

    /// The gateway's metrics as OpenMetrics text.
    pub fn render_metrics(&self) -> String {
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %err, "Encoding metrics failed.");
        }
        text
    }

    fn remembered(&self, token: &str, within: Duration) -> Option<Option<Bearer>> {
        let bearers = self.bearers.lock().ok()?;
        let (at, bearer) = bearers.get(token)?;
        (at.elapsed() < within).then(|| bearer.clone())
    }

    async fn ask_bearer(&self, token: &str) -> Result<Option<Bearer>, String> {
        let hub = self.hub().to_owned();
        let response = self
            .http
            .get(format!("{hub}/api/gateway/bearer"))
            .bearer_auth(&self.token)
            .header(CHECKED_TOKEN_HEADER, token)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|err| {
                self.move_on(&hub);
                format!("{hub}: {err}")
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("{hub}: HTTP {status}"));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|err| format!("{hub}: {err}"))?;
        serde_json::from_value(body["bearer"].clone()).map_err(|err| format!("{hub}: {err}"))
    }
}

impl Control for RemoteHub {
    fn routes(&self) -> &RouteTable {
        &self.routes
    }

    fn models(&self) -> &ModelMetrics {
        &self.models
    }

    fn service_domain(&self) -> Option<Arc<str>> {
        self.domain.read().ok().and_then(|domain| domain.clone())
    }

    fn bearer<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Bearer>, Problem>> {
        Box::pin(async move {
            if let Some(known) = self.remembered(token, BEARER_FRESH) {
                return Ok(known);
            }
            match self.ask_bearer(token).await {
                Ok(bearer) => {
                    if let Ok(mut bearers) = self.bearers.lock() {
                        if bearers.len() >= MOST_BEARERS {
                            bearers.retain(|_, (at, _)| at.elapsed() < BEARER_FRESH);
                        }
                        bearers.insert(token.to_owned(), (Instant::now(), bearer.clone()));
                    }
                    Ok(bearer)
                }
                Err(err) => self.remembered(token, BEARER_KEPT).ok_or_else(|| {
                    Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("no hub could check the token now ({err}); try again shortly"),
                    )
                    .retry_after(1)
                }),
            }
        })
    }

    fn load<'a>(
        &'a self,
        routes: &'a ServiceRoutes,
        limit: Duration,
    ) -> BoxFuture<'a, Result<(), Problem>> {
        Box::pin(async move {
            let hub = self.hub().to_owned();
            load_through_api(&self.http, &hub, &self.token, routes.id, limit).await
        })
    }
}
