//! The worker's HTTP/1.1 client to providers, driven by the request's own task.
//!
//! Why not hyper's pooled client: it runs every upstream connection as a task of its own
//! and hands the request in, and the response head and each body chunk back out, through
//! channels, so one proxied request cost several task wake-ups plus a pool keyed by URI,
//! and every idle or streaming connection kept two 8 KB buffers. Profiled, that was the
//! largest share of the worker's own CPU per request and of its memory per open stream
//! (issue 7). Here the request future writes the request and reads the answer itself:
//!
//! * one `writev` of the head (built straight from the client's headers, no `HeaderMap`)
//!   and the body; one read of the answer, parsed by `httparse`, its header values sliced
//!   out of one `Bytes` without copies;
//! * reads go into a per-thread scratch buffer and are copied out at their exact size, so a
//!   connection that waits (an open stream between chunks, an idle pooled connection)
//!   holds no buffer at all;
//! * hop-by-hop response headers (`connection`, `transfer-encoding`, ...) are consumed
//!   here and never returned: what the caller gets can be relayed as it is;
//! * the body (`Body`) decodes `content-length`, `chunked` or read-to-close framing as the
//!   relay polls it, and puts the connection back in the pool the moment its last byte is
//!   read;
//! * pools are per origin (scheme, host, port, connect timeout) and way there (`Egress`:
//!   the outbound proxy and its credentials, the provider's own TLS roots and client
//!   certificate), LIFO, shared by every snapshot, and taken with a lock held for a `pop`,
//!   never across an await.
//!
//! Through an outbound HTTP proxy (`Egress::proxy`), an `https` origin is reached through a
//! `CONNECT` tunnel opened when the connection is made (its answer read with `httparse`,
//! bounded in size and, with the rest of connecting, by the connect timeout); an `http`
//! origin gets requests in absolute form (`POST http://host/v1/...`) on a connection to
//! the proxy. Both are settled when the pool is made: the request path writes the same
//! bytes in the same number of steps with or without a proxy.
//!
//! A pooled connection is checked before reuse (a close or stray bytes from the upstream
//! show as readiness, so the check costs no syscall otherwise). One that still turns out
//! dead is replaced and the request sent again only when that cannot run it twice: the
//! write failed, or the request is a GET/HEAD/OPTIONS (see `exchange`). A POST whose
//! connection dies before the answer is the caller's error (the proxy's retry policy and
//! the backend's breaker decide what happens next).
use std::{
    cell::RefCell,
    collections::{HashMap, VecDeque},
    fmt, io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body::{Frame, SizeHint};
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};

/// Largest response head accepted (status line and headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest number of response headers.
const MAX_HEADERS: usize = 128;
/// Largest total size of chunked trailers (they are read and dropped).
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// How long a pooled connection may sit idle before it is closed instead of reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per origin.
const MAX_IDLE_PER_ORIGIN: usize = 1024;
/// Per-thread read buffer. Reads are copied out of it at their exact size.
const SCRATCH_BYTES: usize = 64 * 1024;
/// TCP keep-alive on upstream connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connect to {0}: timed out")]
    ConnectTimeout(String),
    #[error("TLS handshake with {host}: {source}")]
    Tls { host: String, source: io::Error },
    /// The outbound proxy refused or broke the tunnel (`CONNECT`).
    #[error("proxy {proxy}: {msg}")]
    Proxy { proxy: String, msg: String },
    #[error("sending the request: {0}")]
    Write(io::Error),
    #[error("reading the response: {0}")]
    Read(io::Error),
    #[error("connection closed before the response was complete")]
    UnexpectedEof,
    #[error("invalid response: {0}")]
    Protocol(String),
}

impl Error {
    /// No connection was made: the request never reached the upstream.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Self::Resolve { .. }
                | Self::Connect { .. }
                | Self::ConnectTimeout(_)
                | Self::Tls { .. }
                | Self::Proxy { .. }
        )
    }
}

fn protocol(msg: impl Into<String>) -> Error {
    Error::Protocol(msg.into())
}

/// Makes `Client`s and owns their connection pools, so that pooled keep-alive connections
/// outlive the snapshot whose providers opened them.
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("pools", &self.pools.lock().len())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    tls: bool,
    host: String,
    port: u16,
    connect_timeout: Duration,
    proxy: Option<ProxyConfig>,
    /// `UpstreamTls::digest` of the provider's own TLS settings, if any.
    tls_settings: Option<[u8; 32]>,
}

/// How a provider's connections reach its origin beyond what its URL says. Part of the
/// pool key: a connection made one way is never used for another.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    pub proxy: Option<ProxyConfig>,
    /// The provider's own roots and client certificate (else the public web roots).
    pub tls: Option<UpstreamTls>,
}

/// An outbound HTTP proxy (`http://host:port`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProxyConfig {
    /// As in a URL: an IPv6 address in brackets.
    pub host: String,
    pub port: u16,
    /// `Proxy-Authorization` value (`Basic base64(user:password)`).
    pub auth: Option<String>,
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("auth", &self.auth.as_ref().map(|_| "***"))
            .finish()
    }
}

impl ProxyConfig {
    /// `http://[user[:password]@]host[:port]` (port 80 by default). `password` (from the
    /// provider's secret) is used when the URL has a user and no password of its own.
    pub fn parse(text: &str, password: Option<&str>) -> Result<Self, String> {
        let u = url::Url::parse(text).map_err(|e| format!("{e}"))?;
        if u.scheme() != "http" {
            return Err(format!(
                "scheme `{}`: only http:// proxies are supported",
                u.scheme()
            ));
        }
        if !matches!(u.path(), "" | "/") || u.query().is_some() || u.fragment().is_some() {
            return Err("a proxy URL has no path, query or fragment".into());
        }
        let host = match u.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            None => return Err("no host".into()),
        };
        let port = u.port_or_known_default().unwrap_or(80);
        let auth = if u.username().is_empty() {
            None
        } else {
            let dec = |s: &str| {
                percent_decode(s)
                    .ok_or_else(|| "user or password is not valid percent-encoded UTF-8".to_string())
            };
            let user = dec(u.username())?;
            let pass = match u.password() {
                Some(p) => dec(p)?,
                None => password.unwrap_or("").to_string(),
            };
            use base64::Engine;
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            ))
        };
        Ok(Self { host, port, auth })
    }

    /// The proxy the worker's environment names for `url` (`HTTPS_PROXY` for https,
    /// `HTTP_PROXY` for http, lowercase first as curl does), unless `NO_PROXY` lists its
    /// host (`*`, the host itself, or a domain it is under; ports in entries ignored).
    /// `getenv` is `std::env::var` outside tests.
    pub fn from_env(url: &url::Url, getenv: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let get = |k: &str| {
            getenv(&k.to_ascii_lowercase())
                .or_else(|| getenv(k))
                .filter(|v| !v.trim().is_empty())
        };
        let (var, value) = match url.scheme() {
            "https" => ("HTTPS_PROXY", get("HTTPS_PROXY")),
            _ => ("HTTP_PROXY", get("HTTP_PROXY")),
        };
        let Some(value) = value else { return Ok(None) };
        let host = url
            .host_str()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']');
        if let Some(no) = get("NO_PROXY") {
            let host = host.to_ascii_lowercase();
            for entry in no.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                if entry == "*" {
                    return Ok(None);
                }
                let e = entry.trim_start_matches('[');
                let e = match e.split_once(']') {
                    Some((ip6, _)) => ip6,
                    None => e
                        .rsplit_once(':')
                        .filter(|(h, _)| !h.contains(':'))
                        .map_or(e, |(h, _)| h),
                };
                let e = e
                    .trim_start_matches("*.")
                    .trim_start_matches('.')
                    .to_ascii_lowercase();
                if host == e || host.ends_with(&format!(".{e}")) {
                    return Ok(None);
                }
            }
        }
        // `host:port` without a scheme is common in these variables.
        let value = if value.contains("://") {
            value
        } else {
            format!("http://{value}")
        };
        Self::parse(&value, None)
            .map(Some)
            .map_err(|e| format!("{var}: {e}"))
    }

    fn name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A provider's own TLS settings: the CAs its upstream's certificate must chain to (they
/// replace the public web roots), and a client certificate for upstreams that want mTLS.
#[derive(Clone)]
pub struct UpstreamTls {
    digest: [u8; 32],
    connector: tokio_rustls::TlsConnector,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls").finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// From PEM: `ca` (every certificate in it is a root; `None`: the public web roots)
    /// and `client` (certificate chain, private key). Errors name which input is wrong.
    pub fn from_pem(ca: Option<&[u8]>, client: Option<(&[u8], &[u8])>) -> Result<Self, String> {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        use sha2::Digest;
        let mut digest = sha2::Sha256::new();
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            None => {
                digest.update(b"public roots\0");
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            Some(pem) => {
                digest.update(b"ca\0");
                digest.update((pem.len() as u64).to_le_bytes());
                digest.update(pem);
                let mut n = 0;
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| format!("ca: {e}"))?;
                    roots.add(cert).map_err(|e| format!("ca: {e}"))?;
                    n += 1;
                }
                if n == 0 {
                    return Err("ca: no certificate in the PEM".into());
                }
            }
        }
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots);
        let mut cfg = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                digest.update(b"client\0");
                digest.update((cert.len() as u64).to_le_bytes());
                digest.update(cert);
                digest.update(key);
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("client certificate: {e}"))?;
                if chain.is_empty() {
                    return Err("client certificate: no certificate in the PEM".into());
                }
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("client key: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate and key: {e}"))?
            }
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            digest: digest.finalize().into(),
            connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        })
    }
}

