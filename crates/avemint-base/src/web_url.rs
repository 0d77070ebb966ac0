//! Web URLs avemint is configured with: its own public origin (`PublicUrl`),
//! Ave's issuer (`Issuer`), and the rule behind both (and behind hook URLs and
//! allowed origins): `https`, or plain `http` only to a loopback host.
//!
//! Why a leaf module: the session store, the Ave client, the minter, the HTTP
//! layer and `config` all use these values, so they live below all of them
//! and import nothing of the crate. That keeps `config` (the composition root)
//! out of every lower module's imports.

use std::fmt;
use std::net::IpAddr;

use url::{Host, Url};

/// Why a configured URL was refused. Messages read after the setting's name
/// (`AVEMINT_PUBLIC_URL: must use https …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebUrlError {
    #[error("is not a valid URL ({0})")]
    Invalid(url::ParseError),
    #[error("must use https (http is accepted only for loopback hosts)")]
    PlainHttp,
    #[error("must be an https URL")]
    Scheme,
    #[error("has no host")]
    NoHost,
    #[error("must not have a query or fragment")]
    QueryOrFragment,
    #[error("must not contain user-info")]
    UserInfo,
    #[error("must be an origin without a path (avemint's cookies use the __Host- prefix, which needs Path=/)")]
    Path,
}

/// Parses an `https` URL, or an `http` one to a loopback host; no query,
/// fragment or user-info.
pub fn parse_web_url(raw: &str) -> Result<Url, WebUrlError> {
    parse_web_url_with(raw, PlainHttp::LoopbackOnly)
}

/// Where plain `http` is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainHttp {
    /// Only to loopback hosts (the rule everywhere but where an operator opts out).
    LoopbackOnly,
    /// To any host: an operator's explicit choice for a private network (a proxied route's `allow_http`).
    Allowed,
}

/// [`parse_web_url`], with plain `http` accepted as `plain_http` says.
pub fn parse_web_url_with(raw: &str, plain_http: PlainHttp) -> Result<Url, WebUrlError> {
    let url = Url::parse(raw.trim()).map_err(WebUrlError::Invalid)?;
    match url.scheme() {
        "https" => {}
        "http" if plain_http == PlainHttp::Allowed || is_loopback(&url) => {}
        "http" => return Err(WebUrlError::PlainHttp),
        _ => return Err(WebUrlError::Scheme),
    }
    if url.host().is_none() {
        return Err(WebUrlError::NoHost);
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(WebUrlError::QueryOrFragment);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(WebUrlError::UserInfo);
    }
    Ok(url)
}

/// True for `localhost`, 127.0.0.0/8 and `::1`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Where browsers reach avemint: an `https` origin (or `http` on loopback), no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl(String);

impl PublicUrl {
    /// Parses an origin such as `https://app.example.com` (a trailing `/` is allowed).
    pub fn parse(raw: &str) -> Result<Self, WebUrlError> {
        let url = parse_web_url(raw)?;
        if url.path() != "/" {
            return Err(WebUrlError::Path);
        }
        Ok(Self(url.as_str().trim_end_matches('/').to_owned()))
    }

    /// The origin without a trailing slash, e.g. `https://app.example.com`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `{public_url}/auth/callback`.
    pub fn redirect_uri(&self) -> String {
        format!("{}/auth/callback", self.0)
    }

    /// True when the public URL is https (browsers then require it for everything).
    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Ave's issuer identifier, compared exactly with discovery and id_tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer(String);

/// Production Ave's issuer, the default of `AVE_ISSUER`.
pub const DEFAULT_ISSUER: &str = "https://aveid.net";

impl Default for Issuer {
    /// Production Ave (`DEFAULT_ISSUER`).
    fn default() -> Self {
        Self(DEFAULT_ISSUER.to_owned())
    }
}

impl Issuer {
    /// Parses an `https` URL (or `http` on loopback); a trailing `/` is dropped.
    pub fn parse(raw: &str) -> Result<Self, WebUrlError> {
        let url = parse_web_url(raw)?;
        Ok(Self(url.as_str().trim_end_matches('/').to_owned()))
    }

    /// The issuer string, e.g. `https://aveid.net`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `{issuer}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_url_rules() {
        assert!(PublicUrl::parse("http://localhost:8080").is_ok());
        assert!(PublicUrl::parse("http://127.0.0.1:8080/").is_ok());
        assert!(PublicUrl::parse("http://[::1]:8080").is_ok());
        assert_eq!(PublicUrl::parse("http://example.com"), Err(WebUrlError::PlainHttp));
        assert_eq!(PublicUrl::parse("https://example.com/app"), Err(WebUrlError::Path));
        assert_eq!(PublicUrl::parse("https://user@example.com"), Err(WebUrlError::UserInfo));
        assert_eq!(
            PublicUrl::parse("https://example.com/?q"),
            Err(WebUrlError::QueryOrFragment)
        );
        assert_eq!(Issuer::parse("ftp://aveid.net"), Err(WebUrlError::Scheme));
        assert_eq!(Issuer::parse(DEFAULT_ISSUER), Ok(Issuer::default()));
    }
}
