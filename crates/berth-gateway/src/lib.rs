//! Berth's gateway, the data plane: where requests reach services and model services, in the
//! hub's process (its second listener, `BERTH_GATEWAY_LISTEN`) or in processes of their own
//! (`berth gateway`, [`remote`]); it asks its control plane only through [`control::Control`]. `/s/{username}/{service}/…` — or `{service}.{username}.{service_domain}` when a
//! domain is set — goes to a ready replica chosen by the service's routing policy. A private
//! service needs a token of its owner (or an admin); a request to an unloaded service starts it
//! and waits for it. Errors are problem+json and say whose fault they are: 502 the replica
//! failed, 503 no replica is ready, 504 the replica was too slow.
//!
//! Every connection starts on the [`relay`], which forwards plain HTTP/1.1 requests itself; at
//! the first request it does not handle (HTTP/2, an upgrade, a chunked request body, an HTTP/2
//! replica, anything unusual) it hands the connection to hyper, which serves the rest of it
//! through [`Gateway::handle`]. Both decide where a request goes the same way: [`Gateway::locate`],
//! [`Gateway::authorize`], [`Gateway::pick`], with an [`Answer`] counting it.
//!
//! Over TLS ([`Gateway::over_tls`]) every connection is decrypted first and served by hyper
//! alone (HTTP/2 or HTTP/1.1 by ALPN): the relay copies plain TCP. Replicas are told
//! `X-Forwarded-Proto: https`.

pub mod admission;
pub mod control;
mod credentials;
pub mod feed;
pub use credentials::is_console_cookie;
pub mod forward;
mod head;
pub mod metrics;
pub mod openai;
mod relay;
pub mod remote;
pub mod routes;
pub mod rules;
pub mod serving;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_core::seeded::mix;
use berth_http::Problem;
use berth_http::listen::{self, ServedOverTls, TlsFiles};
use berth_store::users::Role;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use self::admission::{Caller, Choice, Entry};
use self::control::Control;
use self::forward::{AffineConnection, Destination, GatewayBody, Splice, Streamed, Upstreams};
use self::head::{Head, Target, affinity_of, target_of};
use self::routes::{Endpoint, Profile, ServiceRoutes, UNLOADED, now_millis};
use crate::metrics::{AnswerLabels, RejectionLabels};

/// How long open connections may finish after a shutdown begins.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// The gateway's request handler.
pub struct Gateway {
    control: Arc<dyn Control>,
    upstreams: Upstreams,
    rolls: AtomicU64,
    tls: Option<Arc<TlsFiles>>,
}

/// Where an authorized request goes: a service, and maybe only some of its replicas.
struct Routed {
    routes: Arc<ServiceRoutes>,
    only: Option<rules::Subset>,
}

/// An answer the gateway gives itself instead of a replica's.
#[derive(Debug)]
struct Refusal {
    /// 4xx for the caller's mistakes, 502/503/504 for the replicas'.
    status: StatusCode,
    /// What went wrong, for people.
    detail: String,
    /// Seconds after which trying again makes sense (`Retry-After`).
    retry_after: Option<u64>,
}

