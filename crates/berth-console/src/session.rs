//! Sessions, CSRF and language. Signing in trades an API token for a session cookie
//! (`berth_session`: HttpOnly, SameSite=Strict, Secure behind TLS); the layer in front of every
//! console route finds the session, refuses any POST whose `csrf` field is not the session's
//! token (the sign-in form uses a cookie-bound token of its own), and picks the language from
//! the `berth_lang` cookie or the browser's `Accept-Language`.

use std::sync::Arc;

use askama::Template;
use axum::body::{Body, to_bytes};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use berth_store::{sessions, users};

use super::forms::FormData;
use super::text::{Lang, Tr};
use super::{Chrome, rendered};
use berth_hub::state::HubState;

/// The session cookie over plain HTTP.
const SESSION_COOKIE: &str = "berth_session";
/// The session cookie over HTTPS: `__Host-` makes browsers keep it Secure, host-only, `Path=/`.
const SECURE_SESSION_COOKIE: &str = "__Host-berth_session";
/// The sign-in form's own CSRF cookie.
const SIGN_IN_COOKIE: &str = "berth_sign_in";
/// The language cookie.
const LANG_COOKIE: &str = "berth_lang";
/// How long a session lasts.
const SESSION_LIFETIME_MS: i64 = 12 * 3_600_000;
/// The largest form the console accepts (certificates pasted as PEM fit many times over).
const MAX_FORM_BYTES: usize = 1 << 20;

/// The signed-in user and their session's CSRF token, put in the request by [`attach`].
#[derive(Debug, Clone)]
pub struct Signed {
    /// Who.
    pub user: users::User,
    /// The token every form must carry.
    pub csrf: String,
}

/// The value of cookie `name`, if the request has it.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The page language: the cookie's, else the browser's first supported language, else English.
fn preferred_language(headers: &HeaderMap) -> Lang {
    if let Some(lang) = cookie(headers, LANG_COOKIE).and_then(Lang::parse) {
        return lang;
    }
    headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .split(',')
                .filter_map(|part| part.split(';').next())
                .find_map(|tag| Lang::parse(tag.trim()))
        })
        .unwrap_or(Lang::En)
}

/// Cookies are Secure when the browser reached the hub over TLS (through a proxy that says so).
fn secure(headers: &HeaderMap) -> &'static str {
    match headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
    {
        Some("https") => "; Secure",
        _ => "",
    }
}

/// The session cookie's name for this request's scheme.
fn session_cookie_name(headers: &HeaderMap) -> &'static str {
    if secure(headers).is_empty() {
        SESSION_COOKIE
    } else {
        SECURE_SESSION_COOKIE
    }
}

/// The session id the browser sent, under either name.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, SECURE_SESSION_COOKIE).or_else(|| cookie(headers, SESSION_COOKIE))
}

fn set_cookie(response: &mut Response, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

fn forbidden(t: Tr, reason: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}: {reason}", t.get("error.forbidden")),
    )
        .into_response()
}

/// Finds the session and the language, checks the CSRF token of every POST, and sets the
/// headers every console response carries.
pub async fn attach(State(state): State<Arc<HubState>>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let t = Tr(preferred_language(&parts.headers));
    parts.extensions.insert(t);
    let public_asset = parts.uri.path().starts_with("/console/assets/");
    let session = match session_cookie(&parts.headers).filter(|_| !public_asset) {
        Some(id) => match state.store.acquire().await {
            Ok(mut connection) => sessions::find(&mut connection, id).await.ok().flatten(),
            Err(_) => None,
        },
        None => None,
    };
    if let Some(session) = &session {
        parts.extensions.insert(Signed {
            user: session.user.clone(),
            csrf: session.csrf_token.clone(),
        });
    }
    let body = if parts.method == Method::POST {
        let Ok(bytes) = to_bytes(body, MAX_FORM_BYTES).await else {
            return (StatusCode::PAYLOAD_TOO_LARGE, "the form is too large").into_response();
        };
        let form = FormData::parse(&bytes);
        let expected = if parts.uri.path() == "/sign-in" {
            cookie(&parts.headers, SIGN_IN_COOKIE).map(str::to_owned)
        } else {
            session.as_ref().map(|session| session.csrf_token.clone())
        };
        let Some(expected) = expected else {
            return see_sign_in(&parts);
        };
        let given = form.get("csrf");
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return forbidden(t, "the form's CSRF token does not match this session");
        }
        Body::from(bytes)
    } else {
        body
    };
    let mut response = next.run(Request::from_parts(parts, body)).await;
    let headers = response.headers_mut();
    // A page may have set its own (the terminal's allows term.js's style attributes).
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

