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
/// Most bytes discarded: past this the client is sending far more than any
/// refused request is worth reading, and the socket is closed as it is.
const LINGER_BYTES: usize = 16 * 1024 * 1024;
/// Reads per poll before yielding to other tasks.
const READS_PER_POLL: usize = 16;

/// Wraps an accepted socket: reads and writes pass through; `poll_shutdown`
/// sends FIN, then reads and discards until the client closes, pauses
/// longer than 2 s, 30 s have passed, or 16 MiB were discarded.
pub struct LingeringClose<T> {
    inner: T,
    /// Once shutdown has sent FIN: when lingering ends at the latest, the
    /// timer of the current wait, and the bytes discarded so far.
    linger: Option<Box<Linger>>,
}

struct Linger {
    until: Instant,
    timer: Pin<Box<Sleep>>,
    discarded: usize,
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
        let linger = match &mut this.linger {
            Some(linger) => linger,
            None => {
                ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                let now = Instant::now();
                this.linger.insert(Box::new(Linger {
                    until: now + LINGER_TIME,
                    timer: Box::pin(tokio::time::sleep_until(now + LINGER_IDLE)),
                    discarded: 0,
                }))
            }
        };
        let mut discard = [0u8; 4096];
        for _ in 0..READS_PER_POLL {
            if linger.timer.as_mut().poll(cx).is_ready() || linger.discarded >= LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut discard);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    linger.discarded += buf.filled().len();
                    let next = (Instant::now() + LINGER_IDLE).min(linger.until);
                    linger.timer.as_mut().reset(next);
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client that keeps sending: drained up to the cap, then left.
    #[tokio::test]
    async fn a_client_that_keeps_sending_is_drained_up_to_the_cap() {
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let mut lingering = LingeringClose::new(server);
        let writer = tokio::spawn(async move {
            let chunk = vec![0u8; 64 * 1024];
            let mut sent = 0;
            while sent < 4 * LINGER_BYTES && client.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
            sent
        });
        lingering.shutdown().await.unwrap();
        drop(lingering);
        let sent = writer.await.unwrap();
        assert!(
            (LINGER_BYTES..LINGER_BYTES + (1 << 20)).contains(&sent),
            "{sent}"
        );
    }

    /// A client that finishes its body and closes: lingering ends at once,
    /// and it read the FIN first.
    #[tokio::test]
    async fn a_client_that_closes_ends_the_linger_at_once() {
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let mut lingering = LingeringClose::new(server);
        let peer = tokio::spawn(async move {
            client.write_all(&[1; 300 * 1024]).await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            rest.len()
        });
        let started = std::time::Instant::now();
        lingering.shutdown().await.unwrap();
        assert!(started.elapsed() < LINGER_IDLE, "{:?}", started.elapsed());
        assert_eq!(peer.await.unwrap(), 0, "saw the FIN, nothing else");
    }
}
