//! The gateway's OpenAI-compatible front: `GET /v1/models` lists the models the caller may use,
//! and `POST /v1/chat/completions`, `/v1/completions` and `/v1/embeddings` go to the service
//! that declares the body's `model` in `serving.model_names`, through the same routing, queue,
//! rate limit and scale from zero as `/s/…`. API keys are Berth tokens (one limited to some
//! services reaches only those). Answers stream through chunk by chunk; the `usage` of an
//! answer (or of a stream's last event that carries one) is counted per service, model, user
//! and kind. Errors have OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use berth_store::users::{Bearer, Role};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::uri::Scheme;
use hyper::{Method, Request, Response, StatusCode, Uri};
use prometheus_client::metrics::counter::Counter;
use serde_json::{Value, json};

use super::admission::Caller;
use super::forward::{self, Destination, GatewayBody, Streamed};
use super::routes::ServiceRoutes;
use super::{Answer, Gateway, Refusal};
use crate::metrics::TokenLabels;

/// The largest request body the front reads (a long prompt, or images as base64).
const MAX_BODY: usize = 32 << 20;

/// The most of an answer the meter keeps to read its `usage`: a whole JSON answer, or one line
/// of a stream.
const METER_LIMIT: usize = 1 << 20;

/// The routes the front answers.
const COMPLETIONS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

