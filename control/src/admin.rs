//! The `Admin` gRPC service: CRUD for every object, Apply/Export, workers and status.
//! Every write is a closure over the whole config handed to [`Store::mutate`].
use std::sync::Arc;

use switchyard_proto::v1::{self as pb, admin_server::Admin};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::{
    apply,
    convert::{self, Secrets},
    crypto,
    limits::Allocator,
    model::{ApiKey, ConfigState, Limit, LimitScope},
    secret::Secret,
    snapshot::Published,
    store::{now_ms, Store},
    usage,
    watch::Registry,
    Error,
};

/// Shortest client token that `CreateApiKey` imports (`import_plaintext`). Imported
/// tokens come from another tool, so they are not ours to shape; 16 characters is what
/// real bearer tokens have and more than anyone guesses.
pub const IMPORTED_KEY_MIN_CHARS: usize = 16;

pub struct AdminSvc {
    pub store: Arc<Store>,
    pub snapshots: watch::Receiver<Arc<Published>>,
    pub registry: Arc<Registry>,
    /// Lease state, for ListLimits' fleet-wide consumption.
    pub limits: Arc<Allocator>,
    pub started_at_ms: i64,
    /// `plaintext`, `tls` or `mtls`.
    pub transport: &'static str,
    pub insecure: bool,
}

fn not_found(what: String) -> Error {
    Error::NotFound(format!("{what} not found"))
}

