//! Lingering close: a socket that, when the server shuts it down, first reads
//! and discards what the client is still sending.
//!
//! A request refused before its body was read (413 on a declared
//! `Content-Length`, a 401 on a large publish) leaves that body in flight.
//! Closing a TCP socket with unread data makes the kernel send a reset, and
//! a client still writing its body then fails with `EPIPE` or
//! `ECONNRESET`, usually before it reads the answer: Node's `fetch` reported
//! a 413 as a dropped connection and retried it. nginx and Apache linger the
//! same way for the same reason.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a closing socket is read at most, in all.
const LINGER_TIME: Duration = Duration::from_secs(30);
/// How long it waits for more from the client before closing.
const LINGER_IDLE: Duration = Duration::from_secs(2);
/// Reads per poll before yielding to other tasks.
const READS_PER_POLL: usize = 16;

/// Wraps an accepted socket: reads and writes pass through; `poll_shutdown`
/// sends FIN, then reads and discards until the client closes, pauses
/// longer than 2 s, or 30 s have passed.
pub struct LingeringClose<T> {
    inner: T,
    /// Once shutdown has sent FIN: when lingering ends at the latest, and
    /// the timer of the current wait.
    linger: Option<(Instant, Pin<Box<Sleep>>)>,
}

impl<T> LingeringClose<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            linger: None,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for LingeringClose<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LingeringClose<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (until, timer) = match &mut this.linger {
            Some(linger) => linger,
            None => {
                ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                let now = Instant::now();
                let timer = Box::pin(tokio::time::sleep_until(now + LINGER_IDLE));
                this.linger.insert((now + LINGER_TIME, timer))
            }
        };
        let mut discard = [0u8; 4096];
        for _ in 0..READS_PER_POLL {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut discard);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    let next = (Instant::now() + LINGER_IDLE).min(*until);
                    timer.as_mut().reset(next);
                }
                // The client closed (or reset): nothing is left to protect.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
