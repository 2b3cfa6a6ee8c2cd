//! Relaying a child's output pipes to our own stdout/stderr.
//!
//! Each pipe gets one task that copies chunks as they arrive and flushes after each, so
//! the job log is live. The supervisor waits for these tasks only for a bounded time after
//! the job is swept: a descendant that still holds a pipe open is reported, not waited for.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

/// Copy `from` to `to` until EOF, flushing after every chunk. Returns the bytes copied.
pub fn spawn_relay<R, W>(mut from: R, mut to: W) -> JoinHandle<u64>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    total += n as u64;
                    // The reader of our own output went away: keep draining the child's
                    // pipe so it never blocks on a full pipe, but drop the bytes.
                    if to.write_all(&buf[..n]).await.is_ok() {
                        let _ = to.flush().await;
                    }
                }
            }
        }
        total
    })
}
