//! `berth apply --watch DIR` and the hub's `model_watch_dir`: seed 004's hot reload of model
//! configurations. Every YAML file of the directory is applied; a file that changes is applied
//! again, and the service of a file that is removed is unloaded. The directory is read every two
//! seconds until Ctrl-C (or the hub stops); a file with mistakes is reported and skipped until
//! it changes, one the hub refused (no node fits yet) is tried again after ten seconds, and a
//! directory that cannot be read for a while is reported and read again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::Method;

use super::api::HubClient;
use super::{manifest, names};

/// How often the directory is read.
const INTERVAL: Duration = Duration::from_secs(2);

/// How long a file the hub refused (no node fits yet, the hub is busy) waits before it is
/// applied again unchanged.
const RETRY: Duration = Duration::from_secs(10);

/// What the watcher knows of one file: its text when last read, the service it declared
/// (`owner/name`, or the caller's `name`) when it was last applied, and when it is tried again
/// if the hub refused it.
struct Seen {
    text: String,
    service: Option<String>,
    retry_at: Option<Instant>,
}

/// How applying a file went.
enum Applied {
    /// Applied: the service it declares.
    Service(String),
    /// The file has mistakes: tried again when it changes.
    Mistaken,
    /// The hub refused it: tried again after [`RETRY`].
    Refused,
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
    eprintln!(
        "watching {} (every {} s; Ctrl-C stops)",
        dir.display(),
        INTERVAL.as_secs()
    );
    watch(client, dir, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// Watches `dir` until `stop` completes; an error when the directory cannot be read at first.
pub async fn watch(
    client: &HubClient,
    dir: &Path,
    stop: impl Future<Output = ()>,
) -> Result<(), String> {
    yaml_files(dir)?;
    let mut stop = std::pin::pin!(stop);
    let mut seen: BTreeMap<PathBuf, Seen> = BTreeMap::new();
    let mut unreadable = false;
    loop {
        let files = match yaml_files(dir) {
            Ok(files) => {
                unreadable = false;
                files
            }
            Err(err) => {
                // Said once; what was applied stays until the directory is back.
                if !unreadable {
                    eprintln!("{err}; reading it again every {} s", INTERVAL.as_secs());
                }
                unreadable = true;
                tokio::select! {
                    () = tokio::time::sleep(INTERVAL) => continue,
                    () = &mut stop => return Ok(()),
                }
            }
        };
        for path in &files {
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            let now = Instant::now();
            if seen
                .get(path)
                .is_some_and(|known| known.text == text && known.retry_at.is_none_or(|at| now < at))
            {
                continue;
            }
            let earlier = seen.remove(path).and_then(|known| known.service);
            let (service, retry_at) = match apply_file(client, path, &text).await {
                Applied::Service(service) => (Some(service), None),
                Applied::Mistaken => (earlier, None),
                Applied::Refused => (earlier, Some(now + RETRY)),
            };
            seen.insert(
                path.clone(),
                Seen {
                    text,
                    service,
                    retry_at,
                },
            );
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
            () = &mut stop => return Ok(()),
        }
    }
}

/// Applies the file at `path` holding `text`.
async fn apply_file(client: &HubClient, path: &Path, text: &str) -> Applied {
    let parsed = match manifest::parse(text) {
        Ok(parsed) => parsed,
        Err(mistakes) => {
            for mistake in mistakes {
                eprintln!("{}: {mistake}", path.display());
            }
            return Applied::Mistaken;
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
        Ok(()) => Applied::Service(service),
        Err(err) => {
            eprintln!(
                "{}: {err}; tried again in {} s",
                path.display(),
                RETRY.as_secs()
            );
            Applied::Refused
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