fn exists(what: String) -> Error {
    Error::AlreadyExists(format!("{what} already exists"))
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, Status> {
    v.ok_or_else(|| Status::invalid_argument(format!("{field} is required")))
}

fn deleted(version: u64) -> Response<pb::DeleteResponse> {
    Response::new(pb::DeleteResponse { version })
}

fn provider_out(s: &ConfigState, name: &str) -> Result<pb::Provider, Error> {
    s.providers
        .get(name)
        .map(|p| convert::provider_to_proto(p, Secrets::Redact))
        .ok_or_else(|| not_found(format!("provider {name}")))
}

fn model_out(s: &ConfigState, name: &str) -> Result<pb::Model, Error> {
    s.models
        .get(name)
        .map(convert::model_to_proto)
        .ok_or_else(|| not_found(format!("model {name}")))
}

fn credential_out(s: &ConfigState, p: &str, n: &str) -> Result<pb::Credential, Error> {
    s.providers
        .get(p)
        .and_then(|pr| pr.credentials.get(n))
        .map(|c| convert::credential_to_proto(p, c, Secrets::Redact))
        .ok_or_else(|| not_found(format!("credential {p}/{n}")))
}

fn backend_out(s: &ConfigState, m: &str, n: &str) -> Result<pb::Backend, Error> {
    s.models
        .get(m)
        .and_then(|mo| mo.backends.get(n))
        .map(|b| convert::backend_to_proto(m, b))
        .ok_or_else(|| not_found(format!("backend {m}/{n}")))
}

fn limit_out(s: &ConfigState, n: &str) -> Result<pb::Limit, Error> {
    s.limits
        .get(n)
        .map(convert::limit_to_proto)
        .ok_or_else(|| not_found(format!("limit {n}")))
}

/// The object a limit's scope names must exist (a team need not: see [`LimitScope`]).
fn check_scope(s: &ConfigState, l: &Limit) -> Result<(), Error> {
    let scope =
        LimitScope::parse(&l.spec.scope).map_err(|e| Error::InvalidArgument(format!("limit.scope: {e}")))?;
    match scope.missing_in(s) {
        Some(why) => Err(Error::InvalidArgument(format!("limit.scope: {why}"))),
        None => Ok(()),
    }
}

fn key_out(s: &ConfigState, n: &str) -> Result<pb::ApiKey, Error> {
    s.keys
        .get(n)
        .map(|k| convert::key_to_proto(k, false))
        .ok_or_else(|| not_found(format!("key {n}")))
}

#[tonic::async_trait]
impl Admin for AdminSvc {
    async fn create_provider(
        &self,
        req: Request<pb::CreateProviderRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let rp = required(req.into_inner().provider, "provider")?;
        let p = convert::provider_from_proto(&rp)?;
        let name = p.name.clone();
        let m = self
            .store
            .mutate(false, |s| {
                if s.providers.contains_key(&p.name) {
                    return Err(exists(format!("provider {}", p.name)));
                }
                s.providers.insert(p.name.clone(), p);
                Ok(())
            })
            .await?;
        Ok(Response::new(provider_out(&m.state, &name)?))
    }

    async fn get_provider(
        &self,
        req: Request<pb::GetProviderRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let s = self.store.load().await?;
        Ok(Response::new(provider_out(&s, &req.into_inner().name)?))
    }

    async fn list_providers(
        &self,
        _req: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let s = self.store.load().await?;
        Ok(Response::new(pb::ListProvidersResponse {
            providers: s
                .providers
                .values()
                .map(|p| convert::provider_to_proto(p, Secrets::Redact))
                .collect(),
        }))
    }

    async fn update_provider(
        &self,
        req: Request<pb::UpdateProviderRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let req = req.into_inner();
        let rp = required(req.provider, "provider")?;
        let name = rp.name.clone();
        let m = self
            .store
            .mutate(false, |s| {
                let cur = s
                    .providers
                    .get(&rp.name)
                    .ok_or_else(|| not_found(format!("provider {}", rp.name)))?;
                let mut merged = convert::provider_to_proto(cur, Secrets::Clear);
                convert::merge_provider(&mut merged, &rp, &req.update_mask)?;
                let mut p = convert::provider_from_proto(&merged)?;
                p.credentials = cur.credentials.clone();
                s.providers.insert(p.name.clone(), p);
                Ok(())
            })
            .await?;
        Ok(Response::new(provider_out(&m.state, &name)?))
    }

    async fn delete_provider(
        &self,
        req: Request<pb::DeleteProviderRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let name = req.into_inner().name;
        let m = self
            .store
            .mutate(false, |s| {
                if !s.providers.contains_key(&name) {
                    return Err(not_found(format!("provider {name}")));
                }
                let users = s.backends_using(&name);
                if !users.is_empty() {
                    return Err(Error::FailedPrecondition(format!(
                        "provider {name} is used by backends: {}",
                        users.join(", ")
                    )));
                }
                s.providers.remove(&name);
                Ok(())
            })
            .await?;
        Ok(deleted(m.version))
    }

    async fn create_credential(
        &self,
        req: Request<pb::CreateCredentialRequest>,
    ) -> Result<Response<pb::Credential>, Status> {
        let rc = required(req.into_inner().credential, "credential")?;
        let c = convert::credential_from_proto(&rc.provider, &rc)?;
        if c.secret.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "credential {}/{}: secret is required",
                rc.provider, rc.name
            ))
            .into());
        }
        let (p, n) = (rc.provider.clone(), c.name.clone());
        let m = self
            .store
            .mutate(false, |s| {
                let prov = s
                    .providers
                    .get_mut(&rc.provider)
                    .ok_or_else(|| not_found(format!("provider {}", rc.provider)))?;
                if prov.credentials.contains_key(&c.name) {
                    return Err(exists(format!("credential {}/{}", rc.provider, c.name)));
                }
                prov.credentials.insert(c.name.clone(), c);
                Ok(())
            })
            .await?;
        Ok(Response::new(credential_out(&m.state, &p, &n)?))
    }

    async fn list_credentials(
        &self,
        req: Request<pb::ListCredentialsRequest>,
    ) -> Result<Response<pb::ListCredentialsResponse>, Status> {
        let filter = req.into_inner().provider;
        let s = self.store.load().await?;
        if !filter.is_empty() && !s.providers.contains_key(&filter) {
            return Err(not_found(format!("provider {filter}")).into());
        }
        let credentials = s
            .providers
            .values()
            .filter(|p| filter.is_empty() || p.name == filter)
            .flat_map(|p| {
                p.credentials
                    .values()
                    .map(|c| convert::credential_to_proto(&p.name, c, Secrets::Redact))
            })
            .collect();
        Ok(Response::new(pb::ListCredentialsResponse { credentials }))
    }

    async fn update_credential(
        &self,
        req: Request<pb::UpdateCredentialRequest>,
    ) -> Result<Response<pb::Credential>, Status> {
        let req = req.into_inner();
        let rc = required(req.credential, "credential")?;
        let (p, n) = (rc.provider.clone(), rc.name.clone());
        let m = self
            .store
            .mutate(false, |s| {
                let prov = s
                    .providers
                    .get_mut(&p)
                    .ok_or_else(|| not_found(format!("provider {p}")))?;
                let cur = prov
                    .credentials
                    .get(&n)
                    .ok_or_else(|| not_found(format!("credential {p}/{n}")))?;
                let mut merged = convert::credential_to_proto(&p, cur, Secrets::Clear);
                convert::merge_credential(&mut merged, &rc, &req.update_mask)?;
                let c = convert::credential_from_proto(&p, &merged)?;
                prov.credentials.insert(n.clone(), c);
                Ok(())
            })
            .await?;
        Ok(Response::new(credential_out(&m.state, &rc.provider, &rc.name)?))
    }

    async fn delete_credential(
        &self,
        req: Request<pb::DeleteCredentialRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = req.into_inner();
        let m = self
            .store
            .mutate(false, |s| {
                s.providers
                    .get_mut(&r.provider)
                    .and_then(|p| p.credentials.remove(&r.name))
                    .map(|_| ())
                    .ok_or_else(|| not_found(format!("credential {}/{}", r.provider, r.name)))
            })
            .await?;
        Ok(deleted(m.version))
    }

    async fn create_model(
        &self,
        req: Request<pb::CreateModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let rm = required(req.into_inner().model, "model")?;
        let mo = convert::model_from_proto(&rm)?;
        let name = mo.name.clone();
        let m = self
            .store
            .mutate(false, |s| {
                if s.models.contains_key(&mo.name) {
                    return Err(exists(format!("model {}", mo.name)));
                }
                s.models.insert(mo.name.clone(), mo);
                Ok(())
            })
            .await?;
        Ok(Response::new(model_out(&m.state, &name)?))
    }

    async fn get_model(&self, req: Request<pb::GetModelRequest>) -> Result<Response<pb::Model>, Status> {
        let s = self.store.load().await?;
        Ok(Response::new(model_out(&s, &req.into_inner().name)?))
    }

    async fn list_models(
        &self,
        _req: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let s = self.store.load().await?;
        Ok(Response::new(pb::ListModelsResponse {
            models: s.models.values().map(convert::model_to_proto).collect(),
        }))
    }

    async fn update_model(
        &self,
        req: Request<pb::UpdateModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let req = req.into_inner();
        let rm = required(req.model, "model")?;
        let name = rm.name.clone();
        let m = self
            .store
            .mutate(false, |s| {
                let cur = s
                    .models
                    .get(&rm.name)
                    .ok_or_else(|| not_found(format!("model {}", rm.name)))?;
                let mut merged = convert::model_to_proto(cur);
                convert::merge_model(&mut merged, &rm, &req.update_mask)?;
                let mut mo = convert::model_from_proto(&merged)?;
                mo.backends = cur.backends.clone();
                s.models.insert(mo.name.clone(), mo);
                Ok(())
            })
            .await?;
        Ok(Response::new(model_out(&m.state, &name)?))
    }

    async fn delete_model(
        &self,
        req: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let name = req.into_inner().name;
        let m = self
            .store
            .mutate(false, |s| {
                s.models
                    .remove(&name)
                    .map(|_| ())
                    .ok_or_else(|| not_found(format!("model {name}")))
            })
            .await?;
        Ok(deleted(m.version))
    }

    async fn create_backend(
        &self,
        req: Request<pb::CreateBackendRequest>,
    ) -> Result<Response<pb::Backend>, Status> {
        let rb = required(req.into_inner().backend, "backend")?;
        let b = convert::backend_from_proto(&rb.model, &rb)?;
        let (mn, bn) = (rb.model.clone(), b.name.clone());
        let m = self
            .store
            .mutate(false, |s| {
                let mo = s
                    .models
                    .get_mut(&rb.model)
                    .ok_or_else(|| not_found(format!("model {}", rb.model)))?;
                if mo.backends.contains_key(&b.name) {
                    return Err(exists(format!("backend {}/{}", rb.model, b.name)));
                }
                mo.backends.insert(b.name.clone(), b);
                Ok(())
            })
            .await?;
        Ok(Response::new(backend_out(&m.state, &mn, &bn)?))
    }

    async fn list_backends(
        &self,
        req: Request<pb::ListBackendsRequest>,
    ) -> Result<Response<pb::ListBackendsResponse>, Status> {
        let filter = req.into_inner().model;
        let s = self.store.load().await?;
        if !filter.is_empty() && !s.models.contains_key(&filter) {
            return Err(not_found(format!("model {filter}")).into());
        }
        let backends = s
            .models
            .values()
            .filter(|m| filter.is_empty() || m.name == filter)
            .flat_map(|m| m.backends.values().map(|b| convert::backend_to_proto(&m.name, b)))
            .collect();
        Ok(Response::new(pb::ListBackendsResponse { backends }))
    }

    async fn update_backend(
        &self,
        req: Request<pb::UpdateBackendRequest>,
    ) -> Result<Response<pb::Backend>, Status> {
        let req = req.into_inner();
        let rb = required(req.backend, "backend")?;
        let (mn, bn) = (rb.model.clone(), rb.name.clone());
        let m = self
            .store
            .mutate(false, |s| {
                let mo = s
                    .models
                    .get_mut(&mn)
                    .ok_or_else(|| not_found(format!("model {mn}")))?;
                let cur = mo
                    .backends
                    .get(&bn)
                    .ok_or_else(|| not_found(format!("backend {mn}/{bn}")))?;
                let mut merged = convert::backend_to_proto(&mn, cur);
                convert::merge_backend(&mut merged, &rb, &req.update_mask)?;
                let b = convert::backend_from_proto(&mn, &merged)?;
                mo.backends.insert(bn.clone(), b);
                Ok(())
            })
            .await?;
        Ok(Response::new(backend_out(&m.state, &rb.model, &rb.name)?))
    }

    async fn delete_backend(
        &self,
        req: Request<pb::DeleteBackendRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = req.into_inner();
        let m = self
            .store
            .mutate(false, |s| {
                s.models
                    .get_mut(&r.model)
                    .and_then(|m| m.backends.remove(&r.name))
                    .map(|_| ())
                    .ok_or_else(|| not_found(format!("backend {}/{}", r.model, r.name)))
            })
            .await?;
        Ok(deleted(m.version))
    }

    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let r = req.into_inner();
        let spec = convert::key_spec_from_proto(
            &r.name,
            &r.allowed_models,
            r.expires_at_ms,
            &r.description,
            None,
            r.allow_pin,
            &r.team,
        )?;
        let plaintext = if r.import_plaintext.is_empty() {
            Secret::new(crypto::generate_api_key())
        } else {
            let t = r.import_plaintext.trim();
            if t.chars().count() < IMPORTED_KEY_MIN_CHARS || t.chars().any(char::is_whitespace) {
                return Err(Status::invalid_argument(format!(
                    "key {}: an imported key (import_plaintext) must be at least \
                     {IMPORTED_KEY_MIN_CHARS} characters without whitespace",
                    r.name
                )));
            }
            Secret::new(t)
        };
        let key = ApiKey {
            id: uuid::Uuid::now_v7().to_string(),
            name: r.name.clone(),
            key_hash: crypto::hash_api_key(plaintext.expose()),
            prefix: crypto::key_prefix(plaintext.expose()),
            spec,
            created_at_ms: now_ms(),
        };
        let m = self
            .store
            .mutate(false, |s| {
                if s.keys.contains_key(&key.name) {
                    return Err(exists(format!("key {}", key.name)));
                }
                if s.keys.values().any(|k| k.key_hash == key.key_hash) {
                    return Err(Error::AlreadyExists(format!(
                        "key {}: this token is already registered under another name",
                        key.name
                    )));
                }
                s.keys.insert(key.name.clone(), key);
                Ok(())
            })
            .await?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            key: Some(key_out(&m.state, &r.name)?),
            plaintext: plaintext.expose().to_string(),
        }))
    }

    async fn get_api_key(&self, req: Request<pb::GetApiKeyRequest>) -> Result<Response<pb::ApiKey>, Status> {
        let s = self.store.load().await?;
        Ok(Response::new(key_out(&s, &req.into_inner().name)?))
    }

    async fn list_api_keys(
        &self,
        _req: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let s = self.store.load().await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            keys: s.keys.values().map(|k| convert::key_to_proto(k, false)).collect(),
        }))
    }

    async fn update_api_key(
        &self,
        req: Request<pb::UpdateApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let r = req.into_inner();
        let rk = required(r.key, "key")?;
        let name = rk.name.clone();
        let m = self
            .store
            .mutate(false, |s| {
                let k = s
                    .keys
                    .get_mut(&rk.name)
                    .ok_or_else(|| not_found(format!("key {}", rk.name)))?;
                convert::merge_key(&mut k.spec, &rk.name, &rk, &r.update_mask)
            })
            .await?;
        Ok(Response::new(key_out(&m.state, &name)?))
    }

    async fn revoke_api_key(
        &self,
        req: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let name = req.into_inner().name;
        let m = self
            .store
            .mutate(false, |s| {
                let k = s
                    .keys
                    .get_mut(&name)
                    .ok_or_else(|| not_found(format!("key {name}")))?;
                k.spec.revoked = true;
                k.spec.enabled = false;
                Ok(())
            })
            .await?;
        Ok(Response::new(key_out(&m.state, &name)?))
    }

    async fn delete_api_key(
        &self,
        req: Request<pb::DeleteApiKeyRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let name = req.into_inner().name;
        let m = self
            .store
            .mutate(false, |s| {
                s.keys
                    .remove(&name)
                    .map(|_| ())
                    .ok_or_else(|| not_found(format!("key {name}")))
            })
            .await?;
        Ok(deleted(m.version))
    }

    async fn apply(&self, req: Request<pb::ApplyRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        let r = req.into_inner();
        let doc = r.document.unwrap_or_default();
        let m = self
            .store
            .mutate(r.dry_run, |s| apply::apply_document(s, &doc, r.prune))
            .await?;
        let created_keys = if r.dry_run {
            vec![]
        } else {
            m.value
                .iter()
                .map(|k| pb::CreatedKey {
                    name: k.name.clone(),
                    plaintext: k.plaintext.expose().to_string(),
                })
                .collect()
        };
        Ok(Response::new(pb::ApplyResponse {
            changes: m.changes.iter().map(convert::change_to_proto).collect(),
            version: m.version,
            created_keys,
            dry_run: r.dry_run,
        }))
    }

    async fn export(&self, req: Request<pb::ExportRequest>) -> Result<Response<pb::ExportResponse>, Status> {
        let secrets = if req.into_inner().include_secrets {
            Secrets::Clear
        } else {
            Secrets::Redact
        };
        let (version, s) = self.store.load_consistent().await?;
        Ok(Response::new(pb::ExportResponse {
            document: Some(convert::document_from_state(&s, secrets)),
            version,
        }))
    }

    async fn list_workers(
        &self,
        _req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let current_version = self.snapshots.borrow().version;
        Ok(Response::new(pb::ListWorkersResponse {
            workers: self
                .registry
                .list()
                .iter()
                .map(convert::worker_to_proto)
                .collect(),
            current_version,
        }))
    }

    async fn get_status(
        &self,
        _req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let (version, hash) = {
            let p = self.snapshots.borrow();
            (p.version, p.hash.clone())
        };
        let workers = self.registry.list();
        let connected = workers.iter().filter(|w| w.connections > 0);
        let workers_connected = u32::try_from(connected.clone().count()).unwrap_or(u32::MAX);
        let workers_in_sync = u32::try_from(
            connected
                .filter(|w| w.applied_version == version && w.applied_hash == hash)
                .count(),
        )
        .unwrap_or(u32::MAX);
        Ok(Response::new(pb::GetStatusResponse {
            version,
            snapshot_hash: hash,
            store: self.store.kind().as_str().into(),
            store_location: self.store.location().into(),
            workers_connected,
            workers_in_sync,
            software_version: env!("CARGO_PKG_VERSION").into(),
            started_at_ms: self.started_at_ms,
            secrets_encrypted: self.store.encrypts(),
            transport: self.transport.into(),
            insecure: self.insecure,
        }))
    }

    async fn query_usage(
        &self,
        req: Request<pb::QueryUsageRequest>,
    ) -> Result<Response<pb::QueryUsageResponse>, Status> {
        let q = usage::UsageQuery::from_proto(req.get_ref())?;
        let rows = usage::query_usage(self.store.pool(), &q).await?;
        Ok(Response::new(pb::QueryUsageResponse {
            rows: rows.iter().map(usage::UsageSummary::to_proto).collect(),
        }))
    }

    async fn get_health(
        &self,
        req: Request<pb::GetHealthRequest>,
    ) -> Result<Response<pb::GetHealthResponse>, Status> {
        let model = Some(req.get_ref().model.as_str()).filter(|m| !m.is_empty());
        let snapshot = self.snapshots.borrow().snapshot.clone();
        let connected = self
            .registry
            .list()
            .into_iter()
            .filter(|w| w.connections > 0)
            .map(|w| w.worker_id)
            .collect();
        let targets = usage::get_health(self.store.pool(), &snapshot, &connected, model).await?;
        Ok(Response::new(pb::GetHealthResponse { targets }))
    }

    async fn health_history(
        &self,
        req: Request<pb::HealthHistoryRequest>,
    ) -> Result<Response<pb::HealthHistoryResponse>, Status> {
        let r = req.get_ref();
        let events = usage::health_history(self.store.pool(), &r.backend, r.limit).await?;
        Ok(Response::new(pb::HealthHistoryResponse { events }))
    }

    async fn create_limit(
        &self,
        req: Request<pb::CreateLimitRequest>,
    ) -> Result<Response<pb::Limit>, Status> {
        let rl = required(req.into_inner().limit, "limit")?;
        let l = convert::limit_from_proto("limit", &rl)?;
        let name = l.name.clone();
        let m = self
            .store
            .mutate(false, |s| {
                if s.limits.contains_key(&l.name) {
                    return Err(exists(format!("limit {}", l.name)));
                }
                check_scope(s, &l)?;
                s.limits.insert(l.name.clone(), l);
                Ok(())
            })
            .await?;
        Ok(Response::new(limit_out(&m.state, &name)?))
    }

    async fn list_limits(
        &self,
        _req: Request<pb::ListLimitsRequest>,
    ) -> Result<Response<pb::ListLimitsResponse>, Status> {
        let s = self.store.load().await?;
        let status = self.limits.status(&s.limits, now_ms());
        Ok(Response::new(pb::ListLimitsResponse {
            limits: s
                .limits
                .values()
                .map(|l| {
                    let st = status.get(&l.name).cloned().unwrap_or_default();
                    pb::LimitStatus {
                        limit: Some(convert::limit_to_proto(l)),
                        window_start_ms: st.window_start_ms,
                        window_end_ms: st.window_end_ms,
                        used: st.used,
                        leased: st.leased,
                        workers: st.workers,
                        refused: st.refused,
                    }
                })
                .collect(),
        }))
    }

    async fn update_limit(
        &self,
        req: Request<pb::UpdateLimitRequest>,
    ) -> Result<Response<pb::Limit>, Status> {
        let req = req.into_inner();
        let rl = required(req.limit, "limit")?;
        let name = rl.name.clone();
        let m = self
            .store
            .mutate(false, |s| {
                let cur = s
                    .limits
                    .get(&rl.name)
                    .ok_or_else(|| not_found(format!("limit {}", rl.name)))?;
                let mut merged = convert::limit_to_proto(cur);
                convert::merge_limit(&mut merged, &rl, &req.update_mask)?;
                let l = convert::limit_from_proto("limit", &merged)?;
                check_scope(s, &l)?;
                s.limits.insert(l.name.clone(), l);
                Ok(())
            })
            .await?;
        Ok(Response::new(limit_out(&m.state, &name)?))
    }

    async fn delete_limit(
        &self,
        req: Request<pb::DeleteLimitRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let name = req.into_inner().name;
        let m = self
            .store
            .mutate(false, |s| {
                s.limits
                    .remove(&name)
                    .map(|_| ())
                    .ok_or_else(|| not_found(format!("limit {name}")))
            })
            .await?;
        Ok(deleted(m.version))
    }
}
