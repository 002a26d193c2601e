//! The HTTP connection layer: the accept loop and what one connection may
//! cost. It exists because a hostile or careless sender must not be able to
//! take the hub down below the HTTP layer (slowloris, half-sent bodies,
//! thousands of idle sockets), which `axum::serve` does not bound.
//!
//! - At most `max_connections` connections are served at once (each holds a
//!   semaphore permit); the rest wait in the kernel's backlog.
//! - A connection may wait `idle_timeout` for a request (its first, or its
//!   next when kept alive); from the first byte of a request head, the head
//!   must be complete within `header_timeout` (`HeadTimer`). The idle
//!   timeout is the longer one on purpose: closing an idle connection races
//!   with a sender starting to use it (its request crosses our close and gets
//!   no answer), so the sender's pool should give up an idle connection
//!   before we do, and common pools keep one for 60-90 s. A pool may also
//!   hold a connection it opened and did not need yet (hyper's and Go's put
//!   a connection dialled for a request that got another one in the pool),
//!   so a new connection is idle too until its first byte.
//! - A request's body must arrive within `body_timeout` of its head.
//! - hyper's read buffer is capped (`READ_BUFFER`), so a connection holds
//!   memory in proportion to what it actually sent.
//! - An accept error (`EMFILE` when out of file descriptors) is logged and
//!   retried after a pause: the loop never ends on one.
//! - Closing is done in stages ("lingering close"): after the answer, the
//!   write side is shut and what the sender still sends is read and dropped
//!   for up to `LINGER`, so a sender that writes its whole body before reading
//!   (most HTTP clients) reads a 413 instead of a connection reset.
//!
//! It knows nothing about routes: it serves whatever `axum::Router` it is given.

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

/// Largest read buffer hyper keeps per connection (hyper's minimum is 8 KiB).
const READ_BUFFER: usize = 64 * 1024;
/// How long a closing connection is drained before it is dropped.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes drained from a closing connection.
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// Per-connection limits (`serve --header-timeout`, `--idle-timeout`,
/// `--body-timeout`, `--max-connections`).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// A request head must be complete within this of its first byte.
    pub header_timeout: Duration,
    /// How long a connection may wait for a request (new or kept alive).
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_timeout: Duration::from_secs(30),
            max_connections: default_max_connections(),
        }
    }
}

/// Longer than the idle timeouts of the pools and proxies senders most
/// often use (reqwest/hyper and Go's `net/http` 90 s, nginx upstreams and
/// AWS load balancers 60 s), so they close an idle connection first and never
/// reuse one we are closing.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Half the soft open-file limit (the other half is for the store, outbound
/// calls and lingering closes), between 16 and 4096; 512 if it cannot be read.
pub fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        });
    match soft {
        Some(n) => (n / 2).clamp(16, 4096),
        None => 512,
    }
}

/// Serve `app` on `listener` until `shutdown` completes; then stop accepting,
/// ask every connection to finish its request in flight, and wait for them
/// for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // A permit first: at the limit, new connections wait in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE / ENFILE / ECONNABORTED …: wait and go on; the
                    // timeouts free descriptors.
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            permit,
            app.clone(),
            limits.clone(),
            stop_rx.clone(),
        ));
        // Reap finished tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all).await.is_err() {
        tracing::warn!("connections still open at the end of the grace period; closing them");
        connections.abort_all();
    }
}

async fn connection(
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
    app: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let read = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Lingering {
        stream: Some(stream),
        permit: Some(permit),
        read: read.clone(),
    });
    let body_timeout = limits.body_timeout;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let req = req.map(|b| Body::new(Deadline::new(b, body_timeout)));
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(HeadTimer {
            read,
            header: limits.header_timeout,
            idle: limits.idle_timeout,
        })
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(READ_BUFFER);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended");
                }
                return;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// hyper's header-read timer for one connection, made into two timeouts.
/// hyper arms it (`sleep_until`, its only use of the timer in an HTTP/1
/// server) each time it waits for a request head: at the accept, and after
/// each answer on a kept-alive connection. Until a byte comes the connection
/// is idle and may wait `idle`; from that byte on, the head has `header`
/// (never past the idle deadline).
struct HeadTimer {
    /// Bytes read on the connection so far (counted by `Lingering`).
    read: Arc<AtomicU64>,
    header: Duration,
    idle: Duration,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep {
            sleep: Box::pin(tokio::time::sleep(duration)),
            idle: None,
        })
    }

    fn sleep_until(&self, _deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        // hyper's deadline is its clock's now + `header`; ours is tokio's, so
        // a paused test clock drives it.
        Box::pin(HeadSleep {
            sleep: Box::pin(tokio::time::sleep(self.idle)),
            idle: Some((
                self.read.clone(),
                self.read.load(Ordering::Relaxed),
                self.header,
            )),
        })
    }
}

