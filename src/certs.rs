//! `starling cert`: the cluster CA, node certificates and the gossip key.
//!
//! Owns the files an operator needs for a secure cluster (ARCHITECTURE §5):
//! `create-ca` writes `ca.crt`, `ca.key` and `gossip.key`; `create-node`
//! writes `NAME.crt` and `NAME.key`, signed by the CA, valid for the DNS name
//! NAME (the node name peers check) and for every `--host`, usable for both
//! ends of a peer link. Keys are written 0600 and never overwritten. This
//! module must not start anything; the node reads these files through
//! `crate::tls`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// How long a CA certificate is valid.
const CA_VALIDITY_DAYS: i64 = 3650;
/// How long a node certificate is valid (rotate before; see docs/operations.md).
const NODE_VALIDITY_DAYS: i64 = 825;

/// Why a certificate command failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} already exists; move it away first (certificates and keys are never overwritten)")]
    Exists(PathBuf),
    #[error("{path} is not a usable {what}: {message}")]
    Parse { path: PathBuf, what: &'static str, message: String },
    #[error(
        "`{0}` is not a valid node name for a certificate (letters, digits, `-` and `.`, like a DNS name)"
    )]
    BadName(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io { path: path.to_path_buf(), source }
}

/// Writes `contents` to a new file with `mode`; an existing file is an error.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CertError::Exists(path.to_path_buf())
        } else {
            CertError::Io { path: path.to_path_buf(), source: e }
        }
    })?;
    file.write_all(contents).map_err(io_error(path))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that are behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// Creates `dir/ca.crt`, `dir/ca.key` and `dir/gossip.key`; returns their paths.
pub fn create_ca(dir: &Path) -> Result<Vec<PathBuf>, CertError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let paths = ["ca.crt", "ca.key", "gossip.key"].map(|name| dir.join(name));
    if let Some(existing) = paths.iter().find(|p| p.exists()) {
        return Err(CertError::Exists(existing.clone()));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, "Starling cluster CA");
    validity(&mut params, CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key)?;
    let gossip_key = starling_cluster::membership::GossipKey::generate().to_base64() + "\n";
    write_new(&paths[1], key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&paths[0], cert.pem().as_bytes(), 0o644)?;
    write_new(&paths[2], gossip_key.as_bytes(), 0o600)?;
    Ok(paths.to_vec())
}

/// Whether `name` can be a certificate's DNS name (and so a node name in a
/// cluster with TLS).
pub fn is_certificate_name(name: &str) -> bool {
    rustls::pki_types::ServerName::try_from(name)
        .is_ok_and(|n| matches!(n, rustls::pki_types::ServerName::DnsName(_)))
}

/// Creates `dir/NAME.crt` and `dir/NAME.key`, signed by `dir/ca.crt` and
/// `dir/ca.key`, valid for NAME and every host (IP addresses or DNS names).
pub fn create_node(name: &str, dir: &Path, hosts: &[String]) -> Result<Vec<PathBuf>, CertError> {
    if !is_certificate_name(name) {
        return Err(CertError::BadName(name.to_string()));
    }
    let (ca_cert_path, ca_key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    let ca_cert = std::fs::read_to_string(&ca_cert_path).map_err(io_error(&ca_cert_path))?;
    let ca_key = std::fs::read_to_string(&ca_key_path).map_err(io_error(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key).map_err(|e| CertError::Parse {
        path: ca_key_path.clone(),
        what: "private key",
        message: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key).map_err(|e| CertError::Parse {
        path: ca_cert_path.clone(),
        what: "CA certificate",
        message: e.to_string(),
    })?;
    let paths = [dir.join(format!("{name}.crt")), dir.join(format!("{name}.key"))];
    if let Some(existing) = paths.iter().find(|p| p.exists()) {
        return Err(CertError::Exists(existing.clone()));
    }
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    for host in hosts {
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.as_str().try_into()?),
        };
        params.subject_alt_names.push(san);
    }
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, NODE_VALIDITY_DAYS);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_new(&paths[1], key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&paths[0], cert.pem().as_bytes(), 0o644)?;
    Ok(paths.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("starling-certs-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn ca_and_node_files_are_written_with_private_keys_0600_and_never_overwritten() {
        let dir = temp_dir();
        create_ca(&dir).unwrap();
        create_node("node-1", &dir, &["127.0.0.1".into(), "node-1.example".into()]).unwrap();
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        assert_eq!(mode(&dir.join("gossip.key")), 0o600);
        assert_eq!(mode(&dir.join("node-1.key")), 0o600);
        let gossip = std::fs::read_to_string(dir.join("gossip.key")).unwrap();
        assert!(starling_cluster::membership::GossipKey::parse(&gossip).is_ok());
        assert!(matches!(create_ca(&dir), Err(CertError::Exists(_))));
        assert!(matches!(create_node("node-1", &dir, &[]), Err(CertError::Exists(_))));
        assert!(matches!(create_node("not a name", &dir, &[]), Err(CertError::BadName(_))));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_node_certificate_is_accepted_for_its_name_only() {
        let dir = temp_dir();
        create_ca(&dir).unwrap();
        create_node("node-1", &dir, &[]).unwrap();
        let ca = crate::tls::load_certs(&dir.join("ca.crt")).unwrap();
        let chain = crate::tls::load_certs(&dir.join("node-1.crt")).unwrap();
        let key = crate::tls::load_private_key(&dir.join("node-1.key")).unwrap();
        assert!(starling_cluster::transport::certificate_names(&chain[0], "node-1"));
        assert!(!starling_cluster::transport::certificate_names(&chain[0], "node-2"));
        let tls =
            starling_cluster::transport::PeerTls::new(ca.clone(), chain.clone(), key.clone_key(), "node-1");
        assert!(tls.is_ok());
        let wrong = starling_cluster::transport::PeerTls::new(ca, chain, key, "node-2");
        assert!(matches!(wrong, Err(starling_cluster::transport::PeerTlsError::WrongName(_))));
        std::fs::remove_dir_all(dir).ok();
    }
}
