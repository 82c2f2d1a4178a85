//! The gateway: the hub's second listener (`BERTH_GATEWAY_LISTEN`), where requests reach model
//! services. `/s/{username}/{service}/…` — or `{service}.{username}.{service_domain}` when a
//! domain is set — goes to a ready replica chosen by the service's routing policy. A private
//! service needs a token of its owner (or an admin); a request to an unloaded service starts it
//! and waits for it. Errors are problem+json and say whose fault they are: 502 the replica
//! failed, 503 no replica is ready, 504 the replica was too slow.

pub mod forward;
pub mod readiness;
pub mod routes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_core::seeded::mix;
use berth_http::Problem;
use berth_store::services;
use berth_store::users::{self, Role};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;

use self::forward::{AffineConnection, Destination, GatewayBody, Splice, Streamed, Upstreams};
use self::routes::{Endpoint, ServiceRoutes, now_millis};
use crate::metrics::AnswerLabels;
use crate::models;
use crate::state::HubState;

/// How long open connections may finish after a shutdown begins.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// The gateway's request handler.
pub struct Gateway {
    state: Arc<HubState>,
    upstreams: Upstreams,
    rolls: AtomicU64,
}

/// Which service a request is for, and the path to pass on.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    owner: String,
    service: String,
    path_and_query: String,
    prefix: String,
}

impl Gateway {
    /// A gateway over `state`.
    pub fn new(state: Arc<HubState>) -> Self {
        let seed = now_millis() ^ u64::from(std::process::id()).rotate_left(32);
        Self {
            state,
            upstreams: Upstreams::new(),
            rolls: AtomicU64::new(seed),
        }
    }

