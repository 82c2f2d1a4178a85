//! What the gateway asks of the control plane, and nothing more: its route table and metrics,
//! the domain services are named under, who holds a token, and the load of an unloaded service.
//! A gateway in the hub's process asks the hub's state directly (the hub implements this
//! trait); a gateway process of its own asks a hub over its API ([`super::remote::RemoteHub`]).
//!  Requests read only the route table; tokens and loads are the
//! only questions they put, and those go to the hub.

use std::sync::Arc;
use std::time::Duration;

use berth_http::Problem;
use berth_store::users::Bearer;
use futures_util::future::BoxFuture;
use hyper::StatusCode;

use crate::metrics::ModelMetrics;
use crate::routes::{RouteTable, ServiceRoutes};

/// The control plane as the gateway sees it.
pub trait Control: Send + Sync + 'static {
    /// Every routable service, kept current by whoever implements this.
    fn routes(&self) -> &RouteTable;

    /// The gateway's metrics.
    fn models(&self) -> &ModelMetrics;

    /// The domain under which `{service}.{user}.{domain}` names a service, if any.
    fn service_domain(&self) -> Option<Arc<str>>;

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

/// The longest wait the hub's API takes for an operation's end (`?wait=`).
pub const HUB_WAIT_LIMIT_SECS: u64 = 600;

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
    let wait = limit.as_secs().clamp(1, HUB_WAIT_LIMIT_SECS);
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