impl Connector {
    /// HTTPS verified against the Mozilla roots (`webpki-roots`).
    pub fn new() -> Result<Self, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Self::with_roots(roots)
    }

    /// HTTPS verified against `roots` only (tests, private CAs).
    pub fn with_roots(roots: rustls::RootCertStore) -> Result<Self, rustls::Error> {
        let mut cfg =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            pools: Mutex::new(HashMap::new()),
        })
    }

    /// A client for `base_url` (`http` or `https`). Clients of the same origin, connect
    /// timeout and `Egress` share one pool.
    pub fn client(
        &self,
        base_url: &url::Url,
        connect_timeout: Duration,
        egress: &Egress,
    ) -> Result<Client, String> {
        let tls = match base_url.scheme() {
            "http" => false,
            "https" => true,
            s => return Err(format!("unsupported scheme `{s}` (http or https)")),
        };
        let host = base_url.host().ok_or("no host")?;
        let port = base_url.port_or_known_default().ok_or("no port")?;
        let (host_str, target, server_name) = match host {
            url::Host::Domain(d) => (
                d.to_string(),
                Target::Name(d.to_string()),
                ServerName::try_from(d.to_string()).map_err(|e| format!("host `{d}`: {e}"))?,
            ),
            url::Host::Ipv4(ip) => (
                ip.to_string(),
                Target::Addr(SocketAddr::from((ip, port))),
                ServerName::IpAddress(std::net::IpAddr::V4(ip).into()),
            ),
            url::Host::Ipv6(ip) => (
                format!("[{ip}]"),
                Target::Addr(SocketAddr::from((ip, port))),
                ServerName::IpAddress(std::net::IpAddr::V6(ip).into()),
            ),
        };
        let authority = match base_url.port() {
            Some(p) => format!("{host_str}:{p}"),
            None => host_str.clone(),
        };
        let proxy = egress.proxy.clone();
        let key = PoolKey {
            tls,
            host: host_str.clone(),
            port,
            connect_timeout,
            proxy: proxy.clone(),
            tls_settings: egress.tls.as_ref().map(|t| t.digest),
        };
        let base_path = base_url.path().trim_end_matches('/');
        // Through a proxy, an http origin's requests go in absolute form.
        let prefix: Arc<str> = match (&proxy, tls) {
            (Some(_), false) => format!("http://{authority}{base_path}").into(),
            _ => base_path.into(),
        };
        let pool = self
            .pools
            .lock()
            .entry(key)
            .or_insert_with(|| {
                let mut host_lines = format!("host: {authority}\r\n");
                let (target, tcp_port, tunnel, via) = match &proxy {
                    None => (target, port, None, None),
                    Some(p) => {
                        let t = match p.host.trim_start_matches('[').trim_end_matches(']').parse() {
                            Ok(ip) => Target::Addr(SocketAddr::new(ip, p.port)),
                            Err(_) => Target::Name(p.host.clone()),
                        };
                        let auth = p
                            .auth
                            .as_ref()
                            .map(|a| format!("proxy-authorization: {a}\r\n"))
                            .unwrap_or_default();
                        let tunnel = if tls {
                            // The tunnel's target always names its port.
                            let to = format!("{host_str}:{port}");
                            Some(
                                format!("CONNECT {to} HTTP/1.1\r\nhost: {to}\r\n{auth}\r\n")
                                    .into_bytes()
                                    .into(),
                            )
                        } else {
                            host_lines.push_str(&auth);
                            None
                        };
                        (t, p.port, tunnel, Some(p.name()))
                    }
                };
                let connector = egress
                    .tls
                    .as_ref()
                    .map_or_else(|| self.tls.clone(), |t| t.connector.clone());
                Arc::new(Pool {
                    target,
                    port: tcp_port,
                    authority: authority.clone(),
                    host_lines: host_lines.into_bytes().into(),
                    tunnel,
                    via,
                    tls: tls.then_some((connector, server_name)),
                    connect_timeout,
                    idle: Mutex::new(VecDeque::new()),
                })
            })
            .clone();
        Ok(Client {
            pool,
            base_path: prefix,
        })
    }
}

#[derive(Debug)]
enum Target {
    Name(String),
    Addr(SocketAddr),
}

/// One origin's connections.
struct Pool {
    /// Where the TCP connection goes: the origin, or the proxy.
    target: Target,
    port: u16,
    /// The origin's `host[:port]` (the `Host` header value).
    authority: String,
    /// The request head's header lines that never change: `host`, and through a proxy
    /// to an http origin its `proxy-authorization`.
    host_lines: Box<[u8]>,
    /// Through a proxy to an https origin: the `CONNECT` request that opens the tunnel.
    tunnel: Option<Box<[u8]>>,
    /// The proxy's `host:port`, for errors.
    via: Option<String>,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    /// Newest last (checkout is LIFO: the warmest connection, and the oldest expire first).
    idle: Mutex<VecDeque<Idle>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("authority", &self.authority)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

struct Idle {
    io: Io,
    since: Instant,
}

impl Pool {
    /// The newest idle connection that is still open.
    fn checkout(&self) -> Option<Io> {
        let now = Instant::now();
        loop {
            // Popped under the lock, checked (and maybe closed) outside it.
            let idle = self.idle.lock().pop_back()?;
            if now.duration_since(idle.since) >= IDLE_TIMEOUT {
                // The newest is too old, so are all the others.
                let stale = std::mem::take(&mut *self.idle.lock());
                drop(stale);
                return None;
            }
            let mut io = idle.io;
            if io.is_open() {
                return Some(io);
            }
        }
    }

    fn checkin(&self, io: Io) {
        let now = Instant::now();
        let evicted = {
            let mut q = self.idle.lock();
            // One expired connection goes per checkin, so a pool that keeps being used
            // does not keep idle sockets the upstream has long closed.
            let expired = q
                .front()
                .is_some_and(|o| now.duration_since(o.since) >= IDLE_TIMEOUT)
                .then(|| q.pop_front())
                .flatten();
            if q.len() >= MAX_IDLE_PER_ORIGIN {
                (expired, Some(io))
            } else {
                q.push_back(Idle { io, since: now });
                (expired, None)
            }
        };
        drop(evicted);
    }

    async fn connect(&self) -> Result<Io, Error> {
        match tokio::time::timeout(self.connect_timeout, self.connect_inner()).await {
            Ok(r) => r,
            Err(_) => Err(Error::ConnectTimeout(self.authority.clone())),
        }
    }

    async fn connect_inner(&self) -> Result<Io, Error> {
        let addrs: Vec<SocketAddr> = match &self.target {
            Target::Addr(a) => vec![*a],
            Target::Name(host) => tokio::net::lookup_host((host.as_str(), self.port))
                .await
                .map_err(|source| Error::Resolve {
                    host: host.clone(),
                    source,
                })?
                .collect(),
        };
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(source) => {
                    last = Some(Error::Connect {
                        addr: addr.to_string(),
                        source,
                    })
                }
            }
        }
        let mut tcp = tcp.ok_or_else(|| {
            last.unwrap_or_else(|| Error::Connect {
                addr: self.via.clone().unwrap_or_else(|| self.authority.clone()),
                source: io::Error::new(io::ErrorKind::NotFound, "no address"),
            })
        })?;
        // Nagle would hold a small request back until the previous segment is acked.
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&tcp)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
        if let (Some(req), Some(via)) = (&self.tunnel, &self.via) {
            open_tunnel(&mut tcp, req, via).await?;
        }
        match &self.tls {
            None => Ok(Io::Plain(tcp)),
            Some((connector, name)) => {
                let s = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| Error::Tls {
                        host: self.authority.clone(),
                        source,
                    })?;
                Ok(Io::Tls(Box::new(s)))
            }
        }
    }
}

