//! The hub's side of the gateway ([`berth_gateway`]): the route table kept in step with the
//! database and probed ([`readiness`]), and the hub as the gateway's control plane ([`InHub`]):
//! token holders from the database, and loads carried out here — or, on a follower, by the
//! leading hub through its API.

pub mod readiness;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use berth_gateway::Gateway;
use berth_gateway::control::{Control, load_through_api};
use berth_gateway::metrics::ModelMetrics;
use berth_gateway::routes::{RouteTable, ServiceRoutes};
use berth_http::Problem;
use berth_store::services;
use berth_store::users::{self, Bearer};
use futures_util::future::BoxFuture;

use crate::models;
use crate::ops;
use crate::state::{HubSettings, HubState};

/// The gateway of the hub with `state`.
pub fn in_hub(state: Arc<HubState>) -> Gateway {
    let settings = state.settings();
    let domain = settings.service_domain.as_deref().map(Arc::from);
    Gateway::with_control(Arc::new(InHub {
        domain: std::sync::RwLock::new((settings, domain)),
        state,
    }))
}

/// The control plane of the hub the gateway runs in: its own state.
pub struct InHub {
    state: Arc<HubState>,
    /// The service domain of the settings it was read from, so that a request reads it without
    /// copying it (the settings are replaced whole when the configuration is reloaded).
    domain: std::sync::RwLock<(Arc<HubSettings>, Option<Arc<str>>)>,
}

impl Control for InHub {
    fn routes(&self) -> &RouteTable {
        &self.state.routes
    }

    fn models(&self) -> &ModelMetrics {
        &self.state.metrics.models
    }

    fn service_domain(&self) -> Option<Arc<str>> {
        let settings = self.state.settings();
        if let Ok(known) = self.domain.read()
            && Arc::ptr_eq(&known.0, &settings)
        {
            return known.1.clone();
        }
        let domain: Option<Arc<str>> = settings.service_domain.as_deref().map(Arc::from);
        if let Ok(mut known) = self.domain.write() {
            *known = (settings, domain.clone());
        }
        domain
    }

    fn bearer<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Bearer>, Problem>> {
        Box::pin(async move {
            let mut connection = self.state.store.acquire().await.map_err(unchecked)?;
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
            let state = &self.state;
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
