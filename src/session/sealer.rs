//! `Sealer`: authenticated encryption (AES-256-GCM, aws-lc-rs) for data at rest
//! and in cookies, with key ids so keys can rotate.
//!
//! Each configured session key is stretched with HKDF-SHA256 into one subkey
//! per purpose (stored sessions, login cookies), so the same bytes never
//! encrypt two kinds of data. The first key seals; every key opens.
//! Sealed layout: `version (1) || key id (8) || nonce (12) || ciphertext+tag`.

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::hkdf;

use crate::config::SessionKeys;

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 8;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// What a sealer encrypts; each purpose gets its own derived key.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    /// Session records in the store.
    SessionStore,
    /// The pending-login cookie.
    LoginCookie,
}

impl Purpose {
    fn info(self) -> &'static [u8] {
        match self {
            Purpose::SessionStore => b"avemint/v1/session-store",
            Purpose::LoginCookie => b"avemint/v1/login-cookie",
        }
    }
}

struct SubKey {
    id: [u8; KEY_ID_LEN],
    key: RandomizedNonceKey,
}

/// Seals and opens byte strings bound to associated data.
pub struct Sealer {
    keys: Vec<SubKey>,
}

/// Opening failed: tampered, truncated, wrong associated data, or an unknown key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("sealed data is malformed")]
    Malformed,
    #[error("sealed with a key that is no longer configured")]
    UnknownKey,
    #[error("sealed data failed authentication")]
    Forged,
}

/// The derived key length.
struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

impl Sealer {
    /// Derives the subkeys for `purpose` from every configured key.
    pub fn new(keys: &SessionKeys, purpose: Purpose) -> Self {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"avemint session key");
        let keys = keys
            .keys()
            .iter()
            .map(|k| {
                let prk = salt.extract(k.expose());
                let mut derived = zeroize::Zeroizing::new([0u8; 32]);
                let mut id_bytes = [0u8; 32];
                // Both expansions have fixed, valid lengths and cannot fail.
                prk.expand(&[purpose.info()], Len32)
                    .and_then(|okm| okm.fill(derived.as_mut()))
                    .expect("HKDF expansion to 32 bytes");
                prk.expand(&[purpose.info(), b"/key-id"], Len32)
                    .and_then(|okm| okm.fill(&mut id_bytes))
                    .expect("HKDF expansion to 32 bytes");
                let mut id = [0u8; KEY_ID_LEN];
                id.copy_from_slice(&id_bytes[..KEY_ID_LEN]);
                let key = RandomizedNonceKey::new(&AES_256_GCM, derived.as_ref()).expect("AES-256 takes a 32-byte key");
                SubKey { id, key }
            })
            .collect();
        Self { keys }
    }

    /// Encrypts `plaintext` with the first key, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let sub = &self.keys[0];
        let mut body = plaintext.to_vec();
        // Sealing with a valid key into a growable buffer only fails on absurd
        // input sizes (over 64 GiB), which never reach here.
        let nonce = sub
            .key
            .seal_in_place_append_tag(Aad::from(aad), &mut body)
            .expect("AES-GCM seal");
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.push(VERSION);
        out.extend_from_slice(&sub.id);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&body);
        zeroize::Zeroize::zeroize(&mut body);
        out
    }

    /// Decrypts what `seal` produced with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, OpenError> {
        if sealed.len() < HEADER_LEN + AES_256_GCM.tag_len() || sealed[0] != VERSION {
            return Err(OpenError::Malformed);
        }
        let id = &sealed[1..1 + KEY_ID_LEN];
        let sub = self.keys.iter().find(|k| k.id == id).ok_or(OpenError::UnknownKey)?;
        let nonce =
            Nonce::try_assume_unique_for_key(&sealed[1 + KEY_ID_LEN..HEADER_LEN]).map_err(|_| OpenError::Malformed)?;
        let mut body = zeroize::Zeroizing::new(sealed[HEADER_LEN..].to_vec());
        let len = sub
            .key
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .map_err(|_| OpenError::Forged)?
            .len();
        body.truncate(len);
        Ok(body)
    }

    /// True when `sealed` was made with a key other than the current sealing key.
    pub fn needs_reseal(&self, sealed: &[u8]) -> bool {
        sealed.get(1..1 + KEY_ID_LEN).is_some_and(|id| id != self.keys[0].id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[[u8; 32]]) -> SessionKeys {
        SessionKeys::from_keys(k.to_vec())
    }

    #[test]
    fn round_trip_and_binding() {
        let s = Sealer::new(&keys(&[[1; 32]]), Purpose::SessionStore);
        let sealed = s.seal(b"row-1", b"tokens");
        assert_eq!(s.open(b"row-1", &sealed).expect("opens").as_slice(), b"tokens");
        assert_eq!(s.open(b"row-2", &sealed), Err(OpenError::Forged));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(s.open(b"row-1", &tampered), Err(OpenError::Forged));
        assert_eq!(s.open(b"row-1", &sealed[..10]), Err(OpenError::Malformed));
    }

    #[test]
    fn purposes_do_not_share_keys() {
        let a = Sealer::new(&keys(&[[1; 32]]), Purpose::SessionStore);
        let b = Sealer::new(&keys(&[[1; 32]]), Purpose::LoginCookie);
        let sealed = a.seal(b"x", b"y");
        assert_eq!(b.open(b"x", &sealed), Err(OpenError::UnknownKey));
    }

    #[test]
    fn rotation_first_seals_all_open() {
        let old = Sealer::new(&keys(&[[1; 32]]), Purpose::SessionStore);
        let sealed = old.seal(b"x", b"y");
        let rotated = Sealer::new(&keys(&[[2; 32], [1; 32]]), Purpose::SessionStore);
        assert_eq!(rotated.open(b"x", &sealed).expect("old key opens").as_slice(), b"y");
        assert!(rotated.needs_reseal(&sealed));
        assert!(!rotated.needs_reseal(&rotated.seal(b"x", b"y")));
        let dropped = Sealer::new(&keys(&[[2; 32]]), Purpose::SessionStore);
        assert_eq!(dropped.open(b"x", &sealed), Err(OpenError::UnknownKey));
    }
}
