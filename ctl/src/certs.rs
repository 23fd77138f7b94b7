//! `switchyard certs init DIR`: a private CA, control's server certificate and client
//! certificates for workers and the CLI, for running the cluster over mTLS. Keys are
//! written with mode 0600; existing files are never overwritten.
use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose,
};

#[derive(Debug, Args)]
pub struct CertsInitArgs {
    /// Directory to write into (created; existing certificate files are never overwritten).
    pub dir: PathBuf,
    /// A DNS name or IP address control is reached at (repeat) [default: localhost, 127.0.0.1].
    #[arg(long = "control-name", value_name = "NAME")]
    pub control_names: Vec<String>,
    /// A worker client certificate to make; its name is the worker's identity in
    /// `switchyard workers list` (repeat) [default: worker-1].
    #[arg(long = "worker", value_name = "NAME")]
    pub workers: Vec<String>,
    /// Validity of the certificates, in days.
    #[arg(long, default_value_t = 825)]
    pub days: u32,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d
}

fn validity(p: &mut CertificateParams, days: u32) {
    let now = std::time::SystemTime::now();
    // An hour back: clocks of the machines involved are rarely exactly in step.
    p.not_before = (now - std::time::Duration::from_secs(3600)).into();
    p.not_after = (now + std::time::Duration::from_secs(u64::from(days) * 86_400)).into();
}

/// Create `path` with `mode`, failing if it exists.
fn write_new(path: &Path, body: &str, mode: u32) -> Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = o
        .open(path)
        .with_context(|| format!("{}: cannot create (it is never overwritten)", path.display()))?;
    f.write_all(body.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

pub fn init(a: &CertsInitArgs) -> Result<String> {
    let control_names = if a.control_names.is_empty() {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    } else {
        a.control_names.clone()
    };
    let workers = if a.workers.is_empty() {
        vec!["worker-1".to_string()]
    } else {
        a.workers.clone()
    };
    for w in &workers {
        if !valid_name(w) || w == "admin" || w == "control" || w == "ca" {
            bail!("--worker {w:?}: use letters, digits, `-`, `_`, `.` (and not admin, control or ca)");
        }
    }
    let files = [
        "ca.pem",
        "ca-key.pem",
        "control.pem",
        "control-key.pem",
        "admin.pem",
        "admin-key.pem",
    ];
    for f in files.iter().map(|f| f.to_string()).chain(
        workers
            .iter()
            .flat_map(|w| [format!("{w}.pem"), format!("{w}-key.pem")]),
    ) {
        if a.dir.join(&f).exists() {
            bail!(
                "{}: already exists; certs init never overwrites (use another directory)",
                a.dir.join(f).display()
            );
        }
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("create {}", a.dir.display()))?;

    let ca_key = KeyPair::generate()?;
    let mut cp = CertificateParams::new(Vec::<String>::new())?;
    cp.distinguished_name = dn("Switchyard private CA");
    cp.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    cp.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut cp, a.days);
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(cp, ca_key)?;
    write_new(&a.dir.join("ca.pem"), &ca.pem(), 0o644)?;
    write_new(&a.dir.join("ca-key.pem"), &ca_key_pem, 0o600)?;

    let leaf = |name: &str, cn: &str, sans: Vec<String>, server: bool| -> Result<()> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(sans)
            .with_context(|| format!("{name}: a name is neither a DNS name nor an IP address"))?;
        p.distinguished_name = dn(cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        validity(&mut p, a.days);
        let cert = p.signed_by(&key, &ca)?;
        write_new(&a.dir.join(format!("{name}.pem")), &cert.pem(), 0o644)?;
        write_new(
            &a.dir.join(format!("{name}-key.pem")),
            &key.serialize_pem(),
            0o600,
        )?;
        Ok(())
    };
    leaf("control", &control_names[0], control_names.clone(), true)?;
    leaf("admin", "admin", Vec::new(), false)?;
    for w in &workers {
        leaf(w, w, vec![w.clone()], false)?;
    }

    let d = std::fs::canonicalize(&a.dir)?;
    let d = d.display();
    let w = &workers[0];
    Ok(format!(
        "wrote a private CA, a certificate for control ({names}) and client certificates for {ws} and admin in {d}\n\
         Keep ca-key.pem offline: whoever has it can mint workers.\n\n\
         switchyard-control --tls-cert {d}/control.pem --tls-key {d}/control-key.pem --tls-client-ca {d}/ca.pem ...\n\
         switchyard-worker --control https://{host}:50051 --control-ca {d}/ca.pem --client-cert {d}/{w}.pem --client-key {d}/{w}-key.pem ...\n\
         switchyard --control https://{host}:50051 --control-ca {d}/ca.pem --client-cert {d}/admin.pem --client-key {d}/admin-key.pem status\n",
        names = control_names.join(", "),
        ws = workers.join(", "),
        host = control_names[0],
    ))
}
