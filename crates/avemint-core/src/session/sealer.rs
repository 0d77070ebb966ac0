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
//!
//! Each configured key has one public id (`KeyId`): the 8 bytes a stored
//! session's sealed record starts with (after the version byte). A stamped MAC
//! (`Macer::stamp`) carries the same id, `MAC_FORMAT (1) || key id (8) || tag
//! (32)`, so an instance that cannot verify a MAC knows whether it failed under
//! a key it holds (tampering) or comes from a key it does not hold (yet): a
//! rolling rotation. MACs written before key ids existed are the bare 32-byte
//! tag; they still verify under any configured key.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::{hkdf, hmac};
use base64::Engine as _;

use avemint_base::secret::Secret;

/// The keys sealing data at rest (`AVEMINT_SESSION_KEYS`): the first seals,
/// all open. Named apart from `SessionRowHash`, a stored session's row key.
#[derive(Clone)]
pub struct SealingKeys(Vec<Secret<[u8; 32]>>);

/// Why `AVEMINT_SESSION_KEYS` was refused (never echoes a key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealingKeysError {
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
    pub fn parse(raw: &str) -> Result<Self, SealingKeysError> {
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

    /// The public id of each key, the sealing one first (what stored sessions and their MACs carry).
    pub fn ids(&self) -> Vec<KeyId> {
        self.0
            .iter()
            .map(|k| derive(k, Purpose::SessionStore.info()).1)
            .collect()
    }
}

/// The public id of a session key: 8 bytes derived from it (HKDF-SHA256), shown as 16 hex digits. Stored
/// sessions' sealed records and `last_seen_at` MACs carry it, and logs name a key this instance lacks by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub(crate) [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// HKDF-SHA256 of one configured key for one purpose: the derived 32-byte key and its id.
fn derive(key: &Secret<[u8; 32]>, info: &[u8]) -> (zeroize::Zeroizing<[u8; 32]>, KeyId) {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"avemint session key");
    let prk = salt.extract(key.expose());
    let mut derived = zeroize::Zeroizing::new([0u8; 32]);
    let mut id_bytes = [0u8; 32];
    // Both expansions have fixed, valid lengths and cannot fail.
    prk.expand(&[info], Len32)
        .and_then(|okm| okm.fill(derived.as_mut()))
        .expect("HKDF expansion to 32 bytes");
    prk.expand(&[info, b"/key-id"], Len32)
        .and_then(|okm| okm.fill(&mut id_bytes))
        .expect("HKDF expansion to 32 bytes");
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&id_bytes[..KEY_ID_LEN]);
    (derived, KeyId(id))
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
    keys: Vec<(KeyId, hmac::Key)>,
}

/// Length of a `Macer` tag.
pub(crate) const MAC_LEN: usize = 32;
/// The first byte of a stamped MAC (`Macer::stamp`): the layout with the key id.
const MAC_FORMAT: u8 = 1;

/// What checking a MAC found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MacCheck {
    /// Made by a configured key over this message.
    Valid,
    /// Made by a configured key, but not over this message (or malformed): the data was changed.
    Invalid,
    /// Possibly made by a key this instance does not hold: the stamped id (`None` for a MAC from before key ids,
    /// which no configured key verifies).
    UnknownKey(Option<KeyId>),
}