/// Whether `path` is the front's (and not a service's, which `/s/…` or a host names).
pub fn is_front(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// An answer in OpenAI's error shape.
fn error(
    status: StatusCode,
    message: impl Into<String>,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response<GatewayBody> {
    let body = json!({"error": {"message": message.into(), "type": kind, "param": param,
        "code": code}});
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The gateway's own refusal (busy, no replica, …) in OpenAI's shape, `Retry-After` kept.
fn refused(refusal: &Refusal) -> Response<GatewayBody> {
    let kind = match refusal.status {
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_exceeded",
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::FORBIDDEN => "permission_error",
        status if status.is_client_error() => "invalid_request_error",
        _ => "server_error",
    };
    let mut response = error(refusal.status, refusal.detail.clone(), kind, None, None);
    if let Some(seconds) = refusal.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Whether the holder of `bearer` (or anyone, without one) may call `routes`.
fn may_call(bearer: Option<&Bearer>, routes: &ServiceRoutes) -> bool {
    if routes.profile().public {
        return true;
    }
    bearer.is_some_and(|bearer| {
        bearer.reaches(routes.id)
            && (bearer.user.id == routes.owner_id || bearer.user.role == Role::Admin)
    })
}

impl Gateway {
    /// Answers a request to the front.
    pub(super) async fn front(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<GatewayBody> {
        let started = Instant::now();
        let bearer = match self.front_bearer(&request).await {
            Ok(bearer) => bearer,
            Err(response) => return response,
        };
        let path = request.uri().path();
        if request.method() == Method::GET && path == "/v1/models" {
            return self.list_models(bearer.as_ref());
        }
        if request.method() == Method::POST && COMPLETIONS.contains(&path) {
            return self.complete(request, bearer, peer, started).await;
        }
        error(
            StatusCode::NOT_FOUND,
            format!(
                "{} {path} is not served here: GET /v1/models, POST {}",
                request.method(),
                COMPLETIONS.join(", ")
            ),
            "invalid_request_error",
            None,
            Some("unknown_url"),
        )
    }

    /// The holder of the request's Berth token: `None` without one; a token that is not valid
    /// is refused.
    async fn front_bearer(
        &self,
        request: &Request<Incoming>,
    ) -> Result<Option<Bearer>, Response<GatewayBody>> {
        use super::head::Head as _;
        let Some(token) = request.bearer_token() else {
            return Ok(None);
        };
        match self.control.bearer(token).await {
            Ok(Some(bearer)) => Ok(Some(bearer)),
            Ok(None) => Err(error(
                StatusCode::UNAUTHORIZED,
                "Incorrect API key provided: the key is not a valid Berth token (revoked, expired or unknown)",
                "authentication_error",
                None,
                Some("invalid_api_key"),
            )),
            Err(problem) => Err(error(
                problem.status(),
                problem.detail().to_owned(),
                "server_error",
                None,
                None,
            )),
        }
    }

    /// `GET /v1/models`: every model name the caller may use, sorted.
    fn list_models(&self, bearer: Option<&Bearer>) -> Response<GatewayBody> {
        let mut models: Vec<(String, String, u64)> = self
            .control
            .routes()
            .all()
            .into_iter()
            .filter(|routes| may_call(bearer, routes))
            .flat_map(|routes| {
                let profile = routes.profile();
                let created = routes.usage.watched_since_ms / 1000;
                profile
                    .settings
                    .model_names
                    .iter()
                    .map(|name| (name.clone(), routes.owner.clone(), created))
                    .collect::<Vec<_>>()
            })
            .collect();
        models.sort();
        models.dedup_by(|a, b| a.0 == b.0);
        let data: Vec<Value> = models
            .into_iter()
            .map(|(id, owner, created)| {
                json!({"id": id, "object": "model", "created": created, "owned_by": owner})
            })
            .collect();
        let body = json!({"object": "list", "data": data}).to_string();
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }

    /// The service answering `model` for the caller: among those declaring the name that the
    /// caller may call, the caller's own first, then the oldest.
    fn model_service(&self, model: &str, bearer: Option<&Bearer>) -> Option<Arc<ServiceRoutes>> {
        let mine = bearer.map(|bearer| bearer.user.id);
        self.control
            .routes()
            .all()
            .into_iter()
            .filter(|routes| {
                routes
                    .profile()
                    .settings
                    .model_names
                    .iter()
                    .any(|name| name == model)
                    && may_call(bearer, routes)
            })
            .min_by_key(|routes| (Some(routes.owner_id) != mine, routes.id))
    }

    /// A completion or embedding: the body read, routed by its `model`, the answer passed on
    /// as it comes with its usage counted.
    async fn complete(
        &self,
        request: Request<Incoming>,
        bearer: Option<Bearer>,
        peer: SocketAddr,
        started: Instant,
    ) -> Response<GatewayBody> {
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) => {
                let too_large = err.is::<http_body_util::LengthLimitError>();
                return error(
                    if too_large {
                        StatusCode::PAYLOAD_TOO_LARGE
                    } else {
                        StatusCode::BAD_REQUEST
                    },
                    if too_large {
                        format!("the request body is over {} MiB", MAX_BODY >> 20)
                    } else {
                        format!("the request body could not be read: {err}")
                    },
                    "invalid_request_error",
                    None,
                    None,
                );
            }
        };
        let model = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(fields)) => match fields.get("model") {
                Some(Value::String(model)) => model.clone(),
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "you must provide a model parameter (a string)",
                        "invalid_request_error",
                        Some("model"),
                        None,
                    );
                }
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "the body is not a JSON object",
                    "invalid_request_error",
                    None,
                    None,
                );
            }
        };
        let Some(routes) = self.model_service(&model, bearer.as_ref()) else {
            if bearer.is_none() {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "You didn't provide an API key: send Authorization: Bearer <a Berth token>",
                    "authentication_error",
                    None,
                    Some("missing_api_key"),
                );
            }
            return error(
                StatusCode::NOT_FOUND,
                format!("The model `{model}` does not exist or you do not have access to it."),
                "invalid_request_error",
                Some("model"),
                Some("model_not_found"),
            );
        };
        let caller = bearer
            .as_ref()
            .map_or(Caller::Address(peer.ip()), |bearer| {
                Caller::User(bearer.user.id)
            });
        if let Err(refusal) = self.within_rate(&routes, caller) {
            return refused(&refusal);
        }
        let request = Request::from_parts(parts, Full::new(body));
        let mut answer = Answer::begin(&self.control, &routes, started);
        let endpoint = match self.pick(&request, &routes, None).await {
            Ok(endpoint) => endpoint,
            Err(refusal) => {
                answer.status = refusal.status.as_u16();
                return refused(&refusal);
            }
        };
        answer.serve(&endpoint);
        let path_and_query = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_owned();
        let destination = Destination {
            endpoint: &endpoint,
            path_and_query: &path_and_query,
            peer,
            prefix: "",
            http2: false,
            drop_authorization: true,
        };
        let upstream = forward::upstream_request(request, &destination).and_then(|mut upstream| {
            // The pool connects by the URI's authority.
            *upstream.uri_mut() = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(endpoint.authority.clone())
                .path_and_query(path_and_query.as_str())
                .build()
                .map_err(|err| err.to_string())?;
            Ok(upstream)
        });
        let upstream = match upstream {
            Ok(upstream) => upstream,
            Err(detail) => {
                answer.status = 400;
                return error(
                    StatusCode::BAD_REQUEST,
                    detail,
                    "invalid_request_error",
                    None,
                    None,
                );
            }
        };
        let timeout = routes.profile().settings.timeout();
        let sent = tokio::time::timeout(timeout, self.upstreams.send_buffered(upstream)).await;
        let mut response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(forward::UpstreamError::Failed(reason))) => {
                let refusal = self.upstream_failed(&routes, &endpoint, reason);
                answer.status = refusal.status.as_u16();
                return refused(&refusal);
            }
            Err(_) => {
                let refusal = self.upstream_timed_out(&routes, &endpoint);
                answer.status = refusal.status.as_u16();
                return refused(&refusal);
            }
        };
        answer.status = response.status().as_u16();
        forward::downstream_response(&mut response);
        let streaming = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
        let models = self.control.models();
        let labels = |kind: &str| TokenLabels {
            service: routes.metrics(models).labels.service.clone(),
            model: model.clone(),
            user: bearer
                .as_ref()
                .map_or_else(|| "anonymous".to_owned(), |bearer| bearer.user.name.clone()),
            kind: kind.to_owned(),
        };
        // One family lookup at a time: each holds the family's lock until its statement ends.
        let prompt = models.tokens.get_or_create(&labels("prompt")).clone();
        let completion = models.tokens.get_or_create(&labels("completion")).clone();
        let meter = UsageMeter {
            streaming,
            prompt,
            completion,
            routes: Arc::clone(&routes),
            kept: Vec::new(),
            overflowed: false,
            usage: None,
        };
        response.map(|body| Either::Left(Streamed::metered(body, meter, Box::new(answer))))
    }
}

