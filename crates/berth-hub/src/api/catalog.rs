//! `/api/images` and `/api/specs`: everyone reads the catalog, admins change it.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use berth_core::ByteSize;
use berth_http::Path;
use berth_http::{Problem, parse_body};
use berth_store::catalog::{self, Image, Spec};
use berth_store::operations::{self, NewOperation};
use serde::Deserialize;
use serde_json::json;

use super::CurrentUser;
use crate::state::HubState;

type Shared = State<Arc<HubState>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewImage {
    name: String,
    reference: String,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSpec {
    name: String,
    cpu_cores: f64,
    memory: ByteSize,
    #[serde(default)]
    system_disk: Option<ByteSize>,
    #[serde(default)]
    data_disk: Option<ByteSize>,
    #[serde(default)]
    gpu_count: i64,
    #[serde(default)]
    memory_split: bool,
    #[serde(default)]
    gpu_memory_gb: i64,
}

impl NewImage {
    fn check(&self) -> Result<(), Problem> {
        berth_core::spec::validate_name("name", &self.name)?;
        // Image references are printable ASCII without spaces (registry/name:tag@digest).
        let printable = self.reference.chars().all(|c| c.is_ascii_graphic());
        if self.reference.is_empty() || self.reference.len() > 255 || !printable {
            return Err(Problem::invalid_field(
                "reference",
                format!(
                    "{:?} is not an image reference: 1 to 255 printable ASCII characters, no spaces",
                    self.reference
                ),
            ));
        }
        Ok(())
    }
}

impl NewSpec {
    /// The spec this request describes, every value checked.
    fn into_spec(self) -> Result<Spec, Problem> {
        berth_core::spec::validate_name("name", &self.name)?;
        berth_core::spec::check_cpu_cores("cpu_cores", self.cpu_cores)?;
        if self.memory < berth_core::spec::MIN_MEMORY_LIMIT {
            return Err(Problem::invalid_field(
                "memory",
                format!("{} is below Docker's minimum of 6m", self.memory),
            ));
        }
        for (field, size) in [
            ("system_disk", self.system_disk),
            ("data_disk", self.data_disk),
        ] {
            if size.is_some_and(|size| size.bytes() == 0) {
                return Err(Problem::invalid_field(field, "is 0; leave it out for none"));
            }
        }
        for (field, value) in [
            ("gpu_count", self.gpu_count),
            ("gpu_memory_gb", self.gpu_memory_gb),
        ] {
            if value < 0 {
                return Err(Problem::invalid_field(field, "must not be negative"));
            }
        }
        if self.memory_split && self.gpu_memory_gb <= 0 {
            return Err(Problem::invalid_field(
                "gpu_memory_gb",
                "a memory split needs the GiB of GPU memory",
            ));
        }
        Ok(Spec {
            id: 0,
            name: self.name,
            cpu_millis: (self.cpu_cores * 1000.0).round() as i64,
            memory_bytes: self.memory.bytes_i64(),
            system_disk_bytes: self.system_disk.map(ByteSize::bytes_i64),
            data_disk_bytes: self.data_disk.map(ByteSize::bytes_i64),
            gpu_count: self.gpu_count,
            memory_split: self.memory_split,
            gpu_memory_gb: self.gpu_memory_gb,
            created_at: 0,
        })
    }
}

fn catalog_operation(
    actor: i64,
    action: &str,
    kind: &str,
    id: i64,
    detail: serde_json::Value,
) -> NewOperation {
    NewOperation {
        user_id: Some(actor),
        action: action.to_owned(),
        target_kind: kind.to_owned(),
        target_id: id.to_string(),
        node_id: None,
        service_id: None,
        outcome: "ok".to_owned(),
        detail,
    }
}

/// `GET /api/images`.
pub async fn list_images(
    State(state): Shared,
    _user: CurrentUser,
) -> Result<Json<Vec<Image>>, Problem> {
    let mut connection = state.store.acquire().await?;
    Ok(Json(catalog::list_images(&mut connection).await?))
}

/// `POST /api/images` (admin).
pub async fn create_image(
    State(state): Shared,
    user: CurrentUser,
    body: Bytes,
) -> Result<(StatusCode, Json<Image>), Problem> {
    user.require_admin()?;
    let request: NewImage = parse_body(&body)?;
    request.check()?;
    let mut transaction = state.store.begin().await?;
    let image = catalog::insert_image(
        &mut transaction,
        &request.name,
        &request.reference,
        &request.description,
    )
    .await?;
    let detail = json!({"name": image.name, "reference": image.reference});
    operations::commit_with(
        transaction,
        &catalog_operation(user.0.id, "image.create", "image", image.id, detail),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(image)))
}

/// `DELETE /api/images/{id}` (admin).
pub async fn delete_image(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, Problem> {
    user.require_admin()?;
    let mut transaction = state.store.begin().await?;
    catalog::delete_image(&mut transaction, id).await?;
    operations::commit_with(
        transaction,
        &catalog_operation(user.0.id, "image.delete", "image", id, json!({})),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/specs`.
pub async fn list_specs(
    State(state): Shared,
    _user: CurrentUser,
) -> Result<Json<Vec<Spec>>, Problem> {
    let mut connection = state.store.acquire().await?;
    Ok(Json(catalog::list_specs(&mut connection).await?))
}

/// `POST /api/specs` (admin).
pub async fn create_spec(
    State(state): Shared,
    user: CurrentUser,
    body: Bytes,
) -> Result<(StatusCode, Json<Spec>), Problem> {
    user.require_admin()?;
    let request: NewSpec = parse_body(&body)?;
    let spec = request.into_spec()?;
    let mut transaction = state.store.begin().await?;
    let stored = catalog::insert_spec(&mut transaction, &spec).await?;
    let detail = json!({"name": stored.name});
    operations::commit_with(
        transaction,
        &catalog_operation(user.0.id, "spec.create", "spec", stored.id, detail),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

/// `PUT /api/specs/{id}` (admin): new name and sizes; existing services keep theirs.
pub async fn update_spec(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<Json<Spec>, Problem> {
    user.require_admin()?;
    let request: NewSpec = parse_body(&body)?;
    let spec = Spec {
        id,
        ..request.into_spec()?
    };
    let mut transaction = state.store.begin().await?;
    let stored = catalog::update_spec(&mut transaction, &spec).await?;
    let detail = json!({"name": stored.name});
    operations::commit_with(
        transaction,
        &catalog_operation(user.0.id, "spec.update", "spec", id, detail),
    )
    .await?;
    Ok(Json(stored))
}

/// `PUT /api/images/{id}` (admin).
pub async fn update_image(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<Json<Image>, Problem> {
    user.require_admin()?;
    let request: NewImage = parse_body(&body)?;
    request.check()?;
    let mut transaction = state.store.begin().await?;
    let image = catalog::update_image(
        &mut transaction,
        id,
        &request.name,
        &request.reference,
        &request.description,
    )
    .await?;
    let detail = json!({"name": image.name, "reference": image.reference});
    operations::commit_with(
        transaction,
        &catalog_operation(user.0.id, "image.update", "image", id, detail),
    )
    .await?;
    Ok(Json(image))
}

/// `DELETE /api/specs/{id}` (admin); refused while a service uses it.
pub async fn delete_spec(
    State(state): Shared,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, Problem> {
    user.require_admin()?;
    let mut transaction = state.store.begin().await?;
    catalog::delete_spec(&mut transaction, id).await?;
    operations::commit_with(
        transaction,
        &catalog_operation(user.0.id, "spec.delete", "spec", id, json!({})),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
