//! The HTTP server: accept loop, request handling, counters, request log and control plane.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    io,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::debug;

use crate::{
    behavior::{Behavior, Fault},
    wire::{self, Dialect, Peek, Prepared, StreamEvents, StreamKind},
};

/// How many requests the in-memory log keeps.
pub const REQUEST_LOG_CAPACITY: usize = 10_000;

/// Options for [`MockServer::start`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MockOptions {
    /// Address to bind; default `127.0.0.1:0`.
    pub listen: Option<SocketAddr>,
    /// Echoed in the `x-mock-name` header of every response (`mock` when empty).
    pub name: String,
    /// Initial default behaviour.
    pub default: Option<Behavior>,
    /// An extra header to read the credential from (besides `authorization` and `x-api-key`),
    /// for providers configured with a custom auth header. Matched case-insensitively.
    pub credential_header: Option<String>,
    /// Model ids for `GET /v1/models`; default `["mock-model"]`.
    pub models: Vec<String>,
    /// Do not keep the request log (stats are still counted). For the benchmark.
    pub no_request_log: bool,
    /// Serve HTTPS with this certificate (tests of upstreams behind a private CA).
    pub tls: Option<MockTls>,
}

/// PEM files for serving TLS; with `client_ca`, clients must present a certificate it
/// signed (mTLS).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MockTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client_ca: Option<std::path::PathBuf>,
}

impl MockTls {
    fn acceptor(&self) -> io::Result<tokio_rustls::TlsAcceptor> {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"))
        };
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad("tls cert", &e))?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| bad("tls key", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("tls", &e))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad("tls client ca", &e))? {
                    roots
                        .add(c.map_err(|e| bad("tls client ca", &e))?)
                        .map_err(|e| bad("tls client ca", &e))?;
                }
                let v =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| bad("tls client ca", &e))?;
                builder.with_client_cert_verifier(v)
            }
        };
        let mut cfg = builder
            .with_single_cert(certs, key)
            .map_err(|e| bad("tls cert and key", &e))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
    }
}

/// Counters since start or the last reset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests to the API endpoints (the `/_mock/*` control plane is not counted).
    pub total: u64,
    pub by_path: BTreeMap<String, u64>,
    /// Keyed by the credential value as seen; `""` when the request carried none.
    pub by_credential: BTreeMap<String, u64>,
    /// Keyed by the request's `model` field; `""` when it had none.
    pub by_model: BTreeMap<String, u64>,
    /// Responses by status code (faults that send no status are not counted here).
    pub by_status: BTreeMap<u16, u64>,
    pub open_connections: u64,
}

/// One request as the mock saw it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names are lowercase; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Value of `authorization` (without `Bearer `), `x-api-key`, or the custom header.
    pub credential: Option<String>,
    pub model: Option<String>,
    pub stream: bool,
    pub time: SystemTime,
}

impl SeenRequest {
    /// First value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// [`SeenRequest`] as served by `GET /_mock/requests` (body as lossy UTF-8, time in unix ms).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeenRequestJson {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub credential: Option<String>,
    pub model: Option<String>,
    pub stream: bool,
    pub time_unix_ms: u64,
}

