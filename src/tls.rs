//! TLS trust for the gateway's outbound connections: webpki's (Mozilla's) roots plus an
//! optional PEM file of extra CAs (`upstream_ca_file`, `redis_ca_file`), as one rustls
//! client config; optionally with a client certificate (Redis mTLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// Why a CA file or the trust store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a PEM bundle of certificates.
    #[error("{}: not a PEM certificate bundle", .path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The PEM parser's complaint.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The file holds no certificate.
    #[error("{}: holds no certificate", .0.display())]
    Empty(PathBuf),
    /// A certificate cannot be used as a trust anchor.
    #[error("{}: unusable CA certificate", .path.display())]
    Anchor {
        /// The file.
        path: PathBuf,
        /// rustls's complaint.
        #[source]
        source: rustls::Error,
    },
    /// The file holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM).
    #[error("{}: holds no PEM private key", .0.display())]
    NoKey(PathBuf),
    /// The client certificate and key do not go together.
    #[error("client certificate and key cannot be used together")]
    ClientAuth(#[source] rustls::Error),
    /// rustls refused its own defaults (should not happen).
    #[error("TLS defaults unavailable")]
    Defaults(#[source] rustls::Error),
}

/// Reads a PEM bundle of CA certificates.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty(path.to_path_buf()));
    }
    Ok(certs)
}

/// Reads a PEM private key (its bytes are never shown in errors).
pub fn read_key_file(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::NoKey(path.to_path_buf()))
}

/// A client certificate (chain) and its key, as PEM files.
pub struct ClientCert<'a> {
    /// The certificate chain, leaf first.
    pub cert: &'a Path,
    /// Its private key.
    pub key: &'a Path,
}

/// A client config trusting webpki's roots plus the certificates in `ca_file`; no ALPN
/// (each user sets its own).
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    client_config_with(ca_file, None)
}

/// [`client_config`], presenting `client` when the server asks for a certificate.
pub fn client_config_with(
    ca_file: Option<&Path>,
    client: Option<ClientCert<'_>>,
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|source| TlsError::Anchor {
                path: path.to_path_buf(),
                source,
            })?;
        }
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Defaults)?
            .with_root_certificates(roots);
    Ok(match client {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let chain = read_ca_file(c.cert)?;
            let key = read_key_file(c.key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(TlsError::ClientAuth)?
        }
    })
}
