//! `/images` routes through the Engine API: list, inspect, pull (with streamed progress), remove
//! and prune. Image names arrive URL-encoded (`%2F` for `/`).

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_docker::{DriverError, PullAuth};
use berth_http::Path;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Problem, parse_body, parse_query};
use crate::state::AgentState;
use crate::wire::{PullRequest, QueryBool};

type Shared = State<Arc<AgentState>>;

/// Sizes as the Docker CLI shows them (decimal units): `1.99MB`.
fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes}B");
    }
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let number = format!("{value:.digits$}");
    let number = if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        &number
    };
    format!("{number}{}", units[unit])
}

fn split_reference(reference: &str) -> (String, String) {
    match reference
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
    {
        Some((repository, tag)) => (repository.to_owned(), tag.to_owned()),
        None => (reference.to_owned(), "latest".to_owned()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllImagesQuery {
    #[serde(default)]
    all_images: QueryBool,
}

/// `GET /images/?all_images=`.
pub async fn list(State(state): Shared, RawQuery(raw): RawQuery) -> Result<Json<Value>, Problem> {
    let query: AllImagesQuery = parse_query(raw)?;
    let images = state.driver.list_images(query.all_images.0).await?;
    let items: Vec<Value> = images
        .into_iter()
        .flat_map(|image| {
            let tags = if image.repo_tags.is_empty() {
                vec!["<none>:<none>".to_owned()]
            } else {
                image.repo_tags.clone()
            };
            tags.into_iter()
                .map(|tag| {
                    let (repository, tag) = split_reference(&tag);
                    json!({
                        "id": image.id,
                        "repository": repository,
                        "tag": tag,
                        "size": human_size(image.size.max(0) as u64),
                        "size_bytes": image.size,
                        "created": image.created,
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    Ok(Json(json!({"total": items.len(), "images": items})))
}

/// `GET /images/{name}`: `exists` false (200) when the node does not have it.
pub async fn inspect(
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    // The engine answers 400 for a name it cannot read as a reference: no such image either.
    let found = match state.driver.inspect_image(&name).await {
        Err(DriverError::Engine { status: 400, .. }) => None,
        other => other?,
    };
    Ok(Json(match found {
        Some(image) => json!({
            "exists": true,
            "id": image.id,
            "repository_tags": image.repo_tags,
            "size": image.size,
            "created": image.created,
            "config": image.config,
            "architecture": image.architecture,
            "os": image.os,
        }),
        None => {
            json!({"exists": false, "image": name, "message": format!("image does not exist: {name}")})
        }
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PullQuery {
    #[serde(default)]
    stream: QueryBool,
}

/// `POST /images/pull`: the whole pull, or with `?stream=true` its progress as NDJSON lines.
pub async fn pull(
    State(state): Shared,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Problem> {
    let query: PullQuery = parse_query(raw)?;
    let request: PullRequest = parse_body(&body)?;
    if request.image.trim().is_empty() || request.image.chars().any(char::is_whitespace) {
        return Err(Problem::invalid_field(
            "image",
            format!("{:?} is not an image reference", request.image),
        ));
    }
    let auth = request.auth.map(|auth| PullAuth {
        username: auth.username,
        password: auth.password,
    });
    if query.stream.0 {
        let (sender, receiver) =
            tokio::sync::mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
        let image = request.image.clone();
        tokio::spawn(async move {
            let progress_sender = sender.clone();
            let mut forward = move |step: berth_docker::PullProgress| {
                let mut line = serde_json::to_vec(&step).unwrap_or_default();
                line.push(b'\n');
                let _ = progress_sender.send(Ok(Bytes::from(line)));
            };
            let outcome = state
                .driver
                .pull_image(&image, auth.as_ref(), &mut forward)
                .await;
            let last = match outcome {
                Ok(()) => json!({"status": "success", "image": image}),
                Err(err) => json!({"status": "error", "image": image, "error": err.to_string()}),
            };
            let _ = sender.send(Ok(Bytes::from(format!("{last}\n"))));
        });
        let stream = tokio_stream_from(receiver);
        return Ok((
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::from_stream(stream),
        )
            .into_response());
    }
    let mut output = Vec::new();
    state
        .driver
        .pull_image(&request.image, auth.as_ref(), &mut |step| {
            output.push(match step.layer {
                Some(layer) => format!("{layer}: {}", step.status),
                None => step.status,
            })
        })
        .await?;
    tracing::info!(image = %request.image, "Image pulled.");
    Ok(Json(json!({
        "status": "success",
        "image": request.image,
        "message": format!("image {} pulled", request.image),
        "output": output.join("\n"),
    }))
    .into_response())
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |context| receiver.poll_recv(context))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceQuery {
    #[serde(default)]
    force: QueryBool,
}

/// `DELETE /images/{name}?force=`.
pub async fn remove(
    State(state): Shared,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, Problem> {
    let query: ForceQuery = parse_query(raw)?;
    let deleted = state
        .driver
        .remove_image(&name, query.force.0)
        .await
        .map_err(|err| match err {
            DriverError::Engine {
                status: 409,
                message,
            } => Problem::new(
                StatusCode::CONFLICT,
                format!("image {name} is in use ({message}); pass force=true"),
            ),
            DriverError::Engine { status: 400, .. } => {
                Problem::new(StatusCode::NOT_FOUND, format!("no such image: {name}"))
            }
            other => other.into(),
        })?;
    tracing::info!(image = %name, "Image removed.");
    Ok(Json(
        json!({"status": "success", "image": name, "message": format!("image {name} removed"), "deleted": deleted}),
    ))
}

/// `POST /images/prune?all_images=`.
pub async fn prune(State(state): Shared, RawQuery(raw): RawQuery) -> Result<Json<Value>, Problem> {
    let query: AllImagesQuery = parse_query(raw)?;
    let outcome = state.driver.prune_images(query.all_images.0).await?;
    Ok(Json(json!({
        "status": "success",
        "message": format!("{} images or layers removed", outcome.deleted.len()),
        "freed_space": human_size(outcome.reclaimed_bytes),
        "reclaimed_bytes": outcome.reclaimed_bytes,
        "deleted": outcome.deleted,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_the_cli() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(1_990_000), "1.99MB");
        assert_eq!(human_size(123_400_000), "123MB");
        assert_eq!(human_size(2_000_000_000), "2GB");
    }

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(
            split_reference("berth-test/busybox:latest"),
            ("berth-test/busybox".into(), "latest".into())
        );
        assert_eq!(
            split_reference("registry:5000/ns/app"),
            ("registry:5000/ns/app".into(), "latest".into())
        );
        assert_eq!(
            split_reference("registry:5000/ns/app:1.2"),
            ("registry:5000/ns/app".into(), "1.2".into())
        );
    }
}
