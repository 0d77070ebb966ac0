//! WebSockets through a proxied route: which request is a handshake, what the
//! upstream's handshake carries, and the relay of frames once both sides have
//! switched protocols.
//!
//! Why this shape: the handshake is an ordinary HTTP/1.1 request, so it goes
//! upstream through the proxy's client like any proxied call (same TLS roots, same URL
//! rule, so `ws://` only where `http://` is allowed, `wss://` for https
//! upstreams; the bearer attached the same way). The browser's
//! `Sec-WebSocket-Key` is forwarded as sent, so the upstream's
//! `Sec-WebSocket-Accept` is the one the browser expects and avemint computes
//! none. Extensions are not negotiated (`Sec-WebSocket-Extensions` is
//! removed), because avemint reads whole frames to relay them: that is what
//! lets it close both sides with a close frame when the session ends. Frames
//! are parsed and written by tungstenite, never here.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use http::Method;
use http::header::{self, HeaderMap, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::session::SessionRowHash;

/// After one side sent a close frame, how long the other may take to answer its own before both are dropped.
const CLOSING_GRACE: Duration = Duration::from_secs(5);
/// Default `max_message_bytes` of a route (1 MiB).
pub(crate) const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// tungstenite's read buffer per side, allocated when the socket opens (its default, 128 KiB, would make an idle
/// socket cost a quarter MiB); messages larger than it are read in several reads.
const READ_BUFFER: usize = 16 * 1024;
/// What tungstenite gathers before writing to the connection; every relayed message is flushed at once anyway.
const WRITE_BUFFER: usize = 16 * 1024;

/// How many WebSockets may be open at once: `AVEMINT_MAX_WEBSOCKETS_PER_SESSION` and `AVEMINT_MAX_WEBSOCKETS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebSocketLimits {
    /// Per session (default 8).
    pub per_session: usize,
    /// On the instance, every session together (default 1024).
    pub instance: usize,
}

impl Default for WebSocketLimits {
    fn default() -> Self {
        Self {
            per_session: 8,
            instance: 1024,
        }
    }
}

/// Why another WebSocket cannot open now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TooMany {
    #[error("this session already has {0} WebSockets open (AVEMINT_MAX_WEBSOCKETS_PER_SESSION)")]
    Session(usize),
    #[error("this instance already has {0} WebSockets open (AVEMINT_MAX_WEBSOCKETS)")]
    Instance(usize),
}

/// The WebSockets open on this instance, counted per session, within [`WebSocketLimits`].
#[derive(Debug)]
pub struct OpenSockets {
    limits: WebSocketLimits,
    counts: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_session: HashMap<SessionRowHash, usize>,
}

/// One open WebSocket's place in [`OpenSockets`], given back when dropped.
#[derive(Debug)]
pub struct SocketSlot {
    counts: Arc<Mutex<Counts>>,
    /// `None`: a WebSocket without a session (a route with `auth = "none"`, the SPA's development server).
    session: Option<SessionRowHash>,
}

impl OpenSockets {
    pub(crate) fn new(limits: WebSocketLimits) -> Self {
        Self {
            limits,
            counts: Arc::default(),
        }
    }

    /// A place for one more WebSocket of `session` (`None`: one without a session, counted for the instance only),
    /// unless that session or the instance has its limit open.
    pub fn open(&self, session: Option<SessionRowHash>) -> Result<SocketSlot, TooMany> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = session.and_then(|s| counts.per_session.get(&s).copied()).unwrap_or(0);
        if mine >= self.limits.per_session {
            return Err(TooMany::Session(self.limits.per_session));
        }
        if counts.total >= self.limits.instance {
            return Err(TooMany::Instance(self.limits.instance));
        }
        counts.total += 1;
        if let Some(session) = session {
            counts.per_session.insert(session, mine + 1);
        }
        Ok(SocketSlot {
            counts: self.counts.clone(),
            session,
        })
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(session) = self.session
            && let Some(n) = counts.per_session.get_mut(&session)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_session.remove(&session);
            }
        }
    }
}

/// Request headers of the handshake the browser sends that go upstream besides the usual ones.
const HANDSHAKE: [&str; 3] = ["sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol"];

