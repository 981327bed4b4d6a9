//! The behaviour tests of [`Broker`], written once and run against every
//! implementation.
//!
//! Test-only; the broker's counterpart of `suite.rs`. Each test gets a
//! fresh broker from a [`Factory`] and a [`Recorder`] as this node's
//! handler, and uses nothing but the trait, on a runtime of its own
//! (Redis delivers from a task). Deliveries are awaited, never slept
//! for: [`Recorder::wait`] blocks until the count is reached. Adding an
//! implementation is one line at the bottom: `broker_suite!(name: factory);`.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{Broker, BrokerHandler, Keep, MemoryBroker, Publication, StreamPosition};

/// Makes a broker delivering to `handler` (`None`: this implementation's
/// server is not there, the test says so and passes).
pub(crate) type Factory =
    fn(Weak<dyn BrokerHandler>) -> Pin<Box<dyn Future<Output = Option<Arc<dyn Broker>>>>>;

/// This node's handler: what it was handed, in order.
#[derive(Default)]
pub(crate) struct Recorder(Mutex<Vec<(String, Publication)>>, Condvar);

impl BrokerHandler for Recorder {
    fn handle_publication(&self, channel: &str, publication: &Publication) {
        self.0
            .lock()
            .unwrap()
            .push((channel.to_owned(), publication.clone()));
        self.1.notify_all();
    }
}

impl Recorder {
    fn offsets(&self, channel: &str) -> Vec<u64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _)| c == channel)
            .map(|(_, p)| p.position.offset)
            .collect()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Blocks until `n` publications were handed over (at most 10 s).
    fn wait(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = self.0.lock().unwrap();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{} of {n} publications delivered",
                got.len()
            );
            got = self.1.wait_timeout(got, left).unwrap().0;
        }
    }
}

/// One test's broker, its recorder and its runtime.
struct Bench {
    b: Arc<dyn Broker>,
    rec: Arc<Recorder>,
    rt: tokio::runtime::Runtime,
    /// What each publish keeps.
    keep: Keep,
}

impl Bench {
    fn publish(&self, channel: &str, d: &'static str) -> Option<StreamPosition> {
        self.rt
            .block_on(self.b.publish(channel, data(d), self.keep))
            .unwrap()
    }

    fn history(&self, channel: &str, after: Option<u64>, limit: usize) -> crate::History {
        self.rt
            .block_on(self.b.history(channel, after, limit))
            .unwrap()
    }
}

/// A broker and the recorder it delivers to (kept alive by the test).
fn open(factory: Factory, history_size: usize) -> Option<Bench> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rec = Arc::new(Recorder::default());
    let weak: Weak<dyn BrokerHandler> = Arc::downgrade(&rec) as _;
    let b = rt.block_on(factory(weak))?;
    let keep = Keep {
        size: history_size,
        ttl: Duration::from_secs(60),
    };
    Some(Bench { b, rec, rt, keep })
}

/// Declares `mod $name` with one `#[test]` per behaviour test, each on a
/// fresh broker from `$factory` (a [`Factory`]).
macro_rules! broker_suite {
    ($name:ident: $factory:expr) => {
        mod $name {
            broker_suite!(@tests $factory;
                publishing_to_a_channel_nobody_listens_to_delivers_nothing,
                offsets_count_from_one_in_one_epoch,
                channels_are_separate,
                unsubscribing_stops_delivery,
                a_position_is_never_given_twice,
                concurrent_publishers_are_seen_in_one_order,
                history_is_bounded_and_filtered,
                the_epoch_is_known_before_the_first_publish,
                a_subscriber_that_left_finds_what_it_missed,
            );
        }
    };
    (@tests $factory:expr; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                $crate::broker_suite::$test($factory);
            }
        )*
    };
}

