//! avemint's own signing keys: the lifecycle on disk and the parsed key ring in memory.
//!
//! The keys directory holds PKCS#8 PEM files plus `manifest.json`, which records
//! each key's algorithm, `kid` (RFC 7638 thumbprint), creation time and state
//! (next, current, retired). `KeyRing` is one immutable snapshot: the keys
//! parsed once, the JWKS built from them and its ETag. `LiveKeys` holds the live
//! snapshot and swaps in a new one when the directory changes or on SIGHUP,
//! so requests never wait for, or fail during, a reload.
//!
//! Submodules: `algorithms` (ES256, EdDSA, RS256), `manifest` (the on-disk
//! state and its pure transitions), `rotation` (generate, rotate, prune,
//! timing), `reload` (the live handle and its watcher), `fs` (atomic writes,
//! permissions, the writer lock).

pub(crate) mod algorithms;
pub mod commands;
mod fs;
pub(crate) mod manifest;
pub(crate) mod reload;
pub mod rotation;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde_json::{Value, json};

pub use algorithms::{Algorithm, AlgorithmError, ParsedKey};
pub(crate) use manifest::{KeyEntry, KeyState, LifecycleError};
pub use reload::LiveKeys;
pub use rotation::{JWKS_CACHE_LIFETIME, KeyDir, KeyPolicy, KeysSettings, MAX_TOKEN_TTL};

/// Why keys could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("keys directory {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    /// A writer that is neither root nor the directory's owner: what it wrote would be unreadable to the service.
    #[error(
        "keys directory {dir} belongs to {owner}: keys written by another user would be unreadable to the service, so \
         nothing was changed; run the command as {owner}"
    )]
    NotOwner { dir: PathBuf, owner: String },
    #[error("{path}: {reason}")]
    Unparsable { path: PathBuf, reason: AlgorithmError },
    #[error("{path}: the manifest records kid {kid}, but the key's RFC 7638 thumbprint is {actual}")]
    KidMismatch { path: PathBuf, kid: String, actual: String },
    #[error("{path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("{dir} holds no signing key; run `avemint keys generate` or start avemint with a writable keys directory")]
    NoKeys { dir: PathBuf },
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error("key generation failed")]
    Generation,
    #[error("signing failed")]
    Signing,
}

impl KeyError {
    /// The user a refused `avemint keys` command must run as (`NotOwner`).
    pub fn run_as(&self) -> Option<&str> {
        match self {
            KeyError::NotOwner { owner, .. } => Some(owner),
            _ => None,
        }
    }
}

/// Reads, permission-checks and parses one key file named by the manifest.
pub(crate) fn load_key(dir: &Path, alg: Algorithm, file: &str) -> Result<ParsedKey, KeyError> {
    let path = dir.join(file);
    fs::check_private(&path)?;
    let text = zeroize::Zeroizing::new(std::fs::read(&path).map_err(|e| fs::io_error(&path, &e))?);
    let unparsable = |reason| KeyError::Unparsable {
        path: path.clone(),
        reason,
    };
    let block = pem::parse(&*text).map_err(|_| unparsable(AlgorithmError::Unparsable(alg)))?;
    if block.tag() != "PRIVATE KEY" {
        return Err(unparsable(AlgorithmError::Unparsable(alg)));
    }
    let der = zeroize::Zeroizing::new(block.into_contents());
    ParsedKey::from_pkcs8(alg, &der).map_err(unparsable)
}

/// One signing key, parsed once, with its JWS header encoded once.
pub struct SigningKey {
    key: ParsedKey,
    header_b64: String,
    /// The public half, ready to verify this key's tokens (introspection);
    /// `None` only if the public JWK could not be read back, then nothing verifies against it.
    decoding: Option<jsonwebtoken::DecodingKey>,
}

