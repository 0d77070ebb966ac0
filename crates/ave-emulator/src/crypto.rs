//! Key material, hashing, random values and JWS assembly for the emulator.
//!
//! Every primitive comes from `aws-lc-rs`; this file only glues them together
//! and does the (non-cryptographic) base64url/JSON framing of compact JWS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, UnparsedPublicKey};
use aws_lc_rs::{constant_time, digest, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

/// A failure of the underlying crypto library (random source, signing, key
/// generation). Never carries secret material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CryptoFailure;

impl From<aws_lc_rs::error::Unspecified> for CryptoFailure {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        CryptoFailure
    }
}

/// One RSA-2048 signing key together with its published (JWK) form.
pub(super) struct IssuerKey {
    kid: String,
    key_pair: KeyPair,
    /// base64url of the modulus without leading zeros.
    n: String,
    /// base64url of the public exponent.
    e: String,
    /// PEM of the SubjectPublicKeyInfo, `\n` line endings, trailing newline.
    spki_pem: String,
}

impl std::fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A JWK as served in the JWKS, keys in Ave's order.
#[derive(Debug, Serialize)]
pub(super) struct Jwk<'a> {
    kty: &'static str,
    #[serde(rename = "use")]
    use_: &'static str,
    alg: &'static str,
    kid: &'a str,
    n: &'a str,
    e: &'a str,
}

impl IssuerKey {
    /// Generates a fresh RSA-2048 key with the given `kid`.
    pub(super) fn generate(kid: String) -> Result<Self, CryptoFailure> {
        let key_pair = KeyPair::generate(KeySize::Rsa2048)?;
        let public = key_pair.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let spki = public.as_der()?;
        let spki_pem = pem_encode("PUBLIC KEY", spki.as_ref());
        Ok(IssuerKey {
            kid,
            key_pair,
            n,
            e,
            spki_pem,
        })
    }

    /// The key id published in the JWKS and put in JWT headers.
    pub(super) fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a PEM `PUBLIC KEY` (SPKI) document.
    pub(super) fn public_key_pem(&self) -> &str {
        &self.spki_pem
    }

    /// The JWK form of the public key.
    pub(super) fn jwk(&self) -> Jwk<'_> {
        Jwk {
            kty: "RSA",
            use_: "sig",
            alg: "RS256",
            kid: &self.kid,
            n: &self.n,
            e: &self.e,
        }
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `message`.
    pub(super) fn sign_rs256(&self, message: &[u8]) -> Result<Vec<u8>, CryptoFailure> {
        let rng = SystemRandom::new();
        let mut signature = vec![0u8; self.key_pair.public_modulus_len()];
        self.key_pair.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)?;
        Ok(signature)
    }

    /// Checks an RS256 signature made by this key.
    pub(super) fn verify_rs256(&self, message: &[u8], signature: &[u8]) -> bool {
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, self.key_pair.public_key().as_ref());
        public.verify(message, signature).is_ok()
    }
}

/// How a compact JWS gets its signature.
pub(super) enum JwsSigner<'a> {
    /// A correct RS256 signature by `key`.
    Rs256(&'a IssuerKey),
    /// An RS256 signature by `key` with its first byte flipped.
    Rs256Corrupted(&'a IssuerKey),
    /// HMAC-SHA256 keyed with `secret` (the algorithm-confusion attack).
    Hs256(&'a [u8]),
    /// No signature at all (`alg: none`): the third segment is empty.
    Unsigned,
}

/// A JOSE header, keys in Ave's order (`alg`, `typ`, `kid`).
#[derive(Debug, Serialize)]
pub(super) struct JwsHeader<'a> {
    pub(super) alg: &'a str,
    pub(super) typ: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) kid: Option<&'a str>,
}

/// Assembles `base64url(header).base64url(payload).base64url(signature)`.
pub(super) fn compact_jws(
    header: &JwsHeader<'_>,
    claims: &impl Serialize,
    signer: JwsSigner<'_>,
) -> Result<String, CryptoFailure> {
    let header_json = serde_json::to_vec(header).map_err(|_| CryptoFailure)?;
    let claims_json = serde_json::to_vec(claims).map_err(|_| CryptoFailure)?;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(claims_json)
    );
    let signature = match signer {
        JwsSigner::Rs256(key) => key.sign_rs256(signing_input.as_bytes())?,
        JwsSigner::Rs256Corrupted(key) => {
            let mut signature = key.sign_rs256(signing_input.as_bytes())?;
            if let Some(first) = signature.first_mut() {
                *first ^= 0x01;
            }
            signature
        }
        JwsSigner::Hs256(secret) => {
            let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
            hmac::sign(&key, signing_input.as_bytes()).as_ref().to_vec()
        }
        JwsSigner::Unsigned => Vec::new(),
    };
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// PEM-encodes `der` with 64-column lines, `\n` endings and a final newline.
fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// base64url without padding.
pub(super) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding (padding is tolerated and stripped).
pub(super) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

/// SHA-256 of `data`.
pub(super) fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

/// Lowercase hex of SHA-256 of `data`: the form in which the emulator stores
/// codes and tokens.
pub(super) fn sha256_hex(data: &str) -> String {
    hex::encode(sha256(data.as_bytes()))
}

/// Compares two strings in constant time via their SHA-256 digests (as Ave
/// compares secrets).
pub(super) fn digests_equal(a: &str, b: &str) -> bool {
    constant_time::verify_slices_are_equal(&sha256(a.as_bytes()), &sha256(b.as_bytes())).is_ok()
}

/// `N` bytes from the system CSPRNG.
pub(super) fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoFailure> {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(bytes)
}

/// 43-character base64url of 32 random bytes (codes and access tokens).
pub(super) fn random_token43() -> Result<String, CryptoFailure> {
    Ok(b64url(&random_bytes::<32>()?))
}

/// `rt_` + 32 lowercase hex characters, like Ave's refresh tokens.
pub(super) fn random_refresh_token() -> Result<String, CryptoFailure> {
    Ok(format!("rt_{}", hex::encode(random_bytes::<16>()?)))
}

/// `len_bytes` random bytes as lowercase hex, for configuration defaults.
///
/// `Default` impls cannot fail, so if the system random source ever fails
/// this falls back to hashing the clock, a process-wide counter and the
/// process id. That is only good enough for a local emulator.
pub(super) fn random_hex_for_default(len_bytes: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = vec![0u8; len_bytes];
    if SystemRandom::new().fill(&mut bytes).is_ok() {
        return hex::encode(&bytes);
    }
    let mut out = String::new();
    while out.len() < len_bytes * 2 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let seed = format!("{nanos}:{count}:{}", std::process::id());
        out.push_str(&sha256_hex(&seed));
    }
    out.truncate(len_bytes * 2);
    out
}

/// Formats 16 bytes as a UUID string, forcing version 4 and the RFC 4122
/// variant.
pub(super) fn uuid_v4_from(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A stable per-identity "account" UUID, derived from the identity id. Ave
/// returns the account UUID for the `user_id` scope; the emulator has one
/// account per identity.
pub(super) fn account_id_for(identity_id: &str) -> String {
    let digest = sha256(format!("avemint-emulator-account:{identity_id}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid_v4_from(bytes)
}

/// PKCE S256: base64url(SHA-256(verifier)).
pub(super) fn pkce_s256(verifier: &str) -> String {
    b64url(&sha256(verifier.as_bytes()))
}
