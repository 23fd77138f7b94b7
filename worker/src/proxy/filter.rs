//! Request filter phase: who is asking (`auth`), whether the path may go upstream at all
//! (`paths`, before the body is read), and the body read under its limits and scanned
//! once (`extract`); then the key's quotas (`limits`: its own and its team's) admit the
//! request or refuse it with a 429. Everything after it routes on what this phase read.
use bytes::Bytes;

use crate::{
    auth,
    config::{ClientKey, ProviderKind, Routing},
    errors::ProxyError,
    extract, paths,
    relay::Finish,
    Shared,
};

/// The client's request as the later phases see it.
#[derive(Debug)]
pub struct Inbound<'a> {
    pub parts: http::request::Parts,
    /// The body, whole, as the client sent it.
    pub body: Bytes,
    /// The fields the gateway reads from the body.
    pub head: extract::RequestHead,
    /// The kind of provider the client's dialect goes to without translation.
    pub kind: ProviderKind,
    pub key: &'a ClientKey,
    /// One of the kind's default inference paths (else a path some provider opened).
    pub default_path: bool,
    /// The headers the client's `Connection:` names: not forwarded (empty, no
    /// allocation, for the usual `keep-alive`).
    pub nominated: Vec<http::HeaderName>,
}

impl Inbound<'_> {
    pub fn path(&self) -> &str {
        self.parts.uri.path()
    }
}

/// Before the body is read: who is asking (the key, booked in `fin`), and whether the
/// path may go upstream (`Ok(true)`: one of the kind's default paths).
pub fn head_filter<'a>(
    routing: &'a Routing,
    parts: &http::request::Parts,
    kind: ProviderKind,
    fin: &mut Finish,
    memo: &auth::KeyMemo,
) -> Result<(&'a ClientKey, bool), ProxyError> {
    let key = auth::authenticate(routing, &parts.headers, crate::unix_ms(), memo)?;
    fin.key_id = key.id.clone();
    fin.key_name = key.name.clone();
    fin.team.clone_from(&key.team);
    let default_path = path_filter(routing, kind, parts.uri.path())?;
    Ok((key, default_path))
}

/// Once the body is read ([`head_filter`] passed): scan it. The key's limits come next
/// ([`admit_key`]).
///
/// The body is read by the caller (`proxy::forward`) between the two halves, not here:
/// an async phase would hold the request in its own future and hand its result over by
/// copies, on every request.
pub fn body_filter<'a>(
    parts: http::request::Parts,
    bytes: Bytes,
    kind: ProviderKind,
    (key, default_path): (&'a ClientKey, bool),
    fin: &mut Finish,
) -> Result<Inbound<'a>, ProxyError> {
    let head = extract::scan(&bytes).map_err(ProxyError::BadRequest)?;
    fin.stream = head.stream;
    let nominated = paths::connection_nominated(&parts.headers);
    Ok(Inbound {
        parts,
        body: bytes,
        head,
        kind,
        key,
        default_path,
        nominated,
    })
}

/// Limits phase (the key's own and its team's), once the body is scanned: before any
/// upstream attempt. A key without limits does nothing here. Sync, so that the caller
/// can re-try it when it waits for a slice (`limits::wait_for_grant`).
pub fn admit_key(shared: &Shared, req: &Inbound<'_>, fin: &mut Finish) -> Result<(), crate::limits::Refused> {
    let Some(set) = &req.key.limits else {
        return Ok(());
    };
    let est = crate::limits::Estimate::of(req.body.len(), req.head.max_output);
    fin.limits
        .admit(0, set, est, crate::unix_ms(), &shared.limit_env())
}

/// Only inference paths, or ones an operator opened on a provider, go upstream with the
/// operator's credentials (`paths`); checked before the body is read. `Ok(true)`: one of
/// the kind's default paths.
pub fn path_filter(routing: &Routing, kind: ProviderKind, path: &str) -> Result<bool, ProxyError> {
    if !paths::well_formed(path) {
        return Err(ProxyError::NotFound(path.to_string()));
    }
    let default_path = paths::is_default(kind, path);
    if !default_path && !routing.providers.iter().any(|p| paths::provider_allows(p, path)) {
        return Err(ProxyError::NotFound(path.to_string()));
    }
    Ok(default_path)
}
