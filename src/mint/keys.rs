//! `KeyRing`: avemint's own signing keys, parsed once, and the JWKS built from them.
//!
//! Keys are PKCS#8 PEM files in the keys directory, named `es256-<unix time>.pem`.
//! If none exists, one ES256 key is generated (mode 0600). Every key is
//! published in the JWKS; the newest one signs. A private key file readable by
//! group or others is refused. The `kid` is the key's RFC 7638 thumbprint.

use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// Why keys could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("keys directory {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path} is not a PKCS#8 PEM P-256 private key")]
    Unparsable { path: PathBuf },
    #[error("key generation failed")]
    Generation,
}

/// One signing key, parsed once.
pub struct SigningKey {
    kid: String,
    created: u64,
    pair: EcdsaKeyPair,
    jwk: Value,
    /// The base64url JWS header, encoded once.
    header_b64: String,
}

impl SigningKey {
    fn from_pkcs8(der: &[u8], created: u64, path: &Path) -> Result<Self, KeyError> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| KeyError::Unparsable { path: path.to_owned() })?;
        let point = pair.public_key().as_ref();
        // Uncompressed SEC1 point: 0x04 || x (32) || y (32).
        if point.len() != 65 || point[0] != 4 {
            return Err(KeyError::Unparsable { path: path.to_owned() });
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        // RFC 7638: required members only, lexicographic order, no white space.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            canonical.as_bytes(),
        ));
        let jwk = json!({"kty":"EC","crv":"P-256","x":x,"y":y,"alg":"ES256","use":"sig","kid":kid});
        let header = json!({"alg":"ES256","typ":"at+jwt","kid":kid});
        let header_b64 = URL_SAFE_NO_PAD.encode(header.to_string());
        Ok(Self {
            kid,
            created,
            pair,
            jwk,
            header_b64,
        })
    }

    /// The key id (RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWS algorithm.
    pub fn alg(&self) -> &'static str {
        "ES256"
    }

    /// Signs `claims` into a compact JWS.
    pub fn sign(&self, claims: &[u8]) -> Result<String, KeyError> {
        let mut out = String::with_capacity(self.header_b64.len() + claims.len() * 4 / 3 + 100);
        out.push_str(&self.header_b64);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut out);
        let sig = self
            .pair
            .sign(&SystemRandom::new(), out.as_bytes())
            .map_err(|_| KeyError::Generation)?;
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut out);
        Ok(out)
    }
}

/// The loaded keys and the JWKS document.
pub struct KeyRing {
    keys: Vec<SigningKey>,
    jwks: Value,
}

impl KeyRing {
    /// Loads every key in `dir`, generating one ES256 key if there is none.
    pub fn load_or_generate(dir: &Path) -> Result<Self, KeyError> {
        let io = |reason: std::io::Error| KeyError::Io {
            path: dir.to_owned(),
            reason: reason.to_string(),
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            set_mode(dir, 0o700).map_err(io)?;
        }
        let mut keys = Self::load_dir(dir)?;
        if keys.is_empty() {
            keys.push(generate_into(dir)?);
        }
        keys.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.kid.cmp(&b.kid)));
        let jwks = json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
        Ok(Self { keys, jwks })
    }

    fn load_dir(dir: &Path) -> Result<Vec<SigningKey>, KeyError> {
        let io = |reason: std::io::Error| KeyError::Io {
            path: dir.to_owned(),
            reason: reason.to_string(),
        };
        let mut keys = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pem") {
                continue;
            }
            check_private(&path)?;
            let text = std::fs::read(&path).map_err(io)?;
            let block = pem::parse(&text).map_err(|_| KeyError::Unparsable { path: path.clone() })?;
            if block.tag() != "PRIVATE KEY" {
                return Err(KeyError::Unparsable { path });
            }
            let created = created_from_name(&path).unwrap_or(0);
            keys.push(SigningKey::from_pkcs8(block.contents(), created, &path)?);
        }
        Ok(keys)
    }

    /// The key that signs new tokens (the newest).
    pub fn signing_key(&self) -> &SigningKey {
        // load_or_generate guarantees at least one key.
        &self.keys[self.keys.len() - 1]
    }

    /// The public JWKS document (`{"keys":[…]}`), without any private member.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// The algorithms of the published keys, for discovery.
    pub fn algorithms(&self) -> Vec<&'static str> {
        let mut algs: Vec<&'static str> = self.keys.iter().map(SigningKey::alg).collect();
        algs.dedup();
        algs
    }
}

fn created_from_name(path: &Path) -> Option<u64> {
    path.file_stem()?.to_str()?.strip_prefix("es256-")?.parse().ok()
}

fn generate_into(dir: &Path) -> Result<SigningKey, KeyError> {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| KeyError::Generation)?;
    let created = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    let path = dir.join(format!("es256-{created}.pem"));
    let text = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
    write_private(&path, text.as_bytes()).map_err(|e| KeyError::Io {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    tracing::info!(path = %path.display(), "generated a new ES256 signing key");
    SigningKey::from_pkcs8(pkcs8.as_ref(), created, &path)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| KeyError::Io {
            path: path.to_owned(),
            reason: e.to_string(),
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> Result<(), KeyError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reloads_the_same_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys_dir = dir.path().join("keys");
        let a = KeyRing::load_or_generate(&keys_dir).expect("generate");
        let b = KeyRing::load_or_generate(&keys_dir).expect("reload");
        assert_eq!(a.signing_key().kid(), b.signing_key().kid());
        let files: Vec<_> = std::fs::read_dir(&keys_dir).expect("dir").collect();
        assert_eq!(files.len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = files.into_iter().next().expect("one").expect("entry").path();
            assert_eq!(
                std::fs::metadata(path).expect("meta").permissions().mode() & 0o777,
                0o600
            );
        }
        let jwk = &a.jwks()["keys"][0];
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(jwk.get(private).is_none(), "{private} leaked");
        }
        assert_eq!(jwk["kid"], a.signing_key().kid());
    }

    #[cfg(unix)]
    #[test]
    fn refuses_world_readable_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ring = KeyRing::load_or_generate(dir.path()).expect("generate");
        let path = dir.path().join(format!("es256-{}.pem", ring.signing_key().created));
        set_mode(&path, 0o644).expect("chmod");
        assert!(matches!(
            KeyRing::load_or_generate(dir.path()),
            Err(KeyError::Permissions { .. })
        ));
    }

    #[test]
    fn signature_verifies_with_jsonwebtoken_from_the_jwk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ring = KeyRing::load_or_generate(dir.path()).expect("generate");
        let token = ring
            .signing_key()
            .sign(br#"{"sub":"x","exp":99999999999}"#)
            .expect("sign");
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(ring.jwks()["keys"][0].clone()).expect("jwk");
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("key");
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Value>(&token, &key, &v).expect("verifies");
        assert_eq!(data.claims["sub"], "x");
        assert_eq!(data.header.typ.as_deref(), Some("at+jwt"));
    }
}
