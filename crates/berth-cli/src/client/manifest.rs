//! Services declared in YAML: `berth validate -f service.yaml` checks a file offline with the
//! hub's own rules; `berth apply -f service.yaml` shows
//! what would change and applies it — creating the service, or deploying its next version.
//!
//! The file is the hub's service body (`name`, `image`, `port`, `replicas`, `serving`, …) plus
//! `repo` (default `default`), `owner` (default: the caller; another owner needs an admin) and
//! `start` (default true: apply starts what it creates). Seed 004's model files are services
//! too: `model_id`, `model_path`, `device`, `batch_size`, `max_memory_mb` (and `runtime`) at the
//! top become the body's `model`, and the service is named after the model. `berth validate` reports every mistake
//! of a file at once, each at its line and column, with "did you mean" for a misspelt key or
//! value; a create is checked against the cluster (`?dry_run=true`) before it is made.

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
    /// Start the service once created (`start: false` in the file creates it stopped).
    pub start: bool,
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    repo: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    start: Option<bool>,
    #[serde(flatten)]
    service: Map<String, Value>,
}

/// The keys of seed 004's model files, which stand at the top of the file and go into the
/// service's `model`.
const MODEL_KEYS: [&str; 6] = [
    "model_id",
    "model_path",
    "device",
    "batch_size",
    "max_memory_mb",
    "runtime",
];

/// A service name made of a model id: lower case, other characters than letters, digits and
/// `-` as `-`, at most 63 characters.
fn service_name_of(model_id: &str) -> String {
    let name: String = model_id
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-');
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches('-')
        .to_owned()
}

/// Seed 004's model file (`model_id` at the top) as a service body: its keys moved into `model`,
/// the service named after the model unless the file names it.
fn from_model_file(mut service: Map<String, Value>) -> Map<String, Value> {
    if !service.contains_key("model_id") || service.contains_key("model") {
        return service;
    }
    let mut model = Map::new();
    for key in MODEL_KEYS {
        if let Some(value) = service.remove(key) {
            model.insert(key.to_owned(), value);
        }
    }
    if !service.contains_key("name")
        && let Some(id) = model.get("model_id").and_then(Value::as_str)
    {
        service.insert("name".to_owned(), json!(service_name_of(id)));
    }
    service.insert("model".to_owned(), Value::Object(model));
    service
}

/// The line and column (1-based) of the key at the end of `path` (`serving.routing.policy`),
/// looking for each segment below the one before it. A model file's `model.…` keys stand at
/// the top.
fn place_of(text: &str, path: &str) -> Option<(usize, usize)> {
    place_of_path(text, path).or_else(|| {
        path.strip_prefix("model.")
            .and_then(|key| place_of_path(text, key))
    })
}

fn place_of_path(text: &str, path: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    let mut found = None;
    for segment in path.split('.').filter(|segment| !segment.is_empty()) {
        let key = segment.split('[').next().unwrap_or(segment);
        let place = text
            .lines()
            .enumerate()
            .skip(from)
            .find_map(|(index, line)| {
                let content = line.trim_start().trim_start_matches("- ").trim_start();
                let content = content.trim_start_matches(['"', '\'']);
                content
                    .strip_prefix(key)
                    .and_then(|rest| rest.trim_start_matches(['"', '\'']).strip_prefix(':'))
                    .map(|_| (index, line.len() - content.len() + 1))
            })?;
        from = place.0 + 1;
        found = Some((place.0 + 1, place.1));
    }
    found
}

/// One mistake in a file: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mistake {
    /// Line and column (1-based) when the mistake is at a key of the file.
    pub place: Option<(usize, usize)>,
    /// The field and what is wrong with it.
    pub message: String,
}

impl Mistake {
    fn at(text: &str, field: &str, message: &str) -> Self {
        let message = message
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(": "))
            .unwrap_or(message);
        Self {
            place: place_of(text, field),
            message: format!("{field}: {message}"),
        }
    }
}

impl std::fmt::Display for Mistake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.place {
            Some((line, column)) => write!(f, "line {line}, column {column}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The names between backticks after `expected` in a serde message.
fn expected_names(message: &str) -> Vec<&str> {
    let Some((_, list)) = message.split_once("expected ") else {
        return Vec::new();
    };
    list.split('`')
        .skip(1)
        .step_by(2)
        .filter(|name| !name.is_empty())
        .collect()
}

/// The known name closest to `given` when it is close enough to be a slip of the keyboard.
fn closest<'a>(given: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|name| (strsim::jaro_winkler(given, name), *name))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| name)
}

/// A serde message made short: an unknown field or value gets "did you mean" (or the list of
/// what is known when nothing is close) instead of a long `expected one of …`.
fn explain(message: &str) -> String {
    for (prefix, what) in [("unknown field `", "field"), ("unknown variant `", "value")] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let given = rest.split('`').next().unwrap_or_default();
        let known = expected_names(rest);
        return match closest(given, &known) {
            Some(name) => format!("unknown {what} `{given}`; did you mean `{name}`?"),
            None => format!("unknown {what} `{given}`; known: {}", known.join(", ")),
        };
    }
    message.to_owned()
}

