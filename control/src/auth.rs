//! Bearer-token interceptors for the Admin and WorkerApi services.
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::secret::Secret;

/// Checks `authorization: Bearer <token>` when a token is configured. Tokens are
/// compared as SHA-256 digests in constant time, so neither content nor length leaks.
#[derive(Clone)]
pub struct BearerAuth {
    expected: Option<[u8; 32]>,
    realm: &'static str,
}

impl BearerAuth {
    pub fn new(token: Option<&Secret>, realm: &'static str) -> Self {
        BearerAuth {
            expected: token.map(|t| Sha256::digest(t.expose().as_bytes()).into()),
            realm,
        }
    }

    pub fn check<T>(&self, req: Request<T>) -> Result<Request<T>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let Some(given) = given else {
            return Err(Status::unauthenticated(format!(
                "missing `authorization: Bearer <{} token>`",
                self.realm
            )));
        };
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        if bool::from(digest.ct_eq(expected)) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(format!("invalid {} token", self.realm)))
        }
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        self.check(req)
    }
}

/// The WorkerApi gate. A plaintext connection from another machine is refused unless
/// control runs with `--insecure`: snapshots carry every provider secret, and the
/// bearer token itself would cross the network in the clear. A client certificate that
/// the TLS layer verified (mTLS) authenticates the worker by itself; otherwise the
/// worker token is checked.
#[derive(Clone)]
pub struct WorkerAuth {
    pub bearer: BearerAuth,
    pub insecure: bool,
}

impl tonic::service::Interceptor for WorkerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let peer = crate::tls::Peer::of(&req);
        if !crate::tls::may_stream_secrets(peer.tls, peer.addr, self.insecure) {
            tracing::warn!(peer = ?peer.addr, "refused a worker over plaintext from a non-loopback address");
            return Err(Status::permission_denied(
                "control refuses workers over plaintext from a non-loopback address (snapshots carry secrets): \
                 serve TLS (--tls-cert/--tls-key) and connect with https://, or start control with --insecure",
            ));
        }
        if peer.identity.is_some() {
            return Ok(req);
        }
        self.bearer.check(req)
    }
}
