//! TLS trust of the JWKS fetch when `[general] tls-ca-file` is set.
//!
//! The server's chain is verified by webpki against the system roots plus every certificate
//! of the file, as usual. One case more is accepted, as Go's TLS (and so upstream Jacamar)
//! accepts it: a self-signed server certificate that is itself a CA certificate
//! (`basicConstraints CA:TRUE`, what `openssl req -x509` makes by default), which webpki
//! refuses as `CaUsedAsEndEntity`. It is accepted only when
//! - the certificate the server presents is byte-equal to one in the file (pinned),
//! - webpki refused it for exactly that reason (its validity period was checked before: webpki
//!   checks the dates of a certificate before its basic constraints; a unit test holds this),
//! - and it names the server (subjectAltName DNS name or IP address), checked here.
//!
//! The handshake's signature is always verified with the presented certificate's key, so the
//! server must hold the pinned certificate's private key.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::AuthError;

/// The certificates of a PEM file (`tls-ca-file`), in order; an error names the file when it
/// cannot be read, is not PEM, or holds no certificate.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, AuthError> {
    let pem = std::fs::read(path).map_err(|e| {
        AuthError::Jwks(format!(
            "failed to read tls-ca-file {}: {e}",
            path.display()
        ))
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AuthError::Jwks(format!("tls-ca-file {} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(AuthError::Jwks(format!(
            "tls-ca-file {} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The rustls client configuration (ring, TLS 1.2 and 1.3) that trusts the system roots plus
/// `file_certs` (from `path`, named in errors) and accepts a pinned self-signed CA server
/// certificate (see the module doc).
pub fn client_config(
    path: &Path,
    file_certs: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, AuthError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = verifier(path, file_certs, provider.clone())?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthError::Jwks(format!("failed to set up TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

fn verifier(
    path: &Path,
    file_certs: Vec<CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<PinnedSelfSigned, AuthError> {
    let mut roots = RootCertStore::empty();
    // As reqwest does with its native roots: an unreadable system store or an unparsable
    // system certificate leaves the others usable.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    for c in &file_certs {
        roots.add(c.clone()).map_err(|e| {
            AuthError::Jwks(format!(
                "tls-ca-file {}: a certificate is not usable as a trust anchor: {e}",
                path.display()
            ))
        })?;
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| AuthError::Jwks(format!("failed to set up TLS verification: {e}")))?;
    Ok(PinnedSelfSigned {
        inner,
        pinned: file_certs,
    })
}

/// webpki's verification, plus the pinned self-signed CA certificates of the file.
#[derive(Debug)]
struct PinnedSelfSigned {
    inner: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

/// Whether rustls reports webpki's `CaUsedAsEndEntity` (wrapped as `Other`, or typed by a
/// later rustls).
fn is_ca_used_as_end_entity(e: &rustls::Error) -> bool {
    let rustls::Error::InvalidCertificate(c) = e else {
        return false;
    };
    match c {
        CertificateError::Other(o) => {
            let inner: &(dyn std::error::Error + 'static) = &*o.0;
            matches!(
                inner.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::CaUsedAsEndEntity)
            )
        }
        _ => false,
    }
}

impl ServerCertVerifier for PinnedSelfSigned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let err = match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let pinned = self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref());
        if !(pinned && is_ca_used_as_end_entity(&err)) {
            return Err(err);
        }
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&cert, server_name)?;
        Ok(ServerCertVerified::assertion())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A self-signed CA:TRUE certificate for `san` (openssl's `req -x509` defaults), as DER.
    fn self_signed(dir: &Path, name: &str, san: &str) -> CertificateDer<'static> {
        let pem = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-addext"])
            .arg(format!("subjectAltName={san}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&pem)
            .output()
            .expect("the openssl CLI");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        read_ca_file(&pem).unwrap().remove(0)
    }

    #[test]
    fn pinned_self_signed_ca_passes_only_for_its_name_and_dates() {
        if !crate::test_support::require(
            Command::new("openssl").arg("version").output().is_ok(),
            "the openssl CLI is needed",
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let good = self_signed(dir.path(), "good", "IP:127.0.0.1");
        let other = self_signed(dir.path(), "other", "IP:127.0.0.1");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let v = verifier(dir.path(), vec![good.clone()], provider).unwrap();
        let ip = ServerName::try_from("127.0.0.1").unwrap();
        let now = UnixTime::now();
        v.verify_server_cert(&good, &[], &ip, &[], now)
            .expect("the pinned certificate for its own address");
        let e = v
            .verify_server_cert(&other, &[], &ip, &[], now)
            .unwrap_err();
        assert!(is_ca_used_as_end_entity(&e), "{e:?}");
        let wrong = ServerName::try_from("127.0.0.2").unwrap();
        let e = v
            .verify_server_cert(&good, &[], &wrong, &[], now)
            .unwrap_err();
        assert!(format!("{e:?}").contains("NotValidForName"), "{e:?}");
        let later =
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.as_secs() + 5 * 86400));
        let e = v
            .verify_server_cert(&good, &[], &ip, &[], later)
            .unwrap_err();
        assert!(format!("{e:?}").contains("Expired"), "{e:?}");
    }
}