    /// Serves `listener` (HTTP/1.1, and HTTP/2 with prior knowledge) until `shutdown` completes,
    /// then lets open requests finish for a while.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(error = %err, "The gateway could not accept a connection.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let gateway = Arc::clone(&self);
            let affine = Arc::new(AffineConnection::default());
            let service = hyper::service::service_fn(move |request| {
                let (gateway, affine) = (Arc::clone(&gateway), Arc::clone(&affine));
                async move { Ok::<_, Infallible>(gateway.handle(request, peer, &affine).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(%peer, error = %err, "A gateway connection ended with an error.");
                }
            });
        }
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(DRAIN_TIME) => {}
        }
    }

    /// Answers one request from the client connection of `peer`, whose upstream connection is
    /// `affine`.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        affine: &AffineConnection,
    ) -> Response<GatewayBody> {
        let started = Instant::now();
        let metrics = &self.state.metrics.models;
        let settings = self.state.settings();
        let Some(target) = target_of(&request, settings.service_domain.as_deref()) else {
            metrics.gateway_error("no_route");
            return problem(
                StatusCode::NOT_FOUND,
                "no service here: the gateway serves /s/{username}/{service}/…",
            );
        };
        let Some(routes) = self.state.routes.find(&target.owner, &target.service) else {
            metrics.gateway_error("no_route");
            return problem(
                StatusCode::NOT_FOUND,
                format!(
                    "no service {}/{} with a port to serve",
                    target.owner, target.service
                ),
            );
        };
        let profile = routes.profile();
        if !profile.public
            && let Err(refusal) = self.authorize(&request, &routes).await
        {
            metrics.gateway_error("unauthorized");
            return refusal;
        }
        let mut answer = Answer::begin(&self.state, &routes, started);
        let (status, response) = self
            .route(request, peer, affine, &routes, &target, &mut answer)
            .await;
        answer.status = status;
        match response {
            Either::Left(mut response) => {
                forward::downstream_response(&mut response);
                // An upgraded connection (a WebSocket) is in flight until it closes.
                let splice = response
                    .extensions_mut()
                    .remove::<Splice>()
                    .and_then(|splice| splice.take());
                let until_done: Box<dyn Send + Sync> = match splice {
                    Some(splice) => {
                        tokio::spawn(async move {
                            let _ = splice.await;
                            drop(answer);
                        });
                        Box::new(())
                    }
                    None => Box::new(answer),
                };
                response.map(|body| Either::Left(Streamed::new(body, until_done)))
            }
            Either::Right(response) => response,
        }
    }

    async fn route(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        affine: &AffineConnection,
        routes: &Arc<ServiceRoutes>,
        target: &Target,
        answer: &mut Answer,
    ) -> (u16, Either<Response<Incoming>, Response<GatewayBody>>) {
        let metrics = &self.state.metrics.models;
        let refuse = |kind: &str, status: StatusCode, detail: String| {
            metrics.gateway_error(kind);
            (status.as_u16(), Either::Right(problem(status, detail)))
        };
        let profile = routes.profile();
        let settings = &profile.settings;
        // A private service's Authorization carried the caller's hub token: not for the replica.
        let drop_authorization = !profile.public;
        let mut may_wait = routes.usage.loaded_at_ms.load(Ordering::Relaxed)
            + u64::try_from(settings.start_timeout().as_millis()).unwrap_or(u64::MAX)
            > now_millis();
        if routes.wanted_is(models::UNLOADED) {
            match wake(&self.state, routes).await {
                Ok(()) => may_wait = true,
                Err(err) => {
                    return refuse("load_failed", err.status(), err.detail().to_owned());
                }
            }
        } else if !routes.wanted_is("running") {
            let other = routes.wanted();
            return refuse(
                "stopped",
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "service {}/{} is {other}; its owner can start or load it",
                    target.owner, target.service
                ),
            );
        }
        let affinity = affinity_of(&request, settings);
        let roll = mix(self.rolls.fetch_add(1, Ordering::Relaxed));
        let canary = settings
            .routing
            .canary
            .as_ref()
            .and_then(|split| split.service.as_deref())
            .and_then(|name| self.state.routes.find(&routes.owner, name));
        let canary = canary.as_deref();
        let mut chosen = routes.choose(roll, affinity.as_deref(), canary);
        if chosen.is_none() && may_wait {
            chosen = wait_for_ready(
                routes,
                roll,
                affinity.as_deref(),
                canary,
                settings.start_timeout(),
            )
            .await;
        }
        let Some(endpoint) = chosen else {
            let known = routes.endpoints().len();
            return refuse(
                "no_ready_replica",
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "service {}/{} has no ready replica ({known} starting or failing their probe); try again shortly",
                    target.owner, target.service
                ),
            );
        };
        answer.serve(&endpoint);
        let upgrade = forward::is_upgrade(&request);
        let is_grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        let destination = Destination {
            endpoint: &endpoint,
            path_and_query: &target.path_and_query,
            peer,
            prefix: &target.prefix,
            http2: !upgrade && (settings.http2 || is_grpc),
            drop_authorization,
        };
        let upstream = match forward::upstream_request(request, &destination) {
            Ok(upstream) => upstream,
            Err(detail) => {
                return (400, Either::Right(problem(StatusCode::BAD_REQUEST, detail)));
            }
        };
        match tokio::time::timeout(
            settings.timeout(),
            self.upstreams
                .send(upstream, upgrade, affine, endpoint.address),
        )
        .await
        {
            Ok(Ok(response)) => (response.status().as_u16(), Either::Left(response)),
            Ok(Err(forward::UpstreamError::Failed(reason))) => refuse(
                "upstream",
                StatusCode::BAD_GATEWAY,
                format!(
                    "replica {} of {}/{} failed: {reason}",
                    endpoint.replica, target.owner, target.service
                ),
            ),
            Err(_) => refuse(
                "timeout",
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "replica {} of {}/{} did not answer within {} s (serving.timeout_seconds)",
                    endpoint.replica, target.owner, target.service, settings.timeout_seconds
                ),
            ),
        }
    }

    /// Lets the request through with a token of the service's owner or of an admin.
    async fn authorize(
        &self,
        request: &Request<Incoming>,
        routes: &ServiceRoutes,
    ) -> Result<(), Response<GatewayBody>> {
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(token) = token else {
            let mut refusal = problem(
                StatusCode::UNAUTHORIZED,
                format!(
                    "service {}/{} is private: send Authorization: Bearer <a token of its owner>",
                    routes.owner, routes.name
                ),
            );
            refusal.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"berth\""),
            );
            return Err(refusal);
        };
        let user = match self.state.store.acquire().await {
            Ok(mut connection) => users::user_for_token(&mut connection, token).await,
            Err(err) => Err(err),
        };
        match user {
            Ok(Some(user)) if user.id == routes.owner_id || user.role == Role::Admin => Ok(()),
            Ok(_) => Err(problem(
                StatusCode::FORBIDDEN,
                format!(
                    "this token cannot call the private service {}/{}",
                    routes.owner, routes.name
                ),
            )),
            Err(err) => Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the hub cannot check tokens now: {err}"),
            )),
        }
    }
}