impl SigningKey {
    /// Wraps a parsed key; the header is `{"alg":…,"typ":"at+jwt","kid":…}`.
    pub(crate) fn new(key: ParsedKey) -> Self {
        let header = json!({"alg": key.alg().jws(), "typ": "at+jwt", "kid": key.kid()});
        let header_b64 = URL_SAFE_NO_PAD.encode(header.to_string());
        let decoding = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(key.public_jwk().clone())
            .ok()
            .and_then(|jwk| jsonwebtoken::DecodingKey::from_jwk(&jwk).ok());
        Self {
            key,
            header_b64,
            decoding,
        }
    }

    /// The public key that verifies this key's signatures.
    pub(crate) fn decoding_key(&self) -> Option<&jsonwebtoken::DecodingKey> {
        self.decoding.as_ref()
    }

    /// The key id (RFC 7638 thumbprint).
    pub(crate) fn kid(&self) -> &str {
        self.key.kid()
    }

    /// The JWS algorithm.
    pub(crate) fn alg(&self) -> Algorithm {
        self.key.alg()
    }

    /// Signs `claims` (a JSON object's bytes) into a compact JWS.
    pub fn sign(&self, claims: &[u8]) -> Result<String, KeyError> {
        let mut out = String::with_capacity(self.header_b64.len() + claims.len() * 4 / 3 + 360);
        out.push_str(&self.header_b64);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut out);
        let sig = self.key.sign(out.as_bytes()).map_err(|_| KeyError::Signing)?;
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(sig, &mut out);
        Ok(out)
    }
}

/// One published key: its manifest entry and the parsed key.
pub(crate) struct PublishedKey {
    pub entry: KeyEntry,
    pub key: SigningKey,
}

/// An immutable snapshot of the keys: who signs, and the JWKS with its ETag.
pub struct KeyRing {
    keys: Vec<PublishedKey>,
    current: usize,
    /// Read by the demo API (it verifies its own tokens) and tests.
    jwks: Value,
    jwks_json: Bytes,
    etag: String,
}

