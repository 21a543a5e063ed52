//! The HTTP listener: accepts connections and serves the API on each, with
//! the limits that keep slow or numerous clients from taking the server
//! down.
//!
//! - **Headers in time.** A client has [`Limits::header_timeout`] to send a
//!   request's headers, or its connection is closed; bodies have their own
//!   deadline, kept by the router's body layer (`routes::buffer_body`).
//! - **A cap on connections.** At most [`Limits::max_connections`] are
//!   served at once, so the process keeps file descriptors for its store,
//!   its outbound calls and its health checks. Past the cap, a small reserve
//!   of connections answers `/healthz` only (everything else gets 503), with
//!   a short header deadline, so that a health check gets through even
//!   while slow clients hold every ordinary connection. Past the reserve, new
//!   connections wait in the kernel's queue until one closes.
//! - **JSON errors even from the parser.** A request hyper cannot parse (a
//!   header over its limit, too many headers, a NUL in a header, two
//!   different lengths) never reaches the router; hyper answers it with a
//!   bare status. [`JsonErrors`] gives those answers the body of CONTRACT
//!   §1.2 as they are written.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::Shutdown;

/// What the listener allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once (health checks have a reserve beyond it).
    pub max_connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
}

/// Connections past the cap that may still be accepted for health checks.
pub const HEALTH_RESERVE: usize = 16;

/// The header deadline of a reserve connection: a health check sends its
/// few headers at once, and a slow client must not hold the reserve long.
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// The cap when none is set: 1024 connections, or fewer where the limit on
/// open files leaves no room for them. Each connection takes a descriptor;
/// the store, outbound calls and the health reserve need theirs.
pub fn default_max_connections() -> usize {
    const DEFAULT: usize = 1024;
    /// Descriptors kept for everything but connections.
    const SPARE: usize = 256;
    match open_files_limit() {
        Some(limit) => DEFAULT
            .min(limit.saturating_sub(SPARE + HEALTH_RESERVE))
            .max(16),
        None => DEFAULT,
    }
}

/// The process's limit on open files, raised first to the most it may be
/// (the hard limit), as servers commonly do: the soft limit is often a
/// default meant for interactive shells.
fn open_files_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