impl Refusal {
    /// The problem+json body.
    fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&Problem::new(self.status, self.detail.clone())).unwrap_or_default()
    }

    /// `WWW-Authenticate` to send with it, if any.
    fn challenge(&self) -> Option<&'static str> {
        (self.status == StatusCode::UNAUTHORIZED).then_some("Bearer realm=\"berth\"")
    }

    fn into_response(self) -> Response<GatewayBody> {
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(self.body()))));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(challenge) = self.challenge() {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl Gateway {
    /// A gateway that asks `control` for its routes, tokens and loads.
    pub fn with_control(control: Arc<dyn Control>) -> Self {
        let seed = now_millis() ^ u64::from(std::process::id()).rotate_left(32);
        Self {
            control,
            upstreams: Upstreams::new(),
            rolls: AtomicU64::new(seed),
            tls: None,
        }
    }

    /// The same gateway serving TLS with `tls`'s certificate (read again when its files change).
    #[must_use]
    pub fn over_tls(mut self, tls: Arc<TlsFiles>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Serves `listener` until `shutdown` completes, then lets open requests finish for a while:
    /// idle connections close at once, busy ones after their answer.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        let (stop, stopping) = watch::channel(false);
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
            let Some(tls) = &self.tls else {
                tokio::spawn(relay::serve(
                    Arc::clone(&self),
                    stream,
                    peer,
                    stopping.clone(),
                ));
                continue;
            };
            let (gateway, acceptor, stopping) =
                (Arc::clone(&self), tls.acceptor(), stopping.clone());
            tokio::spawn(async move {
                if let Some(stream) = listen::handshake(&acceptor, stream, peer).await {
                    gateway.serve_general(stream, peer, stopping, true).await;
                }
            });
        }
        let _ = stop.send(true);
        drop(stopping);
        tokio::select! {
            () = stop.closed() => {}
            () = tokio::time::sleep(DRAIN_TIME) => {}
        }
    }

    /// Serves the rest of a connection with hyper (HTTP/1.1 or HTTP/2, with upgrades) until it
    /// closes, or gracefully once `stopping` turns true; `over_tls` marks its requests
    /// [`ServedOverTls`].
    async fn serve_general<T>(
        self: Arc<Self>,
        io: T,
        peer: SocketAddr,
        mut stopping: watch::Receiver<bool>,
        over_tls: bool,
    ) where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let affine = Arc::new(AffineConnection::default());
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            if over_tls {
                request.extensions_mut().insert(ServedOverTls);
            }
            let (gateway, affine) = (Arc::clone(&self), Arc::clone(&affine));
            async move { Ok::<_, Infallible>(gateway.handle(request, peer, &affine).await) }
        });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            () = stop_requested(&mut stopping) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(err) = ended {
            tracing::debug!(%peer, error = %err, "A gateway connection ended with an error.");
        }
    }

    /// Answers one request (read by hyper) from the client connection of `peer`, whose upstream
    /// connection is `affine`.
    async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        affine: &AffineConnection,
    ) -> Response<GatewayBody> {
        let started = Instant::now();
        let domain = self.control.service_domain();
        if self.for_front(&request, domain.as_deref()) {
            return self.front(request, peer).await;
        }
        let located = self.locate(&request, domain.as_deref());
        let (routes, target) = match located {
            Ok((routes, target)) => (routes, target),
            Err(refusal) => return refusal.into_response(),
        };
        let (path_and_query, prefix) =
            (target.path_and_query.into_owned(), target.prefix.to_owned());
        let routed = match self
            .authorize(&request, routes, &path_and_query, peer.ip())
            .await
        {
            Ok(routed) => routed,
            Err(refusal) => return refusal.into_response(),
        };
        let routes = routed.routes;
        let mut answer = Answer::begin(&self.control, &routes, started);
        let endpoint = match self.pick(&request, &routes, routed.only).await {
            Ok(endpoint) => endpoint,
            Err(refusal) => {
                answer.status = refusal.status.as_u16();
                return refusal.into_response();
            }
        };
        answer.serve(&endpoint);
        let profile = routes.profile();
        let upgrade = forward::is_upgrade(&request);
        let is_grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        let destination = Destination {
            endpoint: &endpoint,
            path_and_query: &path_and_query,
            peer,
            prefix: &prefix,
            http2: !upgrade && (profile.settings.http2 || is_grpc),
            drop_authorization: !profile.public,
        };
        let forwarded = match forward::upstream_request(request, &destination) {
            Ok(upstream) => {
                tokio::time::timeout(
                    profile.settings.timeout(),
                    self.upstreams
                        .send(upstream, upgrade, affine, endpoint.address),
                )
                .await
            }
            Err(detail) => {
                let refusal = self.refuse("bad_request", StatusCode::BAD_REQUEST, detail);
                answer.status = refusal.status.as_u16();
                return refusal.into_response();
            }
        };
        let mut response = match forwarded {
            Ok(Ok(response)) => response,
            Ok(Err(forward::UpstreamError::Failed(reason))) => {
                let refusal = self.upstream_failed(&routes, &endpoint, reason);
                answer.status = refusal.status.as_u16();
                return refusal.into_response();
            }
            Err(_) => {
                let refusal = self.upstream_timed_out(&routes, &endpoint);
                answer.status = refusal.status.as_u16();
                return refusal.into_response();
            }
        };
        answer.status = response.status().as_u16();
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

    /// A refusal of kind `kind` (the `berth_gateway_errors_total` label), counted.
    fn refuse(&self, kind: &str, status: StatusCode, detail: String) -> Refusal {
        self.control.models().gateway_error(kind);
        Refusal {
            status,
            detail,
            retry_after: None,
        }
    }

    /// A refusal by flow control (`reason`: the `berth_gateway_rejections_total` label), with
    /// `Retry-After`.
    fn reject(
        &self,
        routes: &ServiceRoutes,
        reason: &str,
        status: StatusCode,
        detail: String,
        retry_after: Duration,
    ) -> Refusal {
        let models = self.control.models();
        models
            .rejections
            .get_or_create(&RejectionLabels {
                service: routes.metrics(models).labels.service.clone(),
                reason: reason.to_owned(),
            })
            .inc();
        let mut refusal = self.refuse(reason, status, detail);
        refusal.retry_after = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
        refusal
    }

    /// Whether `head` is for the OpenAI-compatible front: a `/v1/…` path that no service's
    /// path or host claims.
    fn for_front(&self, head: &impl Head, domain: Option<&str>) -> bool {
        let path = head.path_and_query();
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        openai::is_front(path) && target_of(head, domain).is_none()
    }

    /// The service `head` is for, and where in it: 404 when there is none.
    fn locate<'a>(
        &self,
        head: &'a impl Head,
        domain: Option<&str>,
    ) -> Result<(Arc<ServiceRoutes>, Target<'a>), Refusal> {
        let Some(target) = target_of(head, domain) else {
            return Err(self.refuse(
                "no_route",
                StatusCode::NOT_FOUND,
                "no service here: the gateway serves /s/{username}/{service}/…".to_owned(),
            ));
        };
        match self.control.routes().find(target.owner, target.service) {
            Some(routes) => Ok((routes, target)),
            None => Err(self.refuse(
                "no_route",
                StatusCode::NOT_FOUND,
                format!(
                    "no service {}/{} with a port to serve",
                    target.owner, target.service
                ),
            )),
        }
    }

    /// Lets the request through to a public service, or with a token of the service's owner or
    /// of an admin, within the caller's rate limit; then applies the service's routing rules to
    /// it (`path`: below the service): where it goes. A rule's other service is authorized in
    /// its own right (its own rules are not applied).
    async fn authorize(
        &self,
        head: &impl Head,
        routes: Arc<ServiceRoutes>,
        path: &str,
        peer: IpAddr,
    ) -> Result<Routed, Refusal> {
        let profile = routes.profile();
        let (caller, user) = self.caller(head, &routes, peer, &profile).await?;
        self.within_rate(&routes, caller)?;
        match rules::route(&profile.settings.rules, head, path, user.as_deref()) {
            None => Ok(Routed { routes, only: None }),
            Some(rules::Destination::Replicas(subset)) => Ok(Routed {
                routes,
                only: Some(subset),
            }),
            Some(rules::Destination::Service(name)) => {
                let Some(other) = self.control.routes().find(&routes.owner, name) else {
                    return Err(self.refuse(
                        "no_route",
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "a routing rule of {}/{} sends this request to {name}, which has no port to serve",
                            routes.owner, routes.name
                        ),
                    ));
                };
                let other_profile = other.profile();
                let (caller, _) = self.caller(head, &other, peer, &other_profile).await?;
                self.within_rate(&other, caller)?;
                Ok(Routed {
                    routes: other,
                    only: None,
                })
            }
        }
    }

    /// Counts a request of `caller` against the service's rate limit: 429 over it.
    fn within_rate(&self, routes: &ServiceRoutes, caller: Caller) -> Result<(), Refusal> {
        if let Some(limit) = routes.profile().settings.rate_limit
            && let Err(wait) = routes.rate_limiter.take(caller, limit, Instant::now())
        {
            return Err(self.reject(
                routes,
                "rate_limited",
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "more than {} requests per second to {}/{} (serving.rate_limit); try again in {} ms",
                    limit.requests_per_second,
                    routes.owner,
                    routes.name,
                    wait.as_millis()
                ),
                wait,
            ));
        }
        Ok(())
    }

    /// Who calls, and the user's name: the user of the token (required for a private service),
    /// or the address.
    /// A public service's callers are looked up only when it limits their rate; a token that is
    /// not Berth's is the service's own business there.
    async fn caller(
        &self,
        head: &impl Head,
        routes: &ServiceRoutes,
        peer: IpAddr,
        profile: &Profile,
    ) -> Result<(Caller, Option<String>), Refusal> {
        let anonymous = (Caller::Address(peer), None);
        let token = head.bearer_token();
        let names_matter = profile.settings.rate_limit.is_some()
            || profile
                .settings
                .rules
                .iter()
                .any(|rule| rule.user.is_some());
        if profile.public && (!names_matter || token.is_none()) {
            return Ok(anonymous);
        }
        let Some(token) = token else {
            return Err(self.refuse(
                "unauthorized",
                StatusCode::UNAUTHORIZED,
                format!(
                    "service {}/{} is private: send Authorization: Bearer <a token of its owner>",
                    routes.owner, routes.name
                ),
            ));
        };
        match self.control.bearer(token).await {
            Ok(Some(bearer))
                if bearer.reaches(routes.id)
                    && (profile.public
                        || bearer.user.id == routes.owner_id
                        || bearer.user.role == Role::Admin) =>
            {
                Ok((Caller::User(bearer.user.id), Some(bearer.user.name)))
            }
            // A key limited to other services is, to a public service, no Berth key at all.
            Ok(_) if profile.public => Ok(anonymous),
            Ok(None) => Err(self.refuse(
                "unauthorized",
                StatusCode::UNAUTHORIZED,
                "the token is not valid: revoked, expired or unknown".to_owned(),
            )),
            Ok(Some(_)) => Err(self.refuse(
                "unauthorized",
                StatusCode::FORBIDDEN,
                format!(
                    "this token cannot call the private service {}/{}",
                    routes.owner, routes.name
                ),
            )),
            Err(problem) => Err(self.refuse(
                "unauthorized",
                problem.status(),
                problem.detail().to_owned(),
            )),
        }
    }

    /// The ready replica that answers `head`, by the service's routing policy: an unloaded
    /// service is started first, and a service that is starting is waited for.
    async fn pick(
        &self,
        head: &impl Head,
        routes: &Arc<ServiceRoutes>,
        only: Option<rules::Subset>,
    ) -> Result<Arc<Endpoint>, Refusal> {
        let profile = routes.profile();
        let settings = &profile.settings;
        let mut woken = false;
        if routes.wanted_is(UNLOADED) {
            match wake(self.control.as_ref(), routes).await {
                Ok(()) => woken = true,
                Err(err) => {
                    return Err(self.refuse("load_failed", err.status(), err.detail().to_owned()));
                }
            }
        } else if !routes.wanted_is("running") {
            let other = routes.wanted();
            return Err(self.refuse(
                "stopped",
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "service {}/{} is {other}; its owner can start or load it",
                    routes.owner, routes.name
                ),
            ));
        }
        let choice = Choice {
            roll: mix(self.rolls.fetch_add(1, Ordering::Relaxed)),
            affinity: affinity_of(head, settings).map(str::to_owned),
            canary: settings
                .routing
                .canary
                .as_ref()
                .and_then(|split| split.service.as_deref())
                .and_then(|name| self.control.routes().find(&routes.owner, name)),
            only,
        };
        // Waiting is for a service being loaded (by this request or lately by anyone).
        let starting = woken
            || routes.usage.loaded_at_ms.load(Ordering::Relaxed)
                + u64::try_from(settings.start_timeout().as_millis()).unwrap_or(u64::MAX)
                > now_millis();
        let ruled = choice.only.is_some();
        let chosen = match settings.max_concurrency_per_replica {
            Some(limit) if starting || routes.ready_count() > 0 => {
                return self.queue_for(routes, choice, limit, starting).await;
            }
            Some(_) => None,
            None => match routes.reserve(&choice, None) {
                Some(endpoint) => Some(endpoint),
                None if starting => wait_for_ready(routes, &choice, settings.start_timeout()).await,
                None => None,
            },
        };
        chosen.ok_or_else(|| {
            if ruled {
                self.refuse(
                    "no_ready_replica",
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "no ready replica of service {}/{} is among those the routing rule that matched this request chose (serving.rules)",
                        routes.owner, routes.name
                    ),
                )
            } else {
                self.no_ready_replica(routes)
            }
        })
    }

    /// 503: no replica takes traffic.
    fn no_ready_replica(&self, routes: &ServiceRoutes) -> Refusal {
        let known = routes.endpoints().len();
        self.refuse(
            "no_ready_replica",
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "service {}/{} has no ready replica ({known} starting or failing their probe); try again shortly",
                routes.owner, routes.name
            ),
        )
    }

    /// A replica with room under `limit` requests each, now or after the requests queued
    /// before this one: 429 when the queue is full, 503 after waiting `queue_timeout_seconds`
    /// (while the service is `starting`, its start timeout).
    async fn queue_for(
        &self,
        routes: &ServiceRoutes,
        choice: Choice,
        limit: u32,
        starting: bool,
    ) -> Result<Arc<Endpoint>, Refusal> {
        let settings = &routes.profile().settings;
        let mut ticket = match routes.admit(choice, limit, settings.queue_size) {
            Entry::Admitted(endpoint) => return Ok(endpoint),
            Entry::Queued(ticket) => ticket,
            Entry::Full => {
                return Err(self.reject(
                    routes,
                    "queue_full",
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "service {}/{} is busy: every replica answers {limit} requests and {} wait (serving.queue_size)",
                        routes.owner, routes.name, settings.queue_size
                    ),
                    Duration::from_secs(1),
                ));
            }
        };
        let queued = Instant::now();
        let patience = if starting {
            settings.start_timeout()
        } else {
            settings.queue_timeout()
        };
        let handed = match tokio::time::timeout(patience, &mut ticket.replica).await {
            Ok(Ok(endpoint)) => Some(endpoint),
            _ => routes.leave(ticket),
        };
        let metrics = routes.metrics(self.control.models());
        match handed {
            Some(endpoint) => {
                metrics.queue_wait.observe(queued.elapsed().as_secs_f64());
                Ok(endpoint)
            }
            None => Err(self.reject(
                routes,
                "queue_timeout",
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "service {}/{} had no replica free for this request within {} s",
                    routes.owner,
                    routes.name,
                    patience.as_secs()
                ),
                Duration::from_secs(1),
            )),
        }
    }

    /// 502: `endpoint` failed.
    fn upstream_failed(
        &self,
        routes: &ServiceRoutes,
        endpoint: &Endpoint,
        reason: String,
    ) -> Refusal {
        self.refuse(
            "upstream",
            StatusCode::BAD_GATEWAY,
            format!(
                "replica {} of {}/{} failed: {reason}",
                endpoint.replica, routes.owner, routes.name
            ),
        )
    }

    /// 504: `endpoint` did not answer within the service's timeout.
    fn upstream_timed_out(&self, routes: &ServiceRoutes, endpoint: &Endpoint) -> Refusal {
        self.refuse(
            "timeout",
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "replica {} of {}/{} did not answer within {} s (serving.timeout_seconds)",
                endpoint.replica,
                routes.owner,
                routes.name,
                routes.profile().settings.timeout_seconds
            ),
        )
    }
}