impl From<&SeenRequest> for SeenRequestJson {
    fn from(r: &SeenRequest) -> Self {
        SeenRequestJson {
            method: r.method.clone(),
            path: r.path.clone(),
            query: r.query.clone(),
            headers: r.headers.clone(),
            body: String::from_utf8_lossy(&r.body).into_owned(),
            credential: r.credential.clone(),
            model: r.model.clone(),
            stream: r.stream,
            time_unix_ms: r
                .time
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }
}

/// Raw log entry; converted to [`SeenRequest`] only when someone asks, so logging a
/// request costs a few reference-count bumps rather than string copies.
struct RawSeen {
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
    body: Bytes,
    credential: Option<String>,
    model: Option<String>,
    stream: bool,
    time: SystemTime,
}

impl RawSeen {
    fn to_seen(&self) -> SeenRequest {
        SeenRequest {
            method: self.method.to_string(),
            path: self.uri.path().to_string(),
            query: self.uri.query().map(str::to_string),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: self.body.clone(),
            credential: self.credential.clone(),
            model: self.model.clone(),
            stream: self.stream,
            time: self.time,
        }
    }
}

#[derive(Default)]
struct Counters {
    by_path: HashMap<String, u64>,
    by_credential: HashMap<String, u64>,
    by_model: HashMap<String, u64>,
    by_status: HashMap<u16, u64>,
}

fn bump(map: &mut HashMap<String, u64>, key: &str) {
    // Look up by &str first so the common case allocates nothing.
    if let Some(n) = map.get_mut(key) {
        *n += 1;
    } else {
        map.insert(key.to_string(), 1);
    }
}

/// Shared state of one mock server.
struct State {
    name: HeaderValue,
    credential_header: Option<header::HeaderName>,
    models: Vec<String>,
    log_requests: bool,
    default: RwLock<Arc<Prepared>>,
    queue: Mutex<VecDeque<Behavior>>,
    queue_len: AtomicUsize,
    total: AtomicU64,
    open: AtomicU64,
    counters: Mutex<Counters>,
    log: Mutex<VecDeque<RawSeen>>,
    shutdown: CancellationToken,
    /// Responses API state: each response id made here, with the credential that made
    /// it (the last `RESPONSES_KEPT`), as a provider account keeps them: another
    /// credential (account) does not find it.
    responses: Mutex<VecDeque<(String, String)>>,
    next_response: AtomicU64,
}

/// How many created responses the mock remembers.
const RESPONSES_KEPT: usize = 10_000;

impl State {
    /// A new response id, remembered for `credential`.
    fn new_response(&self, credential: &str) -> String {
        let n = self.next_response.fetch_add(1, Ordering::Relaxed);
        let id = format!("resp_{:016x}{:08x}", wire::now_secs(), n);
        let mut r = self.responses.lock();
        if r.len() >= RESPONSES_KEPT {
            r.pop_front();
        }
        r.push_back((id.clone(), credential.to_string()));
        id
    }

    /// Whether response `id` was made with `credential`.
    fn owns_response(&self, credential: &str, id: &str) -> bool {
        self.responses
            .lock()
            .iter()
            .any(|(i, c)| i == id && c == credential)
    }

    fn forget_response(&self, id: &str) {
        self.responses.lock().retain(|(i, _)| i != id);
    }

    fn next_behavior(&self) -> Arc<Prepared> {
        // Fast path: an atomic load, no lock, when nothing is queued.
        if self.queue_len.load(Ordering::Acquire) > 0 {
            let mut q = self.queue.lock();
            if let Some(b) = q.pop_front() {
                self.queue_len.store(q.len(), Ordering::Release);
                drop(q);
                return Arc::new(Prepared::new(b));
            }
        }
        self.default.read().clone()
    }

    fn push(&self, b: Behavior) {
        let mut q = self.queue.lock();
        q.push_back(b);
        self.queue_len.store(q.len(), Ordering::Release);
    }

    fn reset(&self) {
        *self.default.write() = Arc::new(Prepared::new(Behavior::default()));
        let mut q = self.queue.lock();
        q.clear();
        self.queue_len.store(0, Ordering::Release);
        drop(q);
        self.total.store(0, Ordering::Relaxed);
        *self.counters.lock() = Counters::default();
        self.log.lock().clear();
    }

    fn stats(&self) -> Stats {
        let c = self.counters.lock();
        let sorted = |m: &HashMap<String, u64>| m.iter().map(|(k, v)| (k.clone(), *v)).collect();
        Stats {
            total: self.total.load(Ordering::Relaxed),
            by_path: sorted(&c.by_path),
            by_credential: sorted(&c.by_credential),
            by_model: sorted(&c.by_model),
            by_status: c.by_status.iter().map(|(k, v)| (*k, *v)).collect(),
            open_connections: self.open.load(Ordering::Relaxed),
        }
    }

    fn credential<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        if let Some(h) = &self.credential_header {
            if let Some(v) = headers.get(h).and_then(|v| v.to_str().ok()) {
                return Some(v.strip_prefix("Bearer ").unwrap_or(v));
            }
        }
        if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            return Some(v.strip_prefix("Bearer ").unwrap_or(v));
        }
        headers.get("x-api-key").and_then(|v| v.to_str().ok())
    }
}

/// Handle to a running mock upstream. Cheap to clone; the server stops when the last
/// handle is dropped or [`MockServer::shutdown`] is called.
#[derive(Clone)]
pub struct MockServer {
    inner: Arc<Handle>,
}

struct Handle {
    addr: SocketAddr,
    /// `http`, or `https` with `MockOptions::tls`.
    scheme: &'static str,
    state: Arc<State>,
    tracker: TaskTracker,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
        self.tracker.close();
    }
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

