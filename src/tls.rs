//! TLS client configuration for MQTT connections: a private CA, an optional
//! client certificate (mutual TLS), rustls with the `ring` provider only.
//! PEM is parsed with `rustls-pki-types` (rustls-pemfile is unmaintained).

use crate::config::TlsConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read certificates: {detail}")]
    Certificates { path: String, detail: String },
    #[error("{path}: contains no certificate")]
    NoCertificate { path: String },
    #[error("{path}: cannot read private key: {detail}")]
    Key { path: String, detail: String },
    #[error("{0}")]
    Rustls(String),
}

/// The one crypto provider in the binary.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificates {
            path: shown.clone(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: shown });
    }
    Ok(certs)
}

/// Builds the client configuration: server verified against `ca_file` only
/// (not the system roots), client certificate presented if configured.
pub fn client_config(tls: &TlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&tls.ca_file)? {
        roots.add(cert).map_err(|e| TlsError::Certificates {
            path: tls.ca_file.display().to_string(),
            detail: e.to_string(),
        })?;
    }
    let provider = provider();
    let roots = Arc::new(roots);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &tls.server_name {
        // Verify the certificate against a configured name rather than the
        // host we connect to (e.g. connecting by IP to a broker whose
        // certificate names it).
        Some(name) => {
            let name = ServerName::try_from(name.clone())
                .map_err(|e| TlsError::Rustls(format!("server_name: {e}")))?;
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(FixedNameVerifier { inner, name }))
        }
        None => builder.with_root_certificates(roots),
    };
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
                path: key.display().to_string(),
                detail: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Rustls(format!("client certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Full WebPKI verification, against a fixed name instead of the SNI name.
#[derive(Debug)]
struct FixedNameVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for FixedNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A readable reason for a failed connection, naming certificate problems plainly.
pub fn describe_connection_error(e: &rumqttc::ConnectionError) -> String {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("badsignature")
    {
        format!("TLS certificate rejected: {text} (is the broker's certificate signed by the configured ca_file, and is its name right?)")
    } else {
        text
    }
}
