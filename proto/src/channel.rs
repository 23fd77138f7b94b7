//! How clients (workers and the CLI) reach control: a tonic `Endpoint` for a URL, with
//! TLS for `https://` verified against a CA file (or the public web roots), and a
//! client certificate when control asks for one (mTLS). Shared so that both clients
//! speak the same TLS.
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// TLS settings of a client of control. All `None`: plaintext for `http://`, the public
/// web roots and no client certificate for `https://`.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// PEM CA certificate(s) that sign control's certificate (replaces the public roots).
    pub ca: Option<PathBuf>,
    /// PEM client certificate and its key, presented to a control that requires mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("invalid control URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("a client certificate needs its key and the key its certificate (both or neither)")]
    HalfIdentity,
    #[error("TLS settings (a CA or a client certificate) need an https:// control URL, not `{0}`")]
    TlsOnPlaintext(String),
    #[error("TLS: {0}")]
    Tls(String),
}

fn read(path: &Path) -> Result<Vec<u8>, ChannelError> {
    std::fs::read(path).map_err(|source| ChannelError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl ClientTls {
    fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// The tonic TLS config these settings describe (files are read now).
    pub fn config(&self) -> Result<ClientTlsConfig, ChannelError> {
        let mut c = ClientTlsConfig::new();
        c = match &self.ca {
            Some(ca) => c.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => c.trust_anchors(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Ok(c.identity(Identity::from_pem(read(cert)?, read(key)?))),
            (None, None) => Ok(c),
            _ => Err(ChannelError::HalfIdentity),
        }
    }
}

/// An endpoint for `url`: TLS when it is `https://` (certificate files read now, so a
/// reconnect after a rotation picks up the new ones).
pub fn endpoint(url: &str, tls: &ClientTls) -> Result<Endpoint, ChannelError> {
    let ep = Endpoint::from_shared(url.to_string()).map_err(|e| ChannelError::Url {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    if ep.uri().scheme_str() == Some("https") {
        ep.tls_config(tls.config()?)
            .map_err(|e| ChannelError::Tls(e.to_string()))
    } else if tls.any() {
        Err(ChannelError::TlsOnPlaintext(url.to_string()))
    } else {
        Ok(ep)
    }
}