/// Largest answer head a proxy may give to `CONNECT`.
const MAX_TUNNEL_HEAD: usize = 16 * 1024;

/// Ask the proxy on `tcp` for a tunnel (`req` is the whole `CONNECT` request) and read its
/// answer head. Any 2xx opens it; anything else is an `Error::Proxy` naming the status.
/// The caller bounds the time (the connect timeout covers it).
async fn open_tunnel(tcp: &mut TcpStream, req: &[u8], via: &str) -> Result<(), Error> {
    use tokio::io::AsyncReadExt;
    let fail = |msg: String| Error::Proxy {
        proxy: via.to_string(),
        msg,
    };
    tcp.write_all(req)
        .await
        .map_err(|e| fail(format!("sending CONNECT: {e}")))?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 2048];
        let n = tcp
            .read(&mut chunk)
            .await
            .map_err(|e| fail(format!("reading the CONNECT answer: {e}")))?;
        if n == 0 {
            return Err(fail("closed the connection before answering CONNECT".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let code = r.code.unwrap_or(0);
                if !(200..300).contains(&code) {
                    let reason = r.reason.unwrap_or("").to_string();
                    return Err(fail(
                        format!("CONNECT answered {code} {reason}").trim_end().to_string(),
                    ));
                }
                if len != buf.len() {
                    // The origin speaks first only after our TLS hello: bytes here are the
                    // proxy's, and would corrupt the tunnel.
                    return Err(fail("sent bytes after its CONNECT answer".into()));
                }
                return Ok(());
            }
            Ok(httparse::Status::Partial) if buf.len() <= MAX_TUNNEL_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(fail("CONNECT answer head too large".into())),
            Err(e) => return Err(fail(format!("invalid CONNECT answer: {e}"))),
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    /// Whether a pooled connection can take a request: the peer has not closed it and
    /// sent nothing unasked. Costs no syscall when the socket had no event since its last
    /// read (tokio knows it is not readable).
    fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        matches!(self.poll_read_into(&mut cx, &mut buf), Poll::Pending)
    }

    fn poll_read_into(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }

    /// Read what is there, as exactly-sized `Bytes`; empty at end of stream.
    fn poll_read_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            ready!(self.poll_read_into(cx, &mut buf))?;
            Poll::Ready(Ok(Bytes::copy_from_slice(buf.filled())))
        })
    }

    async fn read_bytes(&mut self) -> io::Result<Bytes> {
        std::future::poll_fn(|cx| self.poll_read_bytes(cx)).await
    }

    async fn write_request(&mut self, head: &[u8], body: &[Bytes]) -> io::Result<()> {
        let mut buf = Pieces::new(head, body);
        match self {
            Io::Plain(s) => s.write_all_buf(&mut buf).await,
            Io::Tls(s) => {
                s.write_all_buf(&mut buf).await?;
                s.flush().await
            }
        }
    }
}

/// The request head and the body's pieces as one `Buf`: `write_all_buf` sends them with
/// `writev`, all at once when the socket takes them, and the body is never joined.
struct Pieces<'a> {
    /// The head not yet written.
    head: &'a [u8],
    /// The body pieces not yet written; `off` bytes of the first are.
    body: &'a [Bytes],
    off: usize,
}

impl<'a> Pieces<'a> {
    fn new(head: &'a [u8], body: &'a [Bytes]) -> Self {
        let mut p = Self { head, body, off: 0 };
        p.skip_written();
        p
    }

    /// Drop body pieces that are empty or fully written, so `body[0][off..]` is not empty.
    fn skip_written(&mut self) {
        while let Some((first, rest)) = self.body.split_first() {
            if self.off < first.len() {
                break;
            }
            (self.body, self.off) = (rest, 0);
        }
    }

    fn body_chunks(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        let off = self.off;
        self.body
            .iter()
            .enumerate()
            .map(move |(i, b)| if i == 0 { &b[off..] } else { &b[..] })
            .filter(|b| !b.is_empty())
    }
}

impl Buf for Pieces<'_> {
    fn remaining(&self) -> usize {
        self.head.len() + self.body.iter().map(Bytes::len).sum::<usize>() - self.off
    }

    fn chunk(&self) -> &[u8] {
        if !self.head.is_empty() {
            return self.head;
        }
        self.body.first().map_or(&[], |b| &b[self.off..])
    }

    fn advance(&mut self, mut n: usize) {
        let h = n.min(self.head.len());
        self.head = &self.head[h..];
        n -= h;
        while n > 0 {
            let left = self.body[0].len() - self.off;
            let take = n.min(left);
            self.off += take;
            n -= take;
            self.skip_written();
        }
    }

    fn chunks_vectored<'b>(&'b self, dst: &mut [io::IoSlice<'b>]) -> usize {
        let head = (!self.head.is_empty()).then_some(self.head);
        let mut n = 0;
        for (slot, p) in dst.iter_mut().zip(head.into_iter().chain(self.body_chunks())) {
            *slot = io::IoSlice::new(p);
            n += 1;
        }
        n
    }
}

/// A provider's HTTP client: the origin's pool and the base URL's path.
#[derive(Debug, Clone)]
pub struct Client {
    pool: Arc<Pool>,
    base_path: Arc<str>,
}

/// A request head being written: request line, `Host`, then the caller's headers.
/// `content-length` is added by `Client::send`.
#[derive(Debug)]
pub struct RequestHead {
    buf: Vec<u8>,
    head_method: bool,
    has_body: bool,
    /// Safe to send twice (see `exchange`).
    replayable: bool,
}

