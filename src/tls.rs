//! TLS material: PEM loading, the server's rustls config (ALPN h2 + http/1.1, SNI
//! certificates, optional client CA for mTLS) and client configs for https upstreams.
//! Everything is built while the config compiles, so certificates reload with it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::{Error as PemError, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The crypto provider of every TLS config tollgate builds: aws-lc-rs, the same
/// library that signs and verifies JWTs.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Makes [`provider`] the process-wide rustls default, for code that builds TLS configs
/// of its own from it (HTTP clients in tests and examples). Harmless when called again.
pub fn install_default_provider() {
    let _ = rustls::crypto::CryptoProvider::install_default((*provider()).clone());
}

/// What went wrong in PEM data, in words (the parser's own text shows raw bytes).
/// `wanted` names what was looked for ("private key").
pub fn pem_problem(e: PemError, wanted: &str) -> String {
    let text = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let s = s.trim();
        match s.char_indices().nth(64) {
            Some((i, _)) => format!("{}...", &s[..i]),
            None => s.to_owned(),
        }
    };
    match e {
        PemError::NoItemsFound => format!("no {wanted} found"),
        PemError::MissingSectionEnd { end_marker } => {
            let label = text(&end_marker);
            format!(
                "invalid PEM: the {label} block is not closed (no \"-----END {label}-----\" line)"
            )
        }
        PemError::IllegalSectionStart { line } => {
            format!("invalid PEM: malformed BEGIN line \"{}\"", text(&line))
        }
        PemError::Base64Decode(e) => format!("invalid PEM: bad base64 in a block: {e}"),
        e => format!("invalid PEM: {e}"),
    }
}

fn file_problem(path: &Path, e: PemError, wanted: &str) -> String {
    format!("{}: {}", path.display(), pem_problem(e, wanted))
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Every `CERTIFICATE` block of a PEM file, in order (other blocks are ignored).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_problem(path, e, "CERTIFICATE block"))?;
    if certs.is_empty() {
        return Err(file_problem(
            path,
            PemError::NoItemsFound,
            "CERTIFICATE block",
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file: PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY`
/// or SEC1 `EC PRIVATE KEY`.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let data = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| file_problem(path, e, "private key"))
}

pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let certs = load_certs(cert)?;
    let signer = provider()
        .key_provider
        .load_private_key(load_key(key)?)
        .map_err(|e| format!("{}: unsupported private key: {e}", key.display()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signer)))
}

/// Picks a certificate by SNI: exact host, then `*.` wildcard, then the default.
#[derive(Debug)]
pub struct SniResolver {
    pub default: Arc<CertifiedKey>,
    pub exact: HashMap<String, Arc<CertifiedKey>>,
    /// (".suffix", key), longest first.
    pub wildcard: Vec<(String, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            let name = name.to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            // `*.` covers one label, as the certificate's own wildcard does (RFC 6125
            // §6.4.3): `a.b.partner.example` gets the default certificate.
            for (suffix, k) in &self.wildcard {
                if let Some(label) = name.strip_suffix(suffix.as_str()) {
                    if !label.is_empty() && !label.contains('.') {
                        return Some(k.clone());
                    }
                }
            }
        }
        Some(self.default.clone())
    }
}

pub fn server_config(
    resolver: SniResolver,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The verifier of client certificates issued by the CAs in the PEM file `ca`
/// (`server.tls.client_ca`).
pub fn client_verifier(ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("{}: {e}", ca.display()))
}

fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            Arc::new(roots)
        })
        .clone()
}

/// Client config for https upstreams and IdP calls: system roots plus `extra_ca`.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = (*system_roots()).clone();
    if let Some(ca) = extra_ca {
        for c in load_certs(ca)? {
            roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
        }
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // ALPN is set by the connector (http/1.1).
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    // Behaviour: certificates and keys (PKCS#8, PKCS#1, SEC1) load; in a file holding
    // both, each loader picks its own block.
    #[test]
    fn loads_certs_and_keys() {
        assert_eq!(load_certs(&fixture("server.pem")).unwrap().len(), 1);
        assert!(matches!(
            load_key(&fixture("server-key.pem")).unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));
        assert!(matches!(
            load_key(&fixture("rsa-pkcs1.pem")).unwrap(),
            PrivateKeyDer::Pkcs1(_)
        ));
        let dir = tempfile::tempdir().unwrap();
        // A file with a certificate and a key: each loader picks its own block.
        let both = dir.path().join("both.pem");
        let mut pem = std::fs::read(fixture("server.pem")).unwrap();
        pem.extend(std::fs::read(fixture("server-key.pem")).unwrap());
        std::fs::write(&both, &pem).unwrap();
        assert_eq!(load_certs(&both).unwrap().len(), 1);
        assert!(load_key(&both).is_ok());
        certified_key(&both, &both).unwrap();
        // SEC1 "EC PRIVATE KEY" blocks are recognised as such.
        assert!(matches!(
            load_key(&sec1_junk(&dir)).unwrap(),
            PrivateKeyDer::Sec1(_)
        ));
    }

    // Behaviour: every bad PEM file gets a message that names the file and says what
    // is wrong in words, never raw bytes.
    #[test]
    fn bad_pem_files_are_named_and_explained() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            p
        };
        let missing = dir.path().join("missing.pem");
        let e = load_certs(&missing).unwrap_err();
        assert!(
            e.starts_with(&format!("cannot read {}: ", missing.display())),
            "{e}"
        );
        let e = load_key(&missing).unwrap_err();
        assert!(
            e.starts_with(&format!("cannot read {}: ", missing.display())),
            "{e}"
        );

        let empty = write("empty.pem", "not a pem file\n");
        assert_eq!(
            load_certs(&empty).unwrap_err(),
            format!("{}: no CERTIFICATE block found", empty.display())
        );
        assert_eq!(
            load_key(&empty).unwrap_err(),
            format!("{}: no private key found", empty.display())
        );

        // A key file given as the certificate, and the reverse.
        let key = fixture("server-key.pem");
        assert_eq!(
            load_certs(&key).unwrap_err(),
            format!("{}: no CERTIFICATE block found", key.display())
        );
        let cert = fixture("server.pem");
        assert_eq!(
            load_key(&cert).unwrap_err(),
            format!("{}: no private key found", cert.display())
        );

        let good = std::fs::read_to_string(fixture("server.pem")).unwrap();
        let cut = write("cut.pem", &good[..good.len() / 2]);
        assert_eq!(
            load_certs(&cut).unwrap_err(),
            format!(
                "{}: invalid PEM: the CERTIFICATE block is not closed (no \"-----END CERTIFICATE-----\" line)",
                cut.display()
            )
        );

        let bad64 = write(
            "bad64.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let e = load_certs(&bad64).unwrap_err();
        assert!(
            e.starts_with(&format!("{}: invalid PEM: bad base64", bad64.display())),
            "{e}"
        );

        let begin = write("begin.pem", "-----BEGIN CERTIFICATE\nAAAA\n");
        let e = load_certs(&begin).unwrap_err();
        assert_eq!(
            e,
            format!(
                "{}: invalid PEM: malformed BEGIN line \"-----BEGIN CERTIFICATE\"",
                begin.display()
            )
        );

        // A key the TLS stack cannot use names the key file.
        let e = certified_key(&cert, &sec1_junk(&dir)).unwrap_err();
        assert!(e.contains("sec1-junk.pem: unsupported private key"), "{e}");
    }

    fn sec1_junk(dir: &tempfile::TempDir) -> std::path::PathBuf {
        let p = dir.path().join("sec1-junk.pem");
        std::fs::write(
            &p,
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap();
        p
    }
}
