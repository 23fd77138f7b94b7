//! Which client paths reach an upstream, and which client headers go with them.
//!
//! A worker forwards with the operator's credentials, so a client must not reach any API
//! of the shared account it likes (files, fine-tuning, batches, assistants…) just by
//! naming a routable model. Each provider kind forwards its inference endpoints
//! ([`DEFAULT_OPENAI`], [`DEFAULT_ANTHROPIC`]); a provider's `allow_paths` opens more
//! (exact paths, or prefixes written `/v1/files/*`). A path with a dot-segment, an empty
//! segment, a backslash or a percent-encoded dot, slash or backslash is refused whatever
//! the allow-lists say: upstreams (and the proxies in front of them) normalise those in
//! different ways, so no prefix check could be trusted with them.
//!
//! Headers: the client's credentials are never forwarded, and the headers that select
//! another account or project of the provider ([`ACCOUNT_HEADERS`]) are dropped unless
//! the provider's `forward_headers` names them (otherwise any client could make the
//! upstream answer 401 with the operator's credential and have it taken out of rotation).
use http::{header, HeaderMap, HeaderName};

use crate::config::{Provider, ProviderKind};

/// Paths an `openai`-kind provider forwards by default (the inference endpoints).
pub const DEFAULT_OPENAI: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
];

/// Paths an `anthropic`-kind provider forwards by default.
pub const DEFAULT_ANTHROPIC: &[&str] = &["/v1/messages", "/v1/messages/count_tokens"];

/// Client headers that select an account, organisation or project of the provider.
pub const ACCOUNT_HEADERS: &[&str] = &[
    "openai-organization",
    "openai-project",
    "chatgpt-account-id",
    "x-goog-user-project",
    "anthropic-workspace",
];

