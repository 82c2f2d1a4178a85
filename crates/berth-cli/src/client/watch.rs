//! `berth apply --watch DIR`: seed 004's hot reload of model configurations. Every YAML file of
//! the directory is applied; a file that changes is applied again, and the service of a file
//! that is removed is unloaded. The directory is read every two seconds until Ctrl-C; a file
//! with mistakes is reported and skipped until it changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;

use super::api::HubClient;
use super::{manifest, names};

/// How often the directory is read.
const INTERVAL: Duration = Duration::from_secs(2);

/// What the watcher knows of one file: its text when last read, and the service it declared
/// (`owner/name`, or the caller's `name`) when it was last applied.
struct Seen {
    text: String,
    service: Option<String>,
}

/// The YAML files of `dir`, sorted.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|err| format!("cannot read {}: {err}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.is_file()
                && path
                    .extension()
                    .is_some_and(|extension| extension == "yaml" || extension == "yml")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Watches `dir` until Ctrl-C.
pub async fn run(client: &HubClient, dir: &Path) -> Result<(), String> {
    let mut seen: BTreeMap<PathBuf, Seen> = BTreeMap::new();
    eprintln!(
        "watching {} (every {} s; Ctrl-C stops)",
        dir.display(),
        INTERVAL.as_secs()
    );
    loop {
        let files = yaml_files(dir)?;
        for path in &files {
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            if seen.get(path).is_some_and(|known| known.text == text) {
                continue;
            }
            let earlier = seen.remove(path).and_then(|known| known.service);
            let service = apply_file(client, path, &text).await.or(earlier);
            seen.insert(path.clone(), Seen { text, service });
        }
        let removed: Vec<PathBuf> = seen
            .keys()
            .filter(|path| !files.contains(path))
            .cloned()
            .collect();
        for path in removed {
            if let Some(service) = seen.remove(&path).and_then(|known| known.service) {
                unload(client, &path, &service).await;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(INTERVAL) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Applies the file at `path` holding `text`: the service it declares, if it was applied.
async fn apply_file(client: &HubClient, path: &Path, text: &str) -> Option<String> {
    let parsed = match manifest::parse(text) {
        Ok(parsed) => parsed,
        Err(mistakes) => {
            for mistake in mistakes {
                eprintln!("{}: {mistake}", path.display());
            }
            return None;
        }
    };
    let service = match &parsed.owner {
        Some(owner) => format!("{owner}/{}", parsed.service.name),
        None => parsed.service.name.clone(),
    };
    eprintln!(
        "{}: applying {}",
        path.display(),
        manifest::summary(&parsed)
    );
    match manifest::apply(client, &parsed, false).await {
        Ok(()) => Some(service),
        Err(err) => {
            eprintln!("{}: {err}", path.display());
            None
        }
    }
}

/// Unloads `service`, whose file `path` was removed.
async fn unload(client: &HubClient, path: &Path, service: &str) {
    let unloaded = async {
        let id = names::service_id(client, service).await?;
        client
            .call(
                Method::POST,
                &format!("/api/services/{id}/unload?wait=60"),
                None,
            )
            .await
    }
    .await;
    match unloaded {
        Ok(_) => eprintln!("{}: removed; service {service} unloaded", path.display()),
        Err(err) => eprintln!(
            "{}: removed; service {service} could not be unloaded: {err}",
            path.display()
        ),
    }
}