impl MockServer {
    /// Bind `opts.listen` (default `127.0.0.1:0`) and start serving on the current runtime.
    pub async fn start(opts: MockOptions) -> io::Result<MockServer> {
        let listen = opts
            .listen
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let tls = opts.tls.as_ref().map(MockTls::acceptor).transpose()?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let name = if opts.name.is_empty() { "mock" } else { &opts.name };
        let name = HeaderValue::from_str(name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("bad mock name: {e}")))?;
        let credential_header = match &opts.credential_header {
            Some(h) => Some(
                header::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("bad header: {e}")))?,
            ),
            None => None,
        };
        let models = if opts.models.is_empty() {
            vec![wire::NO_MODEL.to_string()]
        } else {
            opts.models.clone()
        };
        let state = Arc::new(State {
            name,
            credential_header,
            models,
            log_requests: !opts.no_request_log,
            default: RwLock::new(Arc::new(Prepared::new(opts.default.unwrap_or_default()))),
            queue: Mutex::new(VecDeque::new()),
            queue_len: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            open: AtomicU64::new(0),
            counters: Mutex::new(Counters::default()),
            log: Mutex::new(VecDeque::new()),
            shutdown: CancellationToken::new(),
            responses: Mutex::new(VecDeque::new()),
            next_response: AtomicU64::new(1),
        });
        let tracker = TaskTracker::new();
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracker.spawn(accept_loop(listener, state.clone(), tracker.clone(), tls));
        Ok(MockServer {
            inner: Arc::new(Handle {
                addr,
                scheme,
                state,
                tracker,
            }),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://ADDR` — the Anthropic-style base URL.
    pub fn url(&self) -> String {
        format!("{}://{}", self.inner.scheme, self.inner.addr)
    }

    /// `http://ADDR/v1` — the OpenAI-style base URL.
    pub fn openai_base(&self) -> String {
        format!("{}://{}/v1", self.inner.scheme, self.inner.addr)
    }

    /// Behaviour for every request that finds the push queue empty.
    pub fn set_default(&self, b: Behavior) {
        *self.inner.state.default.write() = Arc::new(Prepared::new(b));
    }

    /// Queue a one-shot behaviour: the next request (FIFO) gets it.
    pub fn push(&self, b: Behavior) {
        self.inner.state.push(b);
    }

    /// Default behaviour, empty queue, zero counters, empty log.
    pub fn reset(&self) {
        self.inner.state.reset();
    }

    pub fn stats(&self) -> Stats {
        self.inner.state.stats()
    }

    /// The last (up to 10,000) requests, oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.inner.state.log.lock().iter().map(RawSeen::to_seen).collect()
    }

    pub fn request_count(&self) -> u64 {
        self.inner.state.total.load(Ordering::Relaxed)
    }

    pub fn open_connections(&self) -> u64 {
        self.inner.state.open.load(Ordering::Relaxed)
    }

    /// Stop accepting, close every connection (hung ones included) and wait for the tasks.
    pub async fn shutdown(self) {
        self.inner.state.shutdown.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    tracker: TaskTracker,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let accepted = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, _peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        // Nagle plus delayed ACKs would add ~40 ms to every small response.
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            state.open.fetch_add(1, Ordering::Relaxed);
            match tls {
                None => serve_conn(stream, &state).await,
                Some(acceptor) => {
                    let accepted = tokio::select! {
                        _ = state.shutdown.cancelled() => None,
                        r = acceptor.accept(stream) => match r {
                            Ok(s) => Some(s),
                            Err(e) => {
                                debug!(error = %e, "TLS handshake failed");
                                None
                            }
                        },
                    };
                    if let Some(s) = accepted {
                        serve_conn(s, &state).await;
                    }
                }
            }
            state.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn serve_conn<I>(io: I, state: &Arc<State>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_state = state.clone();
    let svc = service_fn(move |req| handle(svc_state.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        _ = state.shutdown.cancelled() => {}
        r = conn => {
            if let Err(e) = r {
                debug!(error = %e, "connection ended with error");
            }
        }
    }
}

/// The response body: a full buffer (content-length known) or a stream of SSE events.
pub enum MockBody {
    Full(Option<Bytes>),
    Stream(Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>),
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Stream(s) => s.as_mut().poll_next(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Stream(_) => SizeHint::default(),
        }
    }
}

type Resp = Response<MockBody>;

fn full(status: u16, content_type: &'static str, body: Bytes) -> Resp {
    let mut r = Response::new(MockBody::Full(Some(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_resp(status: u16, body: Bytes) -> Resp {
    full(status, "application/json", body)
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, io::Error> {
    let request_id = req.headers().get("x-request-id").cloned();
    let mut resp = if req.uri().path().starts_with("/_mock/") {
        control(&state, req).await
    } else {
        api(&state, req).await?
    };
    let h = resp.headers_mut();
    h.insert("x-mock-name", state.name.clone());
    if let Some(id) = request_id {
        h.insert("x-request-id", id);
    }
    Ok(resp)
}

/// The mock's own control plane, for out-of-process use.
async fn control(state: &State, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return json_resp(400, Bytes::from(format!("{{\"error\":\"{e}\"}}"))),
    };
    let ok = || json_resp(200, Bytes::from_static(b"{\"ok\":true}"));
    let parse = |body: &[u8]| -> Result<Behavior, Box<Resp>> {
        let body = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            body
        };
        serde_json::from_slice(body).map_err(|e| {
            Box::new(json_resp(
                400,
                Bytes::from(serde_json::json!({"error": format!("bad behavior: {e}")}).to_string()),
            ))
        })
    };
    match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/_mock/default") => match parse(&body) {
            Ok(b) => {
                *state.default.write() = Arc::new(Prepared::new(b));
                ok()
            }
            Err(r) => *r,
        },
        (&Method::POST, "/_mock/push") => match parse(&body) {
            Ok(b) => {
                state.push(b);
                ok()
            }
            Err(r) => *r,
        },
        (&Method::POST, "/_mock/reset") => {
            state.reset();
            ok()
        }
        (&Method::GET, "/_mock/stats") => json_resp(
            200,
            Bytes::from(serde_json::to_vec(&state.stats()).unwrap_or_default()),
        ),
        (&Method::GET, "/_mock/requests") => {
            let log: Vec<SeenRequestJson> = state.log.lock().iter().map(|r| (&r.to_seen()).into()).collect();
            json_resp(200, Bytes::from(serde_json::to_vec(&log).unwrap_or_default()))
        }
        _ => json_resp(
            404,
            Bytes::from_static(b"{\"error\":\"unknown mock control endpoint\"}"),
        ),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Models,
    Messages,
    CountTokens,
    /// `POST /v1/responses`.
    Responses,
    /// `GET`/`DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`,
    /// `GET /v1/responses/{id}/input_items`: answered only for the credential that made it.
    ResponseById,
    OtherPost,
    NotFound,
}

fn route(method: &Method, path: &str) -> Endpoint {
    match (method, path) {
        (&Method::POST, "/v1/chat/completions") => Endpoint::Chat,
        (&Method::POST, "/v1/completions") => Endpoint::Completions,
        (&Method::POST, "/v1/embeddings") => Endpoint::Embeddings,
        (&Method::GET, "/v1/models") => Endpoint::Models,
        (&Method::POST, "/v1/messages") => Endpoint::Messages,
        (&Method::POST, "/v1/messages/count_tokens") => Endpoint::CountTokens,
        (&Method::POST, "/v1/responses") => Endpoint::Responses,
        (m, p) if p.starts_with("/v1/responses/") => {
            let rest = &p["/v1/responses/".len()..];
            match (m, rest.split_once('/')) {
                (&Method::GET | &Method::DELETE, None) => Endpoint::ResponseById,
                (&Method::POST, Some((_, "cancel"))) | (&Method::GET, Some((_, "input_items"))) => {
                    Endpoint::ResponseById
                }
                _ => Endpoint::NotFound,
            }
        }
        (&Method::POST, p) if p.starts_with("/v1/") => Endpoint::OtherPost,
        _ => Endpoint::NotFound,
    }
}

/// Serve one API request according to the next behaviour.
async fn api(state: &State, req: Request<Incoming>) -> Result<Resp, io::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
    let endpoint = route(&parts.method, parts.uri.path());
    let dialect = match endpoint {
        Endpoint::Messages | Endpoint::CountTokens => Dialect::Anthropic,
        Endpoint::Models if parts.headers.contains_key("anthropic-version") => Dialect::Anthropic,
        _ => Dialect::OpenAi,
    };
    let peek: Peek = if body.is_empty() {
        Peek::default()
    } else {
        serde_json::from_slice(&body).unwrap_or_default()
    };
    let model = peek.model.as_deref().unwrap_or("");
    let credential = state.credential(&parts.headers);

    let prepared = state.next_behavior();
    let b = &prepared.behavior;
    let rejected = credential.is_some_and(|c| b.reject_credentials.iter().any(|r| r == c))
        || b.reject_header
            .as_deref()
            .is_some_and(|h| parts.headers.contains_key(h));
    let status = match b.fault {
        Fault::Drop | Fault::Hang => None,
        _ if rejected => Some(401),
        _ => Some(
            b.status
                .unwrap_or(if endpoint == Endpoint::NotFound { 404 } else { 200 }),
        ),
    };

    state.total.fetch_add(1, Ordering::Relaxed);
    {
        let mut c = state.counters.lock();
        bump(&mut c.by_path, parts.uri.path());
        bump(&mut c.by_credential, credential.unwrap_or(""));
        bump(&mut c.by_model, model);
        if let Some(s) = status {
            *c.by_status.entry(s).or_insert(0) += 1;
        }
    }
    if state.log_requests {
        let mut log = state.log.lock();
        if log.len() >= REQUEST_LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(RawSeen {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
            credential: credential.map(str::to_string),
            model: peek.model.as_ref().map(|m| m.to_string()),
            stream: peek.stream,
            time: SystemTime::now(),
        });
    }

    if b.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(b.latency_ms)).await;
    }
    match b.fault {
        Fault::Drop => {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "mock fault: drop",
            ))
        }
        Fault::Hang => {
            state.shutdown.cancelled().await;
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "mock shutting down",
            ));
        }
        _ => {}
    }
    if rejected {
        return Ok(json_resp(
            401,
            wire::error_body(dialect, 401, "mock: invalid credential"),
        ));
    }
    if let Some(status) = b.status {
        let mut r = json_resp(
            status,
            wire::error_body(dialect, status, &format!("mock: forced status {status}")),
        );
        if let Some(s) = b.retry_after_s {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        return Ok(r);
    }

    let model_out = if model.is_empty() { wire::NO_MODEL } else { model };
    if endpoint == Endpoint::ResponseById {
        return Ok(response_by_id(state, &parts, credential.unwrap_or(""), &prepared));
    }
    let cred = credential.unwrap_or("");
    if endpoint == Endpoint::Responses {
        if let Some(prev) = peek.previous_response_id.as_deref() {
            if !state.owns_response(cred, prev) {
                return Ok(json_resp(
                    400,
                    wire::error_body(
                        dialect,
                        400,
                        &format!("Previous response with id '{prev}' not found."),
                    ),
                ));
            }
        }
        let id = state.new_response(cred);
        let previous = peek.previous_response_id.as_ref().map(|p| p.to_string());
        if peek.stream {
            let events = StreamEvents::responses(prepared.clone(), model_out, id, previous);
            return Ok(sse_response(events, b.chunk_delay_ms, None));
        }
        return Ok(json_resp(
            200,
            wire::responses_body(&prepared, &id, model_out, previous.as_deref()),
        ));
    }
    if matches!(endpoint, Endpoint::Chat | Endpoint::Messages) {
        if let Some(tool) = wire::tool_to_call(&body) {
            let answer = wire::tool_call_body(
                dialect,
                peek.stream,
                peek.include_usage(),
                &tool,
                model_out,
                &b.usage,
            );
            let ct = if peek.stream {
                "text/event-stream"
            } else {
                "application/json"
            };
            return Ok(full(200, ct, answer));
        }
    }
    let stream_kind = match endpoint {
        Endpoint::Chat if peek.stream => Some(StreamKind::Chat),
        Endpoint::Completions if peek.stream => Some(StreamKind::Completion),
        Endpoint::Messages if peek.stream => Some(StreamKind::Messages),
        _ => None,
    };
    if let Some(kind) = stream_kind {
        let cut_after = match b.fault {
            Fault::CutStream { after_chunks } => Some(after_chunks),
            _ => None,
        };
        let events = StreamEvents::new(prepared.clone(), kind, model_out, peek.include_usage());
        return Ok(sse_response(events, b.chunk_delay_ms, cut_after));
    }
    api_tail(
        endpoint,
        &prepared,
        &state.models,
        dialect,
        &parts,
        &body,
        model_out,
    )
}

