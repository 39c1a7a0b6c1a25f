//! TLS trust for the gateway's outbound connections: webpki's roots plus an optional PEM file
//! of extra CAs (`upstream_ca_file`), as one rustls client config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
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

/// A client config trusting webpki's roots plus the certificates in `ca_file`; no ALPN
/// (each user sets its own).
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|source| TlsError::Anchor {
                path: path.to_path_buf(),
                source,
            })?;
        }
    }
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Defaults)?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