/// Resolves once `stopping` turns true (at once if it is).
async fn stop_requested(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

/// Beyond a service's start timeout, how long a request waits for its load to end.
const LOAD_MARGIN: Duration = Duration::from_secs(5);

/// How long after a failed start requests are refused with its reason before one tries again.
const START_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Starts an unloaded service once, however many requests find it unloaded together; right
/// after a failed start, refuses with its reason instead of trying again.
async fn wake(control: &dyn Control, routes: &ServiceRoutes) -> Result<(), Problem> {
    let mut last_failure = routes.waking.lock().await;
    if !routes.wanted_is(UNLOADED) {
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
    let models = control.models();
    let limit = routes.profile().settings.start_timeout() + LOAD_MARGIN;
    if let Err(problem) = control.load(routes, limit).await {
        models
            .load_failures
            .get_or_create(&routes.metrics(models).labels)
            .inc();
        *last_failure = Some((Instant::now(), problem.detail().to_owned()));
        // No room (the API's 409) is, to a caller of the service, a service unavailable now.
        return Err(if problem.status() == StatusCode::CONFLICT {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, problem.detail())
        } else {
            problem
        });
    }
    *last_failure = None;
    routes.usage.cold_starts.fetch_add(1, Ordering::Relaxed);
    models
        .cold_starts
        .get_or_create(&routes.metrics(models).labels)
        .inc();
    Ok(())
}

/// A ready replica for `choice` (counted in flight) once one is, within `limit`.
async fn wait_for_ready(
    routes: &ServiceRoutes,
    choice: &Choice,
    limit: Duration,
) -> Option<Arc<Endpoint>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut signal = routes.watch_ready();
    loop {
        if let Some(endpoint) = routes.reserve(choice, None) {
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
    control: Arc<dyn Control>,
    routes: Arc<ServiceRoutes>,
    endpoint: Option<Arc<Endpoint>>,
    started: Instant,
    status: u16,
}

impl Answer {
    fn begin(control: &Arc<dyn Control>, routes: &Arc<ServiceRoutes>, started: Instant) -> Self {
        routes.usage.in_flight.fetch_add(1, Ordering::AcqRel);
        routes
            .usage
            .last_used_ms
            .store(now_millis(), Ordering::Relaxed);
        routes.metrics(control.models()).in_flight.inc();
        Self {
            control: Arc::clone(control),
            routes: Arc::clone(routes),
            endpoint: None,
            started,
            status: 0,
        }
    }

    /// Records the replica [`Gateway::pick`] counted this request on.
    fn serve(&mut self, endpoint: &Arc<Endpoint>) {
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
            self.routes.dispatch();
        }
        let models = self.control.models();
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