/// Whether `path` (no query) is one that could ever be forwarded: it starts with `/v1/`
/// and has no dot-segment, empty segment, backslash or percent-encoded `.`, `/` or `\`.
pub fn well_formed(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return false;
    };
    // One pass over the bytes (this runs for every request): each segment must be
    // non-empty and neither `.` nor `..`; `\` and the encodings above end the walk.
    let b = rest.as_bytes();
    let mut seg_start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' => {
                if !segment_ok(&b[seg_start..i]) {
                    return false;
                }
                seg_start = i + 1;
            }
            b'\\' => return false,
            b'%' => {
                let hex = (
                    b.get(i + 1).map(u8::to_ascii_lowercase),
                    b.get(i + 2).map(u8::to_ascii_lowercase),
                );
                if matches!(
                    hex,
                    (Some(b'2'), Some(b'e' | b'f' | b'5')) | (Some(b'5'), Some(b'c'))
                ) {
                    return false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    segment_ok(&b[seg_start..])
}

fn segment_ok(seg: &[u8]) -> bool {
    !matches!(seg, b"" | b"." | b"..")
}

/// Whether `path` is one of the kind's default inference paths.
pub fn is_default(kind: ProviderKind, path: &str) -> bool {
    let list = match kind {
        ProviderKind::OpenAi => DEFAULT_OPENAI,
        ProviderKind::Anthropic => DEFAULT_ANTHROPIC,
    };
    list.contains(&path)
}

/// Whether `provider` forwards `path` (already checked [`well_formed`]).
pub fn provider_allows(provider: &Provider, path: &str) -> bool {
    is_default(provider.kind, path) || extra_allows(&provider.extra_paths, path)
}

/// Whether one of the operator's extra paths matches: exactly, or as a `/*` prefix (which
/// matches the prefix's own path and anything below it).
pub fn extra_allows(extra: &[String], path: &str) -> bool {
    extra.iter().any(|p| match p.strip_suffix("/*") {
        Some(prefix) => {
            path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
        }
        None => p == path,
    })
}

/// Whether the client's header `name` goes upstream to `provider`: not a hop-by-hop
/// header, one of the client's credentials (or cookies), one the worker sets itself
/// (`host`, `content-length`, `accept-encoding`, `x-switchyard-*`) or `expect` (the body
/// is already read and goes out whole); not one the provider sets itself, and not an
/// account header it keeps out. (Headers that the client's `Connection:` names are the
/// caller's check.)
/// One match on the name: this runs for every header of every request.
pub fn forwarded(provider: &Provider, name: &HeaderName) -> bool {
    match class(name) {
        Class::Never => false,
        Class::Account => provider.forward_headers.iter().any(|h| h == name) && !provider.sets_header(name),
        Class::Other => !provider.sets_header(name),
    }
}

enum Class {
    Never,
    Account,
    Other,
}

fn class(name: &HeaderName) -> Class {
    match name.as_str() {
        // Hop-by-hop (`upstream::is_hop_by_hop`).
        "connection" | "transfer-encoding" | "te" | "trailer" | "upgrade" | "keep-alive"
        | "proxy-connection"
        // The client's credentials, and what the worker sets itself.
        | "host" | "content-length" | "authorization" | "x-api-key" | "api-key"
        | "x-goog-api-key" | "cookie" | "proxy-authorization" | "accept-encoding" | "expect" => {
            Class::Never
        }
        // `ACCOUNT_HEADERS`.
        "openai-organization" | "openai-project" | "chatgpt-account-id" | "x-goog-user-project"
        | "anthropic-workspace" => Class::Account,
        s if s.starts_with("x-switchyard-") => Class::Never,
        _ => Class::Other,
    }
}

/// The header names the client's `Connection:` header nominates as hop-by-hop (RFC 9110
/// §7.6.1): they are not forwarded. Empty (no allocation) for the usual `keep-alive`.
pub fn connection_nominated(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        let Ok(v) = v.to_str() else { continue };
        for t in v.split(',') {
            let t = t.trim();
            if t.is_empty() || t.eq_ignore_ascii_case("keep-alive") || t.eq_ignore_ascii_case("close") {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                out.push(n);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_encoded_separators_are_refused() {
        for bad in [
            "/v1/../../x",
            "/v1/chat/../files",
            "/v1/./chat/completions",
            "/v1//chat/completions",
            "/v1/chat/completions/.",
            "/v1/files%2f..",
            "/v1/files/%2E%2E/x",
            "/v1/files%5Cx",
            "/v1/files%252e",
            "/v1\\files",
            "/v1/",
            "/v2/chat/completions",
            "/x",
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
        for good in [
            "/v1/chat/completions",
            "/v1/messages/count_tokens",
            "/v1/files/file-1%20a",
        ] {
            assert!(well_formed(good), "{good}");
        }
    }

    #[test]
    fn extra_paths_match_exactly_or_below_a_prefix() {
        let extra = vec!["/v1/files/*".to_string(), "/v1/batches".to_string()];
        assert!(extra_allows(&extra, "/v1/files"));
        assert!(extra_allows(&extra, "/v1/files/f-1/content"));
        assert!(!extra_allows(&extra, "/v1/filesystem"));
        assert!(extra_allows(&extra, "/v1/batches"));
        assert!(!extra_allows(&extra, "/v1/batches/b-1"));
        assert!(!extra_allows(&extra, "/v1/fine_tuning/jobs"));
        assert!(is_default(ProviderKind::OpenAi, "/v1/chat/completions"));
        assert!(!is_default(ProviderKind::OpenAi, "/v1/messages"));
        assert!(is_default(ProviderKind::Anthropic, "/v1/messages"));
    }

    #[test]
    fn connection_names_its_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        assert!(connection_nominated(&h).is_empty());
        h.insert(header::CONNECTION, "keep-alive, X-Secret ,close".parse().unwrap());
        assert_eq!(
            connection_nominated(&h),
            vec![HeaderName::from_static("x-secret")]
        );
        // Every `connection` header counts.
        h.append(header::CONNECTION, "x-bar".parse().unwrap());
        assert_eq!(
            connection_nominated(&h),
            vec![
                HeaderName::from_static("x-secret"),
                HeaderName::from_static("x-bar")
            ]
        );
    }

    /// The one-pass walk answers as the plain reading of the rule does.
    fn well_formed_reference(path: &str) -> bool {
        let Some(rest) = path.strip_prefix("/v1/") else {
            return false;
        };
        if rest.is_empty() || path.contains('\\') {
            return false;
        }
        let lower = path.to_ascii_lowercase();
        if ["%2e", "%2f", "%5c", "%25"].iter().any(|e| lower.contains(e)) {
            return false;
        }
        rest.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
    }

    proptest::proptest! {
        #[test]
        fn well_formed_matches_its_reference(
            path in proptest::string::string_regex("(/v1/)?([a-z.%25ecf\\\\/]|%2[eEfF5]|%5[cC]){0,12}").unwrap()
        ) {
            proptest::prop_assert_eq!(well_formed(&path), well_formed_reference(&path), "{}", path);
        }
    }

    #[test]
    fn one_match_classifies_as_the_lists_say() {
        for name in [
            "connection",
            "transfer-encoding",
            "te",
            "trailer",
            "upgrade",
            "keep-alive",
            "proxy-connection",
        ] {
            let n = HeaderName::from_static(name);
            assert!(crate::upstream::is_hop_by_hop(&n), "{name}");
            assert!(matches!(class(&n), Class::Never), "{name}");
        }
        for name in [
            "host",
            "authorization",
            "x-api-key",
            "x-switchyard-backend",
            "cookie",
            "expect",
        ] {
            assert!(
                matches!(class(&HeaderName::from_static(name)), Class::Never),
                "{name}"
            );
        }
        for name in ACCOUNT_HEADERS {
            let n = HeaderName::from_static(name);
            assert!(matches!(class(&n), Class::Account), "{name}");
        }
        for name in [
            "content-type",
            "anthropic-version",
            "anthropic-beta",
            "user-agent",
            "x-switchyard",
        ] {
            assert!(
                matches!(class(&HeaderName::from_static(name)), Class::Other),
                "{name}"
            );
        }
    }
}
