//! The drain signal of one listener: [`Drain::start`] stops its accept
//! loop and tells each of its connections to finish (in-flight requests
//! end, WebSockets close 1001).
//!
//! Every connection waits on it in its `select!`, which polls the wait on
//! every wake-up of the connection, so that poll must cost next to
//! nothing. `tokio::sync::watch` (what this replaced) takes its waiter
//! list's mutex on every poll, which showed in the per-request profile
//! (~1 % of CPU on keep-alive requests and WebSocket echo). Here a wait
//! registers its task's waker once; later polls compare the waker and
//! read one atomic flag, and the lock is taken only when a connection
//! starts waiting, ends, or the drain starts.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
struct Shared {
    started: AtomicBool,
    waiters: Mutex<Waiters>,
}

#[derive(Debug, Default)]
struct Waiters {
    next: u64,
    wakers: HashMap<u64, Waker>,
}

impl Shared {
    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        // A waker list is whole after any panic: keep using it.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }
}

/// The listener's side: starts the drain.
#[derive(Debug, Default)]
pub struct Drain(Arc<Shared>);

impl Drain {
    /// A drain not started yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the drain and wakes every waiter (once; later calls do nothing).
    pub fn start(&self) {
        if self.0.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let wakers = std::mem::take(&mut self.0.waiters().wakers);
        for w in wakers.into_values() {
            w.wake();
        }
    }

    /// What the accept loop and the connections wait on.
    pub fn watch(&self) -> DrainWatch {
        DrainWatch(Arc::clone(&self.0))
    }
}

/// The waiting side, cloned into the accept loop and every connection.
#[derive(Debug, Clone)]
pub struct DrainWatch(Arc<Shared>);

impl DrainWatch {
    /// Resolves once the drain started. Create it once per task and poll
    /// it again and again: each poll after the first is two comparisons.
    pub fn wait(&self) -> Started {
        Started {
            shared: Arc::clone(&self.0),
            key: None,
            waker: None,
        }
    }
}

/// The future of [`DrainWatch::wait`].
#[derive(Debug)]
pub struct Started {
    shared: Arc<Shared>,
    /// This wait's entry among the waiters, once registered.
    key: Option<u64>,
    /// The waker registered there.
    waker: Option<Waker>,
}

impl Future for Started {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.shared.started() {
            return Poll::Ready(());
        }
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        {
            let mut w = this.shared.waiters();
            let key = match this.key {
                Some(k) => k,
                None => {
                    let k = w.next;
                    w.next = w.next.wrapping_add(1);
                    this.key = Some(k);
                    k
                }
            };
            w.wakers.insert(key, cx.waker().clone());
        }
        this.waker = Some(cx.waker().clone());
        // `start` sets the flag before it takes the wakers: a start that
        // did not see this waker is seen here.
        if this.shared.started() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            self.shared.waiters().wakers.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(f: &mut Started, w: &Waker) -> Poll<()> {
        Pin::new(f).poll(&mut Context::from_waker(w))
    }

    #[test]
    fn a_waiter_is_woken_once_and_then_ready() {
        let drain = Drain::new();
        let watch = drain.watch();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut f = watch.wait();
        assert!(poll(&mut f, &waker).is_pending());
        // Polled again with the same waker: still one registration.
        assert!(poll(&mut f, &waker).is_pending());
        assert_eq!(drain.0.waiters().wakers.len(), 1);
        assert!(!watch.0.started());
        drain.start();
        drain.start();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(watch.0.started());
        assert!(poll(&mut f, &waker).is_ready());
        // A wait that starts after the drain is ready at once.
        assert!(poll(&mut watch.wait(), &waker).is_ready());
    }

    #[test]
    fn a_new_waker_replaces_the_old_and_a_dropped_wait_leaves_nothing() {
        let drain = Drain::new();
        let (a, b) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let mut f = drain.watch().wait();
        assert!(poll(&mut f, &Waker::from(Arc::clone(&a))).is_pending());
        assert!(poll(&mut f, &Waker::from(Arc::clone(&b))).is_pending());
        assert_eq!(drain.0.waiters().wakers.len(), 1);
        let mut g = drain.watch().wait();
        assert!(poll(&mut g, &Waker::from(Arc::clone(&a))).is_pending());
        drop(g);
        assert_eq!(drain.0.waiters().wakers.len(), 1);
        drain.start();
        assert_eq!(
            a.0.load(Ordering::SeqCst),
            0,
            "the replaced and the dropped wait"
        );
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
        drop(f);
        assert!(drain.0.waiters().wakers.is_empty());
    }
}
