//! Declarative Apply: merge a whole config document into the current config. The
//! result goes through the same validate → diff → write path as every other write,
//! so one bad object fails the whole document and nothing changes.
use std::collections::{BTreeMap, BTreeSet};

use switchyard_proto::v1 as pb;

use crate::{
    convert, crypto,
    model::{ApiKey, ConfigState, LimitScope},
    secret::is_redacted,
    store::now_ms,
    Error,
};

/// A key created by Apply, with its plaintext (shown once).
#[derive(Debug)]
pub struct CreatedKey {
    pub name: String,
    pub plaintext: crate::secret::Secret,
}

fn dup(kind: &str, name: &str) -> Error {
    Error::InvalidArgument(format!("{kind} {name}: defined more than once in the document"))
}

/// Merge `doc` into `state`. Without `prune` nothing is deleted; with it, objects
/// (and nested credentials/backends) the document does not name are removed.
pub fn apply_document(
    state: &mut ConfigState,
    doc: &pb::ConfigDocument,
    prune: bool,
) -> Result<Vec<CreatedKey>, Error> {
    let mut seen = BTreeSet::new();
    let mut providers = if prune {
        BTreeMap::new()
    } else {
        state.providers.clone()
    };
    for dp in &doc.providers {
        let mut p = convert::provider_from_proto(dp)?;
        if !seen.insert(p.name.clone()) {
            return Err(dup("provider", &p.name));
        }
        let existing = state.providers.get(&p.name);
        // The proxy password is write-only like a secret: left out or redacted, the stored
        // one stays (while the proxy still names a user).
        let pw = p.spec.proxy_password.expose();
        if pw.is_empty() || is_redacted(pw) {
            p.spec.proxy_password = match existing {
                Some(e) if url::Url::parse(&p.spec.proxy).is_ok_and(|u| !u.username().is_empty()) => {
                    e.spec.proxy_password.clone()
                }
                _ => Default::default(),
            };
        }
        let mut creds = match (prune, existing) {
            (false, Some(e)) => e.credentials.clone(),
            _ => BTreeMap::new(),
        };
        let mut seen_c = BTreeSet::new();
        for dc in &dp.credentials {
            let mut c = convert::credential_from_proto(&p.name, dc)?;
            if !seen_c.insert(c.name.clone()) {
                return Err(dup("credential", &format!("{}/{}", p.name, c.name)));
            }
            if c.secret.is_empty() || is_redacted(c.secret.expose()) {
                match existing.and_then(|e| e.credentials.get(&c.name)) {
                    Some(old) => c.secret = old.secret.clone(),
                    None => {
                        return Err(Error::InvalidArgument(format!(
                            "credential {}/{}: secret is required to create a credential",
                            p.name, c.name
                        )))
                    }
                }
            }
            creds.insert(c.name.clone(), c);
        }
        p.credentials = creds;
        providers.insert(p.name.clone(), p);
    }
    state.providers = providers;

    let mut seen = BTreeSet::new();
    let mut models = if prune {
        BTreeMap::new()
    } else {
        state.models.clone()
    };
    for dm in &doc.models {
        let mut m = convert::model_from_proto(dm)?;
        if !seen.insert(m.name.clone()) {
            return Err(dup("model", &m.name));
        }
        let mut backends = match (prune, state.models.get(&m.name)) {
            (false, Some(e)) => e.backends.clone(),
            _ => BTreeMap::new(),
        };
        let mut seen_b = BTreeSet::new();
        for db in &dm.backends {
            let b = convert::backend_from_proto(&m.name, db)?;
            if !seen_b.insert(b.name.clone()) {
                return Err(dup("backend", &format!("{}/{}", m.name, b.name)));
            }
            backends.insert(b.name.clone(), b);
        }
        m.backends = backends;
        models.insert(m.name.clone(), m);
    }
    state.models = models;

    let mut created = Vec::new();
    let mut seen = BTreeSet::new();
    let mut keys = if prune {
        BTreeMap::new()
    } else {
        state.keys.clone()
    };
    for dk in &doc.keys {
        let spec = convert::key_spec_from_proto(
            &dk.name,
            &dk.allowed_models,
            dk.expires_at_ms,
            &dk.description,
            dk.enabled,
            dk.allow_pin,
            &dk.team,
        )?;
        if !seen.insert(dk.name.clone()) {
            return Err(dup("key", &dk.name));
        }
        let k = match state.keys.get(&dk.name) {
            Some(old) => {
                let mut k = old.clone();
                k.spec.allowed_models = spec.allowed_models;
                k.spec.expires_at_ms = spec.expires_at_ms;
                k.spec.description = spec.description;
                k.spec.allow_pin = spec.allow_pin;
                k.spec.team = spec.team;
                // Revocation is final: a document cannot bring a revoked key back.
                k.spec.enabled = spec.enabled && !old.spec.revoked;
                k
            }
            None => {
                let plaintext = crypto::generate_api_key();
                let k = ApiKey {
                    id: uuid::Uuid::now_v7().to_string(),
                    name: dk.name.clone(),
                    key_hash: crypto::hash_api_key(&plaintext),
                    prefix: crypto::key_prefix(&plaintext),
                    spec,
                    created_at_ms: now_ms(),
                };
                created.push(CreatedKey {
                    name: dk.name.clone(),
                    plaintext: crate::secret::Secret::new(plaintext),
                });
                k
            }
        };
        keys.insert(k.name.clone(), k);
    }
    state.keys = keys;

    // Limits last: their scopes may name keys, models and credentials of this document.
    let mut seen = BTreeSet::new();
    let mut limits = if prune {
        BTreeMap::new()
    } else {
        state.limits.clone()
    };
    for (i, dl) in doc.limits.iter().enumerate() {
        let what = format!("limits[{i}]");
        let l = convert::limit_from_proto(&what, dl)?;
        if !seen.insert(l.name.clone()) {
            return Err(Error::InvalidArgument(format!(
                "{what}.name: limit {} is defined more than once in the document",
                l.name
            )));
        }
        let scope = LimitScope::parse(&l.spec.scope)
            .map_err(|e| Error::InvalidArgument(format!("{what}.scope: {e}")))?;
        if let Some(why) = scope.missing_in(state) {
            return Err(Error::InvalidArgument(format!("{what}.scope: {why}")));
        }
        limits.insert(l.name.clone(), l);
    }
    state.limits = limits;
    Ok(created)
}
