//! Services declared in YAML: `berth validate -f service.yaml` checks a file offline with the
//! hub's own rules and points at the line of each mistake; `berth apply -f service.yaml` shows
//! what would change and applies it — creating the service, or deploying its next version.
//!
//! The file is the hub's service body (`name`, `image`, `port`, `replicas`, `serving`, …) plus
//! `repo` (default `default`) and `owner` (default: the caller; another owner needs an admin).

use std::path::Path;

use berth_hub::service_request::ServiceRequest;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::api::HubClient;

/// A checked file.
#[derive(Debug)]
pub struct Manifest {
    /// The repository part of the service's path.
    pub repo: String,
    /// Whose service; the caller's when absent.
    pub owner: Option<String>,
    /// The service.
    pub service: ServiceRequest,
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    repo: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(flatten)]
    service: Map<String, Value>,
}

/// The line (1-based) of the key at the end of `path` (`serving.routing.policy`), looking for
/// each segment below the one before it.
fn line_of(text: &str, path: &str) -> Option<usize> {
    let mut from = 0;
    let mut found = None;
    for segment in path.split('.').filter(|segment| !segment.is_empty()) {
        let key = segment.split('[').next().unwrap_or(segment);
        let index = text
            .lines()
            .enumerate()
            .skip(from)
            .find_map(|(index, line)| {
                let line = line.trim_start().trim_start_matches("- ").trim_start();
                let line = line.trim_start_matches(['"', '\'']);
                line.strip_prefix(key)
                    .and_then(|rest| rest.trim_start_matches(['"', '\'']).strip_prefix(':'))
                    .map(|_| index)
            })?;
        from = index + 1;
        found = Some(index + 1);
    }
    found
}

fn at_line(text: &str, field: &str, message: &str) -> String {
    match line_of(text, field) {
        Some(line) => format!("line {line}: {field}: {message}"),
        None => format!("{field}: {message}"),
    }
}

/// Parses and checks the YAML `text`; an error names the line and the field.
pub fn parse(text: &str) -> Result<Manifest, String> {
    let file: File = yaml_serde::from_str(text).map_err(|err| {
        let message = err.to_string();
        match err.location() {
            Some(location) if !message.contains("line ") => {
                format!("line {}: {message}", location.line())
            }
            _ => message,
        }
    })?;
    let service: ServiceRequest = serde_path_to_error::deserialize(Value::Object(file.service))
        .map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner().to_string();
            let unknown = inner
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next());
            match unknown {
                Some(key) if path == "." => at_line(text, key, &inner),
                Some(key) if !path.ends_with(key) => {
                    at_line(text, &format!("{path}.{key}"), &inner)
                }
                _ if path == "." => inner,
                _ => at_line(text, &path, &inner),
            }
        })?;
    service.check().map_err(|problem| {
        let json = serde_json::to_value(&problem).unwrap_or_default();
        let detail = json["detail"].as_str().unwrap_or_default().to_owned();
        match json["field"].as_str() {
            Some(field) => at_line(text, field, &detail),
            None => detail,
        }
    })?;
    let repo = file.repo.unwrap_or_else(|| "default".to_owned());
    berth_core::spec::validate_name("repo", &repo)
        .map_err(|err| at_line(text, "repo", &err.to_string()))?;
    Ok(Manifest {
        repo,
        owner: file.owner,
        service,
    })
}

/// Reads and checks the file at `path`.
pub fn load(path: &Path) -> Result<Manifest, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    parse(&text).map_err(|err| format!("{}: {err}", path.display()))
}

/// One line about what the file declares.
pub fn summary(manifest: &Manifest) -> String {
    let service = &manifest.service;
    let image = service
        .image
        .clone()
        .or_else(|| service.image_id.map(|id| format!("image #{id}")))
        .unwrap_or_default();
    let port = service
        .port
        .map(|port| format!(", port {port}"))
        .unwrap_or_default();
    format!(
        "service {} in {} ({image}, {} replica(s){port})",
        service.name,
        manifest.repo,
        service.replicas.unwrap_or(1)
    )
}

