//! A node's images (admin): `GET /api/nodes/{id}/images` lists them (one entry per tag),
//! `POST /api/nodes/{id}/images/pull` with `{"image"}` pulls one as an operation whose progress
//! counts layers and bytes, `DELETE /api/nodes/{id}/images?name=&force=` removes one. Each is in
//! the operation log.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use berth_http::{Path, Problem, parse_body, parse_query};
use berth_store::operations::{self, NewOperation};
use berth_store::{StoreError, nodes};
use serde::Deserialize;
use serde_json::{Value, json};

use super::CurrentUser;
use super::operations::{WaitQuery, accepted};
use crate::ops::{self, Scope};
use crate::state::HubState;

type Shared = State<Arc<HubState>>;

/// `GET /api/nodes/{id}/images`.
pub async fn list(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Value>, Problem> {
    user.require_admin()?;
    let node = nodes::get(&mut *state.store.acquire().await?, id).await?;
    let images = state.node_client(&node).await?.images().await?;
    Ok(Json(
        json!({"node_id": id, "total": images.len(), "images": images}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PullRequest {
    image: String,
}

/// An image reference as given: not empty, no whitespace.
fn reference(field: &str, image: &str) -> Result<String, Problem> {
    let image = image.trim();
    if image.is_empty() || image.chars().any(char::is_whitespace) || image.len() > 512 {
        return Err(Problem::invalid_field(
            field,
            format!("{image:?} is not an image reference"),
        ));
    }
    Ok(image.to_owned())
}

fn image_operation(
    actor: i64,
    action: &str,
    node: &nodes::NodeRecord,
    image: &str,
) -> NewOperation {
    NewOperation {
        user_id: Some(actor),
        action: action.to_owned(),
        target_kind: "node".to_owned(),
        target_id: node.id.to_string(),
        node_id: Some(node.id),
        service_id: None,
        outcome: "running".to_owned(),
        detail: json!({"node": node.name, "image": image}),
    }
}

/// `POST /api/nodes/{id}/images/pull?wait=` with `{"image"}`: 202 with the pull's operation.
pub async fn pull(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Problem> {
    user.require_admin()?;
    let wait = WaitQuery::parse(raw)?;
    let request: PullRequest = parse_body(&body)?;
    let image = reference("image", &request.image)?;
    let mut transaction = state.store.begin().await?;
    let node = nodes::get(&mut transaction, id).await?;
    let operation = operations::open(
        &mut transaction,
        &image_operation(user.0.id, "node.image_pull", &node, &image),
        None,
    )
    .await?;
    transaction.commit().await.map_err(StoreError::from)?;
    state.operation_changed(operation);
    ops::spawn(
        Arc::clone(&state),
        operation,
        Scope::Several,
        move |state, tracker| async move {
            tracker
                .step(0, 1, format!("pulling {image} on {}", node.name))
                .await;
            let client = state.node_client(&node).await?;
            client
                .pull_image(&image, &mut tracker.pull_callback())
                .await?;
            tracker
                .step(1, 1, format!("{image} is on {}", node.name))
                .await;
            Ok(json!({"node": node.name, "image": image}))
        },
    );
    accepted(&state, operation, &wait).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    #[serde(default)]
    name: String,
    #[serde(default)]
    force: Option<bool>,
}

/// `DELETE /api/nodes/{id}/images?name=&force=`: removes the image; 409 while containers use it
/// unless `force`.
pub async fn remove(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, Problem> {
    user.require_admin()?;
    let query: RemoveQuery = parse_query(raw)?;
    let image = reference("name", &query.name)?;
    let node = nodes::get(&mut *state.store.acquire().await?, id).await?;
    let force = query.force.unwrap_or(false);
    state
        .node_client(&node)
        .await?
        .remove_image(&image, force)
        .await?;
    let mut entry = image_operation(user.0.id, "node.image_remove", &node, &image);
    entry.outcome = "ok".to_owned();
    entry.detail["force"] = json!(force);
    operations::commit_with(state.store.begin().await?, &entry).await?;
    Ok(Json(
        json!({"node_id": id, "image": image, "removed": true}),
    ))
}
