//! `Secret<T>`: a value that must never reach a log line, an error message or
//! a response by accident.
//!
//! Tokens, the client secret and session keys are wrapped from the moment they
//! are read. `Debug` and `Display` print `[redacted]`, and the inner value is
//! zeroized on drop. Reading the value needs an explicit `expose()`, which makes
//! every use easy to find in review.
//!
//! [`Credential`] is the one constant-time check of a presented secret (an
//! expected value kept as its digest).
//!
//! [`SecretKind`] (which secret a reload was about) lives here too: it is a leaf
//! name that both `reload` and `metrics` use, so neither imports the other.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, Zeroizing};

/// A redacting, zeroize-on-drop wrapper.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T: Zeroize>(Zeroizing<T>);

impl<T: Zeroize> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self(Zeroizing::new(value))
    }

    /// Reads the value. Every call site is a place where the secret leaves its box.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl<T: Zeroize> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T: Zeroize> std::fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Serialization exists only so a secret can be sealed (encrypted) into the
/// session store; nothing else serializes a type that holds one.
impl<T: Zeroize + Serialize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de, T: Zeroize + Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret::new)
    }
}

/// An expected credential (the admin token, a profile's introspection secret, a sign-in's `state` or `nonce`),
/// kept as the SHA-256 digest of its value. `matches` digests the presented value too and compares the two
/// digests in constant time (aws-lc's `CRYPTO_memcmp`), so a comparison reveals neither the content nor the
/// length of the expected value. This is the one way avemint checks a presented secret.
#[derive(Clone)]
pub struct Credential {
    digest: Secret<[u8; 32]>,
}

impl Credential {
    /// The credential whose value is `expected`.
    pub fn new(expected: &str) -> Self {
        Self::from_bytes(expected.as_bytes())
    }

    /// The credential whose value is the bytes `expected`.
    pub(crate) fn from_bytes(expected: &[u8]) -> Self {
        Self {
            digest: Secret::new(sha256(expected)),
        }
    }

    /// True when `presented` is the expected value (constant time over the digests).
    pub fn matches(&self, presented: impl AsRef<[u8]>) -> bool {
        let presented = sha256(presented.as_ref());
        aws_lc_rs::constant_time::verify_slices_are_equal(&presented, self.digest.expose()).is_ok()
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential([redacted])")
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Which secret (or the signing keys) a reload was about; the label of
/// `avemint_secret_reloads_total`. It lives here, beside `Secret`, so both
/// `reload` and `metrics` name it without importing each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// `AVE_CLIENT_SECRET_FILE`.
    ClientSecret,
    /// `AVEMINT_SESSION_KEYS_FILE`.
    SessionKeys,
    /// A profile's hook `secret_file`.
    HookSecret,
    /// The signing keys directory (`mint::keys`).
    SigningKeys,
    /// The configuration's proxied routes and token profiles, read again on SIGHUP.
    Configuration,
}

impl SecretKind {
    pub(crate) const ALL: [SecretKind; 5] = [
        SecretKind::ClientSecret,
        SecretKind::SessionKeys,
        SecretKind::HookSecret,
        SecretKind::SigningKeys,
        SecretKind::Configuration,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            SecretKind::ClientSecret => "client_secret",
            SecretKind::SessionKeys => "session_keys",
            SecretKind::HookSecret => "hook_secret",
            SecretKind::SigningKeys => "signing_keys",
            SecretKind::Configuration => "configuration",
        }
    }
}

/// `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    fill_random(&mut buf);
    buf
}

/// Fills `buf` from the operating system's CSPRNG (aws-lc).
pub fn fill_random(buf: &mut [u8]) {
    // SystemRandom only fails when the OS has no entropy source at all, in
    // which case nothing in this service can work safely.
    aws_lc_rs::rand::fill(buf).expect("the operating system's random number generator failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new(String::from("hunter2"));
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(s.expose(), "hunter2");
    }

    /// Records whether it was zeroized.
    struct Probe(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl Zeroize for Probe {
        fn zeroize(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn the_value_is_zeroized_on_drop() {
        let zeroized = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let secret = Secret::new(Probe(zeroized.clone()));
        assert!(!zeroized.load(std::sync::atomic::Ordering::SeqCst));
        drop(secret);
        assert!(zeroized.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn a_credential_matches_only_its_value() {
        let c = Credential::new("0123456789abcdef0123456789abcdef");
        assert!(c.matches("0123456789abcdef0123456789abcdef"));
        assert!(c.matches(b"0123456789abcdef0123456789abcdef"));
        assert!(!c.matches("0123456789abcdef0123456789abcdeF"));
        assert!(Credential::from_bytes(b"st").matches("st"));
    }

    #[test]
    fn a_credential_refuses_other_lengths_and_empty() {
        let c = Credential::new("0123456789abcdef0123456789abcdef");
        assert!(!c.matches("0123456789abcdef0123456789abcdef0"));
        assert!(!c.matches("0123456789abcdef"));
        assert!(!c.matches(""));
        let empty = Credential::new("");
        assert!(empty.matches(""));
        assert!(!empty.matches("a"));
    }

    #[test]
    fn a_credential_debug_redacts() {
        assert_eq!(format!("{:?}", Credential::new("hunter2")), "Credential([redacted])");
    }
}