impl RequestHead {
    /// Append one header. Names and values are valid by construction (`HeaderName`,
    /// `HeaderValue`), so nothing here can split the head.
    pub fn header(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.buf.extend_from_slice(name.as_str().as_bytes());
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// The head written so far (tests).
    #[cfg(test)]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

impl Client {
    /// Start a request for `base path + path` (`path` starts with `/` and may carry a
    /// query). `headers_hint` is the expected size of the headers to come.
    pub fn head(&self, method: &Method, path: &str, headers_hint: usize) -> RequestHead {
        let host_lines = &self.pool.host_lines;
        let mut buf = Vec::with_capacity(
            method.as_str().len() + self.base_path.len() + path.len() + host_lines.len() + 40 + headers_hint,
        );
        buf.extend_from_slice(method.as_str().as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(self.base_path.as_bytes());
        if path.is_empty() {
            buf.push(b'/');
        } else {
            buf.extend_from_slice(path.as_bytes());
        }
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        buf.extend_from_slice(host_lines);
        RequestHead {
            buf,
            head_method: method == Method::HEAD,
            has_body: !matches!(
                *method,
                Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
            ),
            replayable: matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS),
        }
    }

    /// Send the request and read the response head. The body is read as it is polled.
    /// `body` goes out as its pieces, in order (see `extract::Parts`).
    pub async fn send(&self, mut head: RequestHead, body: &[Bytes]) -> Result<Response<Body>, Error> {
        let len: usize = body.iter().map(Bytes::len).sum();
        if head.has_body || len > 0 {
            head.buf.extend_from_slice(b"content-length: ");
            head.buf
                .extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
            head.buf.extend_from_slice(b"\r\n");
        }
        head.buf.extend_from_slice(b"\r\n");
        loop {
            let (mut io, reused) = match self.pool.checkout() {
                Some(io) => (io, true),
                // Boxed: connecting (DNS, TCP, TLS) is the rare path, and its state would
                // otherwise make every request's future larger.
                None => (Box::pin(self.pool.connect()).await?, false),
            };
            match exchange(&mut io, &head.buf, body, head.replayable).await {
                Ok((resp, rest)) => return Ok(self.response(io, resp, rest, head.head_method)),
                // A kept-alive connection the upstream closed under us before it could
                // have processed the request: it goes out again on another connection.
                Err(Exchange::Stale(_)) if reused => continue,
                Err(Exchange::Stale(e)) | Err(Exchange::Failed(e)) => return Err(e),
            }
        }
    }

    fn response(&self, io: Io, head: ParsedHead, rest: Bytes, head_method: bool) -> Response<Body> {
        let (dec, keep_alive) = head.framing(head_method);
        let ParsedHead { status, headers, .. } = head;
        let mut body = Body {
            conn: Some((io, self.pool.clone())),
            pending: rest,
            dec,
            keep_alive,
            deferred: None,
        };
        body.maybe_release();
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }
}

/// A final response head, its framing already checked (see `head_from`).
pub(crate) struct ParsedHead {
    pub(crate) status: StatusCode,
    /// What may be relayed: no hop-by-hop header, none that `connection` names, and no
    /// `content-length` that disagrees with the body (a chunked head has none).
    pub(crate) headers: http::HeaderMap,
    length: Option<u64>,
    /// `transfer-encoding: chunked` (the only transfer coding accepted).
    chunked: bool,
    /// `connection: close`, or HTTP/1.0 without keep-alive.
    close: bool,
}

enum Exchange {
    /// Failed before any byte of the answer arrived.
    Stale(Error),
    Failed(Error),
}

/// Write the request, read until a final (non-1xx) response head is complete.
/// Returns the head and the bytes after it.
///
/// `replayable`: the request may be sent twice (GET, HEAD, OPTIONS). A connection that
/// dies after the request went out but before any byte of the answer was most likely
/// closed by the upstream while idle, but it may have been processing the request: only
/// a replayable request counts that as stale (Go's `net/http` draws the same line). A
/// failed write always does: the upstream had closed and cannot have read the request.
async fn exchange(
    io: &mut Io,
    head: &[u8],
    body: &[Bytes],
    replayable: bool,
) -> Result<(ParsedHead, Bytes), Exchange> {
    io.write_request(head, body)
        .await
        .map_err(|e| Exchange::Stale(Error::Write(e)))?;
    let mut buf = Bytes::new();
    let mut got_any = false;
    let before_answer = |got_any: bool, e: Error| {
        if got_any || !replayable {
            Exchange::Failed(e)
        } else {
            Exchange::Stale(e)
        }
    };
    loop {
        let chunk = io
            .read_bytes()
            .await
            .map_err(|e| before_answer(got_any, Error::Read(e)))?;
        if chunk.is_empty() {
            return Err(before_answer(got_any, Error::UnexpectedEof));
        }
        got_any = true;
        buf = if buf.is_empty() {
            chunk
        } else {
            // Rare: a head split across reads. Joined by copy.
            let mut joined = BytesMut::with_capacity(buf.len() + chunk.len());
            joined.extend_from_slice(&buf);
            joined.extend_from_slice(&chunk);
            joined.freeze()
        };
        if let Some(p) = take_final_head(&mut buf).map_err(Exchange::Failed)? {
            return Ok((p, buf));
        }
    }
}

/// Parse response heads from the front of `buf`, skipping interim (1xx) ones. `Some`: the
/// final head, and `buf` holds what follows it; `None`: more bytes are needed, and `buf`
/// holds the unfinished head.
pub(crate) fn take_final_head(buf: &mut Bytes) -> Result<Option<ParsedHead>, Error> {
    loop {
        match parse_head(buf)? {
            None if buf.len() > MAX_HEAD_BYTES => return Err(protocol("response head too large")),
            None => return Ok(None),
            Some((n, parsed)) => {
                buf.advance(n);
                match parsed {
                    // 100 Continue, 103 Early Hints: the final answer follows.
                    None if buf.is_empty() => return Ok(None),
                    None => {}
                    Some(p) => return Ok(Some(p)),
                }
            }
        }
    }
}

/// `Ok(None)`: incomplete. `Ok(Some((len, None)))`: a complete interim (1xx) response.
fn parse_head(buf: &Bytes) -> Result<Option<(usize, Option<ParsedHead>)>, Error> {
    // Most answers have a few headers: a small slot array first (it is initialised on
    // every call), the full one only when that is too small.
    let mut few = [httparse::EMPTY_HEADER; 24];
    let mut r = httparse::Response::new(&mut few);
    match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => head_from(buf, n, r),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            let mut many = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut r = httparse::Response::new(&mut many);
            match r.parse(buf) {
                Ok(httparse::Status::Complete(n)) => head_from(buf, n, r),
                Ok(httparse::Status::Partial) => Ok(None),
                Err(e) => Err(protocol(e.to_string())),
            }
        }
        Err(e) => Err(protocol(e.to_string())),
    }
}

fn head_from(
    buf: &Bytes,
    n: usize,
    r: httparse::Response<'_, '_>,
) -> Result<Option<(usize, Option<ParsedHead>)>, Error> {
    let code = r.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| protocol(format!("status {code}")))?;
    // We never send `Upgrade`, so a 101 answers nothing we asked: whatever follows on the
    // connection is not HTTP we can read. Refused (the connection is dropped, not pooled).
    if code == 101 {
        return Err(protocol("101 Switching Protocols to a request without Upgrade"));
    }
    if status.is_informational() {
        return Ok(Some((n, None)));
    }
    let http10 = r.version == Some(0);
    // Room for what the proxy adds before relaying it (the three `x-switchyard-*`
    // headers, `x-request-id`, and the six remaining-quota headers of a key with
    // limits), so the map never grows on the request path: a growth re-allocates and
    // re-inserts every header.
    let mut headers = http::HeaderMap::with_capacity(r.headers.len() + 10);
    let mut length: Option<u64> = None;
    // `transfer-encoding` headers seen, and whether together they say exactly `chunked`.
    let mut te_headers = 0u32;
    let mut chunked = false;
    let mut close = http10;
    // A `connection` header names another header (not just `close` / `keep-alive`).
    let mut nominates = false;
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| protocol(format!("header name `{}`", h.name)))?;
        if name == http::header::CONTENT_LENGTH {
            let v = content_length(h.value).ok_or_else(|| protocol("content-length is not a number"))?;
            if length.is_some_and(|l| l != v) {
                return Err(protocol("conflicting content-length headers"));
            }
            length = Some(v);
        } else if name == http::header::TRANSFER_ENCODING {
            te_headers += 1;
            chunked = te_headers == 1 && h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name == http::header::CONNECTION {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    if http10 {
                        close = false;
                    }
                } else if !t.is_empty() {
                    nominates = true;
                }
            }
        }
        // Hop-by-hop headers describe this connection: used above, never passed on.
        if is_hop_by_hop(&name) {
            continue;
        }
        // The head is shared: every value is a slice of it, not a copy.
        let value = HeaderValue::from_maybe_shared(buf.slice_ref(h.value))
            .map_err(|_| protocol(format!("header `{}`: invalid value", h.name)))?;
        headers.append(name, value);
    }
    if te_headers > 0 {
        // RFC 9112 §6.3: a response with both is what request smuggling and response
        // splitting look like, and "ought to be handled as an error"; an intermediary may
        // instead decode by the transfer coding and drop the length. We refuse, as hyper
        // does for requests and as httparse-based servers do: an upstream that frames its
        // answers two ways cannot be trusted about where this one ends, so nothing it
        // sent is relayed and its connection is closed. The error happens before any byte
        // goes to the client, so the proxy may try another backend.
        if length.is_some() {
            return Err(protocol("both transfer-encoding and content-length"));
        }
        // Only `chunked` alone: another coding (gzip, ...) would reach the client without
        // a header saying so, and one that is not chunked last means "read to close",
        // which a misbehaving upstream can use to make a truncated answer look complete.
        if !chunked {
            return Err(protocol("transfer-encoding other than chunked"));
        }
        // RFC 9112 §6.1: a transfer coding in an HTTP/1.0 message means faulty framing.
        if http10 {
            return Err(protocol("transfer-encoding in an HTTP/1.0 response"));
        }
    }
    if nominates {
        // RFC 9110 §7.6.1: headers that `connection` names are hop-by-hop too. Removed
        // after the loop, as `connection` may come after the headers it names. Rare: the
        // common head pays only for the flag. (`connection: content-length` still frames
        // the body by its length; the length is just not relayed, and the server sets it
        // again from the body's exact size hint.)
        for h in r
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        {
            for token in h.value.split(|&b| b == b',') {
                if let Ok(named) = HeaderName::from_bytes(token.trim_ascii()) {
                    headers.remove(named);
                }
            }
        }
    }
    Ok(Some((
        n,
        Some(ParsedHead {
            status,
            headers,
            length,
            chunked,
            close,
        }),
    )))
}

/// A `content-length` value: one or more digits and nothing else (`+5`, `5, 5`, `0x5`
/// are not), that fits in a `u64`.
fn content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// RFC 9110 §7.6.1 (and the legacy `keep-alive` / `proxy-connection`): never forwarded,
/// in either direction.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    use http::header::{CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == TE
        || name == TRAILER
        || name == UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

