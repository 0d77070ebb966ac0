//! WebSockets through a proxied route: which request is a handshake, what the
//! upstream's handshake carries, and the relay of frames once both sides have
//! switched protocols.
//!
//! Why this shape: the handshake is an ordinary HTTP/1.1 request, so it goes
//! upstream through reqwest like any proxied call (same TLS roots, same URL
//! rule, so `ws://` only where `http://` is allowed, `wss://` for https
//! upstreams; the bearer attached the same way). The browser's
//! `Sec-WebSocket-Key` is forwarded as sent, so the upstream's
//! `Sec-WebSocket-Accept` is the one the browser expects and avemint computes
//! none. Extensions are not negotiated (`Sec-WebSocket-Extensions` is
//! removed), because avemint reads whole frames to relay them: that is what
//! lets it close both sides with a close frame when the session ends. Frames
//! are parsed and written by tungstenite, never here.

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::Method;
use reqwest::header::{self, HeaderMap, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

/// How often an open WebSocket's session is checked: a logout or an expired session closes it within this
/// (plus, for a logout on another instance, the session cache's lifetime).
pub(crate) const SESSION_CHECK: Duration = Duration::from_secs(5);
/// After one side sent a close frame, how long the other may take to answer its own before both are dropped.
const CLOSING_GRACE: Duration = Duration::from_secs(5);
/// Largest message relayed (tungstenite's default is 64 MiB); a larger one closes the WebSocket.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Request headers of the handshake the browser sends that go upstream besides the usual ones.
const HANDSHAKE: [&str; 3] = ["sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol"];

/// Whether a request is a WebSocket handshake (`GET` with `Upgrade: websocket`; RFC 6455 §4.1).
pub(crate) fn is_handshake(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::GET
        && headers
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
}

/// The `Sec-WebSocket-*` headers of the browser's handshake that the upstream's handshake carries; read before
/// the hop-by-hop headers are removed (a `Connection` header could name them).
pub(crate) fn handshake_headers(headers: &HeaderMap) -> Vec<(header::HeaderName, HeaderValue)> {
    HANDSHAKE
        .iter()
        .flat_map(|name| {
            headers
                .get_all(*name)
                .iter()
                .map(|v| (header::HeaderName::from_static(name), v.clone()))
        })
        .collect()
}

/// Makes `headers` (already the upstream's, see `headers::upstream`) a handshake again: `Connection: Upgrade`,
/// `Upgrade: websocket` and the browser's `Sec-WebSocket-*` headers, without `Sec-WebSocket-Extensions`.
pub(crate) fn upgrade_request(headers: &mut HeaderMap, handshake: Vec<(header::HeaderName, HeaderValue)>) {
    for name in HANDSHAKE {
        headers.remove(name);
    }
    headers.remove("sec-websocket-extensions");
    for (name, value) in handshake {
        headers.append(name, value);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// The headers of the upstream's `101 Switching Protocols` that the browser gets: `Upgrade`, `Connection`,
/// `Sec-WebSocket-Accept` and the chosen `Sec-WebSocket-Protocol`, nothing else.
pub(crate) fn switching_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in ["sec-websocket-accept", "sec-websocket-protocol"] {
        if let Some(v) = upstream.get(name) {
            out.insert(header::HeaderName::from_static(name), v.clone());
        }
    }
    out.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    out
}

/// How a relayed WebSocket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// One side closed (a close frame, or its connection went away).
    Closed,
    /// The session ended: both sides got a close frame from avemint.
    SessionEnded,
}

/// Relays messages between the browser's connection and the upstream's, both already switched, until either
/// side closes or `alive` (asked every [`SESSION_CHECK`]) says the session has ended. Text, binary, ping and
/// pong messages pass as they are; a close frame passes with its code and reason, and the other side's answer
/// comes back the same way.
pub(crate) async fn relay<B, U, F, Fut>(browser: B, upstream: U, mut alive: F) -> Ended
where
    B: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let browser = WebSocketStream::from_raw_socket(browser, Role::Server, Some(config)).await;
    let upstream = WebSocketStream::from_raw_socket(upstream, Role::Client, Some(config)).await;
    let (mut to_browser, mut from_browser) = browser.split();
    let (mut to_upstream, mut from_upstream) = upstream.split();
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + SESSION_CHECK, SESSION_CHECK);
    let mut closing: Option<tokio::time::Instant> = None;
    let (mut browser_open, mut upstream_open) = (true, true);
    let mut ended = Ended::Closed;
    while browser_open || upstream_open {
        let grace = async {
            match closing {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = from_browser.next(), if browser_open => {
                if !pass(m, &mut to_upstream, &mut browser_open).await {
                    closing.get_or_insert_with(|| tokio::time::Instant::now() + CLOSING_GRACE);
                }
            }
            m = from_upstream.next(), if upstream_open => {
                if !pass(m, &mut to_browser, &mut upstream_open).await {
                    closing.get_or_insert_with(|| tokio::time::Instant::now() + CLOSING_GRACE);
                }
            }
            _ = check.tick(), if closing.is_none() => {
                if !alive().await {
                    ended = Ended::SessionEnded;
                    let to_browser_frame = CloseFrame { code: CloseCode::Policy, reason: "session ended".into() };
                    let to_upstream_frame = CloseFrame { code: CloseCode::Away, reason: "session ended".into() };
                    let _ = to_browser.send(Message::Close(Some(to_browser_frame))).await;
                    let _ = to_upstream.send(Message::Close(Some(to_upstream_frame))).await;
                    closing = Some(tokio::time::Instant::now() + CLOSING_GRACE);
                }
            }
            () = grace => break,
        }
    }
    ended
}

