//! The signing algorithms avemint supports (ES256, EdDSA with Ed25519, RS256):
//! generating PKCS#8 keys, parsing them once, signing, and each key's public JWK
//! and RFC 7638 thumbprint. Everything algorithm-specific lives here, so the
//! rest of the key lifecycle never matches on an algorithm.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// The smallest RSA modulus accepted for RS256, in bits.
pub(crate) const MIN_RSA_BITS: usize = 2048;

/// A JWS signing algorithm. One algorithm per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Algorithm {
    /// ECDSA with P-256 and SHA-256 (the default).
    #[default]
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519 (RFC 8037).
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys (for old verifiers).
    #[serde(rename = "RS256")]
    Rs256,
}

/// Why a key could not be generated, parsed or used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AlgorithmError {
    #[error("not a PKCS#8 {0} private key")]
    Unparsable(Algorithm),
    #[error("RSA keys must have at least {MIN_RSA_BITS} bits")]
    WeakRsa,
    #[error("key generation failed")]
    Generation,
    #[error("signing failed")]
    Signing,
}

impl Algorithm {
    /// Every supported algorithm.
    pub const ALL: [Algorithm; 3] = [Algorithm::Es256, Algorithm::EdDsa, Algorithm::Rs256];

    /// The JWS `alg` value.
    pub fn jws(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
            Self::Rs256 => "RS256",
        }
    }

    /// The lower-case name used on the command line and in key file names.
    pub(crate) fn short(self) -> &'static str {
        match self {
            Self::Es256 => "es256",
            Self::EdDsa => "eddsa",
            Self::Rs256 => "rs256",
        }
    }

    /// Generates a new private key as unencrypted PKCS#8 DER.
    pub fn generate_pkcs8(self) -> Result<Zeroizing<Vec<u8>>, AlgorithmError> {
        let rng = SystemRandom::new();
        let der = match self {
            Self::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| AlgorithmError::Generation)?
                .as_ref()
                .to_vec(),
            Self::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| AlgorithmError::Generation)?
                .as_ref()
                .to_vec(),
            Self::Rs256 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| AlgorithmError::Generation)?;
                let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
                    pair.as_der().map_err(|_| AlgorithmError::Generation)?;
                der.as_ref().to_vec()
            }
        };
        Ok(Zeroizing::new(der))
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.jws())
    }
}

impl FromStr for Algorithm {
    type Err = String;

    /// Accepts `es256`, `eddsa` (or `ed25519`) and `rs256`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "es256" => Ok(Self::Es256),
            "eddsa" | "ed25519" => Ok(Self::EdDsa),
            "rs256" => Ok(Self::Rs256),
            _ => Err("must be one of es256, eddsa, rs256".into()),
        }
    }
}

/// A parsed private key of one algorithm.
enum Pair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
    Rs256(RsaKeyPair),
}

/// A private key parsed once, with its public JWK and thumbprint.
pub struct ParsedKey {
    alg: Algorithm,
    pair: Pair,
    kid: String,
    jwk: Value,
    rng: SystemRandom,
}

