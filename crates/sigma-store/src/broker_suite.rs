//! The behaviour tests of [`Broker`], written once and run against every
//! implementation.
//!
//! Test-only; the broker's counterpart of `suite.rs`. Each test gets a
//! fresh broker from a factory `fn(handler, history_size) -> Arc<dyn
//! Broker>` and a [`Recorder`] as this node's handler, and uses nothing
//! but the trait. Adding an implementation is one line at the bottom:
//! `broker_suite!(name: factory);`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use crate::{Broker, BrokerHandler, MemoryBroker, Publication, StreamPosition};

/// Makes a broker delivering to `handler` that keeps `history_size`
/// publications per channel.
pub(crate) type Factory = fn(Weak<dyn BrokerHandler>, usize) -> Arc<dyn Broker>;

/// This node's handler: what it was handed, in order.
#[derive(Default)]
pub(crate) struct Recorder(Mutex<Vec<(String, Publication)>>);

impl BrokerHandler for Recorder {
    fn handle_publication(&self, channel: &str, publication: &Publication) {
        self.0
            .lock()
            .unwrap()
            .push((channel.to_owned(), publication.clone()));
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
}

/// A broker and the recorder it delivers to (kept alive by the test).
fn open(factory: Factory, history_size: usize) -> (Arc<dyn Broker>, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let weak: Weak<dyn BrokerHandler> = Arc::downgrade(&recorder) as _;
    (factory(weak, history_size), recorder)
}

/// Declares `mod $name` with one `#[test]` per behaviour test, each on a
/// fresh broker from `$factory` (a [`Factory`]).
macro_rules! broker_suite {
    ($name:ident: $factory:expr) => {
        mod $name {
            broker_suite!(@tests $factory;
                publishing_to_a_channel_nobody_listens_to_keeps_nothing,
                offsets_count_from_one_in_one_epoch,
                channels_are_separate,
                unsubscribing_stops_delivery,
                a_position_is_never_given_twice,
                concurrent_publishers_are_seen_in_one_order,
                history_is_bounded_and_filtered,
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

pub(crate) fn publishing_to_a_channel_nobody_listens_to_keeps_nothing(factory: Factory) {
    let (b, rec) = open(factory, 8);
    assert_eq!(b.publish("nobody", data("x")).unwrap(), None);
    let h = b.history("nobody", None, 10).unwrap();
    assert!(h.publications.is_empty());
    assert_eq!(h.position.offset, 0);
    assert_eq!(rec.len(), 0);
}

pub(crate) fn offsets_count_from_one_in_one_epoch(factory: Factory) {
    let (b, rec) = open(factory, 8);
    let start = b.subscribe("c").unwrap();
    assert_eq!(start.offset, 0);
    let mut got = Vec::new();
    for d in ["a", "b", "c"] {
        got.push(b.publish("c", data(d)).unwrap().unwrap());
    }
    let want: Vec<_> = (1..=3)
        .map(|offset| StreamPosition {
            offset,
            epoch: start.epoch,
        })
        .collect();
    assert_eq!(got, want);
    // Delivered in order, with the payloads as published.
    let delivered = rec.0.lock().unwrap().clone();
    let payloads: Vec<_> = delivered.iter().map(|(_, p)| p.data.clone()).collect();
    assert_eq!(payloads, [data("a"), data("b"), data("c")]);
    assert_eq!(rec.offsets("c"), [1, 2, 3]);
    // Subscribing again is idempotent and reports the top.
    assert_eq!(b.subscribe("c").unwrap(), want[2]);
    b.publish("c", data("d")).unwrap();
    assert_eq!(rec.offsets("c"), [1, 2, 3, 4], "delivered once, not twice");
}

pub(crate) fn channels_are_separate(factory: Factory) {
    let (b, rec) = open(factory, 8);
    b.subscribe("a").unwrap();
    b.subscribe("b").unwrap();
    b.publish("a", data("1")).unwrap();
    b.publish("a", data("2")).unwrap();
    assert_eq!(b.publish("b", data("3")).unwrap().unwrap().offset, 1);
    assert_eq!(rec.offsets("a"), [1, 2]);
    assert_eq!(rec.offsets("b"), [1]);
    let h = b.history("b", None, 10).unwrap();
    assert_eq!(h.publications.len(), 1);
    assert_eq!(h.publications[0].data, data("3"));
}

pub(crate) fn unsubscribing_stops_delivery(factory: Factory) {
    let (b, rec) = open(factory, 8);
    b.subscribe("c").unwrap();
    b.publish("c", data("1")).unwrap();
    b.unsubscribe("c").unwrap();
    b.unsubscribe("c").unwrap(); // idempotent
    b.publish("c", data("2")).unwrap();
    assert_eq!(rec.offsets("c"), [1]);
}

pub(crate) fn a_position_is_never_given_twice(factory: Factory) {
    let (b, _rec) = open(factory, 8);
    let mut seen = HashSet::new();
    for _ in 0..3 {
        seen.insert(b.subscribe("c").unwrap());
        for _ in 0..3 {
            let p = b.publish("c", data("x")).unwrap().unwrap();
            assert!(seen.insert(p), "{p:?} given twice");
        }
        b.unsubscribe("c").unwrap();
    }
}

pub(crate) fn concurrent_publishers_are_seen_in_one_order(factory: Factory) {
    const THREADS: u64 = 4;
    const EACH: u64 = 200;
    let (b, rec) = open(factory, 0);
    let epoch = b.subscribe("c").unwrap().epoch;
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                let mut last = 0;
                for _ in 0..EACH {
                    let p = b.publish("c", data("x")).unwrap().unwrap();
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
    let want: Vec<u64> = (1..=THREADS * EACH).collect();
    assert_eq!(rec.offsets("c"), want);
}

pub(crate) fn history_is_bounded_and_filtered(factory: Factory) {
    let (b, _rec) = open(factory, 3);
    let epoch = b.subscribe("c").unwrap().epoch;
    for d in ["1", "2", "3", "4", "5"] {
        b.publish("c", data(d)).unwrap();
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
    assert_eq!(offsets(b.history("c", None, 10).unwrap()), [3, 4, 5]);
    assert_eq!(offsets(b.history("c", Some(3), 10).unwrap()), [4, 5]);
    assert_eq!(
        offsets(b.history("c", Some(5), 10).unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(offsets(b.history("c", None, 1).unwrap()), [3]);
    assert_eq!(offsets(b.history("c", None, 0).unwrap()), Vec::<u64>::new());
    let h = b.history("c", Some(4), 10).unwrap();
    assert_eq!(h.publications[0].data, data("5"));
}

fn memory(handler: Weak<dyn BrokerHandler>, history_size: usize) -> Arc<dyn Broker> {
    Arc::new(MemoryBroker::new(handler, history_size))
}

// The implementations. A new one adds its line here.
broker_suite!(memory: super::memory);
