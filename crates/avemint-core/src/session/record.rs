//! The bytes a stored session's sealed record holds: `SessionData`, versioned.
//!
//! - **Version 1** (rows written before version 2): the JSON serialisation of `SessionData`. It starts with `{`.
//!   Still read; never written again.
//! - **Version 2**: the byte `0x02`, a varint, then two parts. The *text* part (the varint is its compressed
//!   length) is raw DEFLATE (RFC 1951) of every field in a fixed order, each a varint length and its bytes, with
//!   no field names. The *binary* part follows uncompressed: the bytes that do not compress (JWT signatures, the
//!   decoded bytes of base64url tokens), each one's length being in the text part. A token is stored as one of
//!   three kinds: a compact JWS (three canonical base64url segments) as its decoded header and payload (text)
//!   and signature (binary); a canonical base64url string as its decoded bytes (binary); anything else as it is
//!   (text). Decoding re-encodes exactly the same string (the encoder checks each segment round-trips, or stores
//!   the token as it is). `id_token_claims` is not stored when it is what the id_token's payload yields
//!   (`ave::id_token::profile_claims`), which is how sign-in and renewal make it; otherwise it is stored as JSON.
//!
//! So a session costs about half of its JSON form (no base64 text, no field names, the id_token's claims once,
//! the JSON parts of the tokens compressed together). The whole record is still sealed as one (`Sealer`):
//! compression happens before sealing, inside the encryption; why the sealed length is no oracle is in
//! SECURITY.md.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::id::SessionHandle;
use super::{AveTokens, SessionData, SignedInFrom};
use avemint_base::clock::UnixTime;
use avemint_base::secret::Secret;

/// The first byte of a version-2 record (a version-1 record starts with `{`).
const V2: u8 = 2;
/// The largest text part a record may inflate to (a sealed record is authenticated, so this only bounds a bug).
const MAX_TEXT: usize = 1 << 20;

/// Why a stored record could not be decoded (never says what it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("the session record is malformed")]
    Malformed,
    #[error("the session record has an unknown version")]
    UnknownVersion,
}

/// Encodes `data` as a version-2 record.
pub(crate) fn encode(data: &SessionData) -> Result<Zeroizing<Vec<u8>>, RecordError> {
    let mut w = Writer::default();
    w.token(data.sid.as_str());
    w.bytes(data.sub.as_bytes());
    w.bytes(data.scope.as_bytes());
    let t = &data.tokens;
    w.varint(zigzag(t.access_expires_at.as_secs()));
    w.token(t.access_token.expose());
    w.optional(t.access_token_jwt.as_ref(), |w, v| w.token(v.expose()));
    w.token(t.id_token.expose());
    w.optional(t.refresh_token.as_ref(), |w, v| w.token(v.expose()));
    let derived = profile_claims_of(t.id_token.expose());
    let claims = json(&data.id_token_claims)?;
    let derived = derived.map(|d| json(&d)).transpose()?;
    if derived.as_ref().is_some_and(|d| d.as_slice() == claims.as_slice()) {
        w.varint(0);
    } else {
        w.varint(1);
        w.bytes(&claims);
    }
    match &data.user {
        Some(user) => {
            let user = json(user)?;
            w.varint(1);
            w.bytes(&user);
        }
        None => w.varint(0),
    }
    w.optional(data.signed_in_from.device.as_ref(), |w, v| w.bytes(v.as_bytes()));
    w.optional(data.signed_in_from.network.as_ref(), |w, v| w.bytes(v.as_bytes()));

    let compressed = Zeroizing::new(miniz_oxide::deflate::compress_to_vec(&w.text, 9));
    let mut out = Zeroizing::new(Vec::with_capacity(1 + 3 + compressed.len() + w.binary.len()));
    out.push(V2);
    push_varint(&mut out, compressed.len() as u64);
    out.extend_from_slice(&compressed);
    out.extend_from_slice(&w.binary);
    Ok(out)
}

/// Decodes a record of either version.
pub(crate) fn decode(plain: &[u8]) -> Result<SessionData, RecordError> {
    match plain.first() {
        Some(b'{') => serde_json::from_slice(plain).map_err(|_| RecordError::Malformed),
        Some(&V2) => decode_v2(&plain[1..]),
        _ => Err(RecordError::UnknownVersion),
    }
}