/// Removes the value at `path` (`a.b[2].c`) from `root`; whether something was removed.
fn remove_at(root: &mut Value, path: &str) -> bool {
    let mut segments: Vec<&str> = path.split('.').filter(|part| !part.is_empty()).collect();
    let Some(last) = segments.pop() else {
        return false;
    };
    let mut node = root;
    for segment in segments {
        let key = segment.split('[').next().unwrap_or(segment);
        let Some(next) = node.get_mut(key) else {
            return false;
        };
        node = next;
        for index in segment.split('[').skip(1) {
            let Some(next) = index
                .trim_end_matches(']')
                .parse::<usize>()
                .ok()
                .and_then(|index| node.get_mut(index))
            else {
                return false;
            };
            node = next;
        }
    }
    let key = last.split('[').next().unwrap_or(last);
    node.as_object_mut()
        .and_then(|object| object.remove(key))
        .is_some()
}

/// Values that stand in for a required field set aside for its mistake, so checking goes on.
const STAND_INS: [(&str, &str); 2] = [("name", "stand-in"), ("image", "stand-in")];

/// The service in `body`, or the first mistake and the field it is at (empty when none).
fn read_service(text: &str, body: &Value) -> Result<ServiceRequest, (Mistake, String)> {
    let service: ServiceRequest =
        serde_path_to_error::deserialize(body.clone()).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner().to_string();
            let unknown = inner
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned);
            let field = match unknown {
                Some(key) if path == "." => key,
                Some(key) if !path.ends_with(&key) => format!("{path}.{key}"),
                _ if path == "." => String::new(),
                _ => path,
            };
            let mistake = if field.is_empty() {
                Mistake {
                    place: None,
                    message: explain(&inner),
                }
            } else {
                Mistake::at(text, &field, &explain(&inner))
            };
            (mistake, field)
        })?;
    service.check().map_err(|problem| {
        let json = serde_json::to_value(&problem).unwrap_or_default();
        let detail = json["detail"].as_str().unwrap_or_default().to_owned();
        match json["field"].as_str() {
            Some(field) => (Mistake::at(text, field, &detail), field.to_owned()),
            None => (
                Mistake {
                    place: None,
                    message: detail,
                },
                String::new(),
            ),
        }
    })?;
    Ok(service)
}

/// Parses and checks the YAML `text`: the service, or every mistake found, each at its line
/// and column. A mistake's field is set aside and checking goes on.
pub fn parse(text: &str) -> Result<Manifest, Vec<Mistake>> {
    let file: File = yaml_serde::from_str(text).map_err(|err| {
        vec![Mistake {
            place: err
                .location()
                .map(|location| (location.line(), location.column())),
            message: err.to_string(),
        }]
    })?;
    let mut mistakes = Vec::new();
    let repo = file.repo.unwrap_or_else(|| "default".to_owned());
    if let Err(err) = berth_core::spec::validate_name("repo", &repo) {
        mistakes.push(Mistake::at(text, "repo", &err.to_string()));
    }
    let mut body = Value::Object(from_model_file(file.service));
    let mut set_aside: Vec<String> = Vec::new();
    let service = loop {
        match read_service(text, &body) {
            Ok(service) => break Some(service),
            Err((mistake, field)) => {
                // A required field set aside for its own mistake: its object goes too (the
                // file's top level gets a stand-in instead).
                let missing = mistake
                    .message
                    .rsplit_once("missing field `")
                    .map(|(_, key)| key.trim_end_matches('`'));
                let missing_path = match (missing, field.is_empty()) {
                    (Some(key), true) => key.to_owned(),
                    (Some(key), false) => format!("{field}.{key}"),
                    (None, _) => String::new(),
                };
                if !missing_path.is_empty() && set_aside.contains(&missing_path) {
                    match STAND_INS.iter().find(|(name, _)| *name == missing_path) {
                        Some((name, value)) => body[*name] = json!(value),
                        None if remove_at(&mut body, &field) => {}
                        None => break None,
                    }
                    continue;
                }
                mistakes.push(mistake);
                if field.is_empty() || mistakes.len() >= 50 || !remove_at(&mut body, &field) {
                    break None;
                }
                set_aside.push(field);
            }
        }
    };
    match service {
        Some(service) if mistakes.is_empty() => Ok(Manifest {
            repo,
            owner: file.owner,
            service,
            start: file.start.unwrap_or(true),
        }),
        _ => Err(mistakes),
    }
}

