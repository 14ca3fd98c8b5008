//! TLS on keyward's port (SPEC §12): TLS 1.3 only (rustls, ring provider),
//! ALPN `h2`, client certificates required when a client CA is given (mTLS),
//! and certificates that reload from disk without a restart.
//!
//! [`ServerTls`] holds the current rustls [`ServerConfig`] behind a lock that
//! each handshake reads once (a pointer copy). [`ServerTls::watch`] rebuilds
//! the whole configuration, certificate, key and client CA alike, on SIGHUP
//! and when a file's modification time or size changes (polled every
//! `--tls-reload-interval`); connections already open keep the certificate
//! they were made with. A reload that fails (a missing file, a key that does
//! not match its certificate, a half-written file) is logged and the server
//! keeps serving with the configuration it had. The handshakes themselves
//! run per connection in `crate::connection::ServerIncoming`.
//!
//! Swapping the whole configuration rather than only a certificate resolver
//! is what lets the client CA reload too: rustls fixes the client verifier
//! in the `ServerConfig`.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

use crate::config::TlsSettings;

/// Why a TLS configuration could not be loaded. Messages name files, never
/// their contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        /// Which file ("certificate", "private key", "client CA").
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A certificate file holds no PEM certificate, or a malformed one.
    #[error("the {what} {path} holds no valid PEM certificate")]
    BadCertificate {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// The key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[error("the private key {path} holds no valid PEM private key")]
    BadPrivateKey {
        /// Its path.
        path: PathBuf,
    },
    /// rustls refused the certificate and key (e.g. they do not match).
    #[error("the certificate {cert} and key {key} cannot be used: {source}")]
    Identity {
        /// The certificate's path.
        cert: PathBuf,
        /// The key's path.
        key: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// rustls refused the client CA.
    #[error("the client CA {path} cannot be used: {source}")]
    ClientCa {
        /// Its path.
        path: PathBuf,
        /// rustls's reason.
        source: rustls::server::VerifierBuilderError,
    },
}

/// The files a TLS configuration is loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf certificate.
    pub key: PathBuf,
    /// PEM CA certificate(s) client certificates must chain to; `None`: no
    /// client certificates are asked for.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files `settings` names, if TLS is on (`--tls-cert` and
    /// `--tls-key`, which clap requires together).
    pub fn from_settings(settings: &TlsSettings) -> Option<Self> {
        match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => Some(Self {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: settings.tls_client_ca.clone(),
            }),
            _ => None,
        }
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }
}

/// The server's TLS configuration, swapped whole on reload. Clones share it.
#[derive(Clone)]
pub struct ServerTls {
    files: Arc<TlsFiles>,
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the configuration from `files`; an error is a reason not to start.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = server_config(&files)?;
        Ok(Self {
            files: Arc::new(files),
            current: Arc::new(RwLock::new(Arc::new(config))),
        })
    }

    /// Whether client certificates are required (mTLS).
    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// An acceptor with the current configuration, for one handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        TlsAcceptor::from(config)
    }

    /// Reads the files again and, if they make a valid configuration, uses
    /// it for every new connection. On error the current one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(server_config(&self.files)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// Reloads on SIGHUP and whenever a file changes (checked every
    /// `poll`), logging the outcome; the returned future runs until aborted.
    /// SIGHUP is handled from this call on (no longer the default action,
    /// which ends the process), before the future is first polled.
    pub fn watch(self, poll: Duration) -> impl Future<Output = ()> + Send + 'static {
        let hangup = hangup_signal();
        self.reload_on(hangup, poll)
    }

    async fn reload_on(self, mut hangup: Hangup, poll: Duration) {
        let mut seen = self.fingerprint();
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let signalled = tokio::select! {
                _ = ticker.tick() => false,
                () = next_hangup(&mut hangup) => true,
            };
            let now = self.fingerprint();
            if !signalled && now == seen {
                continue;
            }
            // Remembered even when the reload fails: a half-written file is
            // retried when it changes again, not logged every second.
            seen = now;
            let trigger = if signalled { "SIGHUP" } else { "file change" };
            match self.reload() {
                Ok(()) => tracing::info!(
                    trigger,
                    cert = %self.files.cert.display(),
                    "TLS certificate reloaded"
                ),
                Err(error) => tracing::error!(
                    trigger,
                    %error,
                    "TLS reload failed; keeping the current certificate"
                ),
            }
        }
    }

    /// Modification time and size of each file (`None` where unreadable).
    fn fingerprint(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.files
            .paths()
            .map(|path| {
                let metadata = std::fs::metadata(path).ok()?;
                Some((metadata.modified().ok()?, metadata.len()))
            })
            .collect()
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; certificates reload on file changes only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

/// Completes at the next SIGHUP; never when there is no signal to wait for.
#[cfg(unix)]
async fn next_hangup(hangup: &mut Hangup) {
    let received = match hangup {
        Some(signal) => signal.recv().await.is_some(),
        None => false,
    };
    if received {
        return;
    }
    // No handler, or the signal stream ended.
    std::future::pending().await
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) {
    std::future::pending().await
}

/// The one crypto provider keyward's TLS uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A TLS 1.3-only configuration with ALPN `h2` from `files`.
fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let chain = read_certificates("certificate", &files.cert)?;
    let key = read_private_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3");
    let builder = match &files.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates("client CA", path)? {
                roots
                    .add(certificate)
                    .map_err(|_| TlsError::BadCertificate {
                        what: "client CA",
                        path: path.clone(),
                    })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientCa {
                    path: path.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Identity {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    // gRPC is HTTP/2 only. A client that offers ALPN without h2 is refused
    // in the handshake; one that offers none speaks h2 by prior knowledge.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate of a PEM file: at least one, none malformed.
fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = || TlsError::BadCertificate {
        what,
        path: path.to_owned(),
    };
    let pem = read(what, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad())?;
    if certificates.is_empty() {
        return Err(bad());
    }
    Ok(certificates)
}

/// The first private key of a PEM file.
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::BadPrivateKey {
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `localhost` and its key, as PEM.
    fn self_signed() -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a certificate");
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    fn files(name: &str, cert: &str, key: &str) -> TlsFiles {
        let dir =
            std::env::temp_dir().join(format!("keyward-tls-unit-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        std::fs::write(dir.join("cert.pem"), cert).expect("writable");
        std::fs::write(dir.join("key.pem"), key).expect("writable");
        TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
        }
    }

    #[test]
    fn a_certificate_and_its_key_load() {
        let (cert, key) = self_signed();
        let tls = ServerTls::load(files("good", &cert, &key)).expect("a valid pair");
        assert!(!tls.requires_client_certificates());
        tls.reload().expect("the same files load again");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_without_showing_it() {
        let (cert, _) = self_signed();
        let (_, other_key) = self_signed();
        let error = ServerTls::load(files("mismatch", &cert, &other_key)).expect_err("mismatch");
        assert!(matches!(error, TlsError::Identity { .. }), "{error:?}");
        let body = other_key.lines().nth(1).expect("a PEM body line");
        assert!(!error.to_string().contains(body), "{error}");
    }

    #[test]
    fn files_without_pem_content_are_named_in_the_error() {
        let (cert, key) = self_signed();
        let error = ServerTls::load(files("nocert", "junk", &key)).expect_err("no certificate");
        assert!(
            matches!(error, TlsError::BadCertificate { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("cert.pem"), "{error}");
        let error = ServerTls::load(files("nokey", &cert, "junk")).expect_err("no key");
        assert!(matches!(error, TlsError::BadPrivateKey { .. }), "{error:?}");
    }
}