/// A streamed answer of `events`, each content event `delay_ms` after the previous one,
/// cut (`Fault::CutStream`) after `cut_after` content events.
fn sse_response(events: StreamEvents, delay_ms: u64, cut_after: Option<usize>) -> Resp {
    let delay = Duration::from_millis(delay_ms);
    {
        let stream = futures::stream::unfold((events, false), move |(mut events, done)| async move {
            if done {
                return None;
            }
            let ev = events.next_event()?;
            if let Some(cut) = cut_after {
                if ev.tail || ev.content_index.is_some_and(|i| i >= cut) {
                    // Return Pending once so hyper flushes what it has, then abort.
                    tokio::task::yield_now().await;
                    let err = io::Error::new(io::ErrorKind::ConnectionAborted, "mock fault: cut stream");
                    return Some((Err(err), (events, true)));
                }
            }
            if ev.content_index.is_some() && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((Ok(ev.bytes), (events, false)))
        });
        let mut r = Response::new(MockBody::Stream(Box::pin(stream)));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    }
}

/// `GET`/`DELETE /v1/responses/{id}`, `POST .../cancel`, `GET .../input_items`: found only
/// by the credential that made the response, as an account keeps its own.
fn response_by_id(
    state: &State,
    parts: &http::request::Parts,
    credential: &str,
    prepared: &Prepared,
) -> Resp {
    let rest = &parts.uri.path()["/v1/responses/".len()..];
    let (id, sub) = rest.split_once('/').unwrap_or((rest, ""));
    if !state.owns_response(credential, id) {
        return json_resp(
            404,
            wire::error_body(
                Dialect::OpenAi,
                404,
                &format!("No response found with id '{id}'."),
            ),
        );
    }
    let b = &prepared.behavior;
    let body = match (&parts.method, sub) {
        (&Method::DELETE, _) => {
            state.forget_response(id);
            serde_json::json!({"id": id, "object": "response.deleted", "deleted": true})
        }
        (_, "input_items") => serde_json::json!({
            "object": "list",
            "data": [{"id": "msg_in", "type": "message", "role": "user", "status": "completed",
                      "content": [{"type": "input_text", "text": "hi"}]}],
            "first_id": "msg_in", "last_id": "msg_in", "has_more": false,
        }),
        (_, "cancel") => {
            let mut v = wire::response_object(
                id,
                wire::NO_MODEL,
                prepared.created,
                &b.reply,
                &b.usage,
                None,
                true,
            );
            v["status"] = serde_json::json!("cancelled");
            v
        }
        _ => wire::response_object(
            id,
            wire::NO_MODEL,
            prepared.created,
            &b.reply,
            &b.usage,
            None,
            true,
        ),
    };
    json_resp(200, Bytes::from(body.to_string()))
}

