//! Session identifiers: the browser's opaque cookie value and the row hash derived from it.
//!
//! `SessionId` is 256 random bits; it only ever lives in the cookie. The store
//! keys rows by `SessionRowHash`, its SHA-256, so a leaked database does not hand
//! out live cookies. `SessionHandle` is the `sid` claim of app JWTs: random,
//! unrelated to the cookie.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use avemint_base::secret::{Secret, random_bytes};

/// Length of an encoded session id: 32 bytes in unpadded base64url.
pub(crate) const SESSION_ID_LEN: usize = 43;

/// The opaque value of the `__Host-avemint` cookie.
pub struct SessionId(Secret<[u8; 32]>);

impl SessionId {
    /// A fresh id from the OS CSPRNG.
    pub fn generate() -> Self {
        Self(Secret::new(random_bytes::<32>()))
    }

    /// Parses a cookie value; anything but 43 base64url characters is refused.
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.len() != SESSION_ID_LEN || !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return None;
        }
        let mut out = [0u8; 32];
        let n = URL_SAFE_NO_PAD.decode_slice(raw, &mut out).ok()?;
        // 43 characters can carry non-zero trailing bits; the canonical form is required.
        (n == 32 && URL_SAFE_NO_PAD.encode(out) == raw).then(|| Self(Secret::new(out)))
    }

    /// The cookie value. Handle with care: it is a bearer credential.
    pub fn to_cookie_value(&self) -> Secret<String> {
        Secret::new(URL_SAFE_NO_PAD.encode(self.0.expose()))
    }

    /// The store's row hash (the primary key of its row).
    pub fn key(&self) -> SessionRowHash {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.0.expose());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        SessionRowHash(key)
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId([redacted])")
    }
}

/// SHA-256 of a session id: the primary key of a stored session. A hash, not key material (that is
/// `SealingKeys`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionRowHash([u8; 32]);

impl SessionRowHash {
    /// The raw 32 bytes (stored as a BLOB, used as AEAD associated data).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Rebuilds a hash read back from the store.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl std::fmt::Debug for SessionRowHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A prefix is enough to correlate log lines and reveals nothing usable.
        write!(
            f,
            "SessionRowHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// Length of an encoded session handle: 16 bytes in unpadded base64url.
const SESSION_HANDLE_LEN: usize = 22;

/// The `sid` claim: an opaque per-session handle that is not the cookie.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SessionHandle(String);

impl SessionHandle {
    /// A fresh random handle.
    pub fn generate() -> Self {
        Self(URL_SAFE_NO_PAD.encode(random_bytes::<16>()))
    }

    /// Parses a handle as `generate` writes it (22 base64url characters, canonical); anything else is `None`.
    pub fn parse(raw: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        let n = URL_SAFE_NO_PAD.decode_slice(raw, &mut out).ok()?;
        (raw.len() == SESSION_HANDLE_LEN && n == 16 && URL_SAFE_NO_PAD.encode(out) == raw).then(|| Self(raw.to_owned()))
    }

    /// A handle read back from a stored session record (written by `generate`, authenticated by the seal).
    pub(crate) fn from_stored(raw: String) -> Self {
        Self(raw)
    }

    /// The handle as it appears in the `sid` claim.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_keys_are_stable() {
        let id = SessionId::generate();
        let value = id.to_cookie_value();
        assert_eq!(value.expose().len(), SESSION_ID_LEN);
        let parsed = SessionId::parse(value.expose()).expect("parses");
        assert_eq!(parsed.key(), id.key());
        assert_ne!(
            parsed.key().as_bytes().as_slice(),
            URL_SAFE_NO_PAD.decode(value.expose()).expect("b64").as_slice()
        );
    }

    #[test]
    fn rejects_wrong_shapes() {
        for bad in [
            "",
            "short",
            &"A".repeat(44),
            &format!("{}=", "A".repeat(42)),
            &format!("{}+", "A".repeat(42)),
            &"B".repeat(43),
        ] {
            assert!(SessionId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn handles_parse_as_generated() {
        let h = SessionHandle::generate();
        assert_eq!(SessionHandle::parse(h.as_str()), Some(h));
        for bad in [
            "",
            "short",
            &"A".repeat(23),
            &"A".repeat(21),
            "AAAAAAAAAAAAAAAAAAAAA+",
            "AAAAAAAAAAAAAAAAAAAAAB",
        ] {
            assert_eq!(SessionHandle::parse(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,64}") {
            let _ = SessionId::parse(&s);
        }
    }
}
