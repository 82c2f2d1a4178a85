//! `POST /containers/{id}/files` and `/directories`: copy content into a container through the
//! engine's archive API, with mManager's placement rule (into the parent of `container_path`).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use berth_docker::DriverError;
use berth_http::Path;

use super::containers::resolve;
use super::{Problem, parse_body};
use crate::state::AgentState;
use crate::timestamp::utc_now;
use crate::wire::{DirectoryRequest, FileOpResponse, FileRequest};

/// How often, and how far apart, a directory copy checks that the container it started runs.
const START_CHECKS: u32 = 3;
const START_CHECK_INTERVAL: Duration = Duration::from_secs(2);

fn decode(field: &str, text: &str) -> Result<Vec<u8>, Problem> {
    let cleaned: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    // Lenient about the unused bits of the last character, as Python's b64decode is.
    const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    LENIENT
        .decode(cleaned.as_bytes())
        .map_err(|err| Problem::invalid_field(field, format!("is not valid base64: {err}")))
}

/// The directory an upload for `container_path` is extracted into.
fn parent_dir(container_path: &str) -> Result<String, Problem> {
    if !container_path.starts_with('/') {
        return Err(Problem::invalid_field(
            "container_path",
            format!("{container_path:?} is not an absolute path"),
        ));
    }
    let trimmed = container_path.trim_end_matches('/');
    Ok(match trimmed.rsplit_once('/') {
        Some(("", _)) | None => "/".to_owned(),
        Some((parent, _)) => parent.to_owned(),
    })
}

fn engine_problem(dir: &str, err: DriverError) -> Problem {
    match err {
        DriverError::Engine {
            status: 404,
            message,
        } => Problem::new(
            StatusCode::NOT_FOUND,
            format!("directory {dir} does not exist in the container ({message})"),
        ),
        other => other.into(),
    }
}

/// A one-file tar archive: `name`, mode 0644, owned by root.
fn single_file_tar(name: &str, content: &[u8]) -> Result<Vec<u8>, Problem> {
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    let mut builder = tar::Builder::new(Vec::with_capacity(content.len() + 1024));
    builder
        .append_data(&mut header, name, content)
        .and_then(|()| builder.into_inner())
        .map_err(|err| Problem::invalid_field("file_name", format!("cannot be archived: {err}")))
}

/// `POST /containers/{id}/files`.
pub async fn copy_file(
    State(state): State<Arc<AgentState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<FileOpResponse>, Problem> {
    let request: FileRequest = parse_body(&body)?;
    let dir = parent_dir(&request.container_path)?;
    let encoded = request.content_base64.as_deref().unwrap_or_default();
    if encoded.trim().is_empty() {
        return Err(Problem::invalid_field(
            "content_base64",
            "is empty; send the file content in base64",
        ));
    }
    let content = decode("content_base64", encoded)?;
    let name = request
        .file_name
        .clone()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "file".to_owned());
    if name.contains('/') || name == "." || name == ".." {
        return Err(Problem::invalid_field(
            "file_name",
            format!("{name:?} must be a plain file name"),
        ));
    }
    let archive = single_file_tar(&name, &content)?;
    let inspected = resolve(&state, &id).await?;
    let full_id = inspected.id.unwrap_or_default();
    state
        .driver
        .upload_archive(&full_id, &dir, Bytes::from(archive))
        .await
        .map_err(|err| engine_problem(&dir, err))?;
    tracing::info!(container = %full_id, path = %format!("{dir}/{name}"), bytes = content.len(), "File copied into container.");
    Ok(Json(FileOpResponse {
        success: true,
        container_id: id,
        message: format!("{name} written to {dir}"),
        operation: "copy_file",
        file_path: request.container_path,
        file_size: content.len(),
        timestamp: utc_now(),
    }))
}

/// `POST /containers/{id}/directories`: starts a stopped container (the replacement needs `rm`
/// inside it), removes the old directory when asked, and extracts the archive into the parent.
pub async fn copy_directory(
    State(state): State<Arc<AgentState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<FileOpResponse>, Problem> {
    let request: DirectoryRequest = parse_body(&body)?;
    let dir = parent_dir(&request.container_path)?;
    let target = request.container_path.trim_end_matches('/');
    if target.is_empty() {
        return Err(Problem::invalid_field(
            "container_path",
            "\"/\" cannot be replaced; name a directory",
        ));
    }
    let archive = decode("archive_base64", &request.archive_base64)?;
    if archive.is_empty() {
        return Err(Problem::invalid_field(
            "archive_base64",
            "is empty; send a tar archive in base64",
        ));
    }
    let inspected = resolve(&state, &id).await?;
    let full_id = inspected.id.unwrap_or_default();
    if state.driver.inspect(&full_id).await?.status != "running" {
        state.driver.start(&full_id).await?;
        let mut running = false;
        for _ in 0..START_CHECKS {
            if state.driver.inspect(&full_id).await?.status == "running" {
                running = true;
                break;
            }
            tokio::time::sleep(START_CHECK_INTERVAL).await;
        }
        if !running {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                format!("container {id} did not stay running"),
            ));
        }
    }
    if request.remove_existing {
        let removed = state.driver.exec(&full_id, &["rm", "-rf", target]).await?;
        if removed.exit_code != Some(0) {
            tracing::warn!(container = %full_id, path = target, stderr = %removed.stderr.trim(), "Removing the old directory failed.");
        }
    }
    let size = archive.len();
    state
        .driver
        .upload_archive(&full_id, &dir, Bytes::from(archive))
        .await
        .map_err(|err| engine_problem(&dir, err))?;
    tracing::info!(container = %full_id, path = target, bytes = size, "Directory copied into container.");
    Ok(Json(FileOpResponse {
        success: true,
        container_id: id,
        message: format!("archive extracted into {dir}"),
        operation: "copy_directory",
        file_path: request.container_path,
        file_size: size,
        timestamp: utc_now(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_land_in_the_parent_directory() {
        assert_eq!(parent_dir("/app/target.txt").ok().as_deref(), Some("/app"));
        assert_eq!(parent_dir("/app/model/").ok().as_deref(), Some("/app"));
        assert_eq!(parent_dir("/file").ok().as_deref(), Some("/"));
        assert!(parent_dir("relative/path").is_err());
    }

    #[test]
    fn a_single_file_archive_holds_the_file() {
        let archive = single_file_tar("gogogo.py", b"print('hi')\n").expect("archive");
        let mut reader = tar::Archive::new(archive.as_slice());
        let mut entries = reader.entries().expect("entries");
        let entry = entries.next().expect("one entry").expect("readable");
        assert_eq!(entry.path().expect("path").to_string_lossy(), "gogogo.py");
        assert_eq!(entry.header().mode().expect("mode"), 0o644);
        assert_eq!(entry.size(), 12);
    }
}
