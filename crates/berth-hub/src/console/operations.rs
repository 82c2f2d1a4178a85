//! The operation log page (`/operations`), filterable by user, node, service and action, and
//! the operation rows other pages show. Admins read everyone's; a user reads their own.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use berth_store::operations::{self, Operation, OperationFilter};
use berth_store::{Conn, StoreError, users};

use super::forms::FormData;
use super::session::Visitor;
use super::text::Tr;
use super::{Chrome, problem_page, render, timestamp};
use crate::state::HubState;

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
    /// The detail as compact JSON.
    pub detail: String,
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