/// How long after a failed start requests are refused with its reason before one tries again.
const START_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Starts an unloaded service once, however many requests find it unloaded together; right
/// after a failed start, refuses with its reason instead of trying again.
async fn wake(state: &HubState, routes: &ServiceRoutes) -> Result<(), Problem> {
    let mut last_failure = routes.waking.lock().await;
    if !routes.wanted_is(models::UNLOADED) {
        return Ok(());
    }
    if let Some((at, reason)) = last_failure.as_ref()
        && at.elapsed() < START_RETRY_AFTER
    {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "service {}/{} could not be loaded {} ms ago: {reason}",
                routes.owner,
                routes.name,
                at.elapsed().as_millis()
            ),
        ));
    }
    let service = {
        let mut connection = state.store.acquire().await?;
        services::get(&mut connection, routes.id).await?
    };
    if service.status != models::UNLOADED {
        routes.set_wanted(&service.status);
        return Ok(());
    }
    let models = &state.metrics.models;
    if let Err(problem) = models::load(state, &service, None, "a request arrived").await {
        models
            .load_failures
            .get_or_create(&routes.metrics(models).labels)
            .inc();
        *last_failure = Some((Instant::now(), problem.detail().to_owned()));
        return Err(problem);
    }
    *last_failure = None;
    routes.usage.cold_starts.fetch_add(1, Ordering::Relaxed);
    models
        .cold_starts
        .get_or_create(&routes.metrics(models).labels)
        .inc();
    Ok(())
}

async fn wait_for_ready(
    routes: &ServiceRoutes,
    roll: u64,
    affinity: Option<&str>,
    canary: Option<&ServiceRoutes>,
    limit: Duration,
) -> Option<Arc<Endpoint>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut signal = routes.watch_ready();
    loop {
        if let Some(endpoint) = routes.choose(roll, affinity, canary) {
            return Some(endpoint);
        }
        tokio::time::timeout_at(deadline, signal.changed())
            .await
            .ok()?
            .ok()?;
    }
}

/// One request's bookkeeping: in flight from [`Answer::begin`] until dropped (when the answer's
/// last byte has gone, or an upgraded connection was handed over).
struct Answer {
    state: Arc<HubState>,
    routes: Arc<ServiceRoutes>,
    endpoint: Option<Arc<Endpoint>>,
    started: Instant,
    status: u16,
}

impl Answer {
    fn begin(state: &Arc<HubState>, routes: &Arc<ServiceRoutes>, started: Instant) -> Self {
        routes.usage.in_flight.fetch_add(1, Ordering::AcqRel);
        routes
            .usage
            .last_used_ms
            .store(now_millis(), Ordering::Relaxed);
        routes.metrics(&state.metrics.models).in_flight.inc();
        Self {
            state: Arc::clone(state),
            routes: Arc::clone(routes),
            endpoint: None,
            started,
            status: 0,
        }
    }

    fn serve(&mut self, endpoint: &Arc<Endpoint>) {
        endpoint.in_flight.fetch_add(1, Ordering::AcqRel);
        self.endpoint = Some(Arc::clone(endpoint));
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        let usage = &self.routes.usage;
        usage.requests.fetch_add(1, Ordering::Relaxed);
        usage.last_used_ms.store(now_millis(), Ordering::Relaxed);
        usage.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(endpoint) = &self.endpoint {
            endpoint.in_flight.fetch_sub(1, Ordering::AcqRel);
            endpoint.requests.fetch_add(1, Ordering::Relaxed);
        }
        let models = &self.state.metrics.models;
        let metrics = self.routes.metrics(models);
        metrics.in_flight.dec();
        metrics
            .duration
            .observe(self.started.elapsed().as_secs_f64());
        if self.status == 200 {
            metrics.answered_ok.inc();
        } else {
            models
                .requests
                .get_or_create(&AnswerLabels {
                    service: metrics.labels.service.clone(),
                    status: self.status,
                })
                .inc();
        }
    }
}

/// The request's sticky key: the header or cookie the routing settings name.
fn affinity_of<B>(
    request: &Request<B>,
    settings: &crate::service_definition::ServingSettings,
) -> Option<String> {
    let affinity = settings.routing.affinity.as_ref()?;
    if let Some(name) = &affinity.header {
        return request
            .headers()
            .get(name.as_str())
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
    }
    let cookie = affinity.cookie.as_deref()?;
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == cookie)
        .map(|(_, value)| value.to_owned())
}

