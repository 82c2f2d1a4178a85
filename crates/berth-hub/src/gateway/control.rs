//! What the gateway asks of the control plane, and nothing more: its route table and metrics,
//! the domain services are named under, who holds a token, and the load of an unloaded service.
//! A gateway in the hub's process asks the hub's state directly ([`InHub`]); a gateway process of its own asks a hub over its API
//! ([`super::remote::RemoteHub`]). Requests read only the route table; tokens and loads are the
//! only questions they put, and those go to the hub.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use berth_http::Problem;
use berth_store::services;
use berth_store::users::{self, Bearer};
use futures_util::future::BoxFuture;

use super::routes::{RouteTable, ServiceRoutes};
use crate::metrics::ModelMetrics;
use crate::models;
use crate::ops;
use crate::state::HubState;

/// The control plane as the gateway sees it.
pub trait Control: Send + Sync + 'static {
    /// Every routable service, kept current by whoever implements this.
    fn routes(&self) -> &RouteTable;

    /// The gateway's metrics.
    fn models(&self) -> &ModelMetrics;

    /// The domain under which `{service}.{user}.{domain}` names a service, if any.
    fn service_domain(&self) -> Option<String>;

    /// The holder of `token`: `None` when it is not a valid Berth token; an error when that
    /// cannot be told now.
    fn bearer<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Bearer>, Problem>>;

    /// Loads unloaded service `routes` and waits up to `limit` for the load to end (a replica
    /// ready), or fails saying why. A service found loaded already is left as it is.
    fn load<'a>(
        &'a self,
        routes: &'a ServiceRoutes,
        limit: Duration,
    ) -> BoxFuture<'a, Result<(), Problem>>;
}

/// The control plane of the hub the gateway runs in: its own state.
pub struct InHub(pub Arc<HubState>);

impl Control for InHub {
    fn routes(&self) -> &RouteTable {
        &self.0.routes
    }

    fn models(&self) -> &ModelMetrics {
        &self.0.metrics.models
    }

    fn service_domain(&self) -> Option<String> {
        self.0.settings().service_domain.clone()
    }

    fn bearer<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Bearer>, Problem>> {
        Box::pin(async move {
            let mut connection = self.0.store.acquire().await.map_err(unchecked)?;
            users::user_for_token(&mut connection, token)
                .await
                .map_err(unchecked)
        })
    }

    fn load<'a>(
        &'a self,
        routes: &'a ServiceRoutes,
        limit: Duration,
    ) -> BoxFuture<'a, Result<(), Problem>> {
        Box::pin(async move {
            let state = &self.0;
            let service = {
                let mut connection = state.store.acquire().await?;
                services::get(&mut connection, routes.id).await?
            };
            if service.status != models::UNLOADED {
                routes.set_wanted(&service.status);
                return Ok(());
            }
            let leader = {
                let lead = state.leadership.borrow();
                (lead.elected && !lead.leading())
                    .then(|| lead.leader_url.clone())
                    .flatten()
            };
            match leader {
                Some(leader) => {
                    let token = state.peer_token.get().ok_or_else(|| {
                        Problem::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "this hub follows and has no token to ask the leading hub with",
                        )
                    })?;
                    load_through_api(&state.leader_http, &leader, token, service.id, limit).await
                }
                None => load_here(state, &service, limit).await,
            }
        })
    }
}

/// 503: tokens cannot be checked now.
fn unchecked(err: impl std::fmt::Display) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the hub cannot check tokens now: {err}"),
    )
}

/// Loads `service` here and waits up to `limit` for its operation, which ends once a replica is
/// ready, or fails saying why.
async fn load_here(
    state: &Arc<HubState>,
    service: &services::ServiceRecord,
    limit: Duration,
) -> Result<(), Problem> {
    let operation = models::load(state, service, None, "a request arrived").await?;
    match ops::wait_for(state, operation, limit).await {
        Ok(ended) if ended.state == berth_store::operations::State::Failed => {
            Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, ended.error))
        }
        Ok(_) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Beyond the wait asked of it, how long a hub's load API may take to answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// A load through the API of the hub at `hub` (a follower's wake-up asks the leading hub; a
/// gateway process asks its hub), with `token`: the hub loads service `id` and answers once a
/// replica is ready or `limit` passed; this gateway then finds the replica in its table.
pub async fn load_through_api(
    http: &reqwest::Client,
    hub: &str,
    token: &str,
    id: i64,
    limit: Duration,
) -> Result<(), Problem> {
    let unavailable = |detail: String| Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail);
    let wait = limit
        .as_secs()
        .clamp(1, crate::api::operations::MAX_WAIT_SECS);
    let answer = http
        .post(format!("{hub}/api/services/{id}/load?wait={wait}"))
        .bearer_auth(token)
        .timeout(limit + ANSWER_MARGIN)
        .send()
        .await
        .map_err(|err| {
            unavailable(format!(
                "the hub at {hub} could not be asked to load it: {err}"
            ))
        })?;
    let status = answer.status();
    let body: serde_json::Value = answer.json().await.unwrap_or_default();
    match status.as_u16() {
        200 if body["state"] == "failed" => Err(unavailable(
            body["error"]
                .as_str()
                .unwrap_or("the load failed")
                .to_owned(),
        )),
        200 | 202 => Ok(()),
        _ => Err(unavailable(format!(
            "the hub did not load it (HTTP {status}): {}",
            body["detail"].as_str().unwrap_or("no reason given")
        ))),
    }
}
