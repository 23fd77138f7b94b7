//! TLS on the gRPC listener: the server certificate (re-read from disk when its files
//! change, so a rotation needs no restart), optional client-certificate verification
//! (mTLS), the worker identity a client certificate carries, and the rule that keeps
//! snapshots off plaintext connections from other machines.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use parking_lot::{Mutex, RwLock};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
    RootCertStore, ServerConfig,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::Error;

/// How often the certificate and key files are looked at for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server's certificate, key and (for mTLS) client CA come from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM: the server certificate, then its intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM: CA certificates that sign client certificates; set, every client must
    /// present one (mTLS).
    pub client_ca: Option<PathBuf>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn cfg_err(what: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("{}: {e}", what.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| cfg_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cfg_err(path, e))?;
    if certs.is_empty() {
        return Err(cfg_err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn load_key_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, Error> {
    let certs = read_certs(&files.cert)?;
    // The error never includes the key's bytes.
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| cfg_err(&files.key, e))?;
    CertifiedKey::from_der(certs, key, provider)
        .map(Arc::new)
        .map_err(|e| {
            cfg_err(
                &files.key,
                format!("does not match {}: {e}", files.cert.display()),
            )
        })
}

fn mtimes(files: &TlsFiles) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(&files.cert), m(&files.key))
}

/// The server certificate, swapped when its files change on disk.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ReloadingCert {
    pub fn load(files: TlsFiles) -> Result<Self, Error> {
        let provider = provider();
        let seen = mtimes(&files);
        let current = load_key_pair(&files, &provider)?;
        Ok(Self {
            files,
            provider,
            current: RwLock::new(current),
            seen: Mutex::new(seen),
        })
    }

    /// Re-read the pair if either file's mtime changed. A pair that does not load (a
    /// rotation half done: new cert, old key) keeps the previous one, and is tried again
    /// at the next look. Returns whether a new pair was installed.
    pub fn reload_if_changed(&self) -> bool {
        let now = mtimes(&self.files);
        if *self.seen.lock() == now {
            return false;
        }
        match load_key_pair(&self.files, &self.provider) {
            Ok(k) => {
                *self.current.write() = k;
                *self.seen.lock() = now;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate changed but does not load; keeping the previous one");
                false
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// The rustls server config for `files`, and the resolver to poll for rotations.
pub fn server_config(files: &TlsFiles) -> Result<(Arc<ServerConfig>, Arc<ReloadingCert>), Error> {
    let provider = provider();
    let resolver = Arc::new(ReloadingCert::load(files.clone())?);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).map_err(|e| cfg_err(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| cfg_err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_cert_resolver(resolver.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(cfg), resolver))
}

/// Look at the certificate files every [`RELOAD_EVERY`] until `cancel`.
pub async fn run_reloader(cert: Arc<ReloadingCert>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let c = cert.clone();
        // Two small stat calls, and a read when they changed: off the runtime threads.
        let _ = tokio::task::spawn_blocking(move || c.reload_if_changed()).await;
    }
}

/// Accept TCP connections and hand on those that complete a TLS handshake. Each
/// handshake runs in its own task, so a slow client holds up nobody.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    tasks: TaskTracker,
    cancel: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let t = tasks.clone();
    tasks.spawn(async move {
        loop {
            let (sock, peer) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and the like: wait a little rather than spin.
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = sock.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let cancel = cancel.clone();
            t.spawn(async move {
                let hs = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)) => r,
                };
                match hs {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The identity a verified client certificate names: its subject's common name, else
/// its first DNS subject alternative name.
pub fn cert_identity(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .filter(|s| !s.is_empty())
    {
        return Some(cn.to_string());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    })
}

/// What a request's connection is: TLS or not, from where, and which verified client
/// certificate it presented.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    pub tls: bool,
    pub addr: Option<SocketAddr>,
    /// From the client certificate (mTLS only).
    pub identity: Option<String>,
}

impl Peer {
    pub fn of<T>(req: &tonic::Request<T>) -> Peer {
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        let ext = req.extensions();
        if let Some(i) = ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
            return Peer {
                tls: true,
                addr: i.get_ref().remote_addr(),
                identity: i
                    .peer_certs()
                    .and_then(|c| c.first().and_then(|c| cert_identity(c.as_ref()))),
            };
        }
        Peer {
            tls: false,
            addr: ext.get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr),
            identity: None,
        }
    }
}

/// Whether a snapshot (every provider secret) may go to this peer: over TLS always; over
/// plaintext only to a loopback peer, or to anyone when the operator said `--insecure`.
/// A peer whose address is unknown is not known to be local.
pub fn may_stream_secrets(tls: bool, peer: Option<SocketAddr>, insecure: bool) -> bool {
    tls || insecure || peer.is_some_and(|p| p.ip().to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn plaintext_goes_only_to_loopback_unless_insecure() {
        assert!(may_stream_secrets(false, a("127.0.0.1:5000"), false));
        assert!(may_stream_secrets(false, a("127.0.0.2:5000"), false));
        assert!(may_stream_secrets(false, a("[::1]:5000"), false));
        assert!(may_stream_secrets(false, a("[::ffff:127.0.0.1]:5000"), false));
        assert!(!may_stream_secrets(false, a("10.0.0.7:5000"), false));
        assert!(!may_stream_secrets(false, a("[::ffff:10.0.0.7]:5000"), false));
        assert!(!may_stream_secrets(false, a("[fe80::1]:5000"), false));
        assert!(!may_stream_secrets(false, None, false));
        assert!(may_stream_secrets(false, a("10.0.0.7:5000"), true));
        assert!(may_stream_secrets(true, a("10.0.0.7:5000"), false));
        assert!(may_stream_secrets(true, None, false));
    }

    #[test]
    fn identity_is_the_common_name_else_the_first_dns_name() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["w1.example".into(), "w2.example".into()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, "worker-7");
        let c = p.self_signed(&key).unwrap();
        assert_eq!(cert_identity(c.der()).as_deref(), Some("worker-7"));

        let mut p = rcgen::CertificateParams::new(vec!["w1.example".into(), "w2.example".into()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        let c = p.self_signed(&key).unwrap();
        assert_eq!(cert_identity(c.der()).as_deref(), Some("w1.example"));
        assert_eq!(cert_identity(b"not a certificate"), None);
    }
}