/// The service a request is for: by host under `domain`, else by path.
fn target_of<B>(request: &Request<B>, domain: Option<&str>) -> Option<Target> {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str());
    if let Some(domain) = domain {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .or_else(|| {
                request
                    .uri()
                    .authority()
                    .map(|authority| authority.as_str())
            });
        let hostname = host.map(|host| {
            host.rsplit_once(':').map_or(host, |(name, port)| {
                if port.chars().all(|c| c.is_ascii_digit()) {
                    name
                } else {
                    host
                }
            })
        });
        if let Some(labels) = hostname
            .and_then(|name| name.strip_suffix(domain))
            .and_then(|rest| rest.strip_suffix('.'))
            && let Some((service, owner)) = labels.rsplit_once('.')
            && !service.is_empty()
            && !owner.is_empty()
        {
            return Some(Target {
                owner: owner.to_owned(),
                service: service.to_owned(),
                path_and_query: path_and_query.to_owned(),
                prefix: String::new(),
            });
        }
    }
    let rest = path_and_query.strip_prefix("/s/")?;
    let (owner, rest) = rest.split_once('/')?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (service, tail) = rest.split_at(split);
    if owner.is_empty() || service.is_empty() {
        return None;
    }
    let path_and_query = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    Some(Target {
        prefix: format!("/s/{owner}/{service}"),
        owner: owner.to_owned(),
        service: service.to_owned(),
        path_and_query,
    })
}

fn problem(status: StatusCode, detail: impl Into<String>) -> Response<GatewayBody> {
    let problem = Problem::new(status, detail);
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, host: &str) -> Request<()> {
        Request::builder()
            .uri(uri)
            .header(header::HOST, host)
            .body(())
            .expect("request")
    }

    #[test]
    fn paths_and_hosts_name_the_service() {
        let by_path = target_of(&request("/s/alice/flood/predict?x=1", "hub:7701"), None)
            .expect("path route");
        assert_eq!(
            by_path,
            Target {
                owner: "alice".into(),
                service: "flood".into(),
                path_and_query: "/predict?x=1".into(),
                prefix: "/s/alice/flood".into(),
            }
        );
        let bare = target_of(&request("/s/alice/flood?x=1", "hub"), None).expect("bare");
        assert_eq!(bare.path_and_query, "/?x=1");
        assert_eq!(
            target_of(&request("/s/alice/flood", "hub"), None)
                .expect("root")
                .path_and_query,
            "/"
        );
        for wrong in ["/", "/s/", "/s/alice", "/s//flood/", "/api/services"] {
            assert_eq!(target_of(&request(wrong, "hub"), None), None, "{wrong}");
        }
        let by_host = target_of(
            &request("/predict", "flood.v2.alice.models.example.org:8080"),
            Some("models.example.org"),
        )
        .expect("host route");
        assert_eq!(
            (
                by_host.owner.as_str(),
                by_host.service.as_str(),
                by_host.prefix.as_str()
            ),
            ("alice", "flood.v2", "")
        );
        let elsewhere = target_of(
            &request("/s/bob/ocr/", "other.example.org"),
            Some("models.example.org"),
        )
        .expect("falls back to the path");
        assert_eq!(elsewhere.owner, "bob");
    }

    #[test]
    fn the_sticky_key_comes_from_the_named_header_or_cookie() {
        let mut settings = crate::service_definition::ServingSettings {
            routing: serde_json::from_value(serde_json::json!({
                "policy": "sticky", "affinity": {"cookie": "session"}
            }))
            .expect("routing"),
            ..Default::default()
        };
        let with_cookie = Request::builder()
            .header(header::COOKIE, "theme=dark; session=abc123")
            .body(())
            .expect("request");
        assert_eq!(
            affinity_of(&with_cookie, &settings).as_deref(),
            Some("abc123")
        );
        settings.routing = serde_json::from_value(serde_json::json!({
            "policy": "sticky", "affinity": {"header": "x-user"}
        }))
        .expect("routing");
        let with_header = Request::builder()
            .header("x-user", "u7")
            .body(())
            .expect("request");
        assert_eq!(affinity_of(&with_header, &settings).as_deref(), Some("u7"));
        assert_eq!(affinity_of(&with_cookie, &settings), None);
    }
}
