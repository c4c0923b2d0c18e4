//! Mutual TLS for peer links (rustls, ring provider, TLS 1.3 only).
//!
//! Both ends present a certificate signed by the cluster CA. The acceptor
//! verifies the dialer's chain during the TLS handshake (client auth
//! required); the dialer verifies the acceptor's chain with a verifier that
//! checks the CA but not a host name, because links dial addresses, not
//! names. Each side then binds the node name claimed in the hello (or the
//! answer) to the certificate: the name must be one the certificate is valid
//! for ([`certificate_names`]). This module builds the rustls configs and
//! checks names; it must not read files (the node hands it parsed PEM).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// The server name a dialer puts in its TLS hello. It is not checked (the
/// acceptor's name is bound after the handshake); it only has to be valid.
const DIAL_SERVER_NAME: &str = "starling-peer";

/// Why the peer TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    #[error("the CA file holds no certificate")]
    NoCa,
    #[error("the CA certificate is not usable: {0}")]
    BadCa(String),
    #[error("the node certificate file holds no certificate")]
    NoCert,
    #[error("the node certificate is not signed by the cluster CA: {0}")]
    NotSignedByCa(String),
    #[error(
        "the node certificate is not valid for the node name `{0}` (it needs a DNS name equal to node.name)"
    )]
    WrongName(String),
    #[error("the node key does not fit the certificate or is not supported: {0}")]
    BadKey(String),
}

/// The TLS side of one node's peer links.
#[derive(Clone)]
pub struct PeerTls {
    pub(super) server: Arc<ServerConfig>,
    pub(super) client: Arc<ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PeerTls {
    /// Builds the acceptor and dialer configs of node `node` from the
    /// cluster CA, the node's certificate chain and its key. Refuses a
    /// certificate that the CA did not sign or that is not valid for `node`,
    /// so a misconfigured node fails at start, not at its first link.
    pub fn new(
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        node: &str,
    ) -> Result<PeerTls, PeerTlsError> {
        if ca.is_empty() {
            return Err(PeerTlsError::NoCa);
        }
        let Some(leaf) = chain.first() else {
            return Err(PeerTlsError::NoCert);
        };
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|e| PeerTlsError::BadCa(e.to_string()))?;
        }
        let roots = Arc::new(roots);
        let provider = provider();
        let verifier =
            Arc::new(CaOnlyServerVerifier { roots: Arc::clone(&roots), provider: Arc::clone(&provider) });
        verifier.check_chain(leaf, &chain[1..]).map_err(|e| PeerTlsError::NotSignedByCa(e.to_string()))?;
        if !certificate_names(leaf, node) {
            return Err(PeerTlsError::WrongName(node.to_string()));
        }
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
            .build()
            .map_err(|e| PeerTlsError::BadCa(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PeerTlsError::BadKey(e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| PeerTlsError::BadKey(e.to_string()))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PeerTlsError::BadKey(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|e| PeerTlsError::BadKey(e.to_string()))?;
        Ok(PeerTls { server: Arc::new(server), client: Arc::new(client) })
    }

    pub(super) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.server))
    }

    pub(super) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(Arc::clone(&self.client))
    }

    pub(super) fn dial_server_name() -> ServerName<'static> {
        ServerName::try_from(DIAL_SERVER_NAME).expect("a valid DNS name")
    }
}

/// Whether `cert` is valid for the DNS name `name` (a SAN equal to it).
pub fn certificate_names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&server_name).is_ok()
}

/// Verifies that the acceptor's chain ends at the cluster CA, without
/// checking a host name (the name is bound after the handshake).
#[derive(Debug)]
struct CaOnlyServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl CaOnlyServerVerifier {
    fn check_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            UnixTime::now(),
            self.provider.signature_verification_algorithms.all,
        )
    }
}

impl ServerCertVerifier for CaOnlyServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check_chain(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
