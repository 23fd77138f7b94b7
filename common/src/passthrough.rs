//! What a provider may pass through beyond its kind's inference endpoints: the API
//! paths an operator opens (`allow_paths`) and the account-selecting client headers it
//! lets through (`forward_headers`). One set of rules for the control plane (which
//! refuses a bad setting with an error naming the field) and the worker (which checks
//! every snapshot again). Request paths are matched against the patterns by the worker's
//! `paths::extra_allows`.

/// Longest accepted path pattern, in bytes.
pub const MAX_PATH_LEN: usize = 256;
/// Most path patterns, and most forwarded headers, one provider may list: the worker
/// scans the list per request that is not an inference path.
pub const MAX_ENTRIES: usize = 64;

/// Why a path pattern is refused. The caller prefixes the field (`allow_paths[1]`).
pub fn check_api_path(p: &str) -> Result<(), String> {
    if p.len() > MAX_PATH_LEN {
        return Err(format!("longer than {MAX_PATH_LEN} bytes"));
    }
    // `/*` is a wildcard only at the very end; `base` keeps its slash.
    let (base, wildcard) = match p.strip_suffix('*') {
        Some(b) if b.ends_with('/') => (b, true),
        _ => (p, false),
    };
    let Some(body) = base.strip_prefix("/v1/") else {
        return Err(format!("{p:?} must start with /v1/"));
    };
    if body.is_empty() && !wildcard {
        return Err(format!("{p:?} names no API path after /v1/"));
    }
    if let Some(c) = body.chars().find(|c| !allowed_char(*c)) {
        let why = match c {
            '*' => "`*` is allowed only as a trailing `/*`".to_string(),
            '%' => "percent-encoding is not allowed".to_string(),
            '?' | '#' => "a query or fragment is not allowed".to_string(),
            '\\' => "backslashes are not allowed".to_string(),
            c => format!("character {c:?} is not allowed"),
        };
        return Err(format!("{p:?}: {why}"));
    }
    if p.contains("//") {
        return Err(format!("{p:?} must not contain empty segments (`//`)"));
    }
    if body.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{p:?} must not contain `.` or `..` segments"));
    }
    Ok(())
}

/// RFC 3986 `pchar` without `%` (no encoding, so no encoded separators), plus `/`.
fn allowed_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()+,;=:@/".contains(c)
}

/// Headers that can never be listed in `forward_headers`: the client's own credentials,
/// framing and hop-by-hop headers, and the gateway's own control headers.
const NEVER_FORWARDED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Why a `forward_headers` entry is refused. `name` must already be lowercase.
pub fn check_forward_header(name: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(format!("{name:?} is not a valid HTTP header name"));
    }
    if NEVER_FORWARDED.contains(&name) || name.starts_with("x-switchyard-") {
        return Err(format!("{name:?} cannot be forwarded"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_paths() {
        for p in [
            "/v1/files",
            "/v1/fine_tuning/*",
            "/v1/files/",
            "/v1/*",
            "/v1/a:b@c~d",
            "/v1/organization/usage/completions",
        ] {
            assert_eq!(check_api_path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn bad_paths() {
        for (p, why) in [
            ("/v2/files", "must start with /v1/"),
            ("v1/files", "must start with /v1/"),
            ("/v1/", "names no API path"),
            ("/v1//*", "empty segments"),
            ("/v1/../admin", "`.` or `..` segments"),
            ("/v1/files/..", "`.` or `..` segments"),
            ("/v1/./files", "`.` or `..` segments"),
            ("/v1/files//x", "empty segments"),
            ("/v1/files/%2e%2e", "percent-encoding"),
            ("/v1/files\\x", "backslashes"),
            ("/v1/files?x=1", "query or fragment"),
            ("/v1/files#x", "query or fragment"),
            ("/v1/fi*les", "trailing `/*`"),
            ("/v1/files*", "trailing `/*`"),
            ("/v1/*/x", "trailing `/*`"),
            ("/v1/a b", "not allowed"),
            ("/v1/é", "not allowed"),
        ] {
            let e = check_api_path(p).unwrap_err();
            assert!(e.contains(why), "{p}: {e}");
        }
        assert!(check_api_path(&format!("/v1/{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn forward_headers() {
        assert_eq!(check_forward_header("openai-organization"), Ok(()));
        assert!(check_forward_header("authorization").is_err());
        assert!(check_forward_header("x-switchyard-backend").is_err());
        assert!(check_forward_header("bad header").is_err());
        assert!(check_forward_header("").is_err());
    }
}
