//! Errors as `application/problem+json` (RFC 9457). The body also carries `detail`, the field
//! mManager's clients read, and `field` when one input field was wrong.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_core::SpecError;
use berth_docker::DriverError;
use berth_store::StoreError;
use serde::Serialize;

/// An API error.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(skip)]
    status: StatusCode,
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    #[serde(rename = "status")]
    code: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    /// Seconds for `Retry-After`, when trying again later is the answer.
    #[serde(skip)]
    retry_after: Option<u32>,
}

impl Problem {
    /// A problem with this status and detail.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            code: status.as_u16(),
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    /// The same, saying to try again after `seconds` (`Retry-After`).
    #[must_use]
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The detail sentence.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The input field that was wrong, when one was.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// 404 for a container this agent does not manage.
    pub fn no_container(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("container does not exist: {id}"),
        )
    }

    /// 422 for a bad input field.
    pub fn invalid_field(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let field = field.into();
        let detail = detail.into();
        Self {
            field: Some(field.clone()),
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{field}: {detail}"),
            )
        }
    }

    /// `status` for a bad input `field` (a path parameter, a header).
    pub fn bad_input(
        status: StatusCode,
        field: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        let field = field.into();
        let detail = detail.into();
        Self {
            field: Some(field.clone()),
            ..Self::new(status, format!("{field}: {detail}"))
        }
    }

    /// 401 for a missing or wrong key.
    pub fn unauthorized(detail: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, detail)
    }
}

impl From<SpecError> for Problem {
    fn from(err: SpecError) -> Self {
        Problem::invalid_field(err.field, err.message)
    }
}

impl From<DriverError> for Problem {
    fn from(err: DriverError) -> Self {
        let status = match &err {
            DriverError::ImageNotFound { .. } | DriverError::ContainerNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            DriverError::NameConflict { .. } | DriverError::PortInUse { .. } => {
                StatusCode::CONFLICT
            }
            DriverError::InvalidSpec(spec) => return Problem::from(spec.clone()),
            DriverError::EngineSlow { .. } | DriverError::PullStalled { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            DriverError::EngineUnreachable { .. } | DriverError::Tls { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            DriverError::InvalidEndpoint(_) => StatusCode::INTERNAL_SERVER_ERROR,
            DriverError::Engine { status, .. } => match *status {
                400 => StatusCode::BAD_REQUEST,
                404 => StatusCode::NOT_FOUND,
                409 => StatusCode::CONFLICT,
                _ => StatusCode::BAD_GATEWAY,
            },
        };
        Problem::new(status, err.to_string())
    }
}

impl From<StoreError> for Problem {
    fn from(err: StoreError) -> Self {
        if err.is_busy() {
            return Problem {
                retry_after: Some(1),
                ..Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is busy with other changes; nothing was changed, try again",
                )
            };
        }
        if let StoreError::Fenced(reason) = &err {
            return Problem {
                retry_after: Some(1),
                ..Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{reason}; nothing was changed, try again"),
                )
            };
        }
        let status = match &err {
            StoreError::Fenced(_) => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::Secret(_) | StoreError::Migration(_) | StoreError::Database(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Problem::new(status, err.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut response = (status, axum::Json(&self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