fn data(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

pub(crate) fn publishing_to_a_channel_nobody_listens_to_delivers_nothing(factory: Factory) {
    let Some(t) = open(factory, 8) else { return };
    match t.publish("nobody", "x") {
        // The in-process broker knows nobody listens: nothing is kept.
        None => {
            let h = t.history("nobody", None, 10);
            assert!(h.publications.is_empty());
            assert_eq!(h.position.offset, 0);
        }
        Some(p) => assert_eq!(p.offset, 1),
    }
    // A later publication on a subscribed channel is the first delivered.
    t.b.subscribe("c").unwrap();
    t.publish("c", "y");
    t.rec.wait(1);
    assert_eq!(t.rec.len(), 1);
    assert_eq!(t.rec.offsets("c"), [1]);
}

pub(crate) fn offsets_count_from_one_in_one_epoch(factory: Factory) {
    let Some(t) = open(factory, 8) else { return };
    t.b.subscribe("c").unwrap();
    let start = t.history("c", None, 0).position;
    assert_eq!(start.offset, 0);
    let got: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|d| t.publish("c", d).unwrap())
        .collect();
    let epoch = got[0].epoch;
    let want: Vec<_> = (1..=3)
        .map(|offset| StreamPosition { offset, epoch })
        .collect();
    assert_eq!(got, want);
    t.rec.wait(3);
    // Delivered in order, with the payloads as published.
    let delivered = t.rec.0.lock().unwrap().clone();
    let payloads: Vec<_> = delivered.iter().map(|(_, p)| p.data.clone()).collect();
    assert_eq!(payloads, [data("a"), data("b"), data("c")]);
    assert_eq!(t.rec.offsets("c"), [1, 2, 3]);
    assert_eq!(delivered[2].1.position, want[2]);
    // The stream reports its top; subscribing again is idempotent.
    assert_eq!(t.history("c", None, 0).position, want[2]);
    t.b.subscribe("c").unwrap();
    t.publish("c", "d");
    t.rec.wait(4);
    assert_eq!(
        t.rec.offsets("c"),
        [1, 2, 3, 4],
        "delivered once, not twice"
    );
}

pub(crate) fn channels_are_separate(factory: Factory) {
    let Some(t) = open(factory, 8) else { return };
    t.b.subscribe("a").unwrap();
    t.b.subscribe("b").unwrap();
    t.publish("a", "1");
    t.publish("a", "2");
    assert_eq!(t.publish("b", "3").unwrap().offset, 1);
    t.rec.wait(3);
    assert_eq!(t.rec.offsets("a"), [1, 2]);
    assert_eq!(t.rec.offsets("b"), [1]);
    let h = t.history("b", None, 10);
    assert_eq!(h.publications.len(), 1);
    assert_eq!(h.publications[0].data, data("3"));
}

pub(crate) fn unsubscribing_stops_delivery(factory: Factory) {
    let Some(t) = open(factory, 8) else { return };
    t.b.subscribe("c").unwrap();
    t.b.subscribe("d").unwrap();
    t.publish("c", "1");
    t.rec.wait(1);
    t.b.unsubscribe("c");
    t.b.unsubscribe("c"); // idempotent
    t.publish("c", "2");
    // A publication on "d" after it: once it is in, "c"'s would be too.
    t.publish("d", "3");
    t.rec.wait(2);
    assert_eq!(t.rec.offsets("c"), [1]);
    assert_eq!(t.rec.offsets("d"), [1]);
}

pub(crate) fn a_position_is_never_given_twice(factory: Factory) {
    let Some(t) = open(factory, 8) else { return };
    let mut seen = HashSet::new();
    for _ in 0..3 {
        t.b.subscribe("c").unwrap();
        for _ in 0..3 {
            let p = t.publish("c", "x").unwrap();
            assert!(seen.insert(p), "{p:?} given twice");
        }
        t.b.unsubscribe("c");
    }
}

