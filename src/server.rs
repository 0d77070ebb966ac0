//! The HTTP server loop: poem's endpoint on hyper connections, with the
//! connection timeouts poem 3.1's `Server` does not offer.
//!
//! poem's `Server` exposes only an inactivity timeout, which a client defeats
//! by sending one byte every few seconds (slowloris): a connection sending its
//! request headers slowly was never closed. Each connection here has a
//! watchdog:
//! - **header-read timeout** (`AVEMINT_HEADER_READ_TIMEOUT`): once the first
//!   byte of a request arrives, the whole request head must follow within it;
//! - **keep-alive timeout** (`AVEMINT_KEEP_ALIVE_TIMEOUT`): a connection with
//!   no request in progress and no bytes of a new one (freshly opened, or idle
//!   between keep-alive requests, or whose client stopped reading the answer)
//!   is closed after it.
//!
//! A request whose handler is running is never cut off by either (handlers
//! bound their own waits; the request guard reads a body within the
//! header-read timeout). Once the handler has answered, a streamed answer
//! (a proxied download, server-sent events) keeps the connection for as long
//! as it makes progress: it is closed only when no frame of it was sent for
//! the keep-alive timeout (an upstream gone quiet, or a client that stopped
//! reading). On shutdown, accepting stops, idle connections close at once, and
//! requests in flight get the grace period to finish.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use poem::listener::Acceptor;
use poem::{Endpoint, EndpointExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The connection timeouts (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTimeouts {
    /// From the first byte of a request to the end of its headers.
    pub header_read: Duration,
    /// How long a connection may sit with no request in progress.
    pub keep_alive: Duration,
}

/// Default `AVEMINT_HEADER_READ_TIMEOUT`.
pub(crate) const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `AVEMINT_KEEP_ALIVE_TIMEOUT`: longer than the usual load-balancer idle timeout (60 s), so the
/// balancer, not avemint, closes an idle pooled connection (otherwise a request racing the close gets a 502).
pub(crate) const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(75);

impl Default for ConnectionTimeouts {
    fn default() -> Self {
        Self {
            header_read: DEFAULT_HEADER_READ_TIMEOUT,
            keep_alive: DEFAULT_KEEP_ALIVE_TIMEOUT,
        }
    }
}

/// Most header bytes an HTTP/2 client may send in one request (poem's default).
const HTTP2_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// A marker for "no request bytes since the last request".
const NONE: u64 = u64::MAX;

/// What the watchdog knows about one connection. Times are milliseconds since `opened`.
struct Watch {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Of `in_flight`, the requests whose handler has answered and whose body is being sent.
    sending: AtomicUsize,
    /// When a body being sent last yielded a frame.
    progress_at: AtomicU64,
    idle_since: AtomicU64,
    head_started: AtomicU64,
    /// Signalled when a deadline may have moved (a head started, a request ended).
    changed: tokio::sync::Notify,
}

impl Watch {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            sending: AtomicUsize::new(0),
            progress_at: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NONE),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    /// Bytes arrived: when no request is in progress, they start a request head.
    fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let now = self.now_ms();
            if self
                .head_started
                .compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.changed.notify_waiters();
            }
        }
    }

    /// A request head was parsed; the returned guard marks the request in progress until dropped.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
        InFlight(self.clone())
    }

    /// A body being sent yielded a frame.
    fn on_progress(&self) {
        self.progress_at.store(self.now_ms(), Ordering::Release);
    }

    /// When the connection must be closed if nothing changes; `None` while a handler is running.
    fn deadline(&self, timeouts: ConnectionTimeouts) -> Option<Instant> {
        let at = |ms: u64, limit: Duration| Some(self.opened + Duration::from_millis(ms) + limit);
        let in_flight = self.in_flight.load(Ordering::Acquire);
        if in_flight > 0 {
            // Only answers being sent: they must keep making progress.
            return match in_flight <= self.sending.load(Ordering::Acquire) {
                true => at(self.progress_at.load(Ordering::Acquire), timeouts.keep_alive),
                false => None,
            };
        }
        match self.head_started.load(Ordering::Acquire) {
            NONE => at(self.idle_since.load(Ordering::Acquire), timeouts.keep_alive),
            started => at(started, timeouts.header_read),
        }
    }

    /// Resolves when the connection has overstayed a timeout.
    async fn expired(&self, timeouts: ConnectionTimeouts) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the deadline is read, so no change is missed.
            changed.as_mut().enable();
            let deadline = self.deadline(timeouts);
            let wake = match deadline {
                Some(d) if d <= Instant::now() => return,
                Some(d) => d,
                // A request in progress: wait for it to end (re-checking now and then).
                None => Instant::now() + Duration::from_secs(1),
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = changed => {}
            }
        }
    }
}

