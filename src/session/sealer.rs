//! `Sealer`: authenticated encryption (AES-256-GCM, aws-lc-rs) for data at rest
//! and in cookies, with key ids so keys can rotate.
//!
//! Each configured session key is stretched with HKDF-SHA256 into one subkey
//! per purpose (stored sessions, login cookies), so the same bytes never
//! encrypt two kinds of data. The first key seals; every key opens.
//! Sealed layout: `version (1) || key id (8) || nonce (12) || ciphertext+tag`.
//!
//! `Macer` derives HMAC-SHA256 keys the same way for data that must be
//! authenticated but not hidden (a session's last-seen time) or that must be
//! indexable without being readable (the per-user session index).

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::{hkdf, hmac};
use base64::Engine as _;

use crate::secret::Secret;

/// The keys sealing data at rest (`AVEMINT_SESSION_KEYS`): the first seals,
/// all open. Named apart from `SessionRowKey`, a stored session's row key.
#[derive(Clone)]
pub struct SealingKeys(Vec<Secret<[u8; 32]>>);

/// Why `AVEMINT_SESSION_KEYS` was refused (never echoes a key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SealingKeysError {
    #[error("key #{0} is empty")]
    Empty(usize),
    #[error("key #{0} is not valid base64")]
    NotBase64(usize),
    #[error("key #{number} decodes to {len} bytes; 32 are needed")]
    Length { number: usize, len: usize },
    #[error("no key given")]
    None,
}

impl fmt::Debug for SealingKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealingKeys({} keys, [redacted])", self.0.len())
    }
}

impl SealingKeys {
    /// Parses comma-separated base64 (standard or URL-safe, padding optional) 32-byte keys.
    pub(crate) fn parse(raw: &str) -> Result<Self, SealingKeysError> {
        let mut keys = Vec::new();
        for (i, part) in raw.split(',').map(str::trim).enumerate() {
            let number = i + 1;
            if part.is_empty() {
                return Err(SealingKeysError::Empty(number));
            }
            let decoded = decode_any_base64(part).ok_or(SealingKeysError::NotBase64(number))?;
            let key: [u8; 32] = decoded.as_slice().try_into().map_err(|_| SealingKeysError::Length {
                number,
                len: decoded.len(),
            })?;
            keys.push(Secret::new(key));
        }
        if keys.is_empty() {
            return Err(SealingKeysError::None);
        }
        Ok(Self(keys))
    }

    /// Builds from raw keys (demo mode and tests).
    pub fn from_keys(keys: Vec<[u8; 32]>) -> Self {
        Self(keys.into_iter().map(Secret::new).collect())
    }

    /// The keys, the sealing one first.
    pub(crate) fn keys(&self) -> &[Secret<[u8; 32]>] {
        &self.0
    }
}

fn decode_any_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(s).ok())
}

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

/// What a `Macer` authenticates; each purpose gets its own derived key.
#[derive(Debug, Clone, Copy)]
pub enum MacPurpose {
    /// A stored session's `last_seen_at` (bound to its row key and `created_at`).
    LastSeen,
    /// The per-user session index: a keyed hash of Ave's `sub`.
    UserIndex,
    /// The sid index: a keyed hash of a session's `sid`.
    SessionIndex,
}

impl MacPurpose {
    fn info(self) -> &'static [u8] {
        match self {
            MacPurpose::LastSeen => b"avemint/v1/session-last-seen",
            MacPurpose::UserIndex => b"avemint/v1/user-index",
            MacPurpose::SessionIndex => b"avemint/v1/sid-index",
        }
    }
}

/// HMAC-SHA256 under keys derived (HKDF-SHA256) from every configured session
/// key: the first key tags, every key verifies.
pub struct Macer {
    keys: Vec<hmac::Key>,
}

/// Length of a `Macer` tag.
pub(crate) const MAC_LEN: usize = 32;

