//! The README cannot lie: every shell block, every TOML snippet and the short CLI session
//! of README.md (and `examples/switchyard.toml`) run here, in document order, against the
//! real binaries and local `switchyard-mock` upstreams.
//!
//! How a block becomes something to run is written once, in README's "How the snippets
//! are checked" section (the placeholder rules), and implemented in [`Subst`] and
//! [`Runner`]. A block that must not run carries a visible line of text right above its
//! fence that starts with `(not run by the docs test`; the test prints every block it
//! skipped, with that reason. A fence with a language the test does not know fails it:
//! a new kind of block needs a decision, not silence.
//!
//! The command reference is checked against the CLI's own `--help` in
//! [`readme_lists_every_command`].
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use regex::Regex;
use switchyard_mock::{MockOptions, MockServer};
use switchyard_tests::repo_root;
use switchyard_tests::{bin_path, wait_for, Proc};
use tokio::process::Command;

const ADMIN_TOKEN: &str = "docs-test-admin-token-0123456789";
const WORKER_TOKEN: &str = "docs-test-worker-token-0123456789";
/// What the `pass` stand-in prints (the README session pipes it into `tokens add`).
const PASS_SECRET: &str = "sk-docs-test-from-pass-0000009999";
/// The line above a fence that marks a block as not run.
const SKIP_MARK: &str = "(not run by the docs test";

// ---------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------

/// One fenced code block.
#[derive(Debug, Clone)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    /// The info string's first word (`sh`, `toml`, `console`, or empty).
    lang: String,
    body: String,
    /// The reason given on the marker line above the fence, if any.
    skip: Option<String>,
}