/// Reads an answer's `usage` as it passes and counts it once the answer is over: the whole
/// JSON answer, or each `data:` line of a stream (the last one with a `usage` counts).
pub struct UsageMeter {
    streaming: bool,
    prompt: Counter,
    completion: Counter,
    routes: Arc<ServiceRoutes>,
    kept: Vec<u8>,
    overflowed: bool,
    usage: Option<(u64, u64)>,
}

impl UsageMeter {
    /// Shows the meter the next chunk of the answer.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.kept.len() + chunk.len() > METER_LIMIT {
            // Too long to read: a JSON answer is not counted; a stream's line is dropped.
            self.overflowed = !self.streaming;
            self.kept.clear();
            return;
        }
        self.kept.extend_from_slice(chunk);
        if !self.streaming {
            return;
        }
        while let Some(end) = self.kept.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = self.kept.drain(..=end).collect();
            if let Some(data) = line.strip_prefix(b"data:")
                && let Ok(event) = serde_json::from_slice::<Value>(data.trim_ascii())
                && let Some(usage) = usage_of(&event)
            {
                self.usage = Some(usage);
            }
        }
    }
}

/// `(prompt, completion)` tokens from an answer's `usage`, if it has one.
fn usage_of(answer: &Value) -> Option<(u64, u64)> {
    let usage = answer.get("usage").filter(|usage| usage.is_object())?;
    let count = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
    Some((count("prompt_tokens"), count("completion_tokens")))
}

impl Drop for UsageMeter {
    fn drop(&mut self) {
        if !self.streaming && !self.overflowed {
            self.usage = serde_json::from_slice::<Value>(&self.kept)
                .ok()
                .as_ref()
                .and_then(usage_of);
        }
        if let Some((prompt, completion)) = self.usage {
            self.prompt.inc_by(prompt);
            self.completion.inc_by(completion);
            let usage = &self.routes.usage;
            usage
                .prompt_tokens
                .fetch_add(prompt, std::sync::atomic::Ordering::Relaxed);
            usage
                .completion_tokens
                .fetch_add(completion, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_a_whole_answer_or_a_streams_last_event() {
        let whole = json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}});
        assert_eq!(usage_of(&whole), Some((7, 3)));
        assert_eq!(usage_of(&json!({"usage": null})), None);
        let embedding = json!({"usage": {"prompt_tokens": 5, "total_tokens": 5}});
        assert_eq!(usage_of(&embedding), Some((5, 0)));
        assert!(is_front("/v1/models") && is_front("/v1") && !is_front("/v10/x"));
    }
}
