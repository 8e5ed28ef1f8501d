//! Signing keys for tokens tollgate issues: loaded from PEM (EC P-256/P-384, RSA,
//! Ed25519) or generated (EC P-256), each with its public JWK and a stable `kid`
//! (the RFC 7638 thumbprint), so restarts with the same key keep earlier tokens valid.
//!
//! A key for `create_signing_key: true` is generated in memory while the config
//! compiles (`validate` and `explain` use it there and write nothing); only `tollgate
//! run` writes its file, through [`NewKeyFile::write`].

use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as lc, KeyPair};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::Algorithm;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use sha2::{Digest, Sha256};

use crate::auth::jwks::KeySet;

pub struct SigningKey {
    pub alg: Algorithm,
    pub kid: String,
    /// Parsed once; every token is signed with it.
    pair: Pair,
    /// The public JWK, with `kid`, `alg` and `use: sig`.
    pub jwk: serde_json::Value,
}

enum Pair {
    /// ES256 or ES384 (fixed-length r || s signatures, as JWS wants).
    Ec(lc::EcdsaKeyPair),
    /// RS256 (PKCS#1 v1.5 padding).
    Rsa(lc::RsaKeyPair),
    Ed25519(lc::Ed25519KeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// RFC 7638: SHA-256 over the required members in lexicographic order.
fn thumbprint(members: &[(&str, &str)]) -> String {
    let body: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("\"{k}\":\"{v}\""))
        .collect();
    b64(&Sha256::digest(
        format!("{{{}}}", body.join(",")).as_bytes(),
    ))
}

fn pem(label: &str, der: &[u8]) -> Vec<u8> {
    let b = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out.into_bytes()
}

/// A signing key generated for a `signing_key` file that does not exist yet, with the
/// PEM to write there.
pub struct NewKeyFile {
    pub path: PathBuf,
    pem: crate::secret::Secret,
}

impl std::fmt::Debug for NewKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKeyFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl NewKeyFile {
    /// A fresh EC P-256 key for `path`: the key to use, and the file to write.
    pub fn generate(path: &Path) -> Result<(SigningKey, NewKeyFile), String> {
        let pem = SigningKey::generate_es256_pem()?;
        let key = SigningKey::from_pem(&pem)?;
        let pem = String::from_utf8(pem).map_err(|_| "key generation failed".to_owned())?;
        let file = NewKeyFile {
            path: path.to_path_buf(),
            pem: crate::secret::Secret::new(pem),
        };
        Ok((key, file))
    }

    /// Writes the key, readable by the owner only. Refuses to replace a file that
    /// appeared since the config was read (another process created it).
    pub fn write(&self) -> Result<(), String> {
        let f = &self.path;
        if let Some(dir) = f.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        use std::io::Write;
        let mut file = opts
            .open(f)
            .map_err(|e| format!("cannot create {}: {e}", f.display()))?;
        file.write_all(self.pem.expose().as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", f.display()))?;
        tracing::warn!(path = %f.display(), "created a new token service signing key");
        Ok(())
    }
}
const RSA_TOO_SMALL: &str = "RSA keys must be at least 2048 bits";

impl SigningKey {
    /// A fresh EC P-256 key (ES256).
    pub fn generate_es256() -> Result<SigningKey, String> {
        Self::from_pem(&Self::generate_es256_pem()?)
    }

    /// A fresh EC P-256 key as a PKCS#8 PEM file.
    pub fn generate_es256_pem() -> Result<Vec<u8>, String> {
        let pkcs8 = lc::EcdsaKeyPair::generate_pkcs8(
            &lc::ECDSA_P256_SHA256_FIXED_SIGNING,
            &SystemRandom::new(),
        )
        .map_err(|_| "key generation failed".to_owned())?;
        Ok(pem("PRIVATE KEY", pkcs8.as_ref()))
    }