/// A request in progress on a watched connection.
struct InFlight(Arc<Watch>);

impl InFlight {
    /// The handler has answered: from now on the request is its body being sent.
    fn sending(self) -> Sending {
        self.0.on_progress();
        self.0.sending.fetch_add(1, Ordering::AcqRel);
        Sending(self)
    }
}

/// A request whose answer is being sent; it ends when the body is dropped (sent, or the connection closed).
struct Sending(InFlight);

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.0.sending.fetch_sub(1, Ordering::AcqRel);
        // Then `InFlight` ends the request.
    }
}

/// A response body that keeps its request in flight until it is dropped and reports each frame as progress.
struct WatchedBody<B> {
    inner: B,
    sending: Sending,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for WatchedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Ok(_)))) {
            self.sending.0.0.on_progress();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.idle_since.store(now, Ordering::Release);
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

/// The socket, reporting reads to the watchdog.
struct Watched<T> {
    inner: T,
    watch: Arc<Watch>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.on_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves `ep` on `acceptor` until `shutdown` resolves, then gives requests in
/// flight up to `grace` to finish.
pub(crate) async fn serve<A, E>(
    mut acceptor: A,
    ep: E,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
    timeouts: ConnectionTimeouts,
) -> std::io::Result<()>
where
    A: Acceptor,
    E: Endpoint + 'static,
{
    let ep = Arc::new(ep.map_to_response());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = acceptor.accept() => {
                let (io, local, remote, scheme) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let ep = ep.clone();
                let stop = stop_rx.clone();
                connections.spawn(async move {
                    let watch = Arc::new(Watch::new());
                    let io = Watched { inner: io, watch: watch.clone() };
                    let service = hyper::service::service_fn({
                        let watch = watch.clone();
                        move |req: hyper::Request<Incoming>| {
                            let in_flight = watch.begin();
                            let ep = ep.clone();
                            let req: poem::Request = (req, local.clone(), remote.clone(), scheme.clone()).into();
                            async move {
                                let resp: hyper::Response<_> = ep.get_response(req).await.into();
                                let sending = in_flight.sending();
                                Ok::<_, Infallible>(resp.map(|inner| WatchedBody { inner, sending }))
                            }
                        }
                    });
                    connection(io, service, &watch, stop, timeouts).await;
                });
            }
        }
    }
    drop(acceptor);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "requests still in flight after the grace period; closing their connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Drives one connection until it ends, times out, or shutdown closes it.
async fn connection<T, S, B>(
    io: Watched<T>,
    service: S,
    watch: &Watch,
    mut stop: tokio::sync::watch::Receiver<bool>,
    timeouts: ConnectionTimeouts,
) where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_header_list_size(HTTP2_MAX_HEADER_LIST_SIZE);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let stopping = async {
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = conn.as_mut() => return,
        () = watch.expired(timeouts) => {
            tracing::debug!("closing a connection that overstayed the header-read or keep-alive timeout");
            return;
        }
        () = stopping => conn.as_mut().graceful_shutdown(),
    }
    // Shutting down: let the request in progress (if any) finish; idle ones close now.
    tokio::select! {
        _ = conn.as_mut() => {}
        () = watch.expired(timeouts) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_deadlines() {
        let t = ConnectionTimeouts {
            header_read: Duration::from_secs(2),
            keep_alive: Duration::from_secs(5),
        };
        let w = Arc::new(Watch::new());
        let opened = w.opened;
        assert_eq!(
            w.deadline(t),
            Some(opened + Duration::from_secs(5)),
            "fresh: keep-alive"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        w.on_read();
        assert_eq!(
            w.deadline(t),
            Some(opened + Duration::from_secs(3)),
            "a head started at 1 s"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        w.on_read();
        assert_eq!(
            w.deadline(t),
            Some(opened + Duration::from_secs(3)),
            "more bytes do not extend it"
        );
        let req = w.begin();
        assert_eq!(w.deadline(t), None, "no deadline while a request is in progress");
        tokio::time::advance(Duration::from_secs(30)).await;
        w.on_read();
        assert_eq!(w.deadline(t), None, "body bytes are not a new head");
        drop(req);
        let idle_at = opened + Duration::from_millis(31_500);
        assert_eq!(
            w.deadline(t),
            Some(idle_at + Duration::from_secs(5)),
            "idle: keep-alive"
        );
    }
}
