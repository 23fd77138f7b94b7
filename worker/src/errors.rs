//! The one place that turns a proxy error into a client response, in the client's
//! dialect: OpenAI `{"error":{"message","type","code"}}` or Anthropic
//! `{"type":"error","error":{"type","message"}}` (on `/v1/messages*`).
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;

/// Which wire format the client speaks; decided by the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

/// Everything that can end a proxied request before the upstream's answer is relayed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no configuration yet: this worker has not received a snapshot from the control plane")]
    NoConfig,
    #[error("invalid request body: {0}")]
    BadRequest(String),
    #[error("missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`")]
    MissingKey,
    #[error("invalid API key")]
    BadKey,
    /// Also the answer for a model the key may not use (OpenAI's own wording).
    #[error("the model `{0}` does not exist or you do not have access to it")]
    UnknownModel(String),
    /// The model exists (and the key may use it) but none of its backends speaks the API
    /// the client called: e.g. only `anthropic` providers, asked on `/v1/chat/completions`.
    #[error("the model `{0}` has no backend for this API ({1}); its backends serve the other API")]
    NoBackendForApi(String, &'static str),
    #[error("request body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// The request body did not arrive in time or came too slowly (`BodyLimits`).
    #[error("the request body was not received in time")]
    BodyTimeout,
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The detail (an address, a backend name) is logged where it happens, never sent.
    #[error("could not reach the upstream")]
    Connect,
    #[error("upstream timed out before answering")]
    Timeout,
    #[error("no healthy backend for model `{0}`")]
    NoBackend(String),
    #[error("upstream error: {0}")]
    Upstream(&'static str),
    #[error("the upstream rejected the gateway's credential")]
    CredentialRejected,
    #[error("worker is shutting down")]
    ShuttingDown,
    /// A request that cannot be translated for the backend's dialect (400, naming the
    /// field), or an upstream answer that cannot be translated back (502).
    #[error("{0}")]
    Translate(crate::translate::TranslateError),
    /// A limit refused the request (429 with `Retry-After`).
    #[error("{0}")]
    RateLimited(crate::limits::Refused),
}

impl ProxyError {
    /// [`ProxyError::NoBackendForApi`] for a request on `kind`'s API.
    pub fn no_backend_for_api(model: &str, kind: crate::config::ProviderKind) -> ProxyError {
        let api = match kind {
            crate::config::ProviderKind::OpenAi => "OpenAI API",
            crate::config::ProviderKind::Anthropic => "Anthropic Messages API",
        };
        ProxyError::NoBackendForApi(model.to_string(), api)
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::MissingKey | Self::BadKey => StatusCode::UNAUTHORIZED,
            Self::UnknownModel(_) | Self::NoBackendForApi(..) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Connect | Self::Upstream(_) | Self::CredentialRejected => StatusCode::BAD_GATEWAY,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::NoConfig | Self::NoBackend(_) | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Translate(e) => StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY),
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Low-cardinality label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoConfig => "no_config",
            Self::BadRequest(_) => "bad_request",
            Self::MissingKey => "missing_key",
            Self::BadKey => "bad_key",
            Self::UnknownModel(_) => "unknown_model",
            Self::NoBackendForApi(..) => "no_backend_for_api",
            Self::TooLarge(_) => "too_large",
            Self::BodyTimeout => "body_timeout",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::NoBackend(_) => "no_backend",
            Self::Upstream(_) => "upstream",
            Self::CredentialRejected => "auth",
            Self::ShuttingDown => "shutting_down",
            Self::Translate(e) if e.status() == 400 => "untranslatable",
            Self::Translate(_) => "translate_answer",
            Self::RateLimited(_) => "rate_limited",
        }
    }

    /// Whether another backend may be tried: nothing reached the upstream's application,
    /// or it answered with a complete retryable failure, and no byte went to the client.
    pub fn retry_safe(&self) -> bool {
        matches!(
            self,
            Self::Connect | Self::Timeout | Self::Upstream(_) | Self::CredentialRejected
        )
    }

    fn openai_type(&self) -> &'static str {
        match self.status().as_u16() {
            400 | 404 | 405 | 408 | 413 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_exceeded",
            502 | 504 => "upstream_error",
            _ => "service_unavailable",
        }
    }

    fn anthropic_type(&self) -> &'static str {
        match self.status().as_u16() {
            400 | 405 | 408 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            502 | 504 => "api_error",
            _ => "overloaded_error",
        }
    }

    fn openai_code(&self) -> &'static str {
        match self {
            Self::BadKey | Self::MissingKey => "invalid_api_key",
            Self::UnknownModel(_) => "model_not_found",
            Self::RateLimited(_) => "rate_limit_exceeded",
            _ => self.label(),
        }
    }

    /// The JSON error body in `dialect`.
    pub fn body(&self, dialect: Dialect) -> Bytes {
        self.body_with(dialect, None)
    }

    /// The JSON error body in `dialect`; a server-side failure names the request id for the
    /// operator to look up (as OpenAI's own 5xx bodies do), never an internal detail.
    fn body_with(&self, dialect: Dialect, request_id: Option<&str>) -> Bytes {
        if let Self::Translate(e) = self {
            // Its own body: the OpenAI one names the field (`param`).
            return Bytes::from(e.body(dialect));
        }
        let mut msg = self.to_string();
        if let Some(id) = request_id.filter(|_| self.status().is_server_error()) {
            msg.push_str(" (request id ");
            msg.push_str(id);
            msg.push(')');
        }
        let v = match dialect {
            Dialect::OpenAi => serde_json::json!({
                "error": {"message": msg, "type": self.openai_type(), "code": self.openai_code()}
            }),
            Dialect::Anthropic => {
                // Written by hand so that `type` comes first, as Anthropic sends it.
                let msg = serde_json::Value::String(msg);
                return Bytes::from(format!(
                    r#"{{"type":"error","error":{{"type":"{}","message":{msg}}}}}"#,
                    self.anthropic_type()
                ));
            }
        };
        Bytes::from(v.to_string())
    }

    /// The SSE event that ends a client stream after a mid-stream failure.
    pub fn stream_event(&self, dialect: Dialect) -> Bytes {
        let body = self.body(dialect);
        let mut out = Vec::with_capacity(body.len() + 32);
        match dialect {
            Dialect::OpenAi => out.extend_from_slice(b"data: "),
            Dialect::Anthropic => out.extend_from_slice(b"event: error\ndata: "),
        }
        out.extend_from_slice(&body);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    pub fn into_response(self, dialect: Dialect) -> Response<ProxyBody> {
        self.into_response_for(dialect, None)
    }

    /// The response for a proxied request: server-side failures name `request_id`.
    pub fn into_response_for(self, dialect: Dialect, request_id: Option<&str>) -> Response<ProxyBody> {
        let mut resp = Response::new(ProxyBody::full(self.body_with(dialect, request_id)));
        *resp.status_mut() = self.status();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Self::RateLimited(r) = &self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(r.retry_after_s));
        }
        if matches!(self, Self::BodyTimeout) {
            // The rest of the body may still be on its way: the connection cannot carry
            // another request, so hyper closes it after this answer.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_backend_for_api_is_a_404_in_either_dialect() {
        use crate::config::ProviderKind;
        let e = ProxyError::no_backend_for_api("claude", ProviderKind::OpenAi);
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::OpenAi)).unwrap();
        assert_eq!(v["error"]["code"], "no_backend_for_api");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("no backend for this API (OpenAI API)"), "{msg}");
        assert!(!msg.contains("does not exist"), "{msg}");
        let e = ProxyError::no_backend_for_api("gpt", ProviderKind::Anthropic);
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "not_found_error");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no backend for this API (Anthropic Messages API)"));
    }

    #[test]
    fn dialect_shapes() {
        let e = ProxyError::UnknownModel("x".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::OpenAi)).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "not_found_error");
        // A limit's refusal: 429 with Retry-After, rate_limit_* in either dialect.
        let r = ProxyError::RateLimited(crate::limits::Refused {
            kind: crate::limits::Kind::Requests,
            window: Some(switchyard_common::window::Window::Minute),
            who: "this key",
            retry_after_s: 42,
            slice: false,
            limit: "k".into(),
        });
        let v: serde_json::Value = serde_json::from_slice(&r.body(Dialect::OpenAi)).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_exceeded");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requests per minute"));
        let v: serde_json::Value = serde_json::from_slice(&r.body(Dialect::Anthropic)).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let resp = r.into_response(Dialect::OpenAi);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "42");
        let ev = ProxyError::Timeout.stream_event(Dialect::Anthropic);
        assert!(ev.starts_with(b"event: error\ndata: {"));
        assert!(ev.ends_with(b"\n\n"));
    }
}