/// Serves `api` on `listener` (and `reserve` on connections past the cap)
/// until `shutdown`, then lets requests under way finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    api: Router,
    reserve: Router,
    limits: Limits,
    mut shutdown: Shutdown,
    grace: Duration,
) {
    let ordinary = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let spare = Arc::new(Semaphore::new(HEALTH_RESERVE));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        // A place first, then the connection: with no place free, new
        // connections wait in the kernel's queue, not in our descriptors.
        let place = tokio::select! {
            place = Place::take(&ordinary, &spare) => place,
            _ = shutdown.wait() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it
                    // was taken: wait a moment rather than spin.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        let (service, header_timeout, keep_alive) = match &place {
            Place::Ordinary(_) => (api.clone(), limits.header_timeout, true),
            Place::Reserve(_) => (
                reserve.clone(),
                limits.header_timeout.min(RESERVE_HEADER_TIMEOUT),
                false,
            ),
        };
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_connection(stream, service, header_timeout, keep_alive, shutdown).await;
            drop(place);
        });
    }
    // Connections finish the request they are on (each was told to stop
    // when the shutdown was set); those that take longer are cut off.
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// The place a connection is served in; given back when it closes.
enum Place {
    Ordinary(#[allow(dead_code)] OwnedSemaphorePermit),
    Reserve(#[allow(dead_code)] OwnedSemaphorePermit),
}

impl Place {
    async fn take(ordinary: &Arc<Semaphore>, spare: &Arc<Semaphore>) -> Place {
        if let Ok(permit) = ordinary.clone().try_acquire_owned() {
            return Place::Ordinary(permit);
        }
        if let Ok(permit) = spare.clone().try_acquire_owned() {
            return Place::Reserve(permit);
        }
        tokio::select! {
            permit = ordinary.clone().acquire_owned() => Place::Ordinary(permit.expect("never closed")),
            permit = spare.clone().acquire_owned() => Place::Reserve(permit.expect("never closed")),
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    service: Router,
    header_timeout: Duration,
    keep_alive: bool,
    mut shutdown: Shutdown,
) {
    let io = TokioIo::new(JsonErrors::new(stream));
    let service = TowerToHyperService::new(service);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(keep_alive);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "a connection ended with an error");
            }
        }
        _ = shutdown.wait() => {
            // Finish the request under way, then close.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// A connection whose bare error answers get the JSON body of CONTRACT
/// §1.2 on their way out.
///
/// hyper answers a request it cannot parse itself, before the router sees
/// it, with a status line, `content-length: 0` and a date: 400 (a bad
/// header, a bad length), 414 or 431. Every answer of herald's own has a
/// content type, so an error status without one can only be such an
/// answer; it is rewritten whole on its first write, and the connection
/// closes after it as hyper intends.
pub struct JsonErrors<S> {
    inner: S,
    /// What is still to be written of a rewritten answer.
    pending: Vec<u8>,
    written: usize,
}

impl<S> JsonErrors<S> {
    pub fn new(inner: S) -> Self {
        JsonErrors {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

/// hyper's own answer to an unparsable request, rewritten with a JSON
/// body; `None` for anything else.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    let (status, message) = match rest.get(..3)? {
        b"400" => (400, "Bad request: the request could not be parsed"),
        b"414" => (414, "URI too long"),
        b"431" => (431, "Request header fields too large"),
        _ => return None,
    };
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if end != head.len() {
        return None;
    }
    let text = std::str::from_utf8(&head[..end - 4]).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let headers: Vec<(&str, String)> = lines.map(|l| (l, l.to_ascii_lowercase())).collect();
    let has = |prefix: &str| headers.iter().any(|(_, lower)| lower.starts_with(prefix));
    if has("content-type:")
        || !headers
            .iter()
            .any(|(_, lower)| lower == "content-length: 0")
    {
        return None;
    }
    let body = serde_json::json!({ "status": status, "message": message }).to_string();
    let mut out = Vec::with_capacity(head.len() + body.len() + 64);
    out.extend_from_slice(status_line.as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json");
    out.extend_from_slice(format!("\r\ncontent-length: {}", body.len()).as_bytes());
    out.extend_from_slice(b"\r\nconnection: close");
    for (line, lower) in &headers {
        if !lower.starts_with("content-length:") && !lower.starts_with("connection:") {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(line.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

impl<S: AsyncWrite + Unpin> JsonErrors<S> {
    /// Writes what is left of a rewritten answer; ready once it is all out.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(answer) = rewrite(buf) {
            self.pending = answer;
            self.written = 0;
            // The rewritten answer stands for all of `buf`; it goes out
            // now or with the next write, flush or shutdown.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // An error answer is one head alone; anything with more parts is
        // an answer of the router's, passed through as it is.
        match bufs.iter().filter(|b| !b.is_empty()).count() {
            1 => {
                let only = bufs.iter().find(|b| !b.is_empty()).expect("counted");
                self.poll_write(cx, only)
            }
            _ => {
                ready!(self.poll_pending(cx))?;
                Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bare_errors_get_a_json_body() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 09:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(head).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\ncontent-type: application/json"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(head.contains("\r\ndate: Tue, 01 Dec 2026"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["status"], 431);
    }

    #[test]
    fn answers_of_the_router_pass_as_they_are() {
        for head in [
            // Has a body type: one of ours.
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n".as_slice(),
            // Not an error.
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            // A head with its body in the same buffer.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}",
            // Not a head at all.
            b"{\"status\": 400}",
        ] {
            assert_eq!(rewrite(head), None, "{}", String::from_utf8_lossy(head));
        }
    }
}