/// Shows what applying `manifest` changes, then (unless `dry_run`) applies it.
pub async fn apply(client: &HubClient, manifest: &Manifest, dry_run: bool) -> Result<(), String> {
    let me = client.call(Method::GET, "/api/users/me", None).await?;
    let me_name = me["name"].as_str().unwrap_or_default().to_owned();
    let owner = manifest.owner.clone().unwrap_or_else(|| me_name.clone());
    let owner_id = if owner == me_name {
        me["id"].as_i64()
    } else {
        let users = client.call(Method::GET, "/api/users", None).await?;
        users["users"]
            .as_array()
            .and_then(|users| users.iter().find(|user| user["name"] == owner.as_str()))
            .and_then(|user| user["id"].as_i64())
    }
    .ok_or_else(|| format!("no user {owner}"))?;
    let listing = if owner == me_name {
        "/api/services"
    } else {
        "/api/services?all=true"
    };
    let listed = client.call(Method::GET, listing, None).await?;
    let existing = listed["services"].as_array().and_then(|services| {
        services.iter().find(|service| {
            service["name"] == manifest.service.name.as_str()
                && service["owner_id"].as_i64() == Some(owner_id)
        })
    });
    let body = serde_json::to_value(&manifest.service).map_err(|err| err.to_string())?;
    let Some(existing) = existing else {
        println!("+ create {} for {owner}", summary(manifest));
        if dry_run {
            return Ok(());
        }
        let accepted = client
            .call(
                Method::POST,
                &format!("/api/{owner}/{}/services", manifest.repo),
                Some(&body),
            )
            .await?;
        let created = super::progress::follow(client, accepted, false).await?;
        let service = &created["service"];
        println!(
            "created service {} (id {}, {})",
            manifest.service.name, service["id"], service["status"]
        );
        return Ok(());
    };
    let id = existing["id"].as_i64().unwrap_or_default();
    let plan = client
        .call(
            Method::PUT,
            &format!("/api/services/{id}?dry_run=true"),
            Some(&body),
        )
        .await?;
    let changes = plan["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        println!(
            "= service {} (id {id}) is as declared",
            manifest.service.name
        );
        return Ok(());
    }
    println!("~ service {} (id {id}):", manifest.service.name);
    for change in &changes {
        println!(
            "    {}: {} → {}",
            change["field"].as_str().unwrap_or_default(),
            compact(&change["from"]),
            compact(&change["to"])
        );
    }
    if plan["containers_replaced"] == json!(true) {
        println!("  its containers will be replaced (started again if it runs)");
    } else {
        println!("  only how it is served changes; its containers stay");
    }
    if dry_run {
        return Ok(());
    }
    let accepted = client
        .call(Method::PUT, &format!("/api/services/{id}"), Some(&body))
        .await?;
    let applied = super::progress::follow(client, accepted, false).await?;
    println!("applied: version {}", applied["service"]["version"]);
    Ok(())
}

fn compact(value: &Value) -> String {
    match value {
        Value::Null => "(none)".to_owned(),
        Value::String(text) => format!("{text:?}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: flood\nrepo: geoml\nimage: geo/flood:1.2\nport: 7860\nreplicas: 2\n\
        serving:\n  routing:\n    policy: least_loaded\n  warmup:\n    path: /predict\n    count: 3\n";

    #[test]
    fn a_good_file_reads_with_its_defaults() {
        let manifest = parse(GOOD).expect("valid");
        assert_eq!(manifest.repo, "geoml");
        assert_eq!(manifest.service.replicas, Some(2));
        let serving = manifest.service.serving.expect("serving");
        assert_eq!(serving.warmup.expect("warmup").method, "POST");
        assert_eq!(
            summary(&parse("name: a\nimage: b\n").expect("minimal")),
            "service a in default (b, 1 replica(s))"
        );
    }

    #[test]
    fn mistakes_point_at_their_line() {
        for (text, line, field) in [
            (GOOD.replace("replicas: 2", "replica: 2"), 5, "replica"),
            (
                GOOD.replace("least_loaded", "fastest"),
                8,
                "serving.routing.policy",
            ),
            (
                GOOD.replace("count: 3", "count: 0"),
                11,
                "serving.warmup.count",
            ),
            (GOOD.replace("port: 7860", "port: 0"), 4, "port"),
            (GOOD.replace("replicas: 2", "replicas: 900"), 5, "replicas"),
            (GOOD.replace("name: flood", "name: -flood"), 1, "name"),
            (
                GOOD.replace("    path: /predict", "    path: predict"),
                10,
                "path",
            ),
        ] {
            let err = parse(&text).expect_err("refused");
            assert!(
                err.starts_with(&format!("line {line}:")) && err.contains(field),
                "{field}: {err}"
            );
        }
        let syntax = parse("name: [unclosed\n").expect_err("syntax");
        assert!(syntax.contains("line"), "{syntax}");
    }
}
