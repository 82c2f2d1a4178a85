//! API tokens: a user's tokens (name, creation, last use, expiry; never their text), a form to
//! issue one (shown once, on the page that answers the form) and a revoke button per token.
//! Everyone manages their own; admins reach anyone's with `?user=ID`, from the users page.

use std::sync::Arc;

use askama::Template;
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use berth_http::Path;
use berth_http::Problem;
use berth_store::users;

use super::forms::{
    Field, FieldView, FormData, Kind, Refusal, field, form_error, form_status, simple_views, submit,
};
use super::session::Visitor;
use super::text::Tr;
use super::{Chrome, problem_page, rendered, see_other, timestamp};
use berth_hub::api::{self, CurrentUser};
use berth_hub::state::HubState;

type Shared = State<Arc<HubState>>;

const FIELDS: &[Field] = &[
    field("name", Kind::Text),
    field("expires_in_days", Kind::Integer),
];

/// One token as a row.
#[derive(Debug, Clone)]
pub struct TokenRow {
    id: i64,
    name: String,
    created: String,
    last_used: String,
    expires: String,
}

#[derive(Template)]
#[template(path = "console/tokens.html")]
struct TokensPage {
    t: Tr,
    chrome: Chrome,
    owner: String,
    owner_id: i64,
    tokens: Vec<TokenRow>,
    fields: Vec<FieldView>,
    form_error: Option<String>,
    issued: Option<String>,
}

/// The user whose tokens a request is about: `?user=ID` (or the form's `user`), else the
/// visitor.
fn whose(visitor: &Visitor, value: &str) -> i64 {
    value.parse().unwrap_or(visitor.signed.user.id)
}

fn as_visitor(visitor: &Visitor) -> CurrentUser {
    CurrentUser(visitor.signed.user.clone())
}

async fn tokens_page(
    state: &Arc<HubState>,
    visitor: &Visitor,
    user_id: i64,
    values: &FormData,
    refusal: Option<&Refusal>,
    issued: Option<String>,
) -> Response {
    let listed =
        api::users::list_tokens(State(Arc::clone(state)), as_visitor(visitor), Path(user_id)).await;
    let owner = async {
        let mut connection = state.store.acquire().await?;
        Ok::<_, Problem>(users::get_user(&mut connection, user_id).await?.name)
    };
    let (Json(listed), owner) = match (listed, owner.await) {
        (Ok(listed), Ok(owner)) => (listed, owner),
        (Err(problem), _) | (_, Err(problem)) => {
            return problem_page(visitor, "tokens", &problem);
        }
    };
    let when = |value: &serde_json::Value| value.as_i64().map_or_else(|| "—".to_owned(), timestamp);
    let tokens = listed["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|token| TokenRow {
            id: token["id"].as_i64().unwrap_or_default(),
            name: token["name"].as_str().unwrap_or_default().to_owned(),
            created: when(&token["created_at"]),
            last_used: when(&token["last_used_at"]),
            expires: when(&token["expires_at"]),
        })
        .collect();
    rendered(
        form_status(refusal),
        &TokensPage {
            t: visitor.t,
            chrome: visitor.chrome("tokens"),
            owner,
            owner_id: user_id,
            tokens,
            fields: simple_views(visitor.t, "token", FIELDS, values, refusal),
            form_error: form_error(refusal),
            issued,
        },
    )
}

/// `GET /tokens[?user=ID]`.
pub async fn page(State(state): Shared, visitor: Visitor, RawQuery(query): RawQuery) -> Response {
    let query = FormData::parse(query.unwrap_or_default().as_bytes());
    let user_id = whose(&visitor, &query.get("user"));
    tokens_page(&state, &visitor, user_id, &FormData::default(), None, None).await
}

/// `POST /tokens`: issues a token and shows it once.
pub async fn create(State(state): Shared, visitor: Visitor, form: FormData) -> Response {
    let user_id = whose(&visitor, &form.get("user"));
    let issued = submit(FIELDS, &form, |body| {
        api::users::issue_token(
            State(Arc::clone(&state)),
            as_visitor(&visitor),
            Path(user_id),
            body,
        )
    })
    .await;
    match issued {
        Ok((_, Json(answer))) => {
            let token = answer["token"].as_str().unwrap_or_default().to_owned();
            tokens_page(
                &state,
                &visitor,
                user_id,
                &FormData::default(),
                None,
                Some(token),
            )
            .await
        }
        Err(refusal) => tokens_page(&state, &visitor, user_id, &form, Some(&refusal), None).await,
    }
}

/// `POST /tokens/{id}/revoke`: revokes a token at once.
pub async fn revoke(
    State(state): Shared,
    visitor: Visitor,
    Path(token_id): Path<i64>,
    form: FormData,
) -> Response {
    let user_id = whose(&visitor, &form.get("user"));
    match api::users::revoke_token(
        State(state),
        as_visitor(&visitor),
        Path((user_id, token_id)),
    )
    .await
    {
        Ok(_) => see_other(&format!("/tokens?user={user_id}")),
        Err(problem) => problem_page(&visitor, "tokens", &problem),
    }
}
