//! `Pool`: a free list sized by demand, for objects the loop empties and refills
//! (`call_soon` handles) instead of freeing and allocating them again.
//!
//! A fixed cap either wastes memory or misses bursts: a thread calling
//! `call_soon_threadsafe` queues tens of thousands of handles while it holds the
//! GIL, and the loop runs them all in one batch. This pool keeps whatever a burst
//! gave back (up to `MAX`), so the next burst of that size allocates nothing, and
//! `trim` lets go of what went unused for a whole period: the fewest items the
//! pool held since the last trim (its low-water mark) were never needed.

/// `KEEP`: never trimmed below this many; `MAX`: never holds more (constants, so
/// the hot paths compare with immediates).
pub struct Pool<T, const KEEP: usize, const MAX: usize> {
    items: Vec<T>,
    /// The fewest items held since the last `trim`.
    low_water: usize,
}

impl<T, const KEEP: usize, const MAX: usize> Pool<T, KEEP, MAX> {
    pub const fn new() -> Self {
        Pool { items: Vec::new(), low_water: 0 }
    }

    /// An item to reuse, if the pool has one.
    #[inline]
    pub fn take(&mut self) -> Option<T> {
        let item = self.items.pop();
        self.low_water = self.low_water.min(self.items.len());
        item
    }

    /// Keeps `item` for reuse; gives it back when the pool is full.
    #[inline]
    pub fn give(&mut self, item: T) -> Option<T> {
        if self.items.len() >= MAX {
            return Some(item);
        }
        self.items.push(item);
        None
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether the pool holds more than it always keeps: only then can `trim` free
    /// anything.
    #[inline]
    pub fn above_keep(&self) -> bool {
        self.items.len() > KEEP
    }

    /// Ends a period: removes (for the caller to drop) the items that stayed unused
    /// since the last trim, leaving at least `KEEP`.
    pub fn trim(&mut self) -> Vec<T> {
        let unused = self.low_water.min(self.items.len()).saturating_sub(KEEP);
        let trimmed = self.items.split_off(self.items.len() - unused);
        self.low_water = self.items.len();
        trimmed
    }

    /// Empties the pool (for the caller to drop).
    pub fn drain(&mut self) -> Vec<T> {
        self.low_water = 0;
        std::mem::take(&mut self.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled<const KEEP: usize, const MAX: usize>(n: usize) -> Pool<usize, KEEP, MAX> {
        let mut pool = Pool::new();
        for i in 0..n {
            assert!(pool.give(i).is_none());
        }
        pool
    }

    #[test]
    fn gives_back_what_does_not_fit() {
        let mut pool = filled::<1, 3>(3);
        assert_eq!(pool.give(7), Some(7));
        assert_eq!(pool.len(), 3);
        assert_eq!(pool.take(), Some(2));
        assert_eq!(pool.give(7), None);
    }

    #[test]
    fn trim_frees_what_a_period_did_not_use() {
        let mut pool = filled::<2, 100>(10);
        // The first period starts from a low-water mark of 0: nothing is "unused" yet.
        assert!(pool.trim().is_empty());
        // A period that took 3 and gave 3 back never went below 7.
        let taken: Vec<_> = (0..3).map(|_| pool.take().unwrap()).collect();
        taken.into_iter().for_each(|i| assert!(pool.give(i).is_none()));
        assert_eq!(pool.trim().len(), 5); // 7 unused, minus 2 kept
        assert_eq!(pool.len(), 5);
        // A period with no use at all frees everything above `keep`.
        assert_eq!(pool.trim().len(), 3);
        assert_eq!(pool.len(), 2);
        assert!(pool.trim().is_empty());
    }

    #[test]
    fn a_burst_that_uses_everything_keeps_everything() {
        let mut pool = filled::<0, 100>(50);
        pool.trim();
        let burst: Vec<_> = std::iter::from_fn(|| pool.take()).collect();
        assert_eq!(burst.len(), 50);
        burst.into_iter().for_each(|i| assert!(pool.give(i).is_none()));
        assert!(pool.trim().is_empty());
        assert_eq!(pool.len(), 50);
    }

    #[test]
    fn drain_empties() {
        let mut pool = filled::<1, 10>(4);
        assert_eq!(pool.drain().len(), 4);
        assert!(pool.is_empty() && pool.take().is_none());
    }
}
