//! The timer queue: timers ordered by deadline, then by insertion order, so timers
//! with equal deadlines fire FIFO as they do in asyncio.
//!
//! Most timers arrive in deadline order: every `call_later` with the same delay
//! (each `asyncio.timeout(10)`, each `sleep(0.1)` of a polling loop, a batch of
//! `call_later(0)`) has a later deadline than the one before. Those go to the back
//! of a plain queue (`in_order`), O(1) in and out with no sifting; the rest go to
//! a binary heap, and the earlier of the two fronts is the next timer. The order is
//! exactly one heap's: both compare (deadline, insertion number).
//!
//! Cancelling a timer is O(1) for the caller: the item stays queued and is dropped
//! when it reaches the front. Like asyncio, the queue is rebuilt without the
//! cancelled items once they are the majority, so a million cancelled timers cost
//! neither memory nor time in the poll-timeout computation.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

/// What the queue needs to know about the items it holds.
pub trait Cancellable {
    fn is_cancelled(&self) -> bool;
}

struct Entry<T> {
    when: f64,
    seq: u64,
    item: T,
}

impl<T> Entry<T> {
    /// Whether `self` fires before `other` (greater in the heap's reversed order).
    fn before(&self, other: &Self) -> bool {
        self > other
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    // BinaryHeap is a max-heap: reverse so the earliest deadline (then the oldest
    // insertion) is on top. Deadlines are never NaN (the loop rejects NaN), so
    // `total_cmp` is the numeric order.
    fn cmp(&self, other: &Self) -> Ordering {
        other.when.total_cmp(&self.when).then_with(|| other.seq.cmp(&self.seq))
    }
}

/// Below this many entries a purge is not worth its cost (asyncio uses 100 too).
const MIN_PURGE_SIZE: usize = 100;

pub struct TimerQueue<T> {
    /// Timers pushed in deadline order, earliest at the front.
    in_order: VecDeque<Entry<T>>,
    /// The others.
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
    cancelled: usize,
}

impl<T: Cancellable> Default for TimerQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Cancellable> TimerQueue<T> {
    pub fn new() -> Self {
        TimerQueue { in_order: VecDeque::new(), heap: BinaryHeap::new(), next_seq: 0, cancelled: 0 }
    }

    pub fn len(&self) -> usize {
        self.in_order.len() + self.heap.len()
    }

    /// Items not known to be cancelled, given `pending` cancellations not yet
    /// passed to `note_cancelled`.
    pub fn live_len(&self, pending: usize) -> usize {
        self.len().saturating_sub(self.cancelled + pending)
    }

    pub fn is_empty(&self) -> bool {
        self.in_order.is_empty() && self.heap.is_empty()
    }

    pub fn push(&mut self, when: f64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Entry { when, seq, item };
        // seq only grows, so "not before the back" means "deadline not earlier".
        if self.in_order.back().is_none_or(|back| !entry.before(back)) {
            self.in_order.push_back(entry);
        } else {
            self.heap.push(entry);
        }
    }

    /// Records that `n` items still in the queue were cancelled.
    pub fn note_cancelled(&mut self, n: usize) {
        self.cancelled += n;
    }

    /// Drops cancelled items: all of them when they are the majority, otherwise
    /// just those at the front. Returns them so the caller can release them
    /// outside any borrow (dropping a Python object may run arbitrary code).
    pub fn purge_cancelled(&mut self) -> Vec<T> {
        let mut dropped = Vec::new();
        if self.len() > MIN_PURGE_SIZE && self.cancelled * 2 > self.len() {
            // In place, so both keep their capacity for the timers still to come
            // (every `asyncio.timeout` that ends in time leaves one cancelled).
            for _ in 0..self.in_order.len() {
                let entry = self.in_order.pop_front().expect("counted");
                if entry.item.is_cancelled() {
                    dropped.push(entry.item);
                } else {
                    self.in_order.push_back(entry); // the kept keep their order
                }
            }
            let mut entries = std::mem::take(&mut self.heap).into_vec();
            let mut i = 0;
            while i < entries.len() {
                if entries[i].item.is_cancelled() {
                    dropped.push(entries.swap_remove(i).item);
                } else {
                    i += 1;
                }
            }
            self.heap = BinaryHeap::from(entries);
            self.cancelled = 0;
        } else {
            while self.front().is_some_and(|e| e.item.is_cancelled()) {
                dropped.push(self.pop_front().item);
                self.cancelled = self.cancelled.saturating_sub(1);
            }
        }
        dropped
    }

    /// The earliest deadline, cancelled items included (call `purge_cancelled` first).
    pub fn next_deadline(&self) -> Option<f64> {
        self.front().map(|e| e.when)
    }

    /// Pops the earliest item if it is due before `end_time`; cancelled items are
    /// returned too (the caller skips them), so one call is one queue operation.
    pub fn pop_due(&mut self, end_time: f64) -> Option<T> {
        if self.front()?.when >= end_time {
            return None;
        }
        let entry = self.pop_front();
        if entry.item.is_cancelled() {
            self.cancelled = self.cancelled.saturating_sub(1);
        }
        Some(entry.item)
    }

    /// Every item, in no particular order (for garbage-collector traversal).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.in_order.iter().chain(self.heap.iter()).map(|e| &e.item)
    }

    /// Empties the queue (loop close), handing the items back to be dropped.
    pub fn drain(&mut self) -> Vec<T> {
        self.cancelled = 0;
        let heap = std::mem::take(&mut self.heap).into_vec();
        std::mem::take(&mut self.in_order).into_iter().chain(heap).map(|e| e.item).collect()
    }