impl Macer {
    /// Derives the HMAC keys for `purpose` from every configured key.
    pub(crate) fn new(keys: &SealingKeys, purpose: MacPurpose) -> Self {
        let keys = keys
            .keys()
            .iter()
            .zip(keys.ids())
            .map(|(k, id)| {
                let (derived, _) = derive(k, purpose.info());
                (id, hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
            })
            .collect();
        Self { keys }
    }

    /// The tag of `msg` under the current (first) key.
    pub(crate) fn tag(&self, msg: &[u8]) -> [u8; MAC_LEN] {
        to_array(hmac::sign(&self.keys[0].1, msg))
    }

    /// The tags of `msg` under every configured key, the current one first.
    pub(crate) fn tags(&self, msg: &[u8]) -> Vec<[u8; MAC_LEN]> {
        self.keys.iter().map(|(_, k)| to_array(hmac::sign(k, msg))).collect()
    }

    /// The tag of `msg` under the current key, stamped with that key's id: `MAC_FORMAT || key id || tag`.
    pub(crate) fn stamp(&self, msg: &[u8]) -> Vec<u8> {
        let (id, _) = &self.keys[0];
        let mut out = Vec::with_capacity(1 + KEY_ID_LEN + MAC_LEN);
        out.push(MAC_FORMAT);
        out.extend_from_slice(&id.0);
        out.extend_from_slice(&self.tag(msg));
        out
    }

    /// Checks a stamped MAC (or a bare tag from before key ids) of `msg` (constant-time comparison). A stamped
    /// MAC is checked under the key it names only: it is `UnknownKey` when that key is not configured, `Invalid`
    /// when it is and the tag does not match. A bare tag that no configured key verifies may come from a key
    /// this instance does not hold: `UnknownKey(None)`.
    pub(crate) fn check(&self, msg: &[u8], mac: &[u8]) -> MacCheck {
        if mac.len() == MAC_LEN {
            return if self.keys.iter().any(|(_, k)| hmac::verify(k, msg, mac).is_ok()) {
                MacCheck::Valid
            } else {
                MacCheck::UnknownKey(None)
            };
        }
        if mac.len() != 1 + KEY_ID_LEN + MAC_LEN || mac[0] != MAC_FORMAT {
            return MacCheck::Invalid;
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&mac[1..1 + KEY_ID_LEN]);
        match self.keys.iter().find(|(k, _)| k.0 == id) {
            None => MacCheck::UnknownKey(Some(KeyId(id))),
            Some((_, key)) if hmac::verify(key, msg, &mac[1 + KEY_ID_LEN..]).is_ok() => MacCheck::Valid,
            Some(_) => MacCheck::Invalid,
        }
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
    pub login: Sealer,
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
    id: KeyId,
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
    #[error("sealed with a key that is not configured (key id {0})")]
    UnknownKey(KeyId),
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
        let keys = keys
            .keys()
            .iter()
            .map(|k| {
                let (derived, id) = derive(k, purpose.info());
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
        out.extend_from_slice(&sub.id.0);
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
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&sealed[1..1 + KEY_ID_LEN]);
        let sub = self
            .keys
            .iter()
            .find(|k| k.id.0 == id)
            .ok_or(OpenError::UnknownKey(KeyId(id)))?;
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
        sealed.get(1..1 + KEY_ID_LEN).is_some_and(|id| id != self.keys[0].id.0)
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
        assert!(matches!(b.open(b"x", &sealed), Err(OpenError::UnknownKey(_))));
    }

    #[test]
    fn macs_rotate_and_purposes_differ() {
        let old = Macer::new(&keys(&[[1; 32]]), MacPurpose::LastSeen);
        let tag = old.stamp(b"m");
        assert_eq!(old.check(b"m", &tag), MacCheck::Valid);
        assert_eq!(old.check(b"n", &tag), MacCheck::Invalid);
        assert_eq!(old.check(b"m", &tag[..40]), MacCheck::Invalid);
        let rotated = Macer::new(&keys(&[[2; 32], [1; 32]]), MacPurpose::LastSeen);
        assert_eq!(rotated.check(b"m", &tag), MacCheck::Valid, "old keys still verify");
        assert_ne!(rotated.tag(b"m"), old.tag(b"m"), "the new key tags");
        assert_eq!(rotated.tags(b"m")[1], old.tag(b"m"));
        let other = Macer::new(&keys(&[[1; 32]]), MacPurpose::UserIndex);
        assert_eq!(other.check(b"m", &tag), MacCheck::Invalid, "same key id, other purpose");
    }

    #[test]
    fn index_macs_are_derived_as_before_key_ids() {
        // Stored owner and sid indexes must keep matching: the HMAC key is HKDF's output for the purpose, as it
        // was when it was expanded straight into an HMAC key.
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"avemint session key");
        let prk = salt.extract(&[1; 32]);
        let info = [MacPurpose::UserIndex.info()];
        let before = hmac::Key::from(prk.expand(&info, hmac::HMAC_SHA256).expect("expand"));
        let now = Macer::new(&keys(&[[1; 32]]), MacPurpose::UserIndex);
        assert_eq!(now.tag(b"sub"), to_array(hmac::sign(&before, b"sub")));
    }

    #[test]
    fn a_mac_from_a_key_not_held_is_told_apart_from_a_wrong_one() {
        let old = Macer::new(&keys(&[[1; 32]]), MacPurpose::LastSeen);
        let rotated = Macer::new(&keys(&[[2; 32], [1; 32]]), MacPurpose::LastSeen);
        let new_id = keys(&[[2; 32]]).ids()[0];
        // The instance that knows the new key stamps with it; the one that does not names the id it lacks.
        let stamped = rotated.stamp(b"m");
        assert_eq!(&stamped[1..9], &new_id.0);
        assert_eq!(old.check(b"m", &stamped), MacCheck::UnknownKey(Some(new_id)));
        // Under a key it holds, a changed message is a wrong MAC.
        assert_eq!(rotated.check(b"n", &stamped), MacCheck::Invalid);
        // A bare tag from before key ids verifies under any key, and one that does not cannot be attributed.
        assert_eq!(rotated.check(b"m", &old.tag(b"m")), MacCheck::Valid);
        assert_eq!(old.check(b"m", &rotated.tag(b"m")), MacCheck::UnknownKey(None));
        let mut other_format = stamped.clone();
        other_format[0] = 2;
        assert_eq!(rotated.check(b"m", &other_format), MacCheck::Invalid);
        assert_eq!(new_id.to_string().len(), 16);
    }

    proptest::proptest! {
        #[test]
        fn check_never_panics_and_only_accepts_real_macs(mac in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let m = Macer::new(&keys(&[[1; 32]]), MacPurpose::LastSeen);
            proptest::prop_assert_ne!(m.check(b"m", &mac), MacCheck::Valid);
        }
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
        assert_eq!(
            dropped.open(b"x", &sealed),
            Err(OpenError::UnknownKey(keys(&[[1; 32]]).ids()[0])),
            "the error names the key id the sealed record carries"
        );
    }
}