/// The sleep `HeadTimer` hands out.
struct HeadSleep {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// While the connection is idle: its byte count, the count when the
    /// timer was armed, and the head's timeout to switch to once it moves.
    /// hyper polls this sleep each time a read leaves the head incomplete,
    /// so the switch happens in the poll that read the first byte.
    idle: Option<(Arc<AtomicU64>, u64, Duration)>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some((read, armed, header)) = &this.idle {
            if read.load(Ordering::Relaxed) != *armed {
                let head = (tokio::time::Instant::now() + *header).min(this.sleep.deadline());
                this.sleep.as_mut().reset(head);
                this.idle = None;
            }
        }
        this.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

/// A TCP stream that, when hyper drops it, is closed in stages: the write
/// side is shut, then what the peer still sends is read and dropped for up
/// to `LINGER` (in a task that keeps the connection's permit), then closed.
/// It counts the bytes read, for `HeadTimer`.
struct Lingering {
    stream: Option<TcpStream>,
    permit: Option<OwnedSemaphorePermit>,
    read: Arc<AtomicU64>,
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (Some(mut stream), permit) = (self.stream.take(), self.permit.take()) else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let _permit = permit;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            let drain = async {
                let mut buf = [0u8; 8192];
                let mut total = 0usize;
                while total < LINGER_BYTES {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
        });
    }
}

impl Lingering {
    /// The stream; only `Drop` takes it, so it is always there while polled.
    fn stream(&mut self) -> std::io::Result<Pin<&mut TcpStream>> {
        self.stream
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))
    }
}

/// Poll the stream, or fail if it is gone.
macro_rules! poll_stream {
    ($self:expr, $cx:ident, |$s:ident| $call:expr) => {
        match $self.get_mut().stream() {
            Ok($s) => $call,
            Err(e) => Poll::Ready(Err(e)),
        }
    };
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match this.stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        };
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        poll_stream!(self, cx, |s| s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        poll_stream!(self, cx, |s| s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        poll_stream!(self, cx, |s| s.poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        poll_stream!(self, cx, |s| s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }
}

/// The sender did not send the whole body within the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// A request body that fails with [`BodyTimeout`] once its deadline passes.
struct Deadline {
    inner: Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl Deadline {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

impl hyper::body::Body for Deadline {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Is `e` (or one of its causes) a [`BodyTimeout`]?
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTimeout>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const HEADER: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(120);

    /// Serve "ok" at `/` with a 10 s header and a 120 s idle timeout.
    async fn start() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let limits = ConnectionLimits {
            header_timeout: HEADER,
            idle_timeout: IDLE,
            ..ConnectionLimits::default()
        };
        tokio::spawn(serve(
            listener,
            app,
            limits,
            std::future::pending(),
            Duration::ZERO,
        ));
        addr
    }

    /// Send one request on `s`; its answer's status line, or `None` if the
    /// connection was closed without one.
    async fn ask(s: &mut TcpStream) -> Option<String> {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.ends_with(b"\r\n\r\nok") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&answer);
        text.lines().next().map(str::to_string)
    }

    /// Wait until the hub closes `s`; how long after `from` that was on the
    /// (paused) clock, which must be `expected` (the timer wheel's 1 ms
    /// resolution aside).
    async fn assert_closed_after(
        s: &mut TcpStream,
        from: tokio::time::Instant,
        expected: Duration,
    ) {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let took = from.elapsed();
        assert!(
            expected <= took && took <= expected + Duration::from_millis(2),
            "closed after {took:?}, expected {expected:?}"
        );
    }

    /// The soak's "connection closed before message completed": the hub
    /// closed kept-alive connections after 10 s idle (the header timeout),
    /// shorter than the sender's pool keeps them, so a sender reusing one
    /// as it closed got no answer. Now an idle connection waits `IDLE`.
    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_past_the_header_timeout_still_answers() {
        let mut s = TcpStream::connect(start().await).await.unwrap();
        assert_eq!(ask(&mut s).await.as_deref(), Some("HTTP/1.1 200 OK"));
        tokio::time::sleep(HEADER * 3).await;
        assert_eq!(ask(&mut s).await.as_deref(), Some("HTTP/1.1 200 OK"));
        tokio::time::sleep(IDLE - Duration::from_secs(1)).await;
        assert_eq!(ask(&mut s).await.as_deref(), Some("HTTP/1.1 200 OK"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_the_idle_timeout() {
        let mut s = TcpStream::connect(start().await).await.unwrap();
        assert_eq!(ask(&mut s).await.as_deref(), Some("HTTP/1.1 200 OK"));
        let answered = tokio::time::Instant::now();
        assert_closed_after(&mut s, answered, IDLE).await;
    }

    /// Slowloris on a kept-alive connection: once a head starts, it has the
    /// header timeout, not what is left of the idle one.
    #[tokio::test(start_paused = true)]
    async fn a_head_started_after_an_idle_wait_has_the_header_timeout() {
        let mut s = TcpStream::connect(start().await).await.unwrap();
        assert_eq!(ask(&mut s).await.as_deref(), Some("HTTP/1.1 200 OK"));
        tokio::time::sleep(HEADER * 3).await;
        s.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").await.unwrap();
        let started = tokio::time::Instant::now();
        assert_closed_after(&mut s, started, HEADER).await;
    }

    /// A new connection is idle until its first byte (a pool may hold one
    /// it dialled and did not need yet); then its head has the header timeout.
    #[tokio::test(start_paused = true)]
    async fn a_new_connection_is_idle_until_its_first_byte() {
        let addr = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let connected = tokio::time::Instant::now();
        assert_closed_after(&mut s, connected, IDLE).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(HEADER * 3).await;
        assert_eq!(ask(&mut s).await.as_deref(), Some("HTTP/1.1 200 OK"));
        let mut s = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(HEADER * 3).await;
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let started = tokio::time::Instant::now();
        assert_closed_after(&mut s, started, HEADER).await;
    }
}