    /// PKCS#8 (`PRIVATE KEY`: EC P-256/P-384, RSA, Ed25519), PKCS#1 (`RSA PRIVATE KEY`)
    /// or SEC1 (`EC PRIVATE KEY`, what `openssl ecparam -genkey` writes).
    pub fn from_pem(data: &[u8]) -> Result<SigningKey, String> {
        let key = PrivateKeyDer::from_pem_slice(data)
            .map_err(|e| crate::tls::pem_problem(e, "private key"))?;
        match key {
            PrivateKeyDer::Pkcs8(der) => {
                let der = der.secret_pkcs8_der();
                if let Some(k) = Self::ec(|alg| lc::EcdsaKeyPair::from_pkcs8(alg, der).ok()) {
                    return Ok(k);
                }
                match lc::RsaKeyPair::from_pkcs8(der) {
                    Ok(kp) => return Self::rsa(kp),
                    Err(e) if e.description_() == "TooSmall" => return Err(RSA_TOO_SMALL.into()),
                    Err(_) => {}
                }
                if let Ok(kp) = lc::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                    let x = b64(kp.public_key().as_ref());
                    let kid = thumbprint(&[("crv", "Ed25519"), ("kty", "OKP"), ("x", &x)]);
                    let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"});
                    return Ok(SigningKey {
                        alg: Algorithm::EdDSA,
                        kid,
                        pair: Pair::Ed25519(kp),
                        jwk,
                    });
                }
                Err("unsupported key: use EC P-256 (recommended), EC P-384, RSA (2048+ bits) or Ed25519".into())
            }
            PrivateKeyDer::Pkcs1(der) => match lc::RsaKeyPair::from_der(der.secret_pkcs1_der()) {
                Ok(kp) => Self::rsa(kp),
                Err(e) if e.description_() == "TooSmall" => Err(RSA_TOO_SMALL.into()),
                Err(e) => Err(format!("invalid RSA key: {e}")),
            },
            PrivateKeyDer::Sec1(der) => {
                let der = der.secret_sec1_der();
                Self::ec(|alg| lc::EcdsaKeyPair::from_private_key_der(alg, der).ok()).ok_or_else(
                    || "unsupported EC key: use P-256 (recommended) or P-384".to_owned(),
                )
            }
            _ => Err("unsupported private key format".into()),
        }
    }