fn decode_v2(body: &[u8]) -> Result<SessionData, RecordError> {
    let mut head = Reader::new(body);
    let text_len = usize::try_from(head.varint()?).map_err(|_| RecordError::Malformed)?;
    let rest = head.rest();
    if text_len > rest.len() {
        return Err(RecordError::Malformed);
    }
    let (compressed, binary) = rest.split_at(text_len);
    let text = Zeroizing::new(
        miniz_oxide::inflate::decompress_to_vec_with_limit(compressed, MAX_TEXT).map_err(|_| RecordError::Malformed)?,
    );
    let mut r = Parts {
        text: Reader::new(&text),
        binary: Reader::new(binary),
    };
    let sid = SessionHandle::from_stored(r.token()?);
    let sub = r.string()?;
    let scope = r.string()?;
    let access_expires_at = UnixTime::from_secs(unzigzag(r.text.varint()?));
    let access_token = Secret::new(r.token()?);
    let access_token_jwt = r.optional(|r| r.token())?.map(Secret::new);
    let id_token = r.token()?;
    let refresh_token = r.optional(|r| r.token())?.map(Secret::new);
    let id_token_claims = match r.text.varint()? {
        0 => profile_claims_of(&id_token).ok_or(RecordError::Malformed)?,
        1 => serde_json::from_slice(r.text.bytes()?).map_err(|_| RecordError::Malformed)?,
        _ => return Err(RecordError::Malformed),
    };
    let user = r.optional(|r| serde_json::from_slice(r.text.bytes()?).map_err(|_| RecordError::Malformed))?;
    let device = r.optional(|r| r.string())?;
    let network = r.optional(|r| r.string())?;
    if !r.text.rest().is_empty() || !r.binary.rest().is_empty() {
        return Err(RecordError::Malformed);
    }
    Ok(SessionData {
        sid,
        sub,
        scope,
        tokens: AveTokens {
            access_token,
            access_token_jwt,
            id_token: Secret::new(id_token),
            refresh_token,
            access_expires_at,
        },
        id_token_claims,
        user,
        signed_in_from: SignedInFrom { device, network },
    })
}

/// The claims sign-in and renewal keep of an id_token (`ave::id_token::profile_claims` of its payload), if it is a
/// JWS whose payload is a JSON object.
fn profile_claims_of(id_token: &str) -> Option<Map<String, Value>> {
    let payload = id_token.split('.').nth(1)?;
    let bytes = Zeroizing::new(URL_SAFE_NO_PAD.decode(payload).ok()?);
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    Some(crate::ave::id_token::profile_claims(claims))
}

fn json(map: &Map<String, Value>) -> Result<Zeroizing<Vec<u8>>, RecordError> {
    serde_json::to_vec(map)
        .map(Zeroizing::new)
        .map_err(|_| RecordError::Malformed)
}

/// The decoded bytes of `segment` when it is canonical base64url without padding (decoding and encoding again
/// gives the same text), so storing the bytes loses nothing.
fn canonical_base64url(segment: &str) -> Option<Zeroizing<Vec<u8>>> {
    let bytes = Zeroizing::new(URL_SAFE_NO_PAD.decode(segment).ok()?);
    let again = Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_slice()));
    (again.as_str() == segment).then_some(bytes)
}

/// How a token is stored.
const TOKEN_AS_IS: u64 = 0;
const TOKEN_BASE64URL: u64 = 1;
const TOKEN_JWS: u64 = 2;

/// The two parts of a record being written.
#[derive(Default)]
struct Writer {
    text: Zeroizing<Vec<u8>>,
    binary: Zeroizing<Vec<u8>>,
}

impl Writer {
    fn varint(&mut self, v: u64) {
        push_varint(&mut self.text, v);
    }