pub(crate) fn concurrent_publishers_are_seen_in_one_order(factory: Factory) {
    const THREADS: u64 = 4;
    const EACH: u64 = 200;
    let Some(t) = open(factory, 0) else { return };
    t.b.subscribe("c").unwrap();
    let epoch = t.publish("c", "first").unwrap().epoch;
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let b = Arc::clone(&t.b);
            let keep = t.keep;
            let rt = t.rt.handle().clone();
            std::thread::spawn(move || {
                let mut last = 0;
                for _ in 0..EACH {
                    let p = rt
                        .block_on(b.publish("c", data("x"), keep))
                        .unwrap()
                        .unwrap();
                    assert_eq!(p.epoch, epoch);
                    assert!(p.offset > last, "a publisher's offsets go up");
                    last = p.offset;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // Every offset once, and the handler saw them in offset order.
    let n = THREADS * EACH + 1;
    t.rec.wait(usize::try_from(n).unwrap());
    let want: Vec<u64> = (1..=n).collect();
    assert_eq!(t.rec.offsets("c"), want);
}

pub(crate) fn history_is_bounded_and_filtered(factory: Factory) {
    let Some(t) = open(factory, 3) else { return };
    t.b.subscribe("c").unwrap();
    let epoch = t.publish("c", "1").unwrap().epoch;
    for d in ["2", "3", "4", "5"] {
        t.publish("c", d);
    }
    let offsets = |h: crate::History| {
        assert_eq!(
            h.position,
            StreamPosition { offset: 5, epoch },
            "the top is reported"
        );
        h.publications
            .into_iter()
            .map(|p| p.position.offset)
            .collect::<Vec<_>>()
    };
    assert_eq!(offsets(t.history("c", None, 10)), [3, 4, 5]);
    assert_eq!(offsets(t.history("c", Some(3), 10)), [4, 5]);
    assert_eq!(offsets(t.history("c", Some(5), 10)), Vec::<u64>::new());
    assert_eq!(offsets(t.history("c", None, 1)), [3]);
    assert_eq!(offsets(t.history("c", None, 0)), Vec::<u64>::new());
    let h = t.history("c", Some(4), 10);
    assert_eq!(h.publications[0].data, data("5"));
    assert_eq!(
        h.publications[0].position,
        StreamPosition { offset: 5, epoch }
    );
}

pub(crate) fn the_epoch_is_known_before_the_first_publish(factory: Factory) {
    let Some(t) = open(factory, 8) else { return };
    t.b.subscribe("c").unwrap();
    // A subscriber is told the position before anything is published;
    // the first publish must not move it to another epoch.
    let before = t.history("c", None, 0).position;
    assert_eq!(before.offset, 0);
    let first = t.publish("c", "1").unwrap();
    assert_eq!(first.epoch, before.epoch);
    assert_eq!(first.offset, 1);
    assert_eq!(t.history("c", None, 0).position, first);
}

pub(crate) fn a_subscriber_that_left_finds_what_it_missed(factory: Factory) {
    let Some(t) = open(factory, 8) else { return };
    t.b.subscribe("c").unwrap();
    let p1 = t.publish("c", "1").unwrap();
    t.rec.wait(1);
    // Its last subscriber left (a client lost its connection): what is
    // published meanwhile is kept, in the same epoch.
    t.b.unsubscribe("c");
    let p2 = t.publish("c", "2").unwrap();
    assert_eq!(p2.epoch, p1.epoch);
    t.b.subscribe("c").unwrap();
    let h = t.history("c", Some(p1.offset), 10);
    assert_eq!(h.position, p2);
    assert_eq!(h.publications.len(), 1);
    assert_eq!(h.publications[0].data, data("2"));
    assert_eq!(h.publications[0].position, p2);
}

/// A broker under test, or `None` where its server is not running.
pub(crate) type NewBroker = Pin<Box<dyn Future<Output = Option<Arc<dyn Broker>>>>>;

fn memory(handler: Weak<dyn BrokerHandler>) -> NewBroker {
    let b: Arc<dyn Broker> = Arc::new(MemoryBroker::new(handler));
    Box::pin(std::future::ready(Some(b)))
}

// The implementations. A new one adds its line here.
broker_suite!(memory: super::memory);
broker_suite!(redis: crate::redis::tests::suite_broker);