impl KeyRing {
    /// Loads the keys `dir`'s manifest names (or legacy `es256-*.pem` files),
    /// without writing anything. Refuses any group/world-readable key file.
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        if dir.exists() {
            rotation::check_all_private(dir)?;
        }
        let manifest = KeyDir::new(dir).read_manifest()?;
        let mut keys = Vec::with_capacity(manifest.keys.len());
        for entry in manifest.keys {
            let key = load_key(dir, entry.alg, &entry.file)?;
            if key.kid() != entry.kid {
                return Err(KeyError::KidMismatch {
                    path: dir.join(&entry.file),
                    kid: entry.kid,
                    actual: key.kid().to_owned(),
                });
            }
            keys.push(PublishedKey {
                entry,
                key: SigningKey::new(key),
            });
        }
        // Current first (naive verifiers take the first key), then next, then retired, newest first.
        let rank = |s: KeyState| match s {
            KeyState::Current => 0,
            KeyState::Next => 1,
            KeyState::Retired => 2,
        };
        keys.sort_by(|a, b| {
            rank(a.entry.state)
                .cmp(&rank(b.entry.state))
                .then_with(|| b.entry.created.cmp(&a.entry.created))
        });
        let current = keys
            .iter()
            .position(|k| k.entry.state == KeyState::Current)
            .ok_or_else(|| KeyError::NoKeys { dir: dir.to_owned() })?;
        let jwks = json!({ "keys": keys.iter().map(|k| k.key.key.public_jwk().clone()).collect::<Vec<_>>() });
        let jwks_json = Bytes::from(jwks.to_string());
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &jwks_json);
        let etag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(&digest.as_ref()[..18]));
        Ok(Self {
            keys,
            current,
            jwks,
            jwks_json,
            etag,
        })
    }

    /// Makes sure `dir` has a current and a next key (generating ES256 keys), then loads it (tests and
    /// throw-away key directories).
    pub fn load_or_generate(dir: &Path) -> Result<Self, KeyError> {
        KeyDir::new(dir).ensure(Algorithm::Es256, avemint_base::clock::Clock::System.now())?;
        Self::load(dir)
    }

    /// The key that signs new tokens.
    pub fn signing_key(&self) -> &SigningKey {
        &self.keys[self.current].key
    }

    /// Every published key with its manifest entry (current first).
    pub(crate) fn keys(&self) -> &[PublishedKey] {
        &self.keys
    }

    /// The public JWKS document (`{"keys":[…]}`), without any private member.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// The JWKS document serialized once: what `/.well-known/jwks.json` serves
    /// (cheap to clone) and what the ETag hashes.
    pub fn jwks_json(&self) -> &Bytes {
        &self.jwks_json
    }

    /// A strong ETag of the JWKS document (changes whenever the key set does).
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// The algorithms of the published keys, each once, the signing key's first.
    pub fn algorithms(&self) -> Vec<&'static str> {
        let mut algs: Vec<&'static str> = Vec::new();
        for k in &self.keys {
            let alg = k.key.alg().jws();
            if !algs.contains(&alg) {
                algs.push(alg);
            }
        }
        algs
    }

    /// The published keys as `kid (ALG)`, the signing one first and marked, for the start-up line.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!(
            "{} ({}, signing)",
            self.signing_key().kid(),
            self.signing_key().alg().jws()
        )];
        for k in self.keys.iter().filter(|k| k.key.kid() != self.signing_key().kid()) {
            parts.push(format!("{} ({})", k.key.kid(), k.key.alg().jws()));
        }
        parts.join(", ")
    }

    #[cfg(test)]
    /// The kids in publication order, for comparing snapshots.
    pub(crate) fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.key.kid()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reloads_the_same_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys_dir = dir.path().join("keys");
        let a = KeyRing::load_or_generate(&keys_dir).expect("generate");
        let b = KeyRing::load_or_generate(&keys_dir).expect("reload");
        assert_eq!(a.signing_key().kid(), b.signing_key().kid());
        assert_eq!(a.etag(), b.etag());
        assert_eq!(a.signing_key().alg(), Algorithm::Es256);
        let pems = rotation::pem_files(&keys_dir).expect("files");
        assert_eq!(pems.len(), 2, "a current and a next key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for path in pems {
                assert_eq!(
                    std::fs::metadata(path).expect("meta").permissions().mode() & 0o777,
                    0o600
                );
            }
            let mode = std::fs::metadata(&keys_dir).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
        }
        assert_eq!(a.jwks()["keys"].as_array().map(Vec::len), Some(2));
        for jwk in a.jwks()["keys"].as_array().expect("keys") {
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(jwk.get(private).is_none(), "{private} leaked");
            }
        }
        assert_eq!(a.jwks()["keys"][0]["kid"], a.signing_key().kid());
        assert_eq!(a.algorithms(), vec!["ES256"]);
    }

    #[cfg(unix)]
    #[test]
    fn refuses_world_readable_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        KeyRing::load_or_generate(dir.path()).expect("generate");
        let path = rotation::pem_files(dir.path()).expect("files").remove(0);
        fs::set_mode(&path, 0o644).expect("chmod");
        assert!(matches!(
            KeyRing::load_or_generate(dir.path()),
            Err(KeyError::Permissions { .. })
        ));
        assert!(matches!(KeyRing::load(dir.path()), Err(KeyError::Permissions { .. })));
    }

    #[test]
    fn a_key_file_swapped_under_the_manifest_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        KeyRing::load_or_generate(dir.path()).expect("generate");
        let m = KeyDir::new(dir.path()).read_manifest().expect("manifest");
        let a = dir.path().join(&m.keys[0].file);
        let b = dir.path().join(&m.keys[1].file);
        let tmp = dir.path().join("swap");
        std::fs::rename(&a, &tmp).expect("mv");
        std::fs::rename(&b, &a).expect("mv");
        std::fs::rename(&tmp, &b).expect("mv");
        assert!(matches!(KeyRing::load(dir.path()), Err(KeyError::KidMismatch { .. })));
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