fn blocks(markdown: &str) -> Result<Vec<Block>> {
    let mut out = Vec::new();
    let mut lines = markdown.lines().enumerate();
    let mut prev_text: Option<String> = None;
    while let Some((i, l)) = lines.next() {
        let Some(info) = l.strip_prefix("```") else {
            if !l.trim().is_empty() {
                prev_text = Some(l.trim().to_string());
            }
            continue;
        };
        let lang = info.split_whitespace().next().unwrap_or("").to_string();
        let mut body = String::new();
        let mut closed = false;
        for (_, l) in lines.by_ref() {
            if l.starts_with("```") {
                closed = true;
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        if !closed {
            bail!("README.md:{}: unclosed code fence", i + 1);
        }
        let skip = prev_text.take().filter(|t| t.starts_with(SKIP_MARK));
        out.push(Block {
            line: i + 1,
            lang,
            body,
            skip,
        });
    }
    Ok(out)
}

/// Shell lines with their `\` continuations joined.
fn logical_lines(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for l in script.lines() {
        if let Some(head) = l.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(l);
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

// ---------------------------------------------------------------------------
// Placeholders
// ---------------------------------------------------------------------------

/// The substitutions README's "How the snippets are checked" documents, in both
/// directions: doc → actual for what runs, actual → doc for output compared with README.
#[derive(Debug, Default, Clone)]
struct Subst {
    /// (as written in README, what the test uses), applied in order.
    pairs: Vec<(String, String)>,
    /// Values for `VAR=...` placeholders the test knows (admin token, client key).
    known: HashMap<String, String>,
}

impl Subst {
    fn add(&mut self, doc: impl Into<String>, actual: impl Into<String>) {
        self.pairs.push((doc.into(), actual.into()));
    }

    /// README text → what runs.
    fn apply(&self, s: &str) -> String {
        let mut s = s.replace("cargo run --release --bin switchyard --", "switchyard");
        for (doc, actual) in &self.pairs {
            s = s.replace(doc.as_str(), actual);
        }
        // `NAME=prefix...` (a value to supply): the known value, else a dummy that keeps
        // the prefix (`sk-ant-...` → `sk-ant-docs-test-…`).
        let re = Regex::new(r"\b([A-Z][A-Z0-9_]*)=([A-Za-z0-9_-]*)\.\.\.").unwrap();
        re.replace_all(&s, |c: &regex::Captures<'_>| {
            let var = &c[1];
            match self.known.get(var) {
                Some(v) => format!("{var}={v}"),
                None => format!("{var}={}{}", &c[2], dummy(var)),
            }
        })
        .into_owned()
    }

    /// Program output → README's spelling (addresses and URLs back to the documented ones).
    fn reverse(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (doc, actual) in self.pairs.iter().rev() {
            if !actual.is_empty() {
                s = s.replace(actual.as_str(), doc);
            }
        }
        s
    }
}

/// A stand-in secret for placeholder `var`: long enough for every minimum.
fn dummy(var: &str) -> String {
    format!(
        "docs-test-{}-0123456789",
        var.to_ascii_lowercase().replace('_', "-")
    )
}

/// Point every `base_url` of a TOML snippet at the mock, by the provider's `kind`.
fn toml_for_mock(text: &str, mock: &MockServer) -> Result<String> {
    let mut out = String::new();
    let mut kind: Option<String> = None;
    let kind_re = Regex::new(r#"^\s*kind\s*=\s*"([a-z]+)""#).unwrap();
    let base_re = Regex::new(r#"^(\s*base_url\s*=\s*)"[^"]*"(.*)$"#).unwrap();
    for l in text.lines() {
        if l.trim_start().starts_with("[[providers]]") {
            kind = None;
        }
        if let Some(c) = kind_re.captures(l) {
            kind = Some(c[1].to_string());
        }
        if let Some(c) = base_re.captures(l) {
            let url = match kind.as_deref() {
                Some("openai") => mock.openai_base(),
                Some("anthropic") => mock.url(),
                other => bail!("base_url before a known `kind` ({other:?}) in:\n{text}"),
            };
            out.push_str(&format!("{}\"{url}\"{}\n", &c[1], &c[2]));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// Stand-ins for tools the README calls that the test machine has no business running
/// for real, and the `switchyard` binaries, first on `PATH`.
struct Tools {
    dir: tempfile::TempDir,
    path: String,
}

impl Tools {
    fn new() -> Result<Tools> {
        let dir = tempfile::tempdir()?;
        let real_curl = which("curl").context("the docs test needs curl")?;
        let curl = real_curl.display();
        let stubs = [
            // Fail on an HTTP error status, so a README curl that gets a 4xx/5xx fails the test.
            (
                "curl",
                format!("#!/bin/sh\nexec {curl} --fail-with-body \"$@\"\n"),
            ),
            // The password manager of the session: prints one secret.
            ("pass", format!("#!/bin/sh\necho {PASS_SECRET}\n")),
            // Claude Code: one Messages request, configured by the same env vars.
            (
                "claude",
                format!(
                    "#!/bin/sh\nexec {curl} -sS --fail-with-body \"$ANTHROPIC_BASE_URL/v1/messages\" \
                     -H \"x-api-key: $ANTHROPIC_API_KEY\" -H 'anthropic-version: 2023-06-01' \
                     -H 'content-type: application/json' \
                     -d \"{{\\\"model\\\":\\\"$ANTHROPIC_MODEL\\\",\\\"max_tokens\\\":16,\
                     \\\"messages\\\":[{{\\\"role\\\":\\\"user\\\",\\\"content\\\":\\\"hi\\\"}}]}}\"\n"
                ),
            ),
        ];
        for (name, text) in stubs {
            let p = dir.path().join(name);
            std::fs::write(&p, text)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
        let bins = bin_path("switchyard");
        let bins = bins.parent().unwrap();
        let path = format!(
            "{}:{}:{}",
            dir.path().display(),
            bins.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Ok(Tools { dir, path })
    }

    /// A command with a clean environment: only `PATH` (stubs and binaries first), `HOME`
    /// and what the caller adds.
    fn command(&self, program: &str, cwd: &Path, env: &HashMap<String, String>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", &self.path)
            .env("HOME", self.dir.path())
            .envs(env)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// What one shell command printed.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run_bash(tools: &Tools, script: &str, cwd: &Path, env: &HashMap<String, String>) -> Result<Ran> {
    let mut cmd = tools.command("bash", cwd, env);
    cmd.arg("-ec").arg(script);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .with_context(|| format!("did not finish within 60 s: {script}"))??;
    Ok(Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A `switchyard up` the README started, running in the background.
struct Up {
    proc: Proc,
    /// The values of the banner's `export` lines (the "printed env vars").
    exports: HashMap<String, String>,
    client_key: String,
    /// The banner's curl line.
    curl: String,
}

/// Run a `[VAR=value ...] switchyard up [flags]` line: ephemeral ports instead of the
/// documented ones, a fresh data dir, and the documented listen port mapped to the real one.
async fn start_up(line: &str, cwd: &Path, tools: &Tools, subst: &mut Subst) -> Result<Up> {
    let words: Vec<&str> = line.split('#').next().unwrap_or("").split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "switchyard")
        .context("no `switchyard` in the up line")?;
    let mut env = HashMap::new();
    for w in &words[..at] {
        let (k, v) = w
            .split_once('=')
            .with_context(|| format!("`{w}` before `switchyard up` is not VAR=value"))?;
        env.insert(k.to_string(), v.to_string());
    }
    let mut args: Vec<String> = Vec::new();
    let mut doc_listen = "0.0.0.0:8080".to_string();
    let mut doc_ops: Option<String> = None;
    let mut rest = words[at + 1..].iter();
    while let Some(w) = rest.next() {
        match *w {
            "--listen" => doc_listen = rest.next().context("--listen without a value")?.to_string(),
            "--ops-listen" => {
                doc_ops = Some(rest.next().context("--ops-listen without a value")?.to_string());
                args.extend(["--ops-listen".to_string(), "127.0.0.1:0".to_string()]);
            }
            "--grpc-listen" | "--data-dir" => {
                rest.next();
            }
            w => args.push(w.to_string()),
        }
    }
    let data = cwd.join(format!("switchyard-data-{}", uuid::Uuid::new_v4().simple()));
    let mut cmd = tools.command(bin_path("switchyard").to_str().unwrap(), cwd, &env);
    cmd.args(&args)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data);
    let proc = Proc::spawn("up", cmd).await?;
    let banner = wait_for("the banner's CLI exports", Duration::from_secs(20), || async {
        let lines: Vec<String> = proc
            .stderr_log
            .lines()
            .into_iter()
            .filter_map(|l| l.strip_prefix("[stdout]").map(|l| l.trim().to_string()))
            .collect();
        Ok(lines
            .iter()
            .any(|l| l.starts_with("export SWITCHYARD_CONTROL_URL="))
            .then_some(lines))
    })
    .await?;
    let mut exports = HashMap::new();
    for l in banner.iter().filter_map(|l| l.strip_prefix("export ")) {
        for kv in l.split_whitespace() {
            if let Some((k, v)) = kv.split_once('=') {
                exports.insert(k.to_string(), v.to_string());
            }
        }
    }
    let client_key = exports
        .get("OPENAI_API_KEY")
        .cloned()
        .context("the banner exports no OPENAI_API_KEY")?;
    let curl = banner
        .iter()
        .find(|l| l.starts_with("curl "))
        .cloned()
        .context("the banner has no curl line")?;
    // The documented address (and the same port on localhost / 127.0.0.1) is this worker.
    let http = proc.addr("http");
    let port = doc_listen.rsplit(':').next().unwrap_or("8080");
    for host in ["127.0.0.1", "localhost", "0.0.0.0"] {
        subst.add(format!("{host}:{port}"), http.to_string());
    }
    // And its documented ops address is the ops listener it bound.
    if let Some(doc_ops) = doc_ops {
        let ops = proc.addr("ops");
        let port = doc_ops.rsplit(':').next().unwrap_or("9091");
        for host in ["127.0.0.1", "localhost"] {
            subst.add(format!("{host}:{port}"), ops.to_string());
        }
    }
    subst.known.insert("ANTHROPIC_API_KEY".into(), client_key.clone());
    subst.known.insert("OPENAI_API_KEY".into(), client_key.clone());
    subst.add("sk-sy-...", client_key.clone());
    Ok(Up {
        proc,
        exports,
        client_key,
        curl,
    })
}

/// Run the banner's curl line as printed; it must answer a completion in its dialect.
async fn check_banner_curl(up: &Up, cwd: &Path) -> Result<serde_json::Value> {
    // The real curl: the line is what a user pastes, flags and all.
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(&up.curl).current_dir(cwd).stdin(Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await??;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the banner's curl printed no JSON: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .or_else(|| v["content"][0]["text"].as_str());
    if text.is_none_or(str::is_empty) {
        bail!("the banner's curl got no completion: {v}\n{}", up.curl);
    }
    assert!(up.curl.contains(&up.client_key));
    Ok(v)
}

// ---------------------------------------------------------------------------
// The walk
// ---------------------------------------------------------------------------

struct Runner {
    tools: Tools,
    mock: MockServer,
    /// The last TOML snippet seen, for `switchyard.toml` in the next shell block.
    toml: Option<String>,
    ran: Vec<String>,
    skipped: Vec<String>,
}

impl Runner {
    /// A shell block: `switchyard up` lines start in the background first (each README
    /// block that has one starts with it), then the rest runs as one `bash -e` script
    /// with the printed env vars, in a fresh directory holding the last TOML snippet as
    /// `switchyard.toml`.
    async fn shell(&mut self, b: &Block) -> Result<()> {
        let dir = tempfile::tempdir()?;
        if let Some(t) = &self.toml {
            std::fs::write(dir.path().join("switchyard.toml"), toml_for_mock(t, &self.mock)?)?;
        }
        let mut subst = Subst::default();
        let mut ups = Vec::new();
        let mut script = String::new();
        for l in logical_lines(&b.body) {
            let run = subst.apply(&l);
            let is_up = run.split('#').next().unwrap_or("").contains("switchyard up");
            if is_up {
                if !script.trim().is_empty() {
                    bail!(
                        "README.md:{}: commands before `switchyard up` in one block",
                        b.line
                    );
                }
                let up = start_up(&run, dir.path(), &self.tools, &mut subst)
                    .await
                    .with_context(|| format!("README.md:{}: {l}", b.line))?;
                check_banner_curl(&up, dir.path())
                    .await
                    .with_context(|| format!("README.md:{}: {l}", b.line))?;
                ups.push(up);
            } else {
                script.push_str(&l);
                script.push('\n');
            }
        }
        if !script.trim().is_empty() {
            // Substitute after the ups started: their addresses and key are known now.
            let script = subst.apply(&script);
            let mut env: HashMap<String, String> = HashMap::new();
            for up in &ups {
                env.extend(up.exports.clone());
            }
            env.insert(
                "JWT_TOKENS".into(),
                "docs-test-jwt-a-0123456789,docs-test-jwt-b-0123456789".into(),
            );
            let r = run_bash(&self.tools, &script, dir.path(), &env).await?;
            eprintln!(
                "README.md:{}: ran\n{script}--- stdout\n{}--- stderr\n{}",
                b.line, r.stdout, r.stderr
            );
            if r.code != 0 {
                let logs: Vec<String> = ups.iter().map(|u| u.proc.stderr_text()).collect();
                bail!(
                    "README.md:{}: the block failed (exit {}):\n{script}\nstdout:\n{}\nstderr:\n{}\nup's log:\n{}",
                    b.line,
                    r.code,
                    r.stdout,
                    r.stderr,
                    logs.join("\n")
                );
            }
        }
        for mut up in ups {
            let status = up.proc.terminate(Duration::from_secs(20)).await?;
            assert!(
                status.success(),
                "up exited with {status}: {}",
                up.proc.stderr_text()
            );
        }
        Ok(())
    }

    /// The short CLI session: a fresh control plane with one worker, each `$ ` line run
    /// in turn, and its output compared with the lines under it (see [`normalize`]).
    async fn console(&mut self, b: &Block) -> Result<()> {
        let dir = tempfile::tempdir()?;
        let db = format!("sqlite://{}?mode=rwc", dir.path().join("switchyard.db").display());
        let mut cmd = Command::new(bin_path("switchyard-control"));
        cmd.args(["--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--database-url", &db])
            .args(["--admin-token", ADMIN_TOKEN, "--worker-token", WORKER_TOKEN])
            .env_remove("SWITCHYARD_MASTER_KEY");
        let control = Proc::spawn("control", cmd).await?;
        let mut cmd = Command::new(bin_path("switchyard-worker"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--control",
            &control.url("grpc"),
        ])
        .args(["--worker-token", WORKER_TOKEN, "--worker-id", "docs-1"])
        .arg("--state-dir")
        .arg(dir.path().join("worker"));
        let worker = Proc::spawn("worker", cmd).await?;

        let mut subst = Subst::default();
        subst.add("http://127.0.0.1:50051", control.url("grpc"));
        subst.add("https://api.openai.com/v1", self.mock.openai_base());
        subst
            .known
            .insert("SWITCHYARD_ADMIN_TOKEN".into(), ADMIN_TOKEN.into());
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work)?;
        let mut env: HashMap<String, String> = HashMap::new();

        // The worker must be connected before the session, as in the cluster it shows.
        {
            let mut e = HashMap::new();
            e.insert("SWITCHYARD_CONTROL_URL".to_string(), control.url("grpc"));
            e.insert("SWITCHYARD_ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string());
            let tools = &self.tools;
            let work = &work;
            wait_for("the worker to connect", Duration::from_secs(20), || {
                let e = e.clone();
                async move {
                    let r = run_bash(tools, "switchyard status -o json", work, &e).await?;
                    let v: serde_json::Value = serde_json::from_str(&r.stdout)?;
                    Ok((v["workers_connected"] == 1).then_some(()))
                }
            })
            .await?;
        }

        let mut steps: Vec<(String, Vec<String>)> = Vec::new();
        for l in b.body.lines() {
            if let Some(c) = l.strip_prefix("$ ") {
                steps.push((c.to_string(), Vec::new()));
            } else if let Some((_, out)) = steps.last_mut() {
                out.push(l.to_string());
            } else {
                bail!("README.md:{}: output before the first `$ ` line: {l}", b.line);
            }
        }
        for (cmd, expected) in &steps {
            let run = subst.apply(cmd);
            if let Some(assignments) = run.strip_prefix("export ") {
                for kv in assignments.split('#').next().unwrap_or("").split_whitespace() {
                    let (k, v) = kv.split_once('=').context("export without =")?;
                    env.insert(k.to_string(), v.to_string());
                }
                continue;
            }
            let want = normalize(&expected.join("\n"));
            let expect_failure = expected.first().is_some_and(|l| l.starts_with("error:"));
            // A read-only command may show state that settles (workers applying the
            // config): it is retried until it matches, for at most 10 s.
            let read_only = ["list", "status", "get", "workers"].iter().any(|v| {
                cmd.split_whitespace().nth(1) == Some(v) || cmd.split_whitespace().nth(2) == Some(v)
            });
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let r = run_bash(&self.tools, &run, &work, &env).await?;
                let got = normalize(&subst.reverse(&format!("{}{}", r.stdout, r.stderr)));
                let code_ok = (r.code != 0) == expect_failure;
                if got == want && code_ok {
                    eprintln!("$ {cmd}\n{}{}", r.stdout, r.stderr);
                    break;
                }
                if !read_only || tokio::time::Instant::now() > deadline {
                    bail!(
                        "README.md:{}: `$ {cmd}` (ran `{run}`) printed something else than README shows \
                         (exit {}, expected {}):\n--- README (normalized)\n{want}\n--- actual (normalized)\n{got}\n--- actual\n{}{}",
                        b.line,
                        r.code,
                        if expect_failure { "a failure" } else { "0" },
                        r.stdout,
                        r.stderr
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        // examples/*.toml: the other TOML the README points to, each checked against the
        // same control plane (their secret_env variables set to dummies).
        let var_re = Regex::new(r#"secret_env\s*=\s*"([A-Z0-9_]+)""#).unwrap();
        let mut examples: Vec<PathBuf> = std::fs::read_dir(repo_root().join("examples"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        examples.sort();
        assert!(!examples.is_empty(), "examples/ holds no TOML");
        for example in examples {
            let text = std::fs::read_to_string(&example)?;
            let mut e = env.clone();
            for c in var_re.captures_iter(&text) {
                e.insert(c[1].to_string(), dummy(&c[1]));
            }
            let name = example.file_name().unwrap().to_string_lossy().into_owned();
            std::fs::write(work.join(&name), toml_for_mock(&text, &self.mock)?)?;
            let r = run_bash(
                &self.tools,
                &format!("switchyard apply -f '{name}' --dry-run"),
                &work,
                &e,
            )
            .await?;
            if r.code != 0 || !r.stdout.contains("(dry run, nothing changed)") {
                bail!("examples/{name} does not apply: {}{}", r.stdout, r.stderr);
            }
            self.ran.push(format!("examples/{name} (apply --dry-run)"));
        }
        drop(worker);
        drop(control);
        Ok(())
    }
}

/// Output as compared with README: ids, times, hashes, redacted secret tails, paths and
/// column padding do not count (addresses were already mapped back by [`Subst::reverse`]).
fn normalize(s: &str) -> String {
    let rules = [
        (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", "<time>"),
        (r"sk-sy-[A-Za-z0-9]+", "sk-sy-<key>"),
        (r"\b[0-9a-f]{64}\b", "<hash>"),
        ("…[^ ]{1,4}", "…<secret>"),
        (r"\((/[^)]*)\)", "(<path>)"),
        (r"(?m)^software:\s+\S+", "software: <version>"),
    ];
    let mut s = s.to_string();
    for (re, with) in rules {
        s = Regex::new(re).unwrap().replace_all(&s, with).into_owned();
    }
    let spaces = Regex::new(r"[ \t]+").unwrap();
    s.lines()
        .map(|l| spaces.replace_all(l.trim_end(), " ").into_owned())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_runs_as_written() -> Result<()> {
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let mut r = Runner {
        tools: Tools::new()?,
        mock: MockServer::start(MockOptions {
            name: "docs".into(),
            ..Default::default()
        })
        .await?,
        toml: None,
        ran: Vec::new(),
        skipped: Vec::new(),
    };
    for b in blocks(&readme)? {
        let at = format!(
            "README.md:{} ({})",
            b.line,
            if b.lang.is_empty() { "text" } else { &b.lang }
        );
        if let Some(reason) = &b.skip {
            r.skipped.push(format!("{at}: {reason}"));
            continue;
        }
        match b.lang.as_str() {
            // Diagrams and other plain text.
            "" => continue,
            "toml" => {
                // Checked where it is used: the next shell block applies it with `up --config`.
                r.toml = Some(b.body.clone());
                r.ran.push(format!("{at}: as switchyard.toml of the next shell block"));
            }
            "sh" | "bash" | "shell" => {
                r.shell(&b).await.with_context(|| at.clone())?;
                r.ran.push(at);
            }
            "console" => {
                r.console(&b).await.with_context(|| at.clone())?;
                r.ran.push(at);
            }
            other => bail!("{at}: a ```{other} block: teach tests/tests/docs.rs to run it, or mark it `{SKIP_MARK}: why)`"),
        }
    }
    println!("docs test: ran {} blocks:\n  {}", r.ran.len(), r.ran.join("\n  "));
    println!(
        "docs test: SKIPPED {} blocks (marked in README.md):\n  {}",
        r.skipped.len(),
        r.skipped.join("\n  ")
    );
    assert!(
        r.ran.iter().any(|b| b.contains("(console)")),
        "the CLI session ran"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The command reference against `--help`
// ---------------------------------------------------------------------------

/// The subcommand names a `--help` text lists under `Commands:` (without `help`).
fn help_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

async fn help(args: &[&str]) -> Result<String> {
    let out = Command::new(bin_path("switchyard"))
        .args(args)
        .arg("--help")
        .env("COLUMNS", "200")
        .stdin(Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        bail!("switchyard {args:?} --help failed");
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// README's command table under "### Reference": the first cell of each row.
fn readme_command_rows(readme: &str) -> Result<Vec<String>> {
    let start = readme
        .find("### Reference")
        .ok_or_else(|| anyhow!("README has no `### Reference`"))?;
    let rows: Vec<String> = readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with("| command"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_start_matches('|')
                .split(" |")
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .collect();
    if rows.is_empty() {
        bail!("README's Reference has no command table");
    }
    Ok(rows)
}

#[tokio::test]
async fn readme_lists_every_command() -> Result<()> {
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let rows = readme_command_rows(&readme)?;
    let top = help(&[]).await?;
    // Global flags are optional: no usage line lists them as required, also not when
    // they come from the environment, as README has everyone set them.
    let out = Command::new(bin_path("switchyard"))
        .args(["providers", "add"])
        .env("SWITCHYARD_CONTROL_URL", "http://127.0.0.1:1")
        .env("SWITCHYARD_ADMIN_TOKEN", "t")
        .stdin(Stdio::null())
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for usage in top.lines().chain(err.lines()).filter(|l| l.starts_with("Usage:")) {
        assert!(
            !usage.contains("--control") && !usage.contains("--token"),
            "usage line: {usage}"
        );
    }
    assert!(err.contains("Usage: switchyard providers add"), "{err}");
    let commands = help_commands(&top);
    assert!(commands.len() >= 10, "parsed no commands from:\n{top}");
    let mut missing = Vec::new();
    for c in &commands {
        let prefix = format!("`{c}");
        let mine: Vec<&String> = rows.iter().filter(|r| r.starts_with(&prefix)).collect();
        if mine.is_empty() {
            missing.push(format!("`{c}` has no row in README's command table"));
            continue;
        }
        for sub in help_commands(&help(&[c]).await?) {
            let word = Regex::new(&format!(r"(^|[`| ]){}([` ]|$)", regex::escape(&sub))).unwrap();
            if !mine.iter().any(|r| word.is_match(r.trim_start_matches(&prefix))) {
                missing.push(format!("`{c} {sub}` is not in README's command table"));
            }
        }
    }
    // And the other way: every row names a command that exists.
    for r in &rows {
        let name = r.trim_start_matches('`').split([' ', '`']).next().unwrap_or("");
        if !commands.iter().any(|c| c == name) && !name.is_empty() && !r.starts_with("provider flags") {
            missing.push(format!(
                "README's row `{r}` names no command of `switchyard --help`"
            ));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    Ok(())
}

#[test]
fn markdown_blocks_and_markers() {
    let md = "text\n```sh\necho a \\\n  b\n```\n(not run by the docs test: needs Docker)\n\n```sh\ndocker compose up\n```\n";
    let b = blocks(md).unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].skip, None);
    assert_eq!(logical_lines(&b[0].body), ["echo a    b"]);
    assert!(b[1].skip.as_deref().unwrap().contains("needs Docker"));
    let mut s = Subst::default();
    s.known.insert("SWITCHYARD_ADMIN_TOKEN".into(), "tok".into());
    assert_eq!(
        s.apply("A=sk-ant-... SWITCHYARD_ADMIN_TOKEN=... cargo run --release --bin switchyard -- up"),
        "A=sk-ant-docs-test-a-0123456789 SWITCHYARD_ADMIN_TOKEN=tok switchyard up"
    );
    assert_eq!(
        normalize("created key a (sk-sy-abcd)\nstarted:   2026-11-22T03:42:26.081Z"),
        "created key a (sk-sy-<key>)\nstarted: <time>"
    );
}
