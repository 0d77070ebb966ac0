//! A fault-injecting HTTP/1.1 proxy in front of the Ave emulator, with the
//! network faults an operator's trial saw: connections refused, a reset after
//! the request was read, a stall then a reset, and a stall past the client's
//! timeout. (HTTP-level faults, 500 and 429 with `Retry-After`, are the
//! emulator's own `TokenFailure` modes.)
//!
//! Point the emulator's discovery at it with
//! `Emulator::set_advertised_base_url(Some(proxy.url()))`. Every connection
//! carries one request (`Connection: close` both ways), so a fault applies to
//! each request as it arrives. Faults hit only the token endpoint, except
//! `Refuse`, which closes the listening socket. A request stopped by a fault
//! never reaches the emulator, as in the trial ("Ave never consumed the tokens").

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy does to token-endpoint requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Nothing listens: every connection is refused.
    Refuse,
    /// Read the request, then reset the connection (RST).
    ResetAfterRequest,
    /// Read the request, hold it this long (or until the client gives up), then reset.
    StallThenReset(Duration),
    /// Read the request and never answer, until the client gives up.
    Stall,
}

struct Inner {
    upstream: SocketAddr,
    /// Token-endpoint requests read so far (forwarded or not).
    token_requests: std::sync::atomic::AtomicUsize,
    fault: Mutex<Fault>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl FaultProxy {
    /// Listens on a random loopback port and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("upstream is http://ip:port");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("addr");
        let inner = Arc::new(Inner {
            upstream,
            token_requests: std::sync::atomic::AtomicUsize::new(0),
            fault: Mutex::new(Fault::None),
            accept: Mutex::new(None),
        });
        let proxy = Self { addr, inner };
        proxy.serve(listener);
        proxy
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Token-endpoint requests the proxy has read, whatever it did with them.
    pub fn token_requests(&self) -> usize {
        self.inner.token_requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        *self.inner.fault.lock().expect("fault")
    }

    /// Switches the fault (`Fault::None` heals).
    pub async fn set_fault(&self, fault: Fault) {
        let was = std::mem::replace(&mut *self.inner.fault.lock().expect("fault"), fault);
        if fault == Fault::Refuse && was != Fault::Refuse {
            let task = self.inner.accept.lock().expect("accept").take();
            if let Some(task) = task {
                task.abort();
                let _ = task.await;
            }
        } else if fault != Fault::Refuse && was == Fault::Refuse {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("reuseaddr");
            let mut bound = None;
            for _ in 0..100 {
                if socket.bind(self.addr).is_ok() {
                    bound = Some(());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            bound.expect("the proxy's port is free again");
            self.serve(socket.listen(1024).expect("listen"));
        }
    }

    fn serve(&self, listener: TcpListener) {
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(handle(inner.clone(), client));
            }
        });
        *self.inner.accept.lock().expect("accept") = Some(task);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Ok(mut task) = self.inner.accept.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }
}

/// Reads one HTTP/1.1 message head plus its `Content-Length` body.
async fn read_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

/// Adds `connection: close` after the start line.
fn with_close(message: &[u8]) -> Vec<u8> {
    let Some(line_end) = message.windows(2).position(|w| w == b"\r\n") else {
        return message.to_vec();
    };
    let mut out = Vec::with_capacity(message.len() + 19);
    out.extend_from_slice(&message[..line_end + 2]);
    out.extend_from_slice(b"connection: close\r\n");
    out.extend_from_slice(&message[line_end + 2..]);
    out
}

/// Waits until the client closes its side (or `limit` passes).
async fn until_client_gives_up(client: &mut TcpStream, limit: Duration) {
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(limit, async {
        loop {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

fn reset(client: TcpStream) {
    // A zero linger makes the close a reset (RST) and never blocks.
    #[allow(deprecated)]
    let _ = client.set_linger(Some(Duration::ZERO));
    drop(client);
}

async fn handle(inner: Arc<Inner>, mut client: TcpStream) {
    let Some(request) = read_message(&mut client).await else {
        return;
    };
    let token_endpoint = request.starts_with(b"POST /api/oauth/token ");
    let fault = *inner.fault.lock().expect("fault");
    if token_endpoint {
        inner.token_requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match fault {
            Fault::None | Fault::Refuse => {}
            Fault::ResetAfterRequest => return reset(client),
            Fault::StallThenReset(d) => {
                until_client_gives_up(&mut client, d).await;
                return reset(client);
            }
            Fault::Stall => {
                until_client_gives_up(&mut client, Duration::from_secs(3600)).await;
                return;
            }
        }
    }
    let Ok(mut upstream) = TcpStream::connect(inner.upstream).await else {
        return reset(client);
    };
    if upstream.write_all(&with_close(&request)).await.is_err() {
        return reset(client);
    }
    let mut response = Vec::new();
    if upstream.read_to_end(&mut response).await.is_err() {
        return reset(client);
    }
    let has_close = response
        .windows(17)
        .any(|w| w.eq_ignore_ascii_case(b"connection: close"));
    let response = if has_close { response } else { with_close(&response) };
    let _ = client.write_all(&response).await;
    let _ = client.shutdown().await;
}
