//! The Admin gRPC client: connection, bearer-token metadata, and turning gRPC failures
//! into one readable line.

use std::time::Duration;

use anyhow::{anyhow, Result};
use switchyard_proto::admin_client::AdminClient;
use tonic::{
    codegen::InterceptedService,
    metadata::{Ascii, MetadataValue},
    service::Interceptor,
    transport::Channel,
    Code, Status,
};

/// Adds `authorization: Bearer <token>` to every call when a token was given.
#[derive(Clone)]
pub struct BearerAuth(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Client = AdminClient<InterceptedService<Channel, BearerAuth>>;

/// A connected Admin client plus the URL, for error messages.
pub struct Admin {
    pub client: Client,
    pub url: String,
}

/// The message for "nothing answers at `url`".
pub fn unreachable(url: &str, reason: &str) -> anyhow::Error {
    anyhow!(
        "cannot reach the control plane at {url}: {reason}. Is `switchyard-control` running? \
         Use --control or SWITCHYARD_CONTROL_URL."
    )
}

/// `e` and its sources joined by `: `, skipping empty and repeated parts and tonic's
/// uninformative "transport error" wrapper.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !s.is_empty() && s != "transport error" && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    if parts.is_empty() {
        "transport error".to_string()
    } else {
        parts.join(": ")
    }
}

impl Admin {
    /// Connect eagerly so that a wrong URL fails here with a clear message.
    pub async fn connect(
        url: &str,
        token: Option<&str>,
        tls: &switchyard_proto::channel::ClientTls,
    ) -> Result<Admin> {
        let auth = match token.filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| anyhow!("the admin token contains characters not allowed in a header"))?,
            ),
        };
        let endpoint = switchyard_proto::channel::endpoint(url, tls)
            .map_err(|e| anyhow!("{}", error_chain(&e)))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| unreachable(url, &error_chain(&e)))?;
        Ok(Admin {
            client: AdminClient::with_interceptor(channel, BearerAuth(auth)),
            url: url.to_string(),
        })
    }

    /// Turn a failed call into one line. Server validation messages already name the
    /// object and field, so they are printed as they are.
    pub fn status(&self, s: Status) -> anyhow::Error {
        status_error(&self.url, s)
    }
}

/// See [`Admin::status`].
pub fn status_error(url: &str, s: Status) -> anyhow::Error {
    let msg = s.message().trim();
    let msg = if msg.is_empty() {
        s.code().description()
    } else {
        msg
    };
    match s.code() {
        Code::Unavailable => {
            let reason = std::error::Error::source(&s)
                .map(error_chain)
                .unwrap_or_else(|| msg.to_string());
            unreachable(url, &reason)
        }
        Code::Unauthenticated => {
            anyhow!("{msg} (pass the admin token with --token or SWITCHYARD_ADMIN_TOKEN)")
        }
        Code::Unimplemented => anyhow!("the control plane at {url} does not support this call: {msg}"),
        _ => anyhow!("{}", msg.replace('\n', " ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_errors_are_passed_through_as_one_line() {
        let e = status_error(
            "http://x",
            Status::invalid_argument("backend gpt-4o/openai-a: weight must be > 0"),
        );
        assert_eq!(e.to_string(), "backend gpt-4o/openai-a: weight must be > 0");
    }

    #[test]
    fn unavailable_names_the_url_and_suggests_fixes() {
        let e = status_error("http://127.0.0.1:1", Status::unavailable("connection refused")).to_string();
        assert!(
            e.starts_with("cannot reach the control plane at http://127.0.0.1:1: connection refused."),
            "{e}"
        );
        assert!(e.contains("switchyard-control") && e.contains("--control"), "{e}");
    }

    #[test]
    fn unauthenticated_hints_at_the_token() {
        let e = status_error("u", Status::unauthenticated("missing admin token")).to_string();
        assert!(e.contains("--token"), "{e}");
    }

    #[tokio::test]
    async fn connect_to_nothing_fails_with_the_url() {
        // Bind then drop a listener so the port is (very likely) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let e = Admin::connect(&url, None, &Default::default())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with(&format!("cannot reach the control plane at {url}: ")),
            "{e}"
        );
    }
}