/// Passes one message read from one side (open while `from_open`) to the other (`to`). `false` once the closing
/// has begun: a close frame passed, or the side's connection ended or failed (the other is then sent a close
/// frame, `1011` after a failure).
async fn pass<S>(
    read: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    to: &mut S,
    from_open: &mut bool,
) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    match read {
        Some(Ok(m)) => {
            let close = matches!(m, Message::Close(_));
            // A send can fail because the other side is closing (a pong crossing its close frame) or gone; either
            // way its own read reports the end, and that side keeps being read so its close answer is sent.
            let _ = to.send(m).await;
            !close
        }
        ended => {
            *from_open = false;
            let frame = match ended {
                Some(Err(_)) => Some(CloseFrame {
                    code: CloseCode::Error,
                    reason: "the other side failed".into(),
                }),
                _ => None,
            };
            let _ = to.send(Message::Close(frame)).await;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn a_handshake_is_a_get_with_upgrade_websocket() {
        let up = map(&[("upgrade", "WebSocket"), ("connection", "Upgrade")]);
        assert!(is_handshake(&Method::GET, &up));
        assert!(!is_handshake(&Method::POST, &up));
        assert!(!is_handshake(&Method::GET, &map(&[("upgrade", "h2c")])));
        assert!(!is_handshake(&Method::GET, &HeaderMap::new()));
    }

    #[test]
    fn the_upstream_handshake_keeps_key_version_and_protocols_but_no_extensions() {
        let browser = map(&[
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "chat, superchat"),
            ("sec-websocket-extensions", "permessage-deflate"),
        ]);
        let handshake = handshake_headers(&browser);
        let mut upstream = map(&[("authorization", "Bearer t"), ("sec-websocket-extensions", "x")]);
        upgrade_request(&mut upstream, handshake);
        assert_eq!(upstream["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(upstream["sec-websocket-protocol"], "chat, superchat");
        assert_eq!(upstream["upgrade"], "websocket");
        assert_eq!(upstream["connection"], "Upgrade");
        assert!(!upstream.contains_key("sec-websocket-extensions"));
        let answer = switching_headers(&map(&[
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("sec-websocket-protocol", "chat"),
            ("set-cookie", "x=1"),
        ]));
        assert_eq!(answer["sec-websocket-protocol"], "chat");
        assert!(!answer.contains_key("set-cookie"));
    }
}