/// The non-streamed answers of the other endpoints.
fn api_tail(
    endpoint: Endpoint,
    prepared: &Arc<Prepared>,
    models: &[String],
    dialect: Dialect,
    parts: &http::request::Parts,
    body: &Bytes,
    model_out: &str,
) -> Result<Resp, io::Error> {
    let b = &prepared.behavior;
    let (status, body) = match endpoint {
        Endpoint::Chat => (200, prepared.chat.render(model_out)),
        Endpoint::Completions => (200, prepared.completion.render(model_out)),
        Endpoint::Messages => (200, prepared.message.render(model_out)),
        Endpoint::Embeddings => (200, wire::embeddings_body(body, model_out, &b.usage)),
        Endpoint::Models => (200, wire::models_body(dialect, models, prepared.created)),
        Endpoint::CountTokens => (200, wire::count_tokens_body(&b.usage)),
        Endpoint::OtherPost => (200, wire::echo_body(parts.uri.path(), model_out)),
        Endpoint::Responses | Endpoint::ResponseById | Endpoint::NotFound => (
            404,
            wire::error_body(dialect, 404, &format!("mock: no route for {}", parts.uri.path())),
        ),
    };
    if let Fault::CutStream { .. } = b.fault {
        // Announce the full length, send half, then abort: the client sees a truncated body.
        let len = body.len();
        let half = body.slice(..len / 2);
        let stream = futures::stream::unfold(Some(half), |half| async move {
            match half {
                Some(h) => Some((Ok(h), None)),
                None => {
                    // Return Pending once so hyper flushes the half body, then abort.
                    tokio::task::yield_now().await;
                    Some((
                        Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "mock fault: cut body",
                        )),
                        None,
                    ))
                }
            }
        })
        .take(2);
        let mut r = Response::new(MockBody::Stream(Box::pin(stream)));
        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        return Ok(r);
    }
    Ok(json_resp(status, body))
}
