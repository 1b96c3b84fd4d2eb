//! The timer queue: one binary heap ordered by deadline, then by insertion order, so
//! timers with equal deadlines fire FIFO as they do in asyncio.
//!
//! Cancelling a timer is O(1) for the caller: the item stays in the heap and is
//! dropped when it reaches the top. Like asyncio, the queue is rebuilt without the
//! cancelled items once they are the majority, so a million cancelled timers cost
//! neither memory nor time in the poll-timeout computation.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// What the queue needs to know about the items it holds.
pub trait Cancellable {
    fn is_cancelled(&self) -> bool;
}

struct Entry<T> {
    when: f64,
    seq: u64,
    item: T,
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
    // insertion) is on top. Deadlines are never NaN (the loop rejects NaN).
    fn cmp(&self, other: &Self) -> Ordering {
        other.when.total_cmp(&self.when).then_with(|| other.seq.cmp(&self.seq))
    }
}

/// Below this many entries a purge is not worth its cost (asyncio uses 100 too).
const MIN_PURGE_SIZE: usize = 100;

pub struct TimerQueue<T> {
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
        TimerQueue { heap: BinaryHeap::new(), next_seq: 0, cancelled: 0 }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Items not known to be cancelled, given `pending` cancellations not yet
    /// passed to `note_cancelled`.
    pub fn live_len(&self, pending: usize) -> usize {
        self.heap.len().saturating_sub(self.cancelled + pending)
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn push(&mut self, when: f64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { when, seq, item });
    }

    /// Records that `n` items still in the queue were cancelled.
    pub fn note_cancelled(&mut self, n: usize) {
        self.cancelled += n;
    }

    /// Drops cancelled items: the whole heap when they are the majority, otherwise
    /// just those on top. Returns them so the caller can release them outside any
    /// borrow (dropping a Python object may run arbitrary code).
    pub fn purge_cancelled(&mut self) -> Vec<T> {
        let mut dropped = Vec::new();
        if self.heap.len() > MIN_PURGE_SIZE && self.cancelled * 2 > self.heap.len() {
            let (keep, gone): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.heap).into_vec().into_iter().partition(|e| !e.item.is_cancelled());
            self.heap = BinaryHeap::from(keep);
            dropped.extend(gone.into_iter().map(|e| e.item));
            self.cancelled = 0;
        } else {
            while self.heap.peek().is_some_and(|e| e.item.is_cancelled()) {
                dropped.push(self.heap.pop().unwrap().item);
                self.cancelled = self.cancelled.saturating_sub(1);
            }
        }
        dropped
    }

    /// The earliest deadline, cancelled items included (call `purge_cancelled` first).
    pub fn next_deadline(&self) -> Option<f64> {
        self.heap.peek().map(|e| e.when)
    }

    /// Pops the earliest item if it is due before `end_time`; cancelled items are
    /// returned too (the caller skips them), so one call is one heap operation.
    pub fn pop_due(&mut self, end_time: f64) -> Option<T> {
        if self.heap.peek()?.when >= end_time {
            return None;
        }
        let entry = self.heap.pop().unwrap();
        if entry.item.is_cancelled() {
            self.cancelled = self.cancelled.saturating_sub(1);
        }
        Some(entry.item)
    }

    /// Every item, in no particular order (for garbage-collector traversal).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|e| &e.item)
    }

    /// Empties the queue (loop close), handing the items back to be dropped.
    pub fn drain(&mut self) -> Vec<T> {
        self.cancelled = 0;
        std::mem::take(&mut self.heap).into_vec().into_iter().map(|e| e.item).collect()
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
    fn infinite_deadline_never_due() {
        let mut q = TimerQueue::new();
        q.push(f64::INFINITY, item(1));
        assert_eq!(drain_due(&mut q, 1e300), Vec::<u32>::new());
        assert_eq!(q.drain().len(), 1);
    }
}
