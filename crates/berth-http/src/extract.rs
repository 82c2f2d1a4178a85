//! Extractors and layers that keep every refusal problem+json: path parameters whose errors name
//! the parameter, JSON bodies only in JSON (415 otherwise), and whatever error a layer below
//! answers in another form (a body too large, a rejected extractor) rewritten as a problem.

use axum::body::to_bytes;
use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::Problem;

/// Path parameters, like axum's `Path`, refused as problem+json naming the parameter
/// (`id: "abc" is not a valid i64`).
#[derive(Debug, Clone, Copy)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(PathRejection::FailedToDeserializePathParams(failed)) => {
                let raw = RawPathParams::from_request_parts(parts, state).await.ok();
                let name_at = |index: usize| {
                    raw.as_ref()
                        .and_then(|raw| raw.iter().nth(index).map(|(key, _)| key.to_owned()))
                };
                let name_of = |value: &str| {
                    raw.as_ref().and_then(|raw| {
                        raw.iter()
                            .find(|(_, given)| *given == value)
                            .map(|(key, _)| key.to_owned())
                    })
                };
                let (field, value, expected) = match failed.kind() {
                    ErrorKind::ParseErrorAtKey {
                        key,
                        value,
                        expected_type,
                    } => (Some(key.clone()), value.clone(), *expected_type),
                    ErrorKind::ParseErrorAtIndex {
                        index,
                        value,
                        expected_type,
                    } => (name_at(*index), value.clone(), *expected_type),
                    ErrorKind::ParseError {
                        value,
                        expected_type,
                    } => (name_of(value), value.clone(), *expected_type),
                    other => (None, other.to_string(), "valid"),
                };
                let field = field.unwrap_or_else(|| "path".to_owned());
                let kind = if expected.starts_with('i') || expected.starts_with('u') {
                    "a whole number in range"
                } else {
                    expected
                };
                Err(Problem::bad_input(
                    StatusCode::BAD_REQUEST,
                    field,
                    format!("{value:?} is not {kind}"),
                ))
            }
            Err(other) => Err(Problem::new(StatusCode::BAD_REQUEST, other.body_text())),
        }
    }
}

/// Whether `headers` name a JSON body (`application/json`, `application/…+json`), or none.
fn json_or_unnamed(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .is_some_and(|length| length > 0)
}

/// Refuses a request body that is not JSON with 415, naming what to send.
pub async fn require_json(request: Request, next: Next) -> Response {
    let writes = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if writes && has_body(request.headers()) && !json_or_unnamed(request.headers()) {
        let given = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("?")
            .to_owned();
        return Problem::bad_input(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type",
            format!("{given:?} is not JSON; send the body as Content-Type: application/json"),
        )
        .into_response();
    }
    next.run(request).await
}

/// The largest error body a layer below may give that is turned into a problem's detail.
const MAX_ERROR_TEXT: usize = 4096;

/// Rewrites an error answered in another form than problem+json (a body over the size limit,
/// an extractor's plain-text rejection) as a problem with the same status.
pub async fn problems_only(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/problem+json"));
    if is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = to_bytes(body, MAX_ERROR_TEXT)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("Error").to_owned()
    } else {
        text
    };
    let mut answer = Problem::new(status, detail).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer
}