impl ParsedKey {
    /// Parses PKCS#8 DER for `alg`.
    pub(crate) fn from_pkcs8(alg: Algorithm, der: &[u8]) -> Result<Self, AlgorithmError> {
        let bad = |_| AlgorithmError::Unparsable(alg);
        let (pair, members) = match alg {
            Algorithm::Es256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(bad)?;
                let point = pair.public_key().as_ref();
                // Uncompressed SEC1 point: 0x04 || x (32) || y (32).
                if point.len() != 65 || point[0] != 4 {
                    return Err(AlgorithmError::Unparsable(alg));
                }
                let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
                let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
                (
                    Pair::Es256(pair),
                    vec![("crv", "P-256".to_owned()), ("kty", "EC".into()), ("x", x), ("y", y)],
                )
            }
            Algorithm::EdDsa => {
                let pair = Ed25519KeyPair::from_pkcs8(der).map_err(bad)?;
                let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
                (
                    Pair::EdDsa(pair),
                    vec![("crv", "Ed25519".to_owned()), ("kty", "OKP".into()), ("x", x)],
                )
            }
            Algorithm::Rs256 => {
                let pair = RsaKeyPair::from_pkcs8(der).map_err(bad)?;
                if pair.public_modulus_len() * 8 < MIN_RSA_BITS {
                    return Err(AlgorithmError::WeakRsa);
                }
                let public = pair.public_key();
                let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
                let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
                (Pair::Rs256(pair), vec![("e", e), ("kty", "RSA".into()), ("n", n)])
            }
        };
        let kid = thumbprint(&members);
        let mut jwk = serde_json::Map::new();
        for (name, value) in members {
            jwk.insert(name.into(), Value::String(value));
        }
        jwk.insert("alg".into(), json!(alg.jws()));
        jwk.insert("use".into(), json!("sig"));
        jwk.insert("kid".into(), json!(kid));
        Ok(Self {
            alg,
            pair,
            kid,
            jwk: Value::Object(jwk),
            rng: SystemRandom::new(),
        })
    }

    /// The algorithm.
    pub(crate) fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The RFC 7638 thumbprint (base64url SHA-256), used as `kid`.
    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK: `kty`, `crv`/`x`/`y` or `n`/`e`, `alg`, `use`, `kid`. Never a private member.
    pub(crate) fn public_jwk(&self) -> &Value {
        &self.jwk
    }

    /// Signs `message` (the JWS signing input) and returns the raw JWS signature.
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AlgorithmError> {
        match &self.pair {
            Pair::Es256(pair) => pair
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| AlgorithmError::Signing),
            Pair::EdDsa(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Pair::Rs256(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut sig)
                    .map_err(|_| AlgorithmError::Signing)?;
                Ok(sig)
            }
        }
    }
}

/// RFC 7638: the required members in lexicographic order, no white space, SHA-256, base64url.
fn thumbprint(members: &[(&str, String)]) -> String {
    let mut sorted: Vec<&(&str, String)> = members.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut canonical = serde_json::Map::new();
    for (name, value) in sorted {
        canonical.insert((*name).to_owned(), Value::String(value.clone()));
    }
    // serde_json's map keeps keys sorted and prints compactly.
    let text = Value::Object(canonical).to_string();
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 section 3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let members = vec![("e", "AQAB".to_owned()), ("kty", "RSA".into()), ("n", n.into())];
        assert_eq!(thumbprint(&members), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn every_algorithm_generates_parses_signs_and_verifies_with_jsonwebtoken() {
        for alg in Algorithm::ALL {
            let der = alg.generate_pkcs8().expect("generate");
            let key = ParsedKey::from_pkcs8(alg, &der).expect("parse");
            let jwk = key.public_jwk();
            for private in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
                assert!(jwk.get(private).is_none(), "{alg}: {private} leaked");
            }
            assert_eq!(jwk["alg"], alg.jws());
            assert_eq!(jwk["kid"], key.kid());
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{}","kid":"{}"}}"#, alg.jws(), key.kid()));
            let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"x"}"#);
            let input = format!("{header}.{payload}");
            let sig = URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()).expect("sign"));
            let token = format!("{input}.{sig}");
            let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).expect("jwk");
            let decoding = jsonwebtoken::DecodingKey::from_jwk(&parsed).expect("decoding key");
            let jwt_alg: jsonwebtoken::Algorithm = alg.jws().parse().expect("known alg");
            let mut v = jsonwebtoken::Validation::new(jwt_alg);
            v.required_spec_claims.clear();
            v.validate_exp = false;
            let data = jsonwebtoken::decode::<Value>(&token, &decoding, &v).expect("verifies");
            assert_eq!(data.claims["sub"], "x");
        }
    }

    #[test]
    fn a_key_parsed_as_the_wrong_algorithm_is_refused() {
        let der = Algorithm::Es256.generate_pkcs8().expect("generate");
        assert!(ParsedKey::from_pkcs8(Algorithm::EdDsa, &der).is_err());
        assert!(ParsedKey::from_pkcs8(Algorithm::Rs256, &der).is_err());
    }

    #[test]
    fn names_parse_in_any_case() {
        assert_eq!("ES256".parse::<Algorithm>(), Ok(Algorithm::Es256));
        assert_eq!("EdDSA".parse::<Algorithm>(), Ok(Algorithm::EdDsa));
        assert_eq!("ed25519".parse::<Algorithm>(), Ok(Algorithm::EdDsa));
        assert_eq!("rs256".parse::<Algorithm>(), Ok(Algorithm::Rs256));
        assert!("hs256".parse::<Algorithm>().is_err());
        assert!("none".parse::<Algorithm>().is_err());
    }
}