impl Macer {
    /// Derives the HMAC keys for `purpose` from every configured key.
    pub(crate) fn new(keys: &SealingKeys, purpose: MacPurpose) -> Self {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"avemint session key");
        let keys = keys
            .keys()
            .iter()
            .map(|k| {
                let prk = salt.extract(k.expose());
                let info = [purpose.info()];
                // A one-element info list and HMAC-SHA256's key length: this expansion cannot fail.
                let okm = prk
                    .expand(&info, hmac::HMAC_SHA256)
                    .expect("HKDF expansion to an HMAC-SHA256 key");
                hmac::Key::from(okm)
            })
            .collect();
        Self { keys }
    }

    /// The tag of `msg` under the current (first) key.
    pub(crate) fn tag(&self, msg: &[u8]) -> [u8; MAC_LEN] {
        to_array(hmac::sign(&self.keys[0], msg))
    }

    /// The tags of `msg` under every configured key, the current one first.
    pub(crate) fn tags(&self, msg: &[u8]) -> Vec<[u8; MAC_LEN]> {
        self.keys.iter().map(|k| to_array(hmac::sign(k, msg))).collect()
    }

    /// True when `tag` is the tag of `msg` under any configured key (constant-time comparison).
    pub(crate) fn verify(&self, msg: &[u8], tag: &[u8]) -> bool {
        self.keys.iter().any(|k| hmac::verify(k, msg, tag).is_ok())
    }
}

fn to_array(tag: hmac::Tag) -> [u8; MAC_LEN] {
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
    out
}

/// Everything derived from the session keys, swapped as one when they are reloaded
/// (`AVEMINT_SESSION_KEYS_FILE`): a new first key starts sealing and tagging at
/// once, and every listed key keeps opening and verifying.
pub struct SessionCrypto {
    /// Stored sessions.
    pub(crate) store: Sealer,
    /// The pending-login cookie.
    pub(crate) login: Sealer,
    /// A stored session's `last_seen_at`.
    pub(crate) seen: Macer,
    /// The per-user session index.
    pub(crate) owner: Macer,
    /// The per-session (`sid`) index.
    pub(crate) handle: Macer,
}

impl SessionCrypto {
    /// Derives every purpose's keys from `keys`.
    pub fn new(keys: &SealingKeys) -> Self {
        Self {
            store: Sealer::new(keys, Purpose::SessionStore),
            login: Sealer::new(keys, Purpose::LoginCookie),
            seen: Macer::new(keys, MacPurpose::LastSeen),
            owner: Macer::new(keys, MacPurpose::UserIndex),
            handle: Macer::new(keys, MacPurpose::SessionIndex),
        }
    }

    /// Parses `AVEMINT_SESSION_KEYS` text and derives the keys (a reload of the keys file).
    pub(crate) fn parse(raw: &str) -> Result<Self, String> {
        SealingKeys::parse(raw)
            .map(|k| Self::new(&k))
            .map_err(|e| e.to_string())
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
    pub fn new(keys: &SealingKeys, purpose: Purpose) -> Self {
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

    #[cfg(test)]
    /// True when `sealed` was made with a key other than the current sealing key.
    pub(crate) fn needs_reseal(&self, sealed: &[u8]) -> bool {
        sealed.get(1..1 + KEY_ID_LEN).is_some_and(|id| id != self.keys[0].id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[[u8; 32]]) -> SealingKeys {
        SealingKeys::from_keys(k.to_vec())
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
    fn macs_rotate_and_purposes_differ() {
        let old = Macer::new(&keys(&[[1; 32]]), MacPurpose::LastSeen);
        let tag = old.tag(b"m");
        assert!(old.verify(b"m", &tag));
        assert!(!old.verify(b"n", &tag));
        assert!(!old.verify(b"m", &tag[..31]));
        let rotated = Macer::new(&keys(&[[2; 32], [1; 32]]), MacPurpose::LastSeen);
        assert!(rotated.verify(b"m", &tag), "old keys still verify");
        assert_ne!(rotated.tag(b"m"), tag, "the new key tags");
        assert_eq!(rotated.tags(b"m")[1], tag);
        let other = Macer::new(&keys(&[[1; 32]]), MacPurpose::UserIndex);
        assert!(!other.verify(b"m", &tag));
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
