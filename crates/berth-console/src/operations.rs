//! The operation log page (`/operations`), filterable by user, node, service and action, and
//! the operation rows other pages show. Admins read everyone's; a user reads their own.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use berth_store::operations::{self, Operation, OperationFilter};
use berth_store::{Conn, StoreError, users};
use serde_json::Value;

use super::forms::FormData;
use super::session::Visitor;
use super::text::Tr;
use super::{Chrome, problem_page, render, timestamp};
use berth_hub::state::HubState;

/// Rows per page.
const PAGE_SIZE: i64 = 50;

/// One operation as a table row.
#[derive(Debug, Clone)]
pub struct OperationRow {
    /// When, UTC.
    pub at: String,
    /// Who, or `None` for the hub itself.
    pub user: Option<String>,
    /// What.
    pub action: String,
    /// On what (`service 3`).
    pub target: String,
    /// `ok`, `failed`, …
    pub outcome: String,
    /// The detail as short `key: value` phrases, for reading.
    pub summary: String,
    /// The detail as compact JSON, behind a toggle.
    pub detail: String,
}

/// Longest text a summary shows of one value.
const SUMMARY_VALUE_CHARS: usize = 80;

/// One value of an operation's detail as a person reads it: text without quotes, lists joined,
/// sizes (`*_bytes`) in binary units, times (`*_ms`, `*_at`) in UTC, long text cut.
fn readable(key: &str, value: &Value) -> String {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) if key.ends_with("_bytes") => {
            super::human_bytes(number.as_i64().unwrap_or(0))
        }
        Value::Number(number) if key.ends_with("_at") || key.ends_with("_at_ms") => number
            .as_i64()
            .map_or_else(|| number.to_string(), timestamp),
        Value::Array(items) => items
            .iter()
            .map(|item| readable("", item))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(fields) => fields
            .iter()
            .map(|(key, value)| format!("{key} {}", readable(key, value)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    };
    if text.chars().count() > SUMMARY_VALUE_CHARS {
        let cut: String = text.chars().take(SUMMARY_VALUE_CHARS).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// Longest summary of one operation; the JSON behind the toggle has the rest.
const SUMMARY_CHARS: usize = 120;

/// An operation's detail as `key: value` phrases joined by ` · ` (empty values left out), at
/// most [`SUMMARY_CHARS`] long.
pub fn summary(detail: &Value) -> String {
    let whole = phrases(detail);
    if whole.chars().count() > SUMMARY_CHARS {
        let cut: String = whole.chars().take(SUMMARY_CHARS).collect();
        format!("{cut}…")
    } else {
        whole
    }
}

fn phrases(detail: &Value) -> String {
    match detail {
        Value::Object(fields) => fields
            .iter()
            .filter(|(_, value)| !value.is_null() && *value != &Value::String(String::new()))
            .map(|(key, value)| format!("{}: {}", key.replace('_', " "), readable(key, value)))
            .collect::<Vec<_>>()
            .join(" · "),
        Value::Null => String::new(),
        other => readable("", other),
    }
}

/// Table rows for `found`, with user names.
pub async fn rows(conn: &mut Conn, found: Vec<Operation>) -> Result<Vec<OperationRow>, StoreError> {
    let names: HashMap<i64, String> = users::list_users(conn)
        .await?
        .into_iter()
        .map(|user| (user.id, user.name))
        .collect();
    Ok(found
        .into_iter()
        .map(|operation| OperationRow {
            at: timestamp(operation.at),
            user: operation
                .user_id
                .map(|id| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"))),
            action: operation.action,
            target: format!("{} {}", operation.target_kind, operation.target_id),
            outcome: operation.outcome,
            summary: summary(&operation.detail),
            detail: operation.detail.to_string(),
        })
        .collect())
}

/// The newest `size` operations matching `filter`, as rows.
pub async fn recent(
    conn: &mut Conn,
    mut filter: OperationFilter,
    size: i64,
) -> Result<Vec<OperationRow>, StoreError> {
    filter.page = 1;
    filter.size = size;
    let (found, _) = operations::list(conn, &filter).await?;
    rows(conn, found).await
}

#[derive(Template)]
#[template(path = "console/operations.html")]
struct OperationsPage {
    t: Tr,
    chrome: Chrome,
    operations: Vec<OperationRow>,
    users: Vec<(i64, String)>,
    user: String,
    node: String,
    service: String,
    action: String,
    page: i64,
    pages: i64,
    total: i64,
    query_without_page: String,
}

/// A number from the query, or `None` when empty or not a number.
fn number(query: &FormData, name: &str) -> Option<i64> {
    query.get(name).trim().parse().ok()
}

/// `GET /operations?user=&node=&service=&action=&page=`.
pub async fn page(
    State(state): State<Arc<HubState>>,
    visitor: Visitor,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = FormData::parse(raw.unwrap_or_default().as_bytes());
    let admin = visitor.chrome("operations").is_admin();
    let filter = OperationFilter {
        service_id: number(&query, "service"),
        node_id: number(&query, "node"),
        user_id: number(&query, "user").filter(|_| admin),
        visible_to: (!admin).then_some(visitor.signed.user.id),
        action: Some(query.get("action").trim().to_owned()).filter(|action| !action.is_empty()),
        page: number(&query, "page").unwrap_or(1).max(1),
        size: PAGE_SIZE,
    };
    let loaded = async {
        let mut connection = state.store.acquire().await?;
        let (found, total) = operations::list(&mut connection, &filter).await?;
        let users = if admin {
            users::list_users(&mut connection)
                .await?
                .into_iter()
                .map(|user| (user.id, user.name))
                .collect()
        } else {
            Vec::new()
        };
        Ok::<_, StoreError>((rows(&mut connection, found).await?, total, users))
    };
    let (operations, total, users) = match loaded.await {
        Ok(loaded) => loaded,
        Err(err) => {
            return problem_page(&visitor, "operations", &err.into());
        }
    };
    let keep = |name: &str| query.get(name);
    let query_without_page = form_urlencoded::Serializer::new(String::new())
        .append_pair("user", &keep("user"))
        .append_pair("node", &keep("node"))
        .append_pair("service", &keep("service"))
        .append_pair("action", &keep("action"))
        .finish();
    render(&OperationsPage {
        t: visitor.t,
        chrome: visitor.chrome("operations"),
        operations,
        users,
        user: keep("user"),
        node: keep("node"),
        service: keep("service"),
        action: keep("action"),
        page: filter.page,
        pages: ((total + PAGE_SIZE - 1) / PAGE_SIZE).max(1),
        total,
        query_without_page,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_detail_reads_as_phrases() {
        let detail = json!({
            "name": "web", "replicas": 2, "memory_bytes": 536_870_912,
            "changes": [{"field": "image", "to": "b"}], "error": "", "gone": null,
        });
        let said = summary(&detail);
        assert!(said.contains("name: web"), "{said}");
        assert!(said.contains("memory bytes: 512.0 MiB"), "{said}");
        assert!(said.contains("changes: field image, to b"), "{said}");
        assert!(!said.contains("error") && !said.contains("gone"), "{said}");
        let long = summary(&json!({"command": ["sh", "-c", "x".repeat(200)], "name": "web"}));
        assert!(
            long.contains('…') && long.chars().count() <= SUMMARY_CHARS + 1,
            "long values are cut: {long}"
        );
        assert_eq!(summary(&Value::Null), "");
    }
}
