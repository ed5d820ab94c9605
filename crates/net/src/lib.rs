//! Connections shared by the server and the client: write coalescing for
//! HTTP/2 connections, and TLS ([`tls`]).
//!
//! Why: over loopback (and on any fast network) the cost of a small gRPC
//! call is dominated by syscalls — one `writev` per reply, whose TCP send
//! path (and, on loopback, the receiver's whole receive path) runs inside
//! it. hyper's HTTP/2 connection task flushes every time it is polled, and
//! tokio runs a task woken by another task next (its LIFO slot), so under
//! load the connection task is polled once per finished reply: one syscall
//! per reply even when dozens are ready within microseconds of each other.
//!
//! [`CoalescingIo`] buffers writes and defers each flush by one scheduler
//! round: the first `poll_flush` with bytes pending wakes its own task and
//! returns `Pending`, which puts the connection task at the *back* of the
//! run queue; every reply that becomes ready meanwhile joins the same
//! buffer, and the next flush writes them all with one syscall. An idle
//! connection pays one extra task poll (microseconds) per flush, never a
//! timer. Large writes (data frames of big values) pass straight through
//! when nothing is buffered, so values are not copied twice.
//!
//! What it must not do: hold bytes past a flush that returns `Ready`, or
//! reorder bytes.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub mod tls;

/// Bytes buffered at most before they are written out without waiting for
/// a flush.
const MAX_BUFFERED_BYTES: usize = 64 * 1024;
/// A write at least this large goes straight to the socket when nothing is
/// buffered (no copy).
const DIRECT_WRITE_BYTES: usize = 16 * 1024;

/// A stream whose writes are buffered and whose flushes are deferred by one
/// scheduler round (see the crate doc).
#[derive(Debug)]
pub struct CoalescingIo<T> {
    inner: T,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already written to `inner`.
    written: usize,
    /// The current flush was deferred once already.
    deferred: bool,
}

impl<T> CoalescingIo<T> {
    pub fn new(inner: T) -> Self {
        CoalescingIo {
            inner,
            buffer: Vec::new(),
            written: 0,
            deferred: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn buffered(&self) -> usize {
        self.buffer.len() - self.written
    }
}

impl<T: AsyncWrite + Unpin> CoalescingIo<T> {
    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffer.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buffer[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buffer.clear();
        self.written = 0;
        // Do not keep a large buffer around for an idle connection.
        if self.buffer.capacity() > 2 * MAX_BUFFERED_BYTES {
            self.buffer = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_write_slices(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = slices.iter().map(|s| s.len()).sum();
        if self.buffered() > 0 && self.buffered() + total > MAX_BUFFERED_BYTES {
            ready!(self.poll_drain(cx))?;
        }
        if self.buffered() == 0 && total >= DIRECT_WRITE_BYTES {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, slices);
        }
        for slice in slices {
            self.buffer.extend_from_slice(slice);
        }
        Poll::Ready(Ok(total))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescingIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescingIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_slices(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_slices(cx, slices)
    }

    /// False on purpose: h2 then copies DATA payloads under 1 KiB into its
    /// own buffer (256 B when vectored) instead of keeping them aside as a
    /// chained frame, which would make it flush — and so defer — after each
    /// such frame. Small replies thus coalesce whole; the copy is into a
    /// buffer written anyway.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buffered() > 0 {
            if !self.deferred {
                // Back of the run queue: replies finishing meanwhile join
                // this write.
                self.deferred = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(self.poll_drain(cx))?;
        }
        self.deferred = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection made by [`connector`].
pub type Connection = hyper_util::rt::TokioIo<CoalescingIo<tls::MaybeTls>>;

/// A connector for `tonic::transport::Endpoint::connect_with_connector*`
/// whose connections coalesce writes (TCP_NODELAY set) and, with `tls`,
/// run TLS to the URI's host (whatever the URI's scheme).
pub fn connector(
    tls: Option<std::sync::Arc<tls::ClientTls>>,
) -> impl tower::Service<
    http::Uri,
    Response = Connection,
    Error = io::Error,
    Future = impl std::future::Future<Output = io::Result<Connection>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |uri: http::Uri| {
        let tls = tls.clone();
        async move {
            let authority = uri
                .authority()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "address has no host:port")
                })?
                .clone();
            let addresses: Vec<std::net::SocketAddr> = tokio::net::lookup_host(authority.as_str())
                .await
                .map_err(|e| {
                    io::Error::other(Unresolved(format!("cannot resolve {authority}: {e}")))
                })?
                .collect();
            let stream = tokio::net::TcpStream::connect(&addresses[..]).await?;
            stream.set_nodelay(true)?;
            let stream = match tls {
                None => tls::MaybeTls::Plain(stream),
                Some(tls) => {
                    tls::MaybeTls::Client(Box::new(tls.connect(authority.host(), stream).await?))
                }
            };
            Ok(hyper_util::rt::TokioIo::new(CoalescingIo::new(stream)))
        }
    })
}

/// A connect failed because the host name did not resolve (it never will
/// by retrying soon): the inner error of the `io::Error` the connector of
/// [`connector`] returns then.
#[derive(Debug)]
pub struct Unresolved(pub String);

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unresolved {}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for CoalescingIo<T>
{
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_arrive_in_order_once_flushed() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut io = CoalescingIo::new(a);
        io.write_all(b"hello ").await.unwrap();
        // Over the buffer bound: what is buffered is written first, then
        // this goes straight through.
        let big = vec![7u8; MAX_BUFFERED_BYTES * 2];
        io.write_all(&big).await.unwrap();
        io.write_all(b" world").await.unwrap();
        io.flush().await.unwrap();
        let mut got = vec![0u8; 6 + big.len() + 6];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..6], b"hello ");
        assert_eq!(&got[6..6 + big.len()], &big[..]);
        assert_eq!(&got[6 + big.len()..], b" world");
    }

    #[tokio::test]
    async fn a_flush_is_deferred_once_then_writes_everything() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut io = CoalescingIo::new(a);
        io.write_all(b"abc").await.unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(
            Pin::new(&mut io).poll_flush(&mut cx).is_pending(),
            "the first flush yields"
        );
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        let mut got = [0u8; 3];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abc");
        // Nothing buffered: a flush does not yield.
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn shutdown_writes_what_is_buffered() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut io = CoalescingIo::new(a);
        io.write_all(b"last words").await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }

    #[tokio::test]
    async fn small_writes_wait_for_the_flush_and_then_go_together() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut io = CoalescingIo::new(a);
        io.write_all(b"one").await.unwrap();
        io.write_all(b"two").await.unwrap();
        let mut probe = [0u8; 6];
        let early = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            b.read_exact(&mut probe),
        )
        .await;
        assert!(early.is_err(), "nothing is written before a flush");
        io.flush().await.unwrap();
        b.read_exact(&mut probe).await.unwrap();
        assert_eq!(&probe, b"onetwo");
    }

    #[tokio::test]
    async fn the_buffer_is_bounded_without_a_flush() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut io = CoalescingIo::new(a);
        let piece = vec![1u8; 1000];
        for _ in 0..(MAX_BUFFERED_BYTES / 1000 + 2) {
            io.write_all(&piece).await.unwrap();
        }
        assert!(io.buffered() <= MAX_BUFFERED_BYTES);
        let mut got = vec![0u8; MAX_BUFFERED_BYTES / 2];
        b.read_exact(&mut got).await.unwrap();
    }
}
