//! The read-only web console on control's ops HTTP port (`/console/`): fleet, health
//! timelines, traffic and config, rendered on the server as HTML with inline SVG and no
//! script.
//!
//! Login exchanges the admin token, posted from a form and compared as a SHA-256 digest
//! in constant time (as [`crate::auth`] does), for a random session id in an HttpOnly,
//! SameSite=Strict cookie. The token itself never goes into a URL or a cookie. Sessions
//! live in memory (a restart logs everyone out) and expire after [`SESSION_TTL_MS`].
//! Without an admin token the console is off: the gRPC API is then open to loopback
//! only, and the ops port may listen elsewhere.
//!
//! Every page reads through the functions the Admin RPCs use (`usage::query_usage`,
//! `usage::get_health`, the worker [`Registry`], `Store::load_consistent`) plus the
//! read-only queries of [`query`].
use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Form, Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Router,
};
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::{secret::Secret, snapshot::Published, store::now_ms, store::Store, watch::Registry};

pub mod html;
mod pages;
pub mod query;

/// How long a session lasts after login.
pub const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;
/// Most sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 256;
const COOKIE: &str = "switchyard_console";

const STYLE: &str = include_str!("style.css");
const FAVICON: &str = include_str!("favicon.svg");

/// No script, no frames, no third-party anything: the pages need their own stylesheet
/// and icon and nothing else.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// The console's shared state.
pub struct Console {
    pub store: Arc<Store>,
    pub snapshots: watch::Receiver<Arc<Published>>,
    pub registry: Arc<Registry>,
    /// SHA-256 of the admin token; `None` = the console is off.
    token: Option<[u8; 32]>,
    /// SHA-256 of a session id → its expiry. Ids are looked up by digest, so the
    /// lookup's timing says nothing about the id.
    sessions: Mutex<HashMap<[u8; 32], i64>>,
}

impl Console {
    pub fn new(
        store: Arc<Store>,
        snapshots: watch::Receiver<Arc<Published>>,
        registry: Arc<Registry>,
        admin_token: Option<&Secret>,
    ) -> Console {
        Console {
            store,
            snapshots,
            registry,
            token: admin_token.map(|t| Sha256::digest(t.expose().as_bytes()).into()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn token_matches(&self, given: &str) -> bool {
        let Some(expected) = &self.token else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        bool::from(digest.ct_eq(expected))
    }

    /// A new session; returns its id (64 hex characters from 32 random bytes).
    fn open_session(&self, now: i64) -> String {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let id = hex::encode(raw);
        let mut s = self.sessions.lock();
        s.retain(|_, exp| *exp > now);
        while s.len() >= MAX_SESSIONS {
            let oldest = s.iter().min_by_key(|(_, exp)| **exp).map(|(k, _)| *k);
            match oldest {
                Some(k) => s.remove(&k),
                None => break,
            };
        }
        s.insert(Sha256::digest(id.as_bytes()).into(), now + SESSION_TTL_MS);
        id
    }

    fn session_id(headers: &HeaderMap) -> Option<&str> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == COOKIE)
            .map(|(_, v)| v)
    }

    /// Whether the request carries a live session.
    fn authenticated(&self, headers: &HeaderMap) -> bool {
        let Some(id) = Console::session_id(headers) else {
            return false;
        };
        let key: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        let now = now_ms();
        let mut s = self.sessions.lock();
        match s.get(&key) {
            Some(exp) if *exp > now => true,
            Some(_) => {
                s.remove(&key);
                false
            }
            None => false,
        }
    }

    fn close_session(&self, headers: &HeaderMap) {
        if let Some(id) = Console::session_id(headers) {
            let key: [u8; 32] = Sha256::digest(id.as_bytes()).into();
            self.sessions.lock().remove(&key);
        }
    }
}

/// The console's routes, to merge into the ops HTTP router.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/fleet") }))
        .route("/console/", get(|| async { Redirect::to("/console/fleet") }))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route(
            "/console/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/console/assets/favicon.svg",
            get(|| async { asset("image/svg+xml", FAVICON) }),
        )
        .route("/console/fleet", get(fleet))
        .route("/console/health", get(health))
        .route("/console/traffic", get(traffic))
        .route("/console/config", get(config))
        .with_state(console)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// An HTML answer with the console's headers: never cached, never framed, no script.
fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

fn login_page(status: StatusCode, message: &str) -> Response {
    let msg = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=\"error\" id=\"login-error\">{}</p>", html::esc(message))
    };
    html(
        status,
        html::page(
            "Log in",
            "",
            &format!(
                "{msg}<form method=\"post\" action=\"/console/login\" class=\"login\">\
                 <label for=\"token\">Admin token</label>\
                 <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"current-password\" required autofocus>\
                 <button type=\"submit\" id=\"login\">Log in</button></form>\
                 <p class=\"hint\">The token is the one control was started with (<code>SWITCHYARD_ADMIN_TOKEN</code>).</p>"
            ),
        ),
    )
}

fn disabled() -> Response {
    html(
        StatusCode::NOT_FOUND,
        html::page(
            "Console off",
            "",
            "<p>The console needs an admin token: start control with <code>SWITCHYARD_ADMIN_TOKEN</code> set.</p>",
        ),
    )
}

async fn login_form(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if c.token.is_none() {
        return disabled();
    }
    if c.authenticated(&headers) {
        return Redirect::to("/console/fleet").into_response();
    }
    login_page(StatusCode::OK, "")
}

#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(State(c): State<Arc<Console>>, Form(f): Form<LoginForm>) -> Response {
    if c.token.is_none() {
        return disabled();
    }
    if !c.token_matches(f.token.trim()) {
        tracing::warn!("console login refused: wrong admin token");
        return login_page(StatusCode::UNAUTHORIZED, "Wrong token.");
    }
    let id = c.open_session(now_ms());
    tracing::info!("console login");
    let cookie = format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL_MS / 1000
    );
    let mut r = Redirect::to("/console/fleet").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn logout(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    c.close_session(&headers);
    let mut r = Redirect::to("/console/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("switchyard_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// Run a page if the request has a session; otherwise send it to the login form.
async fn gated<F>(c: &Console, headers: &HeaderMap, render: F) -> Response
where
    F: std::future::Future<Output = Result<String, crate::Error>>,
{
    if c.token.is_none() {
        return disabled();
    }
    if !c.authenticated(headers) {
        return Redirect::to("/console/login").into_response();
    }
    match render.await {
        Ok(body) => html(StatusCode::OK, body),
        Err(e) => {
            tracing::warn!(error = %e, "console page failed");
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                html::page(
                    "Error",
                    "",
                    &format!("<p class=\"error\">{}</p>", html::esc(&e.to_string())),
                ),
            )
        }
    }
}

async fn fleet(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    gated(&c, &headers, async { Ok(pages::fleet(&c)) }).await
}

#[derive(serde::Deserialize, Default)]
struct Params {
    #[serde(default)]
    window: String,
    #[serde(default)]
    by: String,
}

async fn health(State(c): State<Arc<Console>>, headers: HeaderMap, Query(p): Query<Params>) -> Response {
    gated(&c, &headers, pages::health(&c, &p.window)).await
}

async fn traffic(State(c): State<Arc<Console>>, headers: HeaderMap, Query(p): Query<Params>) -> Response {
    gated(&c, &headers, pages::traffic(&c, &p.window, &p.by)).await
}

async fn config(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    gated(&c, &headers, pages::config(&c)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; switchyard_console=abc; b=2"),
        );
        assert_eq!(Console::session_id(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("xswitchyard_console=abc"),
        );
        assert_eq!(Console::session_id(&h), None);
    }
}