/// Reads and checks the file at `path`; every mistake on its own line, `FILE:LINE:COLUMN: …`.
pub fn load(path: &Path) -> Result<Manifest, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    parse(&text).map_err(|mut mistakes| {
        mistakes.sort_by_key(|mistake| mistake.place);
        let lines: Vec<String> = mistakes
            .iter()
            .map(|mistake| match mistake.place {
                Some((line, column)) => {
                    format!("{}:{line}:{column}: {}", path.display(), mistake.message)
                }
                None => format!("{}: {}", path.display(), mistake.message),
            })
            .collect();
        let count = match mistakes.len() {
            1 => String::new(),
            count => format!("\n{count} mistakes"),
        };
        format!("{}{count}", lines.join("\n"))
    })
}

/// One line about what the file declares.
pub fn summary(manifest: &Manifest) -> String {
    let service = &manifest.service;
    let image = service
        .image
        .clone()
        .or_else(|| service.image_id.map(|id| format!("image #{id}")))
        .or_else(|| {
            service
                .model
                .as_ref()
                .map(|model| format!("model {} from {}", model.model_id, model.model_path))
        })
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
        let mut body = body;
        body["start"] = json!(manifest.start);
        let path = format!("/api/{owner}/{}/services", manifest.repo);
        // The placement check a create makes, without creating: a refusal says so now.
        let preview = client
            .call(Method::POST, &format!("{path}?dry_run=true"), Some(&body))
            .await?;
        let nodes: Vec<String> = preview["placements"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|placed| placed["node_name"].as_str().unwrap_or("?").to_owned())
            .collect();
        println!(
            "+ create {} for {owner}, {} on node(s) {}",
            summary(manifest),
            if manifest.start {
                "started"
            } else {
                "not started"
            },
            nodes.join(", ")
        );
        if dry_run {
            return Ok(());
        }
        let accepted = client.call(Method::POST, &path, Some(&body)).await?;
        let created = super::progress::follow(client, accepted, false).await?;
        let service = &created["service"];
        if manifest.start {
            println!(
                "created service {} (id {}, {})",
                manifest.service.name, service["id"], service["status"]
            );
        } else {
            println!(
                "created service {} (id {}, not started: the file says start: false); `berth service start {}` starts it",
                manifest.service.name, service["id"], manifest.service.name
            );
        }
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
    } else if plan["scales_only"] == json!(true) {
        println!("  only the replica count changes; the replicas that stay are left alone");
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

    /// Seed 004's example, as written.
    const SEED_004: &str = "# model.yaml\nmodel_id: \"transformer\"\nmodel_path: \"/models/transformer.pt\"\ndevice: \"cuda:0\"\nbatch_size: 32\nmax_memory_mb: 4096\n";

    #[test]
    fn seed_004s_model_file_is_a_service() {
        let manifest = parse(SEED_004).expect("valid as written");
        assert_eq!(manifest.service.name, "transformer");
        let model = manifest.service.model.expect("model");
        assert_eq!(
            (
                model.model_path.as_str(),
                model.device.as_str(),
                model.batch_size,
                model.max_memory_mb
            ),
            ("/models/transformer.pt", "cuda:0", 32, Some(4096))
        );
        assert_eq!(service_name_of("My_Model.v2"), "my-model-v2");
        let mistakes = parse(&SEED_004.replace("cuda:0", "tpu")).expect_err("refused");
        assert_eq!(
            (
                mistakes[0].place,
                mistakes[0].message.starts_with("model.device")
            ),
            (Some((4, 1)), true),
            "{mistakes:?}"
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
            let mistakes = parse(&text).expect_err("refused");
            assert_eq!(mistakes.len(), 1, "{mistakes:?}");
            assert!(
                mistakes[0].place.map(|place| place.0) == Some(line)
                    && mistakes[0].message.contains(field),
                "{field}: {mistakes:?}"
            );
        }
        let syntax = parse("name: [unclosed\n").expect_err("syntax");
        assert!(syntax[0].place.is_some(), "{syntax:?}");
    }

    #[test]
    fn every_mistake_of_a_file_is_found_with_a_suggestion() {
        let text = GOOD
            .replace("replicas: 2", "replica: 2")
            .replace("least_loaded", "least_load")
            .replace("port: 7860", "port: 0")
            .replace("name: flood", "name: -flood")
            .replace("count: 3", "count: 0");
        let mistakes = parse(&text).expect_err("refused");
        let said: Vec<String> = mistakes.iter().map(ToString::to_string).collect();
        assert_eq!(mistakes.len(), 5, "{said:#?}");
        for expected in [
            "line 5, column 1: replica: unknown field `replica`; did you mean `replicas`?",
            "line 8, column 5: serving.routing.policy: unknown value `least_load`; did you mean `least_loaded`?",
            "line 4, column 1: port:",
            "line 1, column 1: name:",
            "line 11, column 5: serving.warmup.count:",
        ] {
            assert!(
                said.iter().any(|line| line.starts_with(expected)),
                "{expected} in {said:#?}"
            );
        }
        let far = parse("name: a\nimage: b\nzzz: 1\n").expect_err("unknown");
        assert!(
            far[0].message.contains("known: ") && !far[0].message.contains("did you mean"),
            "{far:?}"
        );
    }
}
