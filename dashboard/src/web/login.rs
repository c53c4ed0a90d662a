//! The login page, the one-time link from `hive dashboard`, and logout.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{AppendHeaders, Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::{self, LOGIN_COOKIE, LoginRefused, SESSION_COOKIE};
use super::{WebState, pages, same_origin};

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    csrf: &'a str,
    error: Option<&'a str>,
    /// Where to go once logged in.
    next: &'a str,
}

#[derive(Template)]
#[template(path = "logged_in.html")]
struct LoggedIn {
    /// The dashboard page to go on to (a checked local path).
    next: String,
}

/// `next` when it is a plain local path of the dashboard (`/approvals/12`), else `/`: a login
/// link must not send the browser anywhere else.
pub fn local_path(next: &str) -> String {
    let plain = next.starts_with('/')
        && !next.starts_with("//")
        && next.len() <= 200
        && next
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
        && !next.split('/').any(|seg| seg == "..");
    if plain {
        next.to_owned()
    } else {
        "/".to_owned()
    }
}

/// Where a page without a session goes.
pub(super) fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

fn login_page(status: StatusCode, error: Option<&str>) -> Response {
    login_page_to(status, error, "/")
}

/// The login page, going on to `next` (a local path) once logged in.
fn login_page_to(status: StatusCode, error: Option<&str>, next: &str) -> Response {
    let csrf = auth::random_token();
    let next = local_path(next);
    let page = LoginPage {
        csrf: &csrf,
        error,
        next: &next,
    };
    let Ok(html) = page.render() else {
        return pages::error_page(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    };
    (
        status,
        [(
            header::SET_COOKIE,
            auth::set_cookie(LOGIN_COOKIE, &csrf, auth::LINK_TTL),
        )],
        Html(html),
    )
        .into_response()
}

fn logged_in(cookie: &str, next: &str) -> Response {
    let html = LoggedIn {
        next: local_path(next),
    }
    .render()
    .unwrap_or_default();
    // Two Set-Cookie headers: appended, not the second replacing the first.
    (
        AppendHeaders([
            (
                header::SET_COOKIE,
                auth::set_cookie(SESSION_COOKIE, cookie, auth::SESSION_TTL),
            ),
            (header::SET_COOKIE, expired(LOGIN_COOKIE)),
        ]),
        Html(html),
    )
        .into_response()
}

fn expired(name: &str) -> String {
    format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

pub(super) async fn page(State(s): State<WebState>, headers: HeaderMap) -> Response {
    if auth::cookie(&headers, SESSION_COOKIE).is_some_and(|c| s.auth.session(c).is_some()) {
        return Redirect::to("/").into_response();
    }
    login_page(StatusCode::OK, None)
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

/// `POST /login`: the operator token from the form. The form's CSRF token must match its cookie
/// and the request must come from this origin.
pub(super) async fn submit(
    State(s): State<WebState>,
    headers: HeaderMap,
    axum::extract::Form(form): axum::extract::Form<LoginForm>,
) -> Response {
    let cookie_csrf = auth::cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if !same_origin(&headers)
        || cookie_csrf.is_empty()
        || !auth::same_secret(cookie_csrf, &form.csrf)
    {
        return login_page(
            StatusCode::FORBIDDEN,
            Some("This form is stale or came from another site; log in again."),
        );
    }
    match s.auth.login(&form.token) {
        Ok(cookie) => logged_in(&cookie, &form.next),
        Err(LoginRefused::WrongToken) => {
            tracing::warn!("a dashboard login with a wrong token");
            login_page(
                StatusCode::UNAUTHORIZED,
                Some("Wrong token. `hive dashboard` prints a login link."),
            )
        }
        Err(LoginRefused::RateLimited) => login_page(
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many failed logins; wait a minute."),
        ),
    }
}

#[derive(Deserialize)]
pub(super) struct LinkQuery {
    #[serde(default)]
    t: String,
    /// Where to go once logged in (an alert's item); a local path, else `/`.
    #[serde(default)]
    next: String,
}

/// `GET /login/link?t=…`: a one-time link from `hive dashboard`. The answer is a page that moves
/// on to `/` by itself: a redirect would carry the cross-site start of the navigation, and a
/// SameSite=Strict cookie would not be sent on its first request.
pub(super) async fn link(State(s): State<WebState>, Query(q): Query<LinkQuery>) -> Response {
    match s.auth.use_link(&q.t) {
        Some(cookie) => logged_in(&cookie, &q.next),
        None => login_page(
            StatusCode::UNAUTHORIZED,
            Some("This login link was used already or has expired; run `hive dashboard` again."),
        ),
    }
}

#[derive(Deserialize)]
pub(super) struct AlertQuery {
    #[serde(default)]
    t: String,
}

/// `GET /go?t=…`: an alert's one-time link. It opens the alert's page: at once with a session,
/// else through the login page, which goes on to it.
pub(super) async fn alert_link(
    State(s): State<WebState>,
    headers: HeaderMap,
    Query(q): Query<AlertQuery>,
) -> Response {
    let Some(path) = s.auth.use_alert_link(&q.t) else {
        return pages::error_page(
            StatusCode::NOT_FOUND,
            "This alert's link was used already or has expired; what it pointed to is in the dashboard.",
        );
    };
    if auth::cookie(&headers, SESSION_COOKIE).is_some_and(|c| s.auth.session(c).is_some()) {
        return Redirect::to(&local_path(&path)).into_response();
    }
    login_page_to(StatusCode::OK, None, &path)
}

pub(super) async fn logout(State(s): State<WebState>, headers: HeaderMap) -> Response {
    if let Some(c) = auth::cookie(&headers, SESSION_COOKIE) {
        s.auth.logout(c);
    }
    (
        [(header::SET_COOKIE, expired(SESSION_COOKIE))],
        Redirect::to("/login"),
    )
        .into_response()
}
