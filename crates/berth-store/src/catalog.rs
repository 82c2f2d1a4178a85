//! The catalog admins keep: images (a name for a registry reference) and product specs (CPU,
//! memory, disks, GPUs and GPU memory split, as seed 002's product specs).

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::conflict_or;
use crate::{Conn, StoreError, now_ms};

/// An image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    /// Id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Registry reference, e.g. `registry.example.com/ns/app:1.0`.
    pub reference: String,
    /// Description.
    pub description: String,
    /// Created, Unix ms.
    pub created_at: i64,
}

/// A product spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Id (0 before insert).
    #[serde(default)]
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// CPU, thousandths of a core.
    pub cpu_millis: i64,
    /// Memory, bytes.
    pub memory_bytes: i64,
    /// System disk, bytes.
    pub system_disk_bytes: Option<i64>,
    /// Data disk, bytes.
    pub data_disk_bytes: Option<i64>,
    /// Whole GPUs.
    pub gpu_count: i64,
    /// A share of one GPU instead of whole ones.
    pub memory_split: bool,
    /// GPU memory of the share, GiB.
    pub gpu_memory_gb: i64,
    /// Created, Unix ms.
    #[serde(default)]
    pub created_at: i64,
}

fn image_from(row: &AnyRow) -> Result<Image, sqlx::Error> {
    Ok(Image {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        reference: row.try_get("reference")?,
        description: row.try_get("description")?,
        created_at: row.try_get("created_at")?,
    })
}

fn spec_from(row: &AnyRow) -> Result<Spec, sqlx::Error> {
    Ok(Spec {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        cpu_millis: row.try_get("cpu_millis")?,
        memory_bytes: row.try_get("memory_bytes")?,
        system_disk_bytes: row.try_get("system_disk_bytes")?,
        data_disk_bytes: row.try_get("data_disk_bytes")?,
        gpu_count: row.try_get("gpu_count")?,
        memory_split: row.try_get::<i64, _>("memory_split")? != 0,
        gpu_memory_gb: row.try_get("gpu_memory_gb")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Adds an image; a taken name is a conflict.
pub async fn insert_image(
    conn: &mut Conn,
    name: &str,
    reference: &str,
    description: &str,
) -> Result<Image, StoreError> {
    let row = sqlx::query(
        "INSERT INTO images (name, reference, description, created_at) VALUES ($1, $2, $3, $4) \
         RETURNING id, name, reference, description, created_at",
    )
    .bind(name)
    .bind(reference)
    .bind(description)
    .bind(now_ms())
    .fetch_one(&mut *conn)
    .await
    .map_err(|err| conflict_or(err, || format!("an image named {name:?} exists")))?;
    Ok(image_from(&row)?)
}

/// Every image.
pub async fn list_images(conn: &mut Conn) -> Result<Vec<Image>, StoreError> {
    let rows = sqlx::query("SELECT * FROM images ORDER BY id")
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.iter().map(image_from).collect::<Result<_, _>>()?)
}

/// One image.
pub async fn get_image(conn: &mut Conn, id: i64) -> Result<Image, StoreError> {
    let row = sqlx::query("SELECT * FROM images WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no image {id}")))?;
    Ok(image_from(&row)?)
}

/// Changes an image's name, reference and description.
pub async fn update_image(
    conn: &mut Conn,
    id: i64,
    name: &str,
    reference: &str,
    description: &str,
) -> Result<Image, StoreError> {
    let updated =
        sqlx::query("UPDATE images SET name = $1, reference = $2, description = $3 WHERE id = $4")
            .bind(name)
            .bind(reference)
            .bind(description)
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(|err| conflict_or(err, || format!("an image named {name:?} exists")))?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no image {id}")));
    }
    get_image(conn, id).await
}

/// Removes an image from the catalog.
pub async fn delete_image(conn: &mut Conn, id: i64) -> Result<(), StoreError> {
    let deleted = sqlx::query("DELETE FROM images WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no image {id}")));
    }
    Ok(())
}

/// Adds a spec; a taken name is a conflict.
pub async fn insert_spec(conn: &mut Conn, spec: &Spec) -> Result<Spec, StoreError> {
    let row = sqlx::query(
        "INSERT INTO specs (name, cpu_millis, memory_bytes, system_disk_bytes, data_disk_bytes, gpu_count, \
         memory_split, gpu_memory_gb, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(&spec.name)
    .bind(spec.cpu_millis)
    .bind(spec.memory_bytes)
    .bind(spec.system_disk_bytes)
    .bind(spec.data_disk_bytes)
    .bind(spec.gpu_count)
    .bind(i64::from(spec.memory_split))
    .bind(spec.gpu_memory_gb)
    .bind(now_ms())
    .fetch_one(&mut *conn)
    .await
    .map_err(|err| conflict_or(err, || format!("a spec named {:?} exists", spec.name)))?;
    get_spec(conn, row.try_get("id")?).await
}

/// Every spec.
pub async fn list_specs(conn: &mut Conn) -> Result<Vec<Spec>, StoreError> {
    let rows = sqlx::query("SELECT * FROM specs ORDER BY id")
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.iter().map(spec_from).collect::<Result<_, _>>()?)
}

/// One spec.
pub async fn get_spec(conn: &mut Conn, id: i64) -> Result<Spec, StoreError> {
    let row = sqlx::query("SELECT * FROM specs WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no spec {id}")))?;
    Ok(spec_from(&row)?)
}

/// Changes a spec's name and sizes (by id); services keep the sizes they were created with.
pub async fn update_spec(conn: &mut Conn, spec: &Spec) -> Result<Spec, StoreError> {
    let updated = sqlx::query(
        "UPDATE specs SET name = $1, cpu_millis = $2, memory_bytes = $3, system_disk_bytes = $4, \
         data_disk_bytes = $5, gpu_count = $6, memory_split = $7, gpu_memory_gb = $8 WHERE id = $9",
    )
    .bind(&spec.name)
    .bind(spec.cpu_millis)
    .bind(spec.memory_bytes)
    .bind(spec.system_disk_bytes)
    .bind(spec.data_disk_bytes)
    .bind(spec.gpu_count)
    .bind(i64::from(spec.memory_split))
    .bind(spec.gpu_memory_gb)
    .bind(spec.id)
    .execute(&mut *conn)
    .await
    .map_err(|err| conflict_or(err, || format!("a spec named {:?} exists", spec.name)))?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no spec {}", spec.id)));
    }
    get_spec(conn, spec.id).await
}

/// Removes a spec; refused while a service uses it.
pub async fn delete_spec(conn: &mut Conn, id: i64) -> Result<(), StoreError> {
    let users: i64 = sqlx::query("SELECT COUNT(*) AS n FROM services WHERE spec_id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?
        .try_get("n")?;
    if users > 0 {
        return Err(StoreError::Conflict(format!(
            "spec {id} is used by {users} services"
        )));
    }
    let deleted = sqlx::query("DELETE FROM specs WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("no spec {id}")));
    }
    Ok(())
}