    /// Whether the earliest entry is the heap's (false when both are empty).
    fn heap_first(&self) -> bool {
        match (self.in_order.front(), self.heap.peek()) {
            (Some(a), Some(b)) => b.before(a),
            (a, b) => a.is_none() && b.is_some(),
        }
    }

    /// The earliest entry of the two.
    fn front(&self) -> Option<&Entry<T>> {
        if self.heap_first() {
            self.heap.peek()
        } else {
            self.in_order.front()
        }
    }

    /// Removes the earliest entry; the queue must not be empty.
    fn pop_front(&mut self) -> Entry<T> {
        let entry = if self.heap_first() { self.heap.pop() } else { self.in_order.pop_front() };
        entry.expect("pop_front on an empty timer queue")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Clone)]
    struct Item(u32, Rc<Cell<bool>>);
    impl Cancellable for Item {
        fn is_cancelled(&self) -> bool {
            self.1.get()
        }
    }
    fn item(n: u32) -> Item {
        Item(n, Rc::new(Cell::new(false)))
    }

    fn drain_due(q: &mut TimerQueue<Item>, end: f64) -> Vec<u32> {
        std::iter::from_fn(|| q.pop_due(end)).filter(|i| !i.is_cancelled()).map(|i| i.0).collect()
    }

    #[test]
    fn orders_by_deadline_then_fifo() {
        let mut q = TimerQueue::new();
        q.push(2.0, item(1));
        q.push(1.0, item(2));
        q.push(1.0, item(3));
        q.push(-5.0, item(4));
        q.push(0.0, item(5));
        q.push(1.0, item(6));
        assert_eq!(drain_due(&mut q, 10.0), vec![4, 5, 2, 3, 6, 1]);
    }

    #[test]
    fn only_due_items_pop() {
        let mut q = TimerQueue::new();
        q.push(1.0, item(1));
        q.push(3.0, item(2));
        assert_eq!(drain_due(&mut q, 2.0), vec![1]);
        assert_eq!(q.next_deadline(), Some(3.0));
        // A deadline equal to the end time is not due yet (strictly before).
        assert_eq!(drain_due(&mut q, 3.0), Vec::<u32>::new());
    }

    #[test]
    fn cancelled_on_top_are_purged_for_the_timeout() {
        let mut q = TimerQueue::new();
        let a = item(1);
        q.push(1.0, a.clone());
        q.push(5.0, item(2));
        a.1.set(true);
        q.note_cancelled(1);
        assert_eq!(q.purge_cancelled().len(), 1);
        assert_eq!(q.next_deadline(), Some(5.0));
    }

    #[test]
    fn a_million_cancelled_timers_are_purged() {
        let mut q = TimerQueue::new();
        let keep = item(0);
        q.push(0.5, keep.clone());
        for n in 0..1_000_000 {
            let it = item(n + 1);
            q.push(1.0 + n as f64, it.clone());
            it.1.set(true);
            q.note_cancelled(1);
        }
        let dropped = q.purge_cancelled();
        assert_eq!(dropped.len(), 1_000_000);
        assert_eq!(q.len(), 1);
        assert_eq!(drain_due(&mut q, f64::INFINITY), vec![0]);
    }

    #[test]
    fn in_order_and_out_of_order_timers_fire_as_one_sorted_queue() {
        // Runs of rising deadlines (the in-order queue) mixed with earlier ones (the
        // heap), equal deadlines on both sides, some cancelled: the firing order must
        // be a stable sort by deadline, as with one heap.
        let mut q = TimerQueue::new();
        let mut expected = Vec::new();
        let mut state = 12345u64;
        let mut now = 0.0;
        for n in 0..3000u32 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let r = (state >> 33) % 100;
            let when = match r {
                0..=59 => {
                    now += 0.5; // a rising run
                    now
                }
                60..=79 => now - ((r - 60) as f64) * 0.25, // earlier than the back
                _ => ((r % 7) as f64) * 10.0,              // a few repeated deadlines
            };
            let it = item(n);
            q.push(when, it.clone());
            if r % 9 == 0 {
                it.1.set(true);
                q.note_cancelled(1);
            } else {
                expected.push((when, n));
            }
        }
        expected.sort_by(|a, b| a.0.total_cmp(&b.0)); // stable: insertion order on ties
        let mut fired = Vec::new();
        while let Some(it) = q.pop_due(f64::INFINITY) {
            if !it.is_cancelled() {
                fired.push(it.0);
            }
        }
        assert_eq!(fired, expected.iter().map(|e| e.1).collect::<Vec<_>>());
        assert!(q.is_empty());
    }

    #[test]
    fn purge_keeps_order_across_both_queues() {
        let mut q = TimerQueue::new();
        let mut live = Vec::new();
        for n in 0..300u32 {
            // Descending deadlines every third push send those to the heap.
            let when = if n % 3 == 0 { 1000.0 - n as f64 } else { n as f64 };
            let it = item(n);
            q.push(when, it.clone());
            if n % 4 == 0 {
                live.push((when, n));
            } else {
                it.1.set(true);
                q.note_cancelled(1);
            }
        }
        assert_eq!(q.purge_cancelled().len(), 300 - live.len(), "the majority: all purged");
        assert_eq!(q.len(), live.len());
        live.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(q.next_deadline(), Some(live[0].0));
        assert_eq!(drain_due(&mut q, f64::INFINITY), live.iter().map(|e| e.1).collect::<Vec<_>>());
    }

    #[test]
    fn infinite_deadline_never_due() {
        let mut q = TimerQueue::new();
        q.push(f64::INFINITY, item(1));
        assert_eq!(drain_due(&mut q, 1e300), Vec::<u32>::new());
        assert_eq!(q.drain().len(), 1);
    }
}