impl ParsedHead {
    /// How the body is delimited (RFC 9112 §6.3), and whether the connection can be
    /// reused after it.
    pub(crate) fn framing(&self, head_method: bool) -> (Decoder, bool) {
        let s = self.status;
        if head_method || s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED {
            return (Decoder::Done, !self.close);
        }
        // `head_from` refused every other combination (both, or another coding).
        match (self.chunked, self.length) {
            (true, _) => (Decoder::Chunked(Chunked::default()), !self.close),
            (false, Some(l)) => (Decoder::Length(l), !self.close),
            // No length at all: the body runs to the end of the connection.
            (false, None) => (Decoder::Eof, false),
        }
    }
}

/// A response body, read from the connection as it is polled. Dropped before its end, it
/// closes the connection; read to the end, it returns it to the pool.
pub struct Body {
    conn: Option<(Io, Arc<Pool>)>,
    /// Read but not yet decoded.
    pending: Bytes,
    dec: Decoder,
    keep_alive: bool,
    /// A decode error met after data of the same read was taken: that data goes out
    /// first, the error on the next poll.
    deferred: Option<Error>,
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("upstream::Body")
            .field("pending", &self.pending.len())
            .field("dec", &self.dec)
            .finish()
    }
}

#[derive(Debug)]
pub(crate) enum Decoder {
    /// `content-length`: bytes still to come.
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes the connection.
    Eof,
    Done,
}

impl Body {
    /// A body already read whole, with no connection behind it (tests, and answers the
    /// worker makes up itself).
    pub fn detached(b: Bytes) -> Self {
        Self {
            conn: None,
            dec: Decoder::Length(b.len() as u64),
            pending: b,
            keep_alive: false,
            deferred: None,
        }
    }

    /// Once the body is complete, hand the connection back (if it may be reused and the
    /// upstream sent nothing beyond the body).
    fn maybe_release(&mut self) {
        if matches!(self.dec, Decoder::Done | Decoder::Length(0)) {
            self.dec = Decoder::Done;
            if let Some((io, pool)) = self.conn.take() {
                if self.keep_alive && self.pending.is_empty() {
                    pool.checkin(io);
                }
            }
        }
    }

