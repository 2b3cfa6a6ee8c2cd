//! Termination signals received by our own process, turned into [`Request`]s.
//!
//! The streams are installed by [`OsSignals::install`], which must run before the first
//! spawn: a SIGTERM that arrives between spawn and install would otherwise kill us with the
//! default disposition and orphan the child.

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, Signal as Stream, SignalKind};
use tokio::sync::mpsc;

use super::machine::{Reason, Request};

/// SIGTERM, SIGINT and SIGHUP streams.
pub struct OsSignals {
    term: Stream,
    int: Stream,
    hup: Stream,
}

impl OsSignals {
    /// Install the handlers. Needs a running tokio runtime.
    pub fn install() -> std::io::Result<OsSignals> {
        Ok(OsSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Wait for the next termination signal.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.hup.recv() => Signal::SIGHUP,
        }
    }

    /// Forward every signal as `Request::Terminate` (TERM stays TERM) until `tx` closes.
    pub fn forward(mut self, tx: mpsc::UnboundedSender<Request>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let sig = self.recv().await;
                let req = Request::Terminate {
                    signal: sig,
                    reason: Reason::Signal(sig),
                };
                if tx.send(req).is_err() {
                    return;
                }
            }
        })
    }
}
