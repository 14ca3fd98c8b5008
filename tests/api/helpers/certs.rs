//! Test PKI: CAs, server and client certificates made with rcgen for each
//! test and written to a temporary directory (removed when dropped). Nothing
//! here is checked in. Private keys are recorded for the secret scan, so a
//! key that reached a log fails the suite.

use std::path::{Path, PathBuf};

use keyward::Settings;
use keyward_auth::ClientTls;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::record_secret;

/// The names a test server certificate is valid for: the URL hosts tests
/// use (`127.0.0.1`, `localhost`) and `keyward`, the name Envoy's TLS
/// variant checks.
pub const SERVER_NAMES: &[&str] = &["127.0.0.1", "localhost", "keyward"];

/// A certificate authority that signs test certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A PEM certificate and its PEM private key.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl TestCa {
    /// A new self-signed CA called `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names to check");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a key pair");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("a CA certificate");
        Self { issuer }
    }

    /// The CA certificate (what clients and keyward trust).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for [`SERVER_NAMES`].
    pub fn server(&self) -> Issued {
        self.issue(SERVER_NAMES, "keyward", ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate whose common name is `name`.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(&[], name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, names: &[&str], common_name: &str, usage: ExtendedKeyUsagePurpose) -> Issued {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("valid names");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("a key pair");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("the CA signs it");
        let key_pem = key.serialize_pem();
        record_private_key(&key_pem);
        Issued {
            cert_pem: cert.pem(),
            key_pem,
        }
    }
}

/// Records the body lines of a PEM private key for the secret scan.
fn record_private_key(pem: &str) {
    for line in pem.lines().filter(|line| !line.starts_with("-----")) {
        if line.len() >= 32 {
            record_secret(line);
        }
    }
}

/// A temporary directory of PEM files, removed when dropped.
pub struct PemDir {
    dir: PathBuf,
}

impl PemDir {
    /// A new empty directory.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "keyward-test-tls-{}",
            keyward_core::new_ulid().to_ascii_lowercase()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self { dir }
    }

    /// The path of file `name` in it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `contents` to `name` at once (a rename, as a secret manager
    /// would), so a server polling the file never reads half of it.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        let partial = self.path(&format!(".{name}.partial"));
        std::fs::write(&partial, contents).expect("the temporary directory is writable");
        std::fs::rename(&partial, &path).expect("the temporary directory is writable");
        path
    }

    /// Writes a certificate and its key as `NAME.pem` and `NAME-key.pem`.
    pub fn write_issued(&self, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.pem"), &issued.cert_pem),
            self.write(&format!("{name}-key.pem"), &issued.key_pem),
        )
    }
}

impl Default for PemDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PemDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Everything a TLS test needs: keyward's CA with a server certificate
/// (`server.pem`) and a client certificate (`client.pem`), and a second,
/// unrelated CA (`other-ca.pem`) with a client certificate of its own
/// (`other-client.pem`). Files live in [`TestPki::dir`].
pub struct TestPki {
    /// Where the files are.
    pub dir: PemDir,
    /// A CA keyward does not trust and that did not sign keyward's certificate.
    pub other_ca: TestCa,
}

impl TestPki {
    /// A fresh PKI with its files written.
    pub fn new() -> Self {
        let dir = PemDir::new();
        let ca = TestCa::new("keyward test CA");
        let other_ca = TestCa::new("other test CA");
        dir.write("ca.pem", &ca.cert_pem());
        dir.write("other-ca.pem", &other_ca.cert_pem());
        dir.write_issued("server", &ca.server());
        dir.write_issued("client", &ca.client("orders-service"));
        dir.write_issued("other-client", &other_ca.client("intruder"));
        Self { dir, other_ca }
    }

    /// The path of `name` in [`TestPki::dir`].
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }

    /// Turns TLS on in `settings` with the server certificate; with `mtls`,
    /// client certificates signed by keyward's CA are required.
    pub fn serve_tls(&self, settings: &mut Settings, mtls: bool) {
        settings.tls.tls_cert = Some(self.path("server.pem"));
        settings.tls.tls_key = Some(self.path("server-key.pem"));
        settings.tls.tls_client_ca = mtls.then(|| self.path("ca.pem"));
    }

    /// `keyward serve` flags for the same as [`TestPki::serve_tls`].
    pub fn serve_flags(&self, mtls: bool) -> Vec<String> {
        let mut flags = vec![
            "--tls-cert".to_owned(),
            display(&self.path("server.pem")),
            "--tls-key".to_owned(),
            display(&self.path("server-key.pem")),
        ];
        if mtls {
            flags.extend(["--tls-client-ca".to_owned(), display(&self.path("ca.pem"))]);
        }
        flags
    }

    /// A client trusting keyward's CA and presenting its client certificate.
    pub fn client(&self) -> ClientTls {
        ClientTls {
            ca_cert: Some(self.path("ca.pem")),
            client_cert: Some(self.path("client.pem")),
            client_key: Some(self.path("client-key.pem")),
        }
    }

    /// A client trusting keyward's CA, with no client certificate.
    pub fn client_without_certificate(&self) -> ClientTls {
        ClientTls {
            client_cert: None,
            client_key: None,
            ..self.client()
        }
    }

    /// A client trusting keyward's CA whose certificate the other CA signed.
    pub fn client_with_foreign_certificate(&self) -> ClientTls {
        ClientTls {
            ca_cert: Some(self.path("ca.pem")),
            client_cert: Some(self.path("other-client.pem")),
            client_key: Some(self.path("other-client-key.pem")),
        }
    }

    /// A client that trusts only the other CA.
    pub fn client_trusting_other_ca(&self) -> ClientTls {
        ClientTls {
            ca_cert: Some(self.path("other-ca.pem")),
            ..self.client()
        }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// A path as a command-line argument.
pub fn display(path: &Path) -> String {
    path.to_str().expect("temporary paths are UTF-8").to_owned()
}