    /// The EC key `parse` reads for P-256 or P-384 (in that order), if either does.
    fn ec(
        parse: impl Fn(&'static lc::EcdsaSigningAlgorithm) -> Option<lc::EcdsaKeyPair>,
    ) -> Option<SigningKey> {
        [
            (Algorithm::ES256, "P-256", &lc::ECDSA_P256_SHA256_FIXED_SIGNING),
            (Algorithm::ES384, "P-384", &lc::ECDSA_P384_SHA384_FIXED_SIGNING),
        ]
        .into_iter()
        .find_map(|(alg, curve, lc_alg)| {
            let kp = parse(lc_alg)?;
            let point = kp.public_key().as_ref();
            let n = (point.len() - 1) / 2;
            let (x, y) = (b64(&point[1..1 + n]), b64(&point[1 + n..]));
            let kid = thumbprint(&[("crv", curve), ("kty", "EC"), ("x", &x), ("y", &y)]);
            let jwk = serde_json::json!({"kty": "EC", "crv": curve, "x": x, "y": y, "kid": kid, "alg": format!("{alg:?}"), "use": "sig"});
            Some(SigningKey { alg, kid, pair: Pair::Ec(kp), jwk })
        })
    }

    fn rsa(kp: lc::RsaKeyPair) -> Result<SigningKey, String> {
        if kp.public_modulus_len() < 256 {
            return Err(RSA_TOO_SMALL.into());
        }
        let c = lc::RsaPublicKeyComponents::<Vec<u8>>::from(kp.public_key());
        let (n, e) = (b64(&c.n), b64(&c.e));
        let kid = thumbprint(&[("e", &e), ("kty", "RSA"), ("n", &n)]);
        let jwk = serde_json::json!({"kty": "RSA", "n": n, "e": e, "kid": kid, "alg": "RS256", "use": "sig"});
        Ok(SigningKey {
            alg: Algorithm::RS256,
            kid,
            pair: Pair::Rsa(kp),
            jwk,
        })
    }

    /// A compact JWS over `claims` with this key's `alg` and `kid`, and `typ`.
    pub fn sign(&self, typ: &str, claims: &serde_json::Value) -> Result<String, String> {
        let header =
            serde_json::json!({"typ": typ, "alg": format!("{:?}", self.alg), "kid": self.kid});
        let claims = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
        let mut token = format!("{}.{}", b64(header.to_string().as_bytes()), b64(&claims));
        let input = token.as_bytes();
        let failed = |_| "signing failed".to_owned();
        let sig = match &self.pair {
            Pair::Ec(kp) => kp
                .sign(&SystemRandom::new(), input)
                .map_err(failed)?
                .as_ref()
                .to_vec(),
            Pair::Rsa(kp) => {
                let mut sig = vec![0; kp.public_modulus_len()];
                kp.sign(&lc::RSA_PKCS1_SHA256, &SystemRandom::new(), input, &mut sig)
                    .map_err(failed)?;
                sig
            }
            Pair::Ed25519(kp) => kp.sign(input).as_ref().to_vec(),
        };
        token.push('.');
        token.push_str(&b64(&sig));
        Ok(token)
    }

    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk.clone()] })
    }

    /// The public half, for verifying in-process.
    pub fn key_set(&self) -> KeySet {
        let set: JwkSet =
            serde_json::from_value(self.jwks()).unwrap_or(JwkSet { keys: Vec::new() });
        KeySet::from_jwks(&set).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour: every supported key type signs tokens that its own JWK verifies, both
    // through the gateway's verifier and through an independent JWT library, with the
    // header naming typ, alg and kid; kid is stable.
    #[test]
    fn keys_round_trip() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
        for f in [
            "ec256.pem",
            "ec384.pem",
            "rsa-a.pem",
            "rsa-pkcs1.pem",
            "ed25519.pem",
            "ec256-sec1.pem",
            "ec384-sec1.pem",
        ] {
            let data = std::fs::read(format!("{dir}{f}")).unwrap();
            let k = SigningKey::from_pem(&data).unwrap_or_else(|e| panic!("{f}: {e}"));
            let again = SigningKey::from_pem(&data).unwrap();
            assert_eq!(k.kid, again.kid, "{f}: kid must be stable");
            let claims = serde_json::json!({"sub": "x", "n": 1});
            let t = k.sign("at+jwt", &claims).unwrap();
            let ks = k.key_set();
            let key = ks.by_kid.get(&k.kid).expect("kid in set");
            let (input, sig) = t.rsplit_once('.').unwrap();
            assert!(key.verify(k.alg, input.as_bytes(), sig), "{f}");
            assert!(
                !key.verify(k.alg, format!("{input}x").as_bytes(), sig),
                "{f}"
            );

            let header = jsonwebtoken::decode_header(&t).unwrap();
            assert_eq!(header.alg, k.alg, "{f}");
            assert_eq!(header.kid.as_deref(), Some(k.kid.as_str()), "{f}");
            assert_eq!(header.typ.as_deref(), Some("at+jwt"), "{f}");
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(k.jwk.clone()).unwrap();
            let mut v = jsonwebtoken::Validation::new(k.alg);
            v.required_spec_claims.clear();
            v.validate_exp = false;
            let got = jsonwebtoken::decode::<serde_json::Value>(
                &t,
                &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
                &v,
            )
            .unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!(got.claims, claims, "{f}");
        }
        let g = SigningKey::generate_es256().unwrap();
        assert_eq!(g.alg, Algorithm::ES256);
        let t = g.sign("at+jwt", &serde_json::json!({})).unwrap();
        let (input, sig) = t.rsplit_once('.').unwrap();
        assert!(g.key_set().all[0].verify(Algorithm::ES256, input.as_bytes(), sig));
    }

    // Behaviour: PEM data without a usable key is refused with a message in words.
    #[test]
    fn bad_pem_is_explained() {
        let e = SigningKey::from_pem(b"hello").unwrap_err();
        assert_eq!(e, "no private key found");
        let cert = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/server.pem"
        ))
        .unwrap();
        assert_eq!(
            SigningKey::from_pem(&cert).unwrap_err(),
            "no private key found"
        );
        let e = SigningKey::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap_err();
        assert!(
            e.starts_with("invalid PEM: the PRIVATE KEY block is not closed"),
            "{e}"
        );
        let e = SigningKey::from_pem(
            b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(e.starts_with("unsupported EC key"), "{e}");
    }

    // Behaviour: a SEC1 `EC PRIVATE KEY` file is the same key as its PKCS#8 form (same
    // algorithm and kid), as `openssl ecparam -genkey` writes it.
    #[test]
    fn sec1_and_pkcs8_ec_keys_are_the_same_key() {
        for (pkcs8, sec1, alg) in [
            ("ec256.pem", "ec256-sec1.pem", Algorithm::ES256),
            ("ec384.pem", "ec384-sec1.pem", Algorithm::ES384),
        ] {
            let read = |f: &str| {
                let p = format!("{}/tests/fixtures/{f}", env!("CARGO_MANIFEST_DIR"));
                SigningKey::from_pem(&std::fs::read(p).unwrap()).unwrap()
            };
            let (a, b) = (read(pkcs8), read(sec1));
            assert_eq!((a.alg, b.alg), (alg, alg));
            assert_eq!(a.kid, b.kid, "{sec1}");
            assert_eq!(a.jwk, b.jwk, "{sec1}");
        }
    }

    // Behaviour: RSA keys under 2048 bits are refused with that reason, in PKCS#8 and
    // PKCS#1 form alike.
    #[test]
    fn small_rsa_keys_are_refused() {
        for f in ["rsa-1024.pem", "rsa-1024-pkcs1.pem"] {
            let data = std::fs::read(format!("{}/tests/fixtures/{f}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
            assert_eq!(
                SigningKey::from_pem(&data).unwrap_err(),
                "RSA keys must be at least 2048 bits",
                "{f}"
            );
        }
    }

    // Behaviour: a generated key file holds the key that was used in memory, is
    // readable by the owner only, and is never written over an existing file.
    #[test]
    fn new_key_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing.pem");
        let (key, file) = NewKeyFile::generate(&path).unwrap();
        assert!(!path.exists(), "generating writes nothing");
        assert!(!format!("{file:?}").contains("PRIVATE"), "{file:?}");
        file.write().unwrap();
        let again = SigningKey::from_pem(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(again.kid, key.kid);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(file.write().unwrap_err().contains("cannot create"));
    }
}