    /// Length-prefixed bytes in the text part.
    fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.text.extend_from_slice(b);
    }

    /// Bytes in the binary part, their length in the text part.
    fn blob(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.binary.extend_from_slice(b);
    }

    fn optional<T>(&mut self, v: Option<T>, write: impl FnOnce(&mut Self, T)) {
        match v {
            Some(v) => {
                self.varint(1);
                write(self, v);
            }
            None => self.varint(0),
        }
    }

    fn token(&mut self, token: &str) {
        let segments: Vec<&str> = token.split('.').collect();
        if let [header, payload, signature] = segments.as_slice()
            && let (Some(h), Some(p), Some(s)) = (
                canonical_base64url(header),
                canonical_base64url(payload),
                canonical_base64url(signature),
            )
        {
            self.varint(TOKEN_JWS);
            self.bytes(&h);
            self.bytes(&p);
            self.blob(&s);
        } else if let Some(b) = (!token.is_empty()).then(|| canonical_base64url(token)).flatten() {
            self.varint(TOKEN_BASE64URL);
            self.blob(&b);
        } else {
            self.varint(TOKEN_AS_IS);
            self.bytes(token.as_bytes());
        }
    }
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn varint(&mut self) -> Result<u64, RecordError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.buf.split_first().ok_or(RecordError::Malformed)?;
            self.buf = rest;
            v |= u64::from(byte & 0x7f)
                .checked_shl(shift)
                .ok_or(RecordError::Malformed)?;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(RecordError::Malformed)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], RecordError> {
        let n = usize::try_from(n).map_err(|_| RecordError::Malformed)?;
        if n > self.buf.len() {
            return Err(RecordError::Malformed);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let n = self.varint()?;
        self.take(n)
    }

    fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

/// The two parts of a record being read.
struct Parts<'t, 'b> {
    text: Reader<'t>,
    binary: Reader<'b>,
}

impl Parts<'_, '_> {
    fn string(&mut self) -> Result<String, RecordError> {
        String::from_utf8(self.text.bytes()?.to_vec()).map_err(|_| RecordError::Malformed)
    }

    fn blob(&mut self) -> Result<&[u8], RecordError> {
        let n = self.text.varint()?;
        self.binary.take(n)
    }

    fn optional<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, RecordError>,
    ) -> Result<Option<T>, RecordError> {
        match self.text.varint()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(RecordError::Malformed),
        }
    }

    fn token(&mut self) -> Result<String, RecordError> {
        match self.text.varint()? {
            TOKEN_AS_IS => self.string(),
            TOKEN_BASE64URL => Ok(URL_SAFE_NO_PAD.encode(self.blob()?)),
            TOKEN_JWS => {
                let mut out = URL_SAFE_NO_PAD.encode(self.text.bytes()?);
                out.push('.');
                URL_SAFE_NO_PAD.encode_string(self.text.bytes()?, &mut out);
                out.push('.');
                URL_SAFE_NO_PAD.encode_string(self.blob()?, &mut out);
                Ok(out)
            }
            _ => Err(RecordError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    /// A JWS shaped like Ave's (RS256: a 256-byte signature).
    fn jws(payload: &str) -> String {
        format!(
            "{}.{}.{}",
            b64(r#"{"alg":"RS256","typ":"JWT","kid":"ave-2026-11"}"#),
            b64(payload),
            URL_SAFE_NO_PAD.encode([7u8; 256])
        )
    }

    const ID_TOKEN_PAYLOAD: &str = r#"{"iss":"https://aveid.net","sub":"6f9619ff-8b86-d011-b42d-00cf4fc964ff","aud":"app","exp":1790003600,"iat":1790000000,"auth_time":1790000000,"nonce":"n-0S6_WzA2Mj","name":"Ada Lovelace","preferred_username":"ada","email":"ada@example.com"}"#;

    fn sample() -> SessionData {
        let id_token = jws(ID_TOKEN_PAYLOAD);
        SessionData {
            sid: SessionHandle::generate(),
            sub: "6f9619ff-8b86-d011-b42d-00cf4fc964ff".into(),
            scope: "openid profile email offline_access".into(),
            tokens: AveTokens {
                access_token: Secret::new(URL_SAFE_NO_PAD.encode([3u8; 32])),
                access_token_jwt: Some(Secret::new(jws(r#"{"iss":"https://aveid.net","scope":"openid"}"#))),
                id_token: Secret::new(id_token.clone()),
                refresh_token: Some(Secret::new("rt_not-base64url!".into())),
                access_expires_at: UnixTime::from_secs(1_790_003_600),
            },
            id_token_claims: profile_claims_of(&id_token).expect("claims"),
            user: Some(serde_json::from_str(r#"{"handle":"ada","name":"Ada Lovelace"}"#).expect("user")),
            signed_in_from: SignedInFrom {
                device: Some("Firefox on Linux".into()),
                network: Some("192.0.2.0/24".into()),
            },
        }
    }

    /// Everything a record holds, comparable (`Secret` serialises its value: this is what gets sealed).
    fn everything(data: &SessionData) -> Value {
        serde_json::to_value(data).expect("json")
    }

    fn round_trips(data: &SessionData) {
        let record = encode(data).expect("encode");
        assert_eq!(record[0], V2);
        assert_eq!(everything(&decode(&record).expect("decode")), everything(data));
    }

    #[test]
    fn a_session_round_trips_and_takes_much_less_than_its_json() {
        let data = sample();
        round_trips(&data);
        let json = serde_json::to_vec(&data).expect("json");
        let record = encode(&data).expect("encode");
        assert!(
            record.len() * 10 < json.len() * 6,
            "{} bytes against {} as JSON",
            record.len(),
            json.len()
        );
    }

    #[test]
    fn version_1_records_still_decode() {
        let data = sample();
        let v1 = serde_json::to_vec(&data).expect("json");
        assert_eq!(v1[0], b'{');
        assert_eq!(everything(&decode(&v1).expect("decode")), everything(&data));
        assert_eq!(decode(b"\x03rest").err(), Some(RecordError::UnknownVersion));
        assert_eq!(decode(b"").err(), Some(RecordError::UnknownVersion));
    }

    #[test]
    fn claims_that_are_not_the_id_tokens_are_stored_and_none_are_lost() {
        let mut data = sample();
        data.id_token_claims.insert("extra".into(), Value::from(1));
        round_trips(&data);
        // An id_token that is not a JWS, with or without claims of its own; no optional field at all.
        data.tokens.id_token = Secret::new("not.a-jwt".into());
        data.tokens.access_token_jwt = None;
        data.tokens.refresh_token = None;
        data.user = None;
        data.signed_in_from = SignedInFrom::default();
        round_trips(&data);
        data.id_token_claims = Map::new();
        round_trips(&data);
        // Negative and far timestamps.
        data.tokens.access_expires_at = UnixTime::from_secs(-5);
        round_trips(&data);
        data.tokens.access_expires_at = UnixTime::MIN;
        round_trips(&data);
    }

    #[test]
    fn tokens_that_only_look_like_base64url_are_kept_as_they_are() {
        let mut data = sample();
        // "QR" decodes (with non-zero trailing bits) but encodes back as "QQ": stored as it is.
        for token in ["QR", "QQ", "", ".", "..", "a.b.c", "eyJ.eyJ.QR", "a b", "é.é.é"] {
            data.tokens.access_token = Secret::new(token.into());
            data.tokens.refresh_token = Some(Secret::new(format!("{token}{token}")));
            round_trips(&data);
        }
    }

    proptest! {
        #[test]
        fn any_tokens_round_trip(
            access in "[A-Za-z0-9_.~+/=-]{0,80}",
            refresh in proptest::option::of("[A-Za-z0-9_.-]{0,80}"),
            id_token in "\\PC{0,40}",
            sub in "\\PC{0,40}",
        ) {
            let mut data = sample();
            data.tokens.access_token = Secret::new(access);
            data.tokens.refresh_token = refresh.map(Secret::new);
            data.tokens.id_token = Secret::new(id_token);
            data.sub = sub;
            let record = encode(&data).expect("encode");
            prop_assert_eq!(everything(&decode(&record).expect("decode")), everything(&data));
        }

        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&bytes);
            let mut v2 = vec![V2];
            v2.extend_from_slice(&bytes);
            let _ = decode(&v2);
        }

        #[test]
        fn a_truncated_or_extended_record_is_refused(cut in 1usize..64) {
            let record = encode(&sample()).expect("encode");
            let cut = cut.min(record.len() - 1);
            prop_assert!(decode(&record[..record.len() - cut]).is_err());
            let mut longer = record.to_vec();
            longer.push(0);
            prop_assert!(decode(&longer).is_err());
        }
    }
}
