//! TLS material: the one place PEM certificates and keys are read, and the
//! rustls configurations built from them (ring provider, no OpenSSL).
//!
//! This module turns files into configurations. It must not accept or open
//! connections: the listeners wrap their own streams with what it returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS material could not be loaded; names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is not valid PEM: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("{} holds no certificate (expected a `BEGIN CERTIFICATE` block)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no private key (expected a PKCS#8, PKCS#1 or SEC1 `PRIVATE KEY` block)", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("the certificate and key cannot be used together: {0}")]
    Unusable(rustls::Error),
}

/// Every certificate in the PEM file at `path`, in file order (the node's
/// own certificate first, then its chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(path, error))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

/// The first private key in the PEM file at `path`.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = read(path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|error| match error {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey { path: path.into() },
        other => pem_error(path, other),
    })
}

/// Makes ring the process's default rustls provider, for the HTTP clients
/// that take the default (the OTLP exporter, webhooks); the listeners and
/// peer links name ring themselves. A second call changes nothing.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The server side of the client and API listeners: TLS 1.2 and 1.3, no
/// client certificates, HTTP/1.1 offered by ALPN (WebSocket upgrades and
/// the API both speak it).
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Unusable)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Unusable)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.into(), source })
}

fn pem_error(path: &Path, error: pem::Error) -> TlsError {
    TlsError::Pem { path: path.into(), message: error.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("starling-tls-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_generated_certificate_and_key_make_a_server_config() {
        let dir = temp_dir();
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("cert.pem"), generated.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), generated.signing_key.serialize_pem()).unwrap();
        let certs = load_certs(&dir.join("cert.pem")).unwrap();
        let key = load_private_key(&dir.join("key.pem")).unwrap();
        assert_eq!(certs.len(), 1);
        assert!(server_config(certs, key).is_ok());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn errors_name_the_file_and_what_is_wrong() {
        let dir = temp_dir();
        let missing = dir.join("missing.pem");
        let error = load_certs(&missing).unwrap_err().to_string();
        assert!(error.starts_with("cannot read") && error.contains("missing.pem"), "{error}");

        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let error = load_certs(&garbage).unwrap_err().to_string();
        assert!(error.contains("garbage.pem") && error.contains("no certificate"), "{error}");
        let error = load_private_key(&garbage).unwrap_err().to_string();
        assert!(error.contains("garbage.pem") && error.contains("no private key"), "{error}");

        let broken = dir.join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap();
        let error = load_certs(&broken).unwrap_err().to_string();
        assert!(error.contains("broken.pem") && error.contains("not valid PEM"), "{error}");

        // A certificate with another certificate's key.
        let one = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["b".into()]).unwrap();
        let (cert, key) = (dir.join("one.pem"), dir.join("other.key"));
        std::fs::write(&cert, one.cert.pem()).unwrap();
        std::fs::write(&key, other.signing_key.serialize_pem()).unwrap();
        let error = server_config(load_certs(&cert).unwrap(), load_private_key(&key).unwrap()).unwrap_err();
        assert!(matches!(error, TlsError::Unusable(_)), "{error}");
        std::fs::remove_dir_all(dir).ok();
    }
}
