//! Names where the API takes ids: a command accepts a service as `name` (one of the caller's),
//! `owner/name` or its id, and a node, spec, image or user by name or id; tables show names in
//! place of the ids the API answers with.

use std::collections::HashMap;

use reqwest::Method;
use serde_json::{Value, json};

use super::api::HubClient;

/// The items of a listing: the answer itself when it is an array, else its `key` array.
fn items(listed: &Value, key: &str) -> Vec<Value> {
    listed
        .as_array()
        .or_else(|| listed[key].as_array())
        .cloned()
        .unwrap_or_default()
}

/// The id of the item of `listed` named `reference` (or with that id), or a message that says
/// which command lists them.
fn find(listed: &[Value], reference: &str, what: &str, listing: &str) -> Result<i64, String> {
    let by_id = reference.parse::<i64>().ok();
    listed
        .iter()
        .find(|item| {
            item["name"].as_str() == Some(reference)
                || (by_id.is_some() && item["id"].as_i64() == by_id)
        })
        .and_then(|item| item["id"].as_i64())
        .ok_or_else(|| format!("no {what} named {reference:?}; `{listing}` lists them"))
}

/// The id of the node `reference` names (its name or id).
pub async fn node_id(client: &HubClient, reference: &str) -> Result<i64, String> {
    if let Ok(id) = reference.parse() {
        return Ok(id);
    }
    let listed = client.call(Method::GET, "/api/nodes", None).await?;
    find(
        &items(&listed, "nodes"),
        reference,
        "node",
        "berth node list",
    )
}

/// The id of the product spec `reference` names.
pub async fn spec_id(client: &HubClient, reference: &str) -> Result<i64, String> {
    if let Ok(id) = reference.parse() {
        return Ok(id);
    }
    let listed = client.call(Method::GET, "/api/specs", None).await?;
    find(
        &items(&listed, "specs"),
        reference,
        "spec",
        "berth spec list",
    )
}

/// The id of the catalog image `reference` names.
pub async fn image_id(client: &HubClient, reference: &str) -> Result<i64, String> {
    if let Ok(id) = reference.parse() {
        return Ok(id);
    }
    let listed = client.call(Method::GET, "/api/images", None).await?;
    find(
        &items(&listed, "images"),
        reference,
        "image",
        "berth image list",
    )
}

/// The id of the user `reference` names; the caller when none is given.
pub async fn user_id(client: &HubClient, reference: Option<&str>) -> Result<i64, String> {
    match reference {
        Some(reference) => {
            if let Ok(id) = reference.parse() {
                return Ok(id);
            }
            let me = client.call(Method::GET, "/api/users/me", None).await?;
            if me["name"].as_str() == Some(reference) {
                return me["id"]
                    .as_i64()
                    .ok_or("the hub did not say who you are".into());
            }
            let listed = client.call(Method::GET, "/api/users", None).await?;
            find(
                &items(&listed, "users"),
                reference,
                "user",
                "berth user list",
            )
        }
        None => client.call(Method::GET, "/api/users/me", None).await?["id"]
            .as_i64()
            .ok_or_else(|| "the hub did not say who you are".to_owned()),
    }
}

/// The id of the service `reference` names: an id as it is; `owner/name` (another user's needs
/// an admin); else `name`, one of the caller's own.
pub async fn service_id(client: &HubClient, reference: &str) -> Result<i64, String> {
    if let Ok(id) = reference.parse::<i64>() {
        return Ok(id);
    }
    let (owner, name) = match reference.split_once('/') {
        Some((owner, name)) => (Some(owner), name),
        None => (None, reference),
    };
    let (listing, owner_id) = match owner {
        Some(owner) => (
            "/api/services?all=true",
            Some(user_id(client, Some(owner)).await?),
        ),
        None => ("/api/services", None),
    };
    let listed = client.call(Method::GET, listing, None).await?;
    items(&listed, "services")
        .iter()
        .find(|service| {
            service["name"].as_str() == Some(name)
                && owner_id.is_none_or(|owner| service["owner_id"].as_i64() == Some(owner))
        })
        .and_then(|service| service["id"].as_i64())
        .ok_or_else(|| match owner {
            Some(owner) => format!(
                "{owner} has no service named {name:?}; `berth service list --all` lists everyone's"
            ),
            None => format!(
                "you have no service named {name:?}; `berth service list` shows yours (another user's is OWNER/NAME)"
            ),
        })
}

/// Id → name of everything `path` lists (empty when the caller may not read it).
async fn names_of(client: &HubClient, path: &str, key: &str) -> HashMap<i64, String> {
    let Ok(listed) = client.call(Method::GET, path, None).await else {
        return HashMap::new();
    };
    items(&listed, key)
        .iter()
        .filter_map(|item| Some((item["id"].as_i64()?, item["name"].as_str()?.to_owned())))
        .collect()
}

/// Node names by id (empty for a caller who may not list nodes).
pub async fn node_names(client: &HubClient) -> HashMap<i64, String> {
    names_of(client, "/api/nodes", "nodes").await
}

/// User names by id (the caller alone for one who is not an admin).
pub async fn user_names(client: &HubClient) -> HashMap<i64, String> {
    let mut names = names_of(client, "/api/users", "users").await;
    if names.is_empty()
        && let Ok(me) = client.call(Method::GET, "/api/users/me", None).await
        && let (Some(id), Some(name)) = (me["id"].as_i64(), me["name"].as_str())
    {
        names.insert(id, name.to_owned());
    }
    names
}

/// Service names by id, everyone's for an admin.
pub async fn service_names(client: &HubClient) -> HashMap<i64, String> {
    let all = names_of(client, "/api/services?all=true", "services").await;
    if all.is_empty() {
        names_of(client, "/api/services", "services").await
    } else {
        all
    }
}

/// Replaces the id in `row[key]` with its name from `names` (left as it is when unknown).
pub fn name_in(row: &mut Value, key: &str, names: &HashMap<i64, String>) {
    if let Some(name) = row[key].as_i64().and_then(|id| names.get(&id)) {
        row[key] = json!(name);
    }
}
