//! Where credential secrets come from: an env var, a file, stdin, or (discouraged) argv.
//!
//! Secrets pass through here into a request and nowhere else: they are never printed,
//! and errors name the source (`env var OPENAI_KEY`), never the value.

use std::{io::Read, path::Path};

use anyhow::{bail, Context, Result};

use crate::cli::SecretSource;

/// The warning printed when a secret is given as a literal argv value.
pub const ARGV_WARNING: &str =
    "warning: --secret VALUE is visible to other users via `ps` and stays in your \
     shell history; prefer --secret-env VAR, --secret-file PATH or --secret - (stdin)";

/// Remove one trailing line ending (what `echo` and editors add), nothing else.
pub fn trim_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

/// Read a secret file, trimmed of its trailing newline; empty files are an error.
pub fn read_secret_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let s = trim_newline(text);
    if s.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(s)
}

/// Resolve a secret source. `Ok(None)` means no source was given. `stdin` is injectable
/// for tests; `warn` receives the argv warning.
pub fn resolve(
    src: &SecretSource,
    getenv: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    warn: &mut dyn FnMut(&str),
) -> Result<Option<String>> {
    let value = if let Some(var) = &src.secret_env {
        match getenv(var) {
            Some(v) => v,
            None => bail!("environment variable {var} (--secret-env) is not set"),
        }
    } else if let Some(path) = &src.secret_file {
        read_secret_file(path).context("--secret-file")?
    } else if let Some(s) = &src.secret {
        if s == "-" {
            let mut buf = String::new();
            stdin
                .read_to_string(&mut buf)
                .context("read the secret from stdin")?;
            trim_newline(buf)
        } else {
            warn(ARGV_WARNING);
            s.clone()
        }
    } else {
        return Ok(None);
    };
    if value.is_empty() {
        bail!("the secret is empty");
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn getenv(k: &str) -> Option<String> {
        (k == "SET").then(|| "from-env".to_string())
    }

    fn run(src: SecretSource, stdin: &str) -> (Result<Option<String>>, Vec<String>) {
        let mut warnings = Vec::new();
        let r = resolve(&src, &getenv, &mut stdin.as_bytes(), &mut |w| {
            warnings.push(w.to_string())
        });
        (r, warnings)
    }

    #[test]
    fn env_file_stdin_and_argv() {
        let (r, w) = run(
            SecretSource {
                secret_env: Some("SET".into()),
                ..Default::default()
            },
            "",
        );
        assert_eq!(r.unwrap().unwrap(), "from-env");
        assert!(w.is_empty());

        let (r, _) = run(
            SecretSource {
                secret_env: Some("UNSET".into()),
                ..Default::default()
            },
            "",
        );
        assert_eq!(
            r.unwrap_err().to_string(),
            "environment variable UNSET (--secret-env) is not set"
        );

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "file-secret\r\n").unwrap();
        let (r, _) = run(
            SecretSource {
                secret_file: Some(f),
                ..Default::default()
            },
            "",
        );
        assert_eq!(r.unwrap().unwrap(), "file-secret");

        let (r, w) = run(
            SecretSource {
                secret: Some("-".into()),
                ..Default::default()
            },
            "stdin-secret\n",
        );
        assert_eq!(r.unwrap().unwrap(), "stdin-secret");
        assert!(w.is_empty());

        let (r, w) = run(
            SecretSource {
                secret: Some("argv-secret".into()),
                ..Default::default()
            },
            "",
        );
        assert_eq!(r.unwrap().unwrap(), "argv-secret");
        assert_eq!(w.len(), 1);
        assert!(!w[0].contains("argv-secret"));

        let (r, _) = run(SecretSource::default(), "");
        assert!(r.unwrap().is_none());

        let (r, _) = run(
            SecretSource {
                secret: Some("-".into()),
                ..Default::default()
            },
            "\n",
        );
        assert_eq!(r.unwrap_err().to_string(), "the secret is empty");
    }

    #[test]
    fn only_one_newline_is_trimmed() {
        assert_eq!(trim_newline("a \n\n".into()), "a \n");
        assert_eq!(trim_newline("a".into()), "a");
    }
}