    /// Decode the next piece of `pending`. `Some(data)`: a body slice to hand out.
    fn decode(&mut self) -> Result<Option<Bytes>, Error> {
        let out = match &mut self.dec {
            Decoder::Done => {
                self.pending.clear();
                None
            }
            Decoder::Eof => Some(std::mem::take(&mut self.pending)),
            Decoder::Length(rem) => {
                let n = (*rem).min(self.pending.len() as u64) as usize;
                *rem -= n as u64;
                Some(self.pending.split_to(n))
            }
            Decoder::Chunked(c) => {
                let out = c.decode(&mut self.pending)?;
                if c.done() {
                    self.dec = Decoder::Done;
                }
                out
            }
        };
        self.maybe_release();
        Ok(out.filter(|b| !b.is_empty()))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.deferred.take() {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            if !this.pending.is_empty() {
                match this.decode() {
                    Ok(Some(d)) => return Poll::Ready(Some(Ok(Frame::data(this.and_the_rest(d))))),
                    Ok(None) => continue,
                    Err(e) => {
                        this.fail();
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            if matches!(this.dec, Decoder::Done) {
                return Poll::Ready(None);
            }
            let Some((io, _)) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(io.poll_read_bytes(cx)) {
                Ok(b) if b.is_empty() => {
                    if matches!(this.dec, Decoder::Eof) {
                        this.dec = Decoder::Done;
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    this.fail();
                    return Poll::Ready(Some(Err(Error::UnexpectedEof)));
                }
                Ok(b) => this.pending = b,
                Err(e) => {
                    this.fail();
                    return Poll::Ready(Some(Err(Error::Read(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.dec, Decoder::Done) && self.deferred.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.dec {
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Length(rem) => SizeHint::with_exact(rem),
            Decoder::Chunked(_) | Decoder::Eof => SizeHint::default(),
        }
    }
}

impl Body {
    /// `first`, joined by the data of every other chunk already read (none is waited
    /// for): a burst of upstream chunks that arrived in one read goes on as one frame, so
    /// the relay's per-frame work (usage scan, the client's chunk header, a write) is done
    /// once for it, as nginx writes out what one read brought. A lone chunk, the usual
    /// case of a paced stream, stays a zero-copy slice of the read.
    fn and_the_rest(&mut self, first: Bytes) -> Bytes {
        let mut joined: Option<BytesMut> = None;
        while !self.pending.is_empty() {
            match self.decode() {
                Ok(Some(more)) => joined
                    .get_or_insert_with(|| {
                        let mut j = BytesMut::with_capacity(first.len() + more.len() + self.pending.len());
                        j.extend_from_slice(&first);
                        j
                    })
                    .extend_from_slice(&more),
                Ok(None) => {}
                Err(e) => {
                    self.fail();
                    self.deferred = Some(e);
                    break;
                }
            }
        }
        joined.map_or(first, BytesMut::freeze)
    }

    fn fail(&mut self) {
        self.dec = Decoder::Done;
        self.conn = None;
        self.pending.clear();
    }
}

/// `transfer-encoding: chunked`, decoded incrementally: data slices are handed out as
/// they arrive (zero-copy slices of the read), sizes, extensions and trailers skipped.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// Whitespace after the size, before `;` or CR.
    SizeWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    End,
}

impl Chunked {
    /// Consume from `input` up to and including the next data slice.
    pub(crate) fn decode(&mut self, input: &mut Bytes) -> Result<Option<Bytes>, Error> {
        use ChunkState::*;
        while !input.is_empty() {
            if self.state == Data {
                let n = self.size.min(input.len() as u64) as usize;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                return Ok(Some(input.split_to(n)));
            }
            let b = input[0];
            input.advance(1);
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    self.digits += 1;
                    if self.digits > 16 {
                        return Err(protocol("chunk size too large"));
                    }
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from((b as char).to_digit(16).unwrap_or(0))))
                        .ok_or_else(|| protocol("chunk size too large"))?;
                    Size
                }
                (Size, b' ' | b'\t') | (SizeWs, b' ' | b'\t') if self.digits > 0 => SizeWs,
                (Size | SizeWs, b';') if self.digits > 0 => Ext,
                (Size | SizeWs, b'\r') if self.digits > 0 => SizeLf,
                (Ext, b'\r') => SizeLf,
                (Ext, b'\n') => return Err(protocol("bare LF in chunk extension")),
                (Ext, _) => Ext,
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    if self.size == 0 {
                        TrailerStart
                    } else {
                        Data
                    }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart | Trailer, b) => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILER_BYTES {
                        return Err(protocol("chunked trailers too large"));
                    }
                    match b {
                        b'\r' => TrailerLf,
                        b'\n' => return Err(protocol("bare LF in chunked trailers")),
                        _ => Trailer,
                    }
                }
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => End,
                (End, _) => End,
                (s, b) => {
                    return Err(protocol(format!(
                        "invalid chunked encoding ({s:?}, byte {b:#04x})"
                    )))
                }
            };
            if self.state == End {
                return Ok(None);
            }
        }
        Ok(None)
    }

    pub(crate) fn done(&self) -> bool {
        self.state == ChunkState::End
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use proptest::prelude::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    fn decode_all(enc: &[u8], splits: &[usize]) -> Result<(Vec<u8>, bool), Error> {
        let mut c = Chunked::default();
        let mut out = Vec::new();
        let mut cuts: Vec<usize> = splits.iter().map(|s| s % (enc.len() + 1)).collect();
        cuts.push(0);
        cuts.push(enc.len());
        cuts.sort_unstable();
        for w in cuts.windows(2) {
            let mut input = Bytes::copy_from_slice(&enc[w[0]..w[1]]);
            while !input.is_empty() {
                if let Some(d) = c.decode(&mut input)? {
                    out.extend_from_slice(&d);
                }
                if c.done() {
                    return Ok((out, input.is_empty() && w[1] == enc.len()));
                }
            }
        }
        Ok((out, c.done()))
    }

    fn encode(pieces: &[Vec<u8>], ext: bool, trailers: bool) -> Vec<u8> {
        let mut e = Vec::new();
        for p in pieces.iter().filter(|p| !p.is_empty()) {
            e.extend_from_slice(format!("{:X}", p.len()).as_bytes());
            if ext {
                e.extend_from_slice(b" ;name=\"v\"");
            }
            e.extend_from_slice(b"\r\n");
            e.extend_from_slice(p);
            e.extend_from_slice(b"\r\n");
        }
        e.extend_from_slice(b"0\r\n");
        if trailers {
            e.extend_from_slice(b"x-trailer: 1\r\nx-other: two\r\n");
        }
        e.extend_from_slice(b"\r\n");
        e
    }

    proptest! {
        /// However the encoded stream is cut into reads, the decoded bytes are the input.
        #[test]
        fn chunked_roundtrip(pieces in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
                             splits in prop::collection::vec(any::<usize>(), 0..12),
                             ext: bool, trailers: bool) {
            let enc = encode(&pieces, ext, trailers);
            let (out, done) = decode_all(&enc, &splits).unwrap();
            prop_assert!(done);
            prop_assert_eq!(out, pieces.concat());
        }
    }

    #[test]
    fn chunked_rejects_bad_input() {
        for bad in [
            &b"zz\r\nab\r\n0\r\n\r\n"[..],
            b"2\r\nabX\r\n0\r\n\r\n",
            b"\r\n",
            b"2\nab\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"0\r\nx: 1\n\r\n",
        ] {
            assert!(
                decode_all(bad, &[]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A scripted upstream: answers each request on a connection with the next response
    /// of its script, then (if `close_after`) closes. Counts connections.
    struct Script {
        addr: SocketAddr,
        conns: Arc<AtomicUsize>,
        /// Connections the script has closed.
        closed: Arc<AtomicUsize>,
        heads: Arc<Mutex<Vec<String>>>,
    }

    async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.parse::<usize>().unwrap());
                while buf.len() < end + 4 + len {
                    let mut b = [0u8; 4096];
                    let n = s.read(&mut b).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    buf.extend_from_slice(&b[..n]);
                }
                // The head as sent, then the body: tests look at both.
                let whole = String::from_utf8_lossy(&buf[..end + 4 + len]).to_string();
                buf.drain(..end + 4 + len);
                return Some(whole);
            }
            let mut b = [0u8; 4096];
            let n = s.read(&mut b).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&b[..n]);
        }
    }

    async fn script(responses: Vec<&'static [u8]>, per_conn: usize) -> Script {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c2, h2) = (conns.clone(), heads.clone());
        let next = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let cl2 = closed.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                c2.fetch_add(1, Ordering::SeqCst);
                let (h2, next, responses, cl2) = (h2.clone(), next.clone(), responses.clone(), cl2.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for _ in 0..per_conn {
                        let Some(head) = read_request(&mut s, &mut buf).await else {
                            break;
                        };
                        h2.lock().push(head);
                        let r = responses[next.fetch_add(1, Ordering::SeqCst) % responses.len()];
                        if s.write_all(r).await.is_err() {
                            break;
                        }
                    }
                    drop(s);
                    cl2.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Script {
            addr,
            conns,
            closed,
            heads,
        }
    }

    fn client(c: &Connector, addr: SocketAddr) -> Client {
        let url = url::Url::parse(&format!("http://{addr}/v1")).unwrap();
        c.client(&url, Duration::from_secs(2), &Egress::default())
            .unwrap()
    }

    async fn get(cl: &Client, path: &str) -> Result<(u16, http::HeaderMap, Vec<u8>), Error> {
        let mut head = cl.head(&Method::POST, path, 0);
        head.header(
            &http::header::CONTENT_TYPE,
            &HeaderValue::from_static("application/json"),
        );
        let resp = cl.send(head, &[Bytes::from_static(b"{}")]).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes().to_vec();
        Ok((parts.status.as_u16(), parts.headers, body))
    }

    const OK: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nx-custom: yes\r\n\r\n{}";
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";

    #[tokio::test]
    async fn keep_alive_reuses_one_connection() {
        let s = script(vec![OK, CHUNKED], 100).await;
        let c = Connector::new().unwrap();
        let cl = client(&c, s.addr);
        for i in 0..10 {
            let (status, h, body) = get(&cl, "/chat/completions?x=1").await.unwrap();
            assert_eq!(status, 200);
            if i % 2 == 0 {
                assert_eq!(body, b"{}");
                assert_eq!(h["x-custom"], "yes");
            } else {
                assert_eq!(body, b"hello world");
                assert!(
                    !h.contains_key("transfer-encoding"),
                    "hop-by-hop headers are not returned"
                );
            }
        }
        assert_eq!(s.conns.load(Ordering::SeqCst), 1);
        let heads = s.heads.lock().clone();
        assert!(heads[0].starts_with("POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: 127.0.0.1:"));
        assert!(heads[0].contains("\r\ncontent-type: application/json\r\ncontent-length: 2"));
    }

    /// Chunks that arrive in one read are relayed as one frame; a malformed chunk after
    /// them in the same read still lets the good data out first, then fails.
    #[tokio::test]
    async fn chunks_read_together_are_one_frame_and_an_error_after_them_comes_last() {
        const BROKEN: &[u8] =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n1\r\n!\r\nzz\r\n";
        let s = script(vec![CHUNKED, BROKEN], 100).await;
        let c = Connector::new().unwrap();
        let cl = client(&c, s.addr);
        let body = [Bytes::from_static(b"{}")];
        let send = || cl.send(cl.head(&Method::POST, "/x", 0), &body);

        let mut body = send().await.unwrap().into_body();
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&frame[..], b"hello world", "two chunks of one read: one frame");
        assert!(http_body::Body::is_end_stream(&body));
        assert!(body.frame().await.is_none());

        let mut body = send().await.unwrap().into_body();
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&frame[..], b"hello!");
        assert!(
            !http_body::Body::is_end_stream(&body),
            "the error is still to come"
        );
        assert!(matches!(body.frame().await, Some(Err(Error::Protocol(_)))));
        assert!(body.frame().await.is_none());
    }

    /// A body given as pieces (the client's bytes around a rewrite) arrives whole, with
    /// the length of all of them.
    #[tokio::test]
    async fn a_body_in_pieces_arrives_whole() {
        let s = script(vec![OK], 100).await;
        let c = Connector::new().unwrap();
        let cl = client(&c, s.addr);
        let body = [
            Bytes::from_static(b"{\"model\":"),
            Bytes::from_static(b"\"x\""),
            Bytes::new(),
            Bytes::from_static(b",\"a\":1}"),
        ];
        let resp = cl.send(cl.head(&Method::POST, "/x", 0), &body).await.unwrap();
        assert_eq!(resp.status(), 200);
        let seen = s.heads.lock()[0].clone();
        assert!(
            seen.ends_with("content-length: 19\r\n\r\n{\"model\":\"x\",\"a\":1}"),
            "{seen}"
        );
    }

    proptest! {
        /// Written in any steps, the pieces give back head then body, byte for byte.
        #[test]
        fn pieces_advance_in_any_steps(parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..50), 0..6),
                                       steps in prop::collection::vec(1usize..40, 0..40)) {
            let head = b"HEAD".to_vec();
            let body: Vec<Bytes> = parts.iter().map(|p| Bytes::copy_from_slice(p)).collect();
            let want: Vec<u8> = head.iter().copied().chain(parts.concat()).collect();
            let mut buf = Pieces::new(&head, &body);
            let mut got = Vec::new();
            for step in steps.into_iter().chain(std::iter::repeat(7)) {
                prop_assert_eq!(buf.remaining(), want.len() - got.len());
                if !buf.has_remaining() {
                    break;
                }
                let mut slices = [io::IoSlice::new(&[]); 4];
                let n = buf.chunks_vectored(&mut slices);
                prop_assert!(n >= 1);
                prop_assert_eq!(&slices[0][..], buf.chunk());
                let take = step.min(buf.chunk().len());
                got.extend_from_slice(&buf.chunk()[..take]);
                buf.advance(take);
            }
            prop_assert_eq!(got, want);
        }
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_not_reused() {
        // One answer per connection, no `connection: close`: the upstream closes each
        // connection after its answer, and the next request must not be sent on it.
        let s = script(vec![OK], 1).await;
        let c = Connector::new().unwrap();
        let cl = client(&c, s.addr);
        for i in 0..5 {
            let (status, _, body) = get(&cl, "/x").await.unwrap();
            assert_eq!((status, body.as_slice()), (200, &b"{}"[..]));
            let deadline = Instant::now() + Duration::from_secs(5);
            while s.closed.load(Ordering::SeqCst) < i + 1 {
                assert!(Instant::now() < deadline, "the script never closed");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        assert_eq!(s.conns.load(Ordering::SeqCst), 5);
        assert_eq!(s.heads.lock().len(), 5, "no request was sent twice");
    }

    /// Answers the first request on its first connection, reads the second and closes
    /// without answering; answers everything on later connections.
    /// How many of the request heads the upstream saw start with `prefix`.
    fn sent(heads: &Mutex<Vec<String>>, prefix: &str) -> usize {
        heads.lock().iter().filter(|h| h.starts_with(prefix)).count()
    }

    async fn dies_after_one() -> (SocketAddr, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c2, h2) = (conns.clone(), heads.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let n = c2.fetch_add(1, Ordering::SeqCst);
                let h2 = h2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for i in 0.. {
                        let Some(head) = read_request(&mut s, &mut buf).await else {
                            break;
                        };
                        h2.lock().push(head);
                        if n == 0 && i == 1 {
                            break; // swallowed: closed without an answer
                        }
                        if s.write_all(OK).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, conns, heads)
    }

    #[tokio::test]
    async fn a_post_is_never_sent_twice_but_a_get_is_resent_on_a_dead_pooled_connection() {
        let (addr, conns, heads) = dies_after_one().await;
        let c = Connector::new().unwrap();
        let cl = client(&c, addr);
        assert_eq!(get(&cl, "/a").await.unwrap().0, 200);
        // The second POST goes out on the pooled connection, which dies unanswered: an
        // error, not a silent second try (the upstream may have started on it).
        let e = get(&cl, "/b").await.unwrap_err();
        assert!(
            matches!(e, Error::UnexpectedEof | Error::Read(_)) && !e.is_connect(),
            "{e}"
        );
        assert_eq!(sent(&heads, "POST /v1/b "), 1);
        assert_eq!(conns.load(Ordering::SeqCst), 1);

        let (addr, conns, heads) = dies_after_one().await;
        let cl = client(&c, addr);
        assert_eq!(get(&cl, "/a").await.unwrap().0, 200);
        let resp = cl.send(cl.head(&Method::GET, "/models", 0), &[]).await.unwrap();
        assert_eq!(resp.status(), 200, "a GET is resent on a new connection");
        assert_eq!(sent(&heads, "GET /v1/models "), 2);
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connection_close_and_read_to_eof() {
        let s = script(
            vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"],
            1,
        )
        .await;
        let c = Connector::new().unwrap();
        let cl = client(&c, s.addr);
        for _ in 0..2 {
            let (status, _, body) = get(&cl, "/x").await.unwrap();
            assert_eq!((status, body.as_slice()), (200, &b"until the end"[..]));
        }
        assert_eq!(s.conns.load(Ordering::SeqCst), 2);
        assert!(cl.pool.idle.lock().is_empty());
    }

    #[tokio::test]
    async fn interim_responses_and_bodiless_statuses() {
        let s = script(
            vec![
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\nabc",
                b"HTTP/1.1 204 No Content\r\n\r\n",
                b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 2\r\ncontent-length: 4\r\n\r\nslow",
            ],
            100,
        )
        .await;
        let c = Connector::new().unwrap();
        let cl = client(&c, s.addr);
        let (st, _, b) = get(&cl, "/a").await.unwrap();
        assert_eq!((st, b.as_slice()), (201, &b"abc"[..]));
        let (st, _, b) = get(&cl, "/b").await.unwrap();
        assert_eq!((st, b.len()), (204, 0));
        let (st, h, b) = get(&cl, "/c").await.unwrap();
        assert_eq!(
            (st, h["retry-after"].as_bytes(), b.as_slice()),
            (429, &b"2"[..], &b"slow"[..])
        );
        assert_eq!(s.conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn many_headers_parse_and_too_many_are_refused() {
        fn head(n: usize) -> &'static [u8] {
            let mut h = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
            for i in 0..n {
                h.push_str(&format!("x-h{i}: v{i}\r\n"));
            }
            h.push_str("\r\nok");
            Box::leak(h.into_bytes().into_boxed_slice())
        }
        let s = script(vec![head(60), head(200)], 100).await;
        let c = Connector::new().unwrap();
        let cl = client(&c, s.addr);
        let (st, h, b) = get(&cl, "/a").await.unwrap();
        assert_eq!((st, h.len(), b.as_slice()), (200, 61, &b"ok"[..]));
        assert_eq!(h["x-h59"], "v59");
        let e = get(&cl, "/a").await.unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{e}");
    }

    #[tokio::test]
    async fn a_truncated_body_is_an_error_and_not_pooled() {
        let s = script(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"], 1).await;
        let c = Connector::new().unwrap();
        let cl = client(&c, s.addr);
        let resp = cl.send(cl.head(&Method::POST, "/x", 0), &[]).await.unwrap();
        let err = resp.into_body().collect().await.unwrap_err();
        assert!(matches!(err, Error::UnexpectedEof), "{err}");
        assert!(cl.pool.idle.lock().is_empty());
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_error_and_refused_connect_is_a_connect_error() {
        let s = script(vec![b"SMTP ready\r\n\r\n"], 1).await;
        let c = Connector::new().unwrap();
        let e = get(&client(&c, s.addr), "/x").await.unwrap_err();
        assert!(matches!(e, Error::Protocol(_)) && !e.is_connect(), "{e}");

        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = l.local_addr().unwrap();
        drop(l);
        let e = get(&client(&c, dead), "/x").await.unwrap_err();
        assert!(e.is_connect(), "{e}");
    }

    #[tokio::test]
    async fn dropping_a_body_midway_closes_its_connection() {
        let s = script(
            vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"],
            100,
        )
        .await;
        let c = Connector::new().unwrap();
        let cl = client(&c, s.addr);
        let mut body = cl
            .send(cl.head(&Method::POST, "/x", 0), &[])
            .await
            .unwrap()
            .into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"hello");
        drop(body);
        assert!(cl.pool.idle.lock().is_empty());
    }

    /// Issue 16 (hole 7): answers whose framing is ambiguous or not ours to read are
    /// refused before any byte is relayed, and their connection is never pooled.
    #[tokio::test]
    async fn ambiguous_framings_are_refused_and_their_connection_dropped() {
        for bad in [
            // Both framings: relaying the length cut the decoded body short.
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            // Not exactly `chunked`: read-to-close would take a cut answer for a whole one.
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, identity\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            // Lengths: differing, signed, a list, past u64.
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551616\r\n\r\n{}",
            // We never ask to switch protocols.
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            let s = script(vec![bad, OK], 100).await;
            let c = Connector::new().unwrap();
            let cl = client(&c, s.addr);
            let e = get(&cl, "/x").await.unwrap_err();
            let what = String::from_utf8_lossy(bad);
            assert!(matches!(e, Error::Protocol(_)) && !e.is_connect(), "{what}: {e}");
            assert!(cl.pool.idle.lock().is_empty(), "{what}: pooled");
            // The next request needs a new connection, and the refused one is closed.
            let (st, _, body) = get(&cl, "/x").await.unwrap();
            assert_eq!((st, body.as_slice()), (200, &b"{}"[..]), "{what}");
            assert_eq!(s.conns.load(Ordering::SeqCst), 2, "{what}");
            let deadline = Instant::now() + Duration::from_secs(5);
            while s.closed.load(Ordering::SeqCst) < 1 {
                assert!(Instant::now() < deadline, "{what}: the refused connection stayed open");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }

    #[test]
    fn content_length_is_digits_that_fit() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b" 42 "), Some(42));
        assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(content_length(b"00000000000000000000001"), None, "over 20 digits");
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1.0",
            b"0x10",
            b"1 1",
            b"18446744073709551616",
            b"99999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn chunk_sizes_never_wrap() {
        // The largest size is accepted as that size (its data then never all arrives);
        // one digit more is refused, never wrapped to a small size.
        let mut c = Chunked::default();
        let mut input = Bytes::from_static(b"ffffffffffffffff\r\nab");
        assert_eq!(c.decode(&mut input).unwrap().as_deref(), Some(&b"ab"[..]));
        assert_eq!(c.size, u64::MAX - 2);
        assert!(decode_all(b"1ffffffffffffffff\r\nab", &[]).is_err());
        assert!(decode_all(b"10000000000000000\r\nab", &[3, 9]).is_err());
    }

    /// Headers named in the upstream's `connection` header describe its connection only.
    #[tokio::test]
    async fn headers_named_by_connection_are_not_returned() {
        let s = script(
            vec![b"HTTP/1.1 200 OK\r\nx-foo: 1\r\nx-kept: 2\r\nConnection: X-Foo, keep-alive\r\ncontent-length: 2\r\nx-bar: 3\r\nconnection: x-bar\r\nkeep-alive: timeout=5\r\n\r\n{}"],
            100,
        )
        .await;
        let c = Connector::new().unwrap();
        let cl = client(&c, s.addr);
        for _ in 0..2 {
            let (st, h, body) = get(&cl, "/x").await.unwrap();
            assert_eq!((st, body.as_slice()), (200, &b"{}"[..]));
            let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            names.sort_unstable();
            assert_eq!(names, ["content-length", "x-kept"]);
        }
        assert_eq!(s.conns.load(Ordering::SeqCst), 1, "still kept alive");
    }

    #[tokio::test]
    async fn https_roundtrip_with_a_private_root() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let server_cfg =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.clone()], key)
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let c2 = conns.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                c2.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            // Requests carry `content-length: 0` here.
                            seen.drain(..end + 4);
                            s.write_all(CHUNKED).await.unwrap();
                            s.flush().await.unwrap();
                        }
                    }
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let c = Connector::with_roots(roots).unwrap();
        let url = url::Url::parse(&format!("https://localhost:{port}/v1")).unwrap();
        let cl = c
            .client(&url, Duration::from_secs(2), &Egress::default())
            .unwrap();
        for _ in 0..3 {
            let resp = cl.send(cl.head(&Method::POST, "/x", 0), &[]).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello world");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);

        // The same server under a name its certificate does not carry is refused.
        let url = url::Url::parse(&format!("https://127.0.0.1:{port}/v1")).unwrap();
        let cl = c
            .client(&url, Duration::from_secs(2), &Egress::default())
            .unwrap();
        let e = cl.send(cl.head(&Method::POST, "/x", 0), &[]).await.unwrap_err();
        assert!(matches!(e, Error::Tls { .. }) && e.is_connect(), "{e}");
    }

    #[test]
    fn proxy_urls_and_the_environment() {
        let p = ProxyConfig::parse("http://proxy.corp:3128", None).unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.auth.is_none()),
            ("proxy.corp", 3128, true)
        );
        let p = ProxyConfig::parse("http://egress@10.0.0.1", Some("pa:ss")).unwrap();
        assert_eq!(p.port, 80);
        // base64("egress:pa:ss")
        assert_eq!(p.auth.as_deref(), Some("Basic ZWdyZXNzOnBhOnNz"));
        assert!(
            !format!("{p:?}").contains("ZWdy"),
            "Debug redacts the credentials"
        );
        for bad in [
            "https://proxy:3128",
            "socks5://proxy:1080",
            "http://proxy:3128/path",
            "proxy",
        ] {
            assert!(ProxyConfig::parse(bad, None).is_err(), "{bad}");
        }

        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let https = url::Url::parse("https://api.openai.com/v1").unwrap();
        let http = url::Url::parse("http://vllm.internal:8000/v1").unwrap();
        let vars = env(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "lower:2"),
            ("HTTP_PROXY", "http://u:p@plain:3"),
            ("NO_PROXY", "localhost, .internal:8000"),
        ]);
        let p = ProxyConfig::from_env(&https, &vars).unwrap().unwrap();
        assert_eq!(
            (p.host.as_str(), p.port),
            ("lower", 2),
            "lowercase first, scheme optional"
        );
        assert!(
            ProxyConfig::from_env(&http, &vars).unwrap().is_none(),
            "NO_PROXY domain"
        );
        let other = url::Url::parse("http://elsewhere/v1").unwrap();
        let p = ProxyConfig::from_env(&other, &vars).unwrap().unwrap();
        assert_eq!(
            p.auth.as_deref(),
            Some("Basic dTpw"),
            "user:password from the URL"
        );
        assert!(
            ProxyConfig::from_env(&https, &env(&[("NO_PROXY", "*"), ("HTTPS_PROXY", "x:1")]))
                .unwrap()
                .is_none()
        );
        assert!(ProxyConfig::from_env(&https, &env(&[])).unwrap().is_none());
    }

    /// A fake proxy that answers CONNECT with `answer`, then relays to `to`.
    async fn fake_proxy(answer: &'static [u8], to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h2 = heads.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = Vec::new();
                let Some(head) = read_request(&mut s, &mut buf).await else {
                    continue;
                };
                h2.lock().push(head);
                s.write_all(answer).await.unwrap();
                if answer.starts_with(b"HTTP/1.1 200") {
                    let mut up = TcpStream::connect(to).await.unwrap();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                    });
                }
            }
        });
        (addr, heads)
    }

    #[tokio::test]
    async fn a_connect_tunnel_is_opened_once_and_refusals_are_proxy_errors() {
        // The origin is plain HTTP behind the tunnel here: what is tested is the tunnel.
        let origin = script(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], 10).await;
        let (paddr, heads) = fake_proxy(b"HTTP/1.1 200 Connection established\r\n\r\n", origin.addr).await;
        let mut tcp = TcpStream::connect(paddr).await.unwrap();
        let req = format!("CONNECT {0} HTTP/1.1\r\nhost: {0}\r\n\r\n", origin.addr);
        open_tunnel(&mut tcp, req.as_bytes(), "p").await.unwrap();
        assert!(heads.lock()[0].starts_with(&format!("CONNECT {}", origin.addr)));
        // The tunnel carries what follows to the origin.
        tcp.write_all(b"GET /x HTTP/1.1\r\nhost: o\r\n\r\n")
            .await
            .unwrap();
        let mut got = vec![0u8; 64];
        let n = tcp.read(&mut got).await.unwrap();
        assert!(got[..n].starts_with(b"HTTP/1.1 200 OK"));
        drop(tcp);

        // An http origin through a proxy: absolute form to the proxy (here the scripted
        // server, which records what it is sent), its credentials on every request.
        let c = Connector::new().unwrap();
        let via = Egress {
            proxy: Some(ProxyConfig::parse(&format!("http://u@{}", origin.addr), Some("pw")).unwrap()),
            tls: None,
        };
        let url = url::Url::parse("http://upstream.example:8000/v1").unwrap();
        let cl = c.client(&url, Duration::from_secs(2), &via).unwrap();
        let (st, _, body) = get(&cl, "/models").await.unwrap();
        assert_eq!((st, &body[..]), (200, &b"ok"[..]));
        let h = origin.heads.lock().last().cloned().unwrap();
        assert!(
            h.starts_with("POST http://upstream.example:8000/v1/models HTTP/1.1\r\n"),
            "{h}"
        );
        assert!(h.contains("host: upstream.example:8000\r\n"), "{h}");
        assert!(h.contains("proxy-authorization: Basic dTpwdw==\r\n"), "{h}");

        // A refusal: an Error::Proxy with the status, counted as a connect error.
        let (refusing, _) =
            fake_proxy(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", origin.addr).await;
        let mut tcp = TcpStream::connect(refusing).await.unwrap();
        let e = open_tunnel(&mut tcp, b"CONNECT x:443 HTTP/1.1\r\n\r\n", "p:1")
            .await
            .unwrap_err();
        assert!(e.is_connect(), "{e}");
        assert_eq!(
            e.to_string(),
            "proxy p:1: CONNECT answered 407 Proxy Authentication Required"
        );
        // Bytes after the answer would corrupt the tunnel: refused.
        let (chatty, _) = fake_proxy(b"HTTP/1.1 200 OK\r\n\r\nextra", origin.addr).await;
        let mut tcp = TcpStream::connect(chatty).await.unwrap();
        let e = open_tunnel(&mut tcp, b"CONNECT x:443 HTTP/1.1\r\n\r\n", "p:1")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("after its CONNECT answer"), "{e}");
    }

    #[test]
    fn pools_are_kept_apart_by_proxy_and_tls_settings() {
        let c = Connector::new().unwrap();
        let url = url::Url::parse("https://api.example.com/v1").unwrap();
        let t = Duration::from_secs(1);
        let proxied = |auth: &str| Egress {
            proxy: Some(ProxyConfig::parse(&format!("http://{auth}@proxy:3128"), Some("pw")).unwrap()),
            tls: None,
        };
        let a = c.client(&url, t, &Egress::default()).unwrap();
        let b = c.client(&url, t, &Egress::default()).unwrap();
        assert!(Arc::ptr_eq(&a.pool, &b.pool));
        let p1 = c.client(&url, t, &proxied("u1")).unwrap();
        let p2 = c.client(&url, t, &proxied("u2")).unwrap();
        assert!(!Arc::ptr_eq(&a.pool, &p1.pool) && !Arc::ptr_eq(&p1.pool, &p2.pool));
        let tls = Egress {
            proxy: None,
            tls: Some(UpstreamTls::from_pem(None, None).unwrap()),
        };
        let t1 = c.client(&url, t, &tls).unwrap();
        assert!(!Arc::ptr_eq(&a.pool, &t1.pool));
        assert!(Arc::ptr_eq(&t1.pool, &c.client(&url, t, &tls).unwrap().pool));
    }
}