fn see_sign_in(parts: &Parts) -> Response {
    let next = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("next", next)
        .finish();
    Redirect::to(&format!("/sign-in?{query}")).into_response()
}

/// A signed-in visitor; pages that take it send everyone else to the sign-in page.
#[derive(Debug, Clone)]
pub struct Visitor {
    /// The session.
    pub signed: Signed,
    /// The page language.
    pub t: Tr,
    /// The path asked for.
    pub path: String,
}

impl Visitor {
    /// The signed-in user as the API's handlers take them.
    pub fn as_user(&self) -> berth_hub::api::CurrentUser {
        berth_hub::api::CurrentUser(self.signed.user.clone())
    }

    /// The frame of a page in `section`.
    pub fn chrome(&self, section: &'static str) -> Chrome {
        Chrome {
            user: self.signed.user.clone(),
            csrf: self.signed.csrf.clone(),
            section,
            path: self.path.clone(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let t = parts.extensions.get::<Tr>().copied().unwrap_or_default();
        match parts.extensions.get::<Signed>() {
            Some(signed) => Ok(Self {
                signed: signed.clone(),
                t,
                path: parts.uri.path().to_owned(),
            }),
            None => Err(see_sign_in(parts)),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Tr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Tr>().copied().unwrap_or_default())
    }
}

#[derive(Template)]
#[template(path = "console/sign_in.html")]
struct SignInPage {
    t: Tr,
    csrf: String,
    next: String,
    error: Option<String>,
    token: String,
}

/// Only paths on this site: `/x`, never `//host` or a full URL.
fn local_path(next: &str) -> String {
    if next.starts_with('/') && !next.starts_with("//") && !next.starts_with("/\\") {
        next.to_owned()
    } else {
        "/".to_owned()
    }
}

fn sign_in_form(
    headers: &HeaderMap,
    t: Tr,
    next: &str,
    error: Option<String>,
    token: String,
) -> Response {
    let csrf = berth_store::secrets::random_hex::<16>().unwrap_or_default();
    let page = SignInPage {
        t,
        csrf: csrf.clone(),
        next: local_path(next),
        error: error.clone(),
        token,
    };
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let mut response = rendered(status, &page);
    set_cookie(
        &mut response,
        format!(
            "{SIGN_IN_COOKIE}={csrf}; Path=/sign-in; HttpOnly; SameSite=Strict{}",
            secure(headers)
        ),
    );
    response
}

/// `GET /sign-in?next=/path`.
pub async fn sign_in_page(t: Tr, headers: HeaderMap, request: Request) -> Response {
    let next = request
        .uri()
        .query()
        .map(|query| FormData::parse(query.as_bytes()).get("next"))
        .unwrap_or_default();
    sign_in_form(&headers, t, &next, None, String::new())
}

/// `POST /sign-in`: an API token becomes a session.
pub async fn sign_in(
    State(state): State<Arc<HubState>>,
    t: Tr,
    headers: HeaderMap,
    form: FormData,
) -> Response {
    let token = form.get("token");
    let next = form.get("next");
    let user = match state.store.acquire().await {
        Ok(mut connection) => users::user_for_token(&mut connection, token.trim()).await,
        Err(err) => Err(err),
    };
    let bearer = match user {
        Ok(Some(bearer)) if bearer.services.is_none() => bearer,
        Ok(Some(_)) => {
            return sign_in_form(
                &headers,
                t,
                &next,
                Some(t.get("sign_in.limited").to_owned()),
                String::new(),
            );
        }
        Ok(None) => {
            return sign_in_form(
                &headers,
                t,
                &next,
                Some(t.get("sign_in.refused").to_owned()),
                String::new(),
            );
        }
        Err(err) => {
            return sign_in_form(&headers, t, &next, Some(err.to_string()), String::new());
        }
    };
    let started = match state.store.acquire().await {
        Ok(mut connection) => {
            sessions::start(
                &mut connection,
                bearer.user.id,
                bearer.token_id,
                SESSION_LIFETIME_MS,
            )
            .await
        }
        Err(err) => Err(err),
    };
    match started {
        Ok(started) => {
            let mut response = Redirect::to(&local_path(&next)).into_response();
            set_cookie(
                &mut response,
                format!(
                    "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
                    session_cookie_name(&headers),
                    started.id,
                    SESSION_LIFETIME_MS / 1000,
                    secure(&headers)
                ),
            );
            set_cookie(
                &mut response,
                format!("{SIGN_IN_COOKIE}=; Path=/sign-in; Max-Age=0"),
            );
            response
        }
        Err(err) => sign_in_form(&headers, t, &next, Some(err.to_string()), String::new()),
    }
}

/// `POST /sign-out`: ends the session and forgets the cookie.
pub async fn sign_out(State(state): State<Arc<HubState>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers)
        && let Ok(mut connection) = state.store.acquire().await
        && let Err(err) = sessions::end(&mut connection, id).await
    {
        tracing::warn!(error = %err, "Ending a console session failed.");
    }
    let mut response = Redirect::to("/sign-in").into_response();
    set_cookie(
        &mut response,
        format!(
            "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
            session_cookie_name(&headers),
            secure(&headers)
        ),
    );
    response
}

/// `GET /language/{en|zh}?back=/path`: remembers the language for a year and goes back.
pub async fn language(Path(lang): Path<String>, headers: HeaderMap, request: Request) -> Response {
    let back = request
        .uri()
        .query()
        .map(|query| FormData::parse(query.as_bytes()).get("back"))
        .unwrap_or_default();
    let Some(lang) = Lang::parse(&lang) else {
        return (StatusCode::NOT_FOUND, "no such language").into_response();
    };
    let mut response = Redirect::to(&local_path(&back)).into_response();
    set_cookie(
        &mut response,
        format!(
            "{LANG_COOKIE}={}; Path=/; Max-Age=31536000; SameSite=Strict{}",
            lang.code(),
            secure(&headers)
        ),
    );
    response
}

/// The 403 page for a page only admins may see, or `None` for an admin.
pub fn admin_only(visitor: &Visitor, section: &'static str) -> Option<Response> {
    if visitor.signed.user.role == users::Role::Admin {
        return None;
    }
    Some(super::problem_page(
        visitor,
        section,
        &berth_http::Problem::new(StatusCode::FORBIDDEN, visitor.t.get("error.admin_only")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_languages_and_next_paths_are_read_safely() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; berth_session=abc; berth_lang=zh"),
        );
        assert_eq!(cookie(&headers, "berth_session"), Some("abc"));
        assert_eq!(preferred_language(&headers), Lang::Zh);
        let mut browser = HeaderMap::new();
        browser.insert(
            header::ACCEPT_LANGUAGE,
            HeaderValue::from_static("zh-CN,zh;q=0.9,en;q=0.8"),
        );
        assert_eq!(preferred_language(&browser), Lang::Zh);
        assert_eq!(preferred_language(&HeaderMap::new()), Lang::En);
        assert_eq!(local_path("/services/3"), "/services/3");
        assert_eq!(local_path("//evil.example/"), "/");
        assert_eq!(local_path("https://evil.example/"), "/");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn every_console_cookie_is_one_the_gateway_keeps_from_services() {
        for name in [
            SESSION_COOKIE,
            SECURE_SESSION_COOKIE,
            SIGN_IN_COOKIE,
            LANG_COOKIE,
        ] {
            assert!(
                berth_gateway::is_console_cookie(name.as_bytes()),
                "{name} would reach services"
            );
        }
        let mut behind_tls = HeaderMap::new();
        behind_tls.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(session_cookie_name(&behind_tls), "__Host-berth_session");
        assert_eq!(session_cookie_name(&HeaderMap::new()), "berth_session");
        behind_tls.insert(
            header::COOKIE,
            HeaderValue::from_static("__Host-berth_session=tls"),
        );
        assert_eq!(session_cookie(&behind_tls), Some("tls"));
    }
}