/// Whether a request is a WebSocket handshake (`GET` with `Upgrade: websocket`; RFC 6455 §4.1).
pub fn is_handshake(method: &Method, headers: &HeaderMap) -> bool {
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
pub fn switching_headers(upstream: &HeaderMap) -> HeaderMap {
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
pub enum Ended {
    /// One side closed (a close frame, or its connection went away).
    Closed,
    /// The session ended: both sides got a close frame from avemint.
    SessionEnded,
}

/// Relays messages between the browser's connection and the upstream's, both already switched, until either
/// side closes or `session_ended` resolves (see `proxy::session_ended`). Text, binary, ping and pong messages pass
/// as they are; a close frame passes with its code and reason, and the other side's answer comes back the same
/// way. A message or frame over `max_message` bytes, from either side, closes both with `1009`: no side makes
/// avemint hold more than that per message (see [`memory_config`]).
pub async fn relay<B, U>(browser: B, upstream: U, max_message: usize, session_ended: impl Future<Output = ()>) -> Ended
where
    B: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let config = memory_config(max_message);
    let browser = WebSocketStream::from_raw_socket(browser, Role::Server, Some(config)).await;
    let upstream = WebSocketStream::from_raw_socket(upstream, Role::Client, Some(config)).await;
    let (mut to_browser, mut from_browser) = browser.split();
    let (mut to_upstream, mut from_upstream) = upstream.split();
    let mut session_ended = std::pin::pin!(session_ended);
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
        let passed = tokio::select! {
            m = from_browser.next(), if browser_open => {
                pass(m, &mut to_browser, &mut to_upstream, &mut browser_open).await
            }
            m = from_upstream.next(), if upstream_open => {
                pass(m, &mut to_upstream, &mut to_browser, &mut upstream_open).await
            }
            () = &mut session_ended, if closing.is_none() => {
                ended = Ended::SessionEnded;
                let to_browser_frame = CloseFrame { code: CloseCode::Policy, reason: "session ended".into() };
                let to_upstream_frame = CloseFrame { code: CloseCode::Away, reason: "session ended".into() };
                let _ = to_browser.send(Message::Close(Some(to_browser_frame))).await;
                let _ = to_upstream.send(Message::Close(Some(to_upstream_frame))).await;
                false
            }
            () = grace => break,
        };
        if !passed {
            closing.get_or_insert_with(|| tokio::time::Instant::now() + CLOSING_GRACE);
        }
    }
    ended
}

/// tungstenite's limits for a relayed socket: messages and frames up to `max_message` bytes, small read and write
/// buffers, and a write buffer that cannot grow past one message. A socket holds at most, per side, one message
/// being assembled and one frame being read (each up to `max_message`) plus its read buffer, and one message being
/// written (twice: as read, and framed): under `6 × max_message + 64 KiB` in all.
fn memory_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + max_message + 64)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Passes one message read from one side (open while `from_open`, written to through `back`) to the other (`to`).
/// `false` once the closing has begun: a close frame passed, or the side's connection ended or failed (the other
/// is then sent a close frame: `1009` to both after a message over the limit, `1011` after another failure).
async fn pass<B, S>(read: Option<Result<Message, WsError>>, back: &mut B, to: &mut S, from_open: &mut bool) -> bool
where
    B: futures_util::Sink<Message> + Unpin,
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
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                    let too_big = CloseFrame {
                        code: CloseCode::Size,
                        reason: "message too big".into(),
                    };
                    let _ = back.send(Message::Close(Some(too_big.clone()))).await;
                    Some(too_big)
                }
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
    fn open_sockets_are_limited_per_session_and_per_instance_and_given_back_when_dropped() {
        let sockets = OpenSockets::new(WebSocketLimits {
            per_session: 2,
            instance: 3,
        });
        let (a, b) = (
            Some(SessionRowHash::from_bytes([1; 32])),
            Some(SessionRowHash::from_bytes([2; 32])),
        );
        let a1 = sockets.open(a).expect("a 1");
        let _a2 = sockets.open(a).expect("a 2");
        assert_eq!(sockets.open(a).expect_err("a 3"), TooMany::Session(2));
        let _b1 = sockets.open(b).expect("b 1");
        assert_eq!(sockets.open(b).expect_err("b 2"), TooMany::Instance(3));
        drop(a1);
        let _b2 = sockets.open(b).expect("a place was given back");
        assert_eq!(sockets.open(a).expect_err("full"), TooMany::Instance(3));
    }

    #[test]
    fn sockets_without_a_session_count_for_the_instance_only() {
        let sockets = OpenSockets::new(WebSocketLimits {
            per_session: 1,
            instance: 3,
        });
        let (first, _second) = (sockets.open(None).expect("1"), sockets.open(None).expect("2"));
        let _a = sockets
            .open(Some(SessionRowHash::from_bytes([1; 32])))
            .expect("a session's first");
        assert_eq!(sockets.open(None).expect_err("full"), TooMany::Instance(3));
        drop(first);
        let _third = sockets.open(None).expect("a place was given back");
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
