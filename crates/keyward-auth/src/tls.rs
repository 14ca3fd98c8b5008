//! Client-side TLS for connections to keyward: the remote validator and the
//! admin CLI build their [`Endpoint`] here.
//!
//! `http://` URLs connect in plaintext; `https://` URLs speak TLS (rustls
//! with the ring provider, ALPN `h2`), verifying keyward's certificate
//! against the given CA bundle (or the system's roots when none is given),
//! and present a client certificate when keyward requires one (mTLS).
//! Files are read and parsed when the endpoint is built, so a wrong path or
//! a file that holds no certificate fails at startup, not at the first call.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// How a client reaches keyward over TLS. All fields are optional: the
/// default speaks TLS to `https://` URLs with the system's trusted roots and
/// no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM file of the CA certificate(s) that signed keyward's certificate.
    /// `None`: the system's trusted roots.
    pub ca_cert: Option<PathBuf>,
    /// PEM file of the client certificate (chain) presented to keyward, for
    /// mTLS. Needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key. Needs `client_cert`.
    pub client_key: Option<PathBuf>,
}

impl ClientTls {
    /// True when no option is set (plain `https://` with the system roots, or
    /// plaintext for `http://`).
    pub fn is_empty(&self) -> bool {
        self.ca_cert.is_none() && self.client_cert.is_none() && self.client_key.is_none()
    }
}

/// Why a TLS endpoint could not be built. Messages name files, never their
/// contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The URL is not a valid URI.
    #[error("invalid keyward url {url:?}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why tonic rejected it.
        #[source]
        source: tonic::transport::Error,
    },
    /// The URL's scheme is neither `http` nor `https`.
    #[error("keyward url {url:?} must start with http:// or https://")]
    UnsupportedScheme {
        /// The URL as given.
        url: String,
    },
    /// TLS files were given for an `http://` URL, which would silently
    /// connect in plaintext.
    #[error("TLS options given for the plaintext url {url:?}: use https://")]
    TlsOptionsWithPlaintext {
        /// The URL as given.
        url: String,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("a client certificate and its key go together: give both or neither")]
    IncompleteIdentity,
    /// A file could not be read.
    #[error("cannot read {what} {path}")]
    Read {
        /// Which file it is ("CA certificate", "client key", ...).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate file holds no PEM certificate, or an unreadable one.
    #[error("{what} {path} holds no valid PEM certificate")]
    BadCertificate {
        /// Which file it is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// A key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[error("client key {path} holds no valid PEM private key")]
    BadPrivateKey {
        /// Its path.
        path: PathBuf,
    },
    /// tonic refused the TLS configuration.
    #[error("invalid TLS configuration")]
    Config(#[source] tonic::transport::Error),
}

/// An [`Endpoint`] for `url`: plaintext for `http://`, TLS for `https://`
/// with the CA bundle and optional client identity of `tls`.
///
/// The server name checked against keyward's certificate is the URL's host
/// (a DNS name or an IP address, which the certificate must list).
pub fn endpoint(url: &str, tls: &ClientTls) -> Result<Endpoint, TlsError> {
    let endpoint =
        Endpoint::from_shared(url.to_owned()).map_err(|source| TlsError::InvalidUrl {
            url: url.to_owned(),
            source,
        })?;
    match endpoint.uri().scheme_str() {
        Some("http") if tls.is_empty() => Ok(endpoint),
        Some("http") => Err(TlsError::TlsOptionsWithPlaintext {
            url: url.to_owned(),
        }),
        Some("https") => endpoint
            .tls_config(client_config(tls)?)
            .map_err(TlsError::Config),
        _ => Err(TlsError::UnsupportedScheme {
            url: url.to_owned(),
        }),
    }
}

/// tonic's client TLS configuration for `tls`, its files read and checked.
fn client_config(tls: &ClientTls) -> Result<ClientTlsConfig, TlsError> {
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca_cert {
        Some(path) => config.ca_certificate(Certificate::from_pem(read_certificates(
            "CA certificate",
            path,
        )?)),
        None => config.with_enabled_roots(),
    };
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let cert = read_certificates("client certificate", cert)?;
            let key = read_private_key(key)?;
            Ok(config.identity(Identity::from_pem(cert, key)))
        }
        (None, None) => Ok(config),
        _ => Err(TlsError::IncompleteIdentity),
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The file's bytes, once checked to hold at least one PEM certificate and
/// nothing malformed.
fn read_certificates(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(what, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::BadCertificate {
            what,
            path: path.to_owned(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::BadCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(pem)
}

/// The file's bytes, once checked to hold a PEM private key.
fn read_private_key(path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read("client key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::BadPrivateKey {
        path: path.to_owned(),
    })?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keyward-auth-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the temp dir is writable");
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("the temp dir is writable");
        path
    }

    #[test]
    fn http_without_options_is_plaintext() {
        let endpoint = endpoint("http://127.0.0.1:50051", &ClientTls::default()).expect("valid");
        assert_eq!(endpoint.uri().scheme_str(), Some("http"));
    }

    #[test]
    fn http_with_tls_options_is_refused() {
        let tls = ClientTls {
            ca_cert: Some("ca.pem".into()),
            ..ClientTls::default()
        };
        assert!(matches!(
            endpoint("http://127.0.0.1:50051", &tls),
            Err(TlsError::TlsOptionsWithPlaintext { .. })
        ));
    }

    #[test]
    fn other_schemes_are_refused() {
        assert!(matches!(
            endpoint("ftp://127.0.0.1:50051", &ClientTls::default()),
            Err(TlsError::UnsupportedScheme { .. })
        ));
    }

    #[test]
    fn a_missing_ca_file_is_reported_with_its_path() {
        let tls = ClientTls {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..ClientTls::default()
        };
        let error = endpoint("https://127.0.0.1:50051", &tls).expect_err("no such file");
        assert!(matches!(error, TlsError::Read { .. }));
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let tls = ClientTls {
            ca_cert: Some(temp_file("empty.pem", "not a certificate\n")),
            ..ClientTls::default()
        };
        assert!(matches!(
            endpoint("https://127.0.0.1:50051", &tls),
            Err(TlsError::BadCertificate { .. })
        ));
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let tls = ClientTls {
            client_cert: Some("client.pem".into()),
            ..ClientTls::default()
        };
        assert!(matches!(
            endpoint("https://127.0.0.1:50051", &tls),
            Err(TlsError::IncompleteIdentity)
        ));
    }
}
