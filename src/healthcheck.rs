//! `avemint healthcheck`: probes a running avemint's `/healthz` and says whether it answered 200.
//!
//! It exists for container images without a shell or curl (distroless): the image's `HEALTHCHECK` runs the binary it
//! already has. It asks only the liveness endpoint, which never waits on Ave or the store (docs/operations.md, Liveness and
//! readiness), so a probe never fails because a dependency is down.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How long the probe waits for the whole answer.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error("cannot build the HTTP client")]
    Client,
    #[error("{url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
}

/// The `/healthz` URL of an avemint listening on `listen`: an unspecified address (`0.0.0.0`, `[::]`) is reached on
/// loopback.
pub fn default_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, listen.port()))
}

/// GETs `url` (no proxy, no redirects, bounded by [`TIMEOUT`]); `Ok` only for a 200 answer.
pub async fn probe(url: &str) -> Result<(), HealthcheckError> {
    let http = reqwest::Client::builder()
        .user_agent(concat!("avemint-healthcheck/", env!("CARGO_PKG_VERSION")))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .build()
        .map_err(|_| HealthcheckError::Client)?;
    let answer = http.get(url).send().await.map_err(|e| HealthcheckError::Unreachable {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    match answer.status().as_u16() {
        200 => Ok(()),
        status => Err(HealthcheckError::Status {
            url: url.to_owned(),
            status,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_are_probed_on_loopback() {
        let url = |s: &str| default_url(s.parse().expect("addr"));
        assert_eq!(url("0.0.0.0:8080"), "http://127.0.0.1:8080/healthz");
        assert_eq!(url("[::]:9000"), "http://[::1]:9000/healthz");
        assert_eq!(url("10.1.2.3:80"), "http://10.1.2.3:80/healthz");
    }
}
