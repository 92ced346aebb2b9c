//! HTTPS/WSS for a daemon's listener: a rustls server config (ring provider, TLS 1.2 and 1.3)
//! from a PEM certificate chain and key (the central's `tls_cert_file` / `tls_key_file`).
//!
//! What it does NOT do: read configuration files (the daemon names the files), client
//! certificates, reloading certificates without a restart, or ACME.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The certificate chain and key files the central serves HTTPS/WSS with.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why the certificate or key could not be used; names the file, never prints key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("{0} holds no PEM certificate")]
    NoCertificate(String),
    /// The key file holds no private key block.
    #[error("{0} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(String),
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("the certificate and key cannot be used: {0}")]
    Rejected(String),
}

/// Build the acceptor for `files`.
pub fn acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let certs = rustls_pemfile::certs(&mut read(&files.cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: files.cert.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(files.cert.display().to_string()));
    }
    let key = rustls_pemfile::private_key(&mut read(&files.key)?.as_slice())
        .map_err(|source| TlsError::Read {
            path: files.key.display().to_string(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey(files.key.display().to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rejected(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rejected(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_never_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        std::fs::write(&key, "secret-key-material").unwrap();
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
        let error = acceptor(&files).err().expect("refused").to_string();
        assert!(
            error.contains("cert.pem") && error.contains("no PEM certificate"),
            "{error}"
        );
        let missing = TlsFiles {
            cert: dir.path().join("missing.pem"),
            key,
        };
        let error = acceptor(&missing).err().expect("refused").to_string();
        assert!(error.contains("missing.pem"), "{error}");
        assert!(!error.contains("secret-key-material"));
    }
}
