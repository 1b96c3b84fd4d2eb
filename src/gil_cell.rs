//! `GilCell`: interior mutability for loop state, guarded by the GIL.
//!
//! Every Python-facing method of the loop runs with the GIL held, and the loop thread
//! only touches its state with the GIL held, so the GIL already serialises all
//! access; a lock on top would only cost time on the hottest paths (`call_soon`).
//! Access goes through `with`, which takes a `Python` token as proof. The module is
//! declared GIL-using, so free-threaded builds re-enable the GIL before importing it.
//!
//! The closure passed to `with` must not run Python code: that could re-enter the
//! same cell (for example a `__del__` triggered by dropping a handle inside it).
//! Move objects out and drop them after `with` returns. Re-entry is detected and
//! panics (which PyO3 turns into an exception) rather than aliasing.
//!
//! `GilFlag` and `GilCounter` are the same idea for a flag or a count that other
//! threads may read: written only with the GIL held, so without locked instructions;
//! `GilRc` is an `Arc` whose count is kept the same way.

use std::cell::{Cell, UnsafeCell};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use pyo3::Python;

pub struct GilCell<T> {
    value: UnsafeCell<T>,
    borrowed: Cell<bool>,
}

// SAFETY: all access to `value` and `borrowed` happens inside `with`, which requires
// a `Python` token, i.e. the GIL is held by the calling thread. The GIL is a mutex,
// so no two threads are ever inside `with` at once; `T: Send` is required because
// the value may be touched from whichever thread holds the GIL.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub const fn new(value: T) -> Self {
        GilCell { value: UnsafeCell::new(value), borrowed: Cell::new(false) }
    }

    /// Runs `f` with exclusive access to the value. See the module doc for the rule
    /// about not running Python code inside `f`.
    #[inline]
    pub fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> R {
        assert!(!self.borrowed.replace(true), "ferroloop: re-entrant access to loop state");
        struct Release<'a>(&'a Cell<bool>);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let _release = Release(&self.borrowed);
        // SAFETY: the GIL is held (token), and `borrowed` guarantees this is the only
        // live reference; it is released when `f` returns or unwinds.
        f(unsafe { &mut *self.value.get() })
    }

    /// Direct access through an exclusive reference (`Drop`, which has no token).
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    /// Read access for `__traverse__`, which has no `Python` token but runs with the
    /// GIL held by the collector. `None` while a `with` is active (a collection can
    /// start inside one only if its closure allocated a Python object, which the
    /// module rule forbids): skipping a visit only keeps objects alive, never frees
    /// them early.
    pub fn get_for_traverse(&self) -> Option<&T> {
        if self.borrowed.get() {
            return None;
        }
        // SAFETY: tp_traverse is called by the garbage collector with the GIL held;
        // no `with` is active (checked above) and traversal runs no Python code
        // that could start one, so no mutable reference exists.
        Some(unsafe { &*self.value.get() })
    }
}

/// A flag that is only ever changed with the GIL held, readable from anywhere.
///
/// It is an atomic only so the structs holding it are `Sync`; changes are a plain
/// load and store, never a read-modify-write: the GIL already orders every writer,
/// and a locked instruction (`xchg`, `lock inc`) costs tens of cycles and drains
/// the store buffer — on the `call_soon`/`call_later` paths, several of them
/// weighed as much as the timer heap.
pub struct GilFlag(AtomicBool);

impl GilFlag {
    pub const fn new(value: bool) -> Self {
        GilFlag(AtomicBool::new(value))
    }

    #[inline]
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn set(&self, _py: Python<'_>, value: bool) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// Sets the flag and returns what it was.
    #[inline]
    pub fn replace(&self, py: Python<'_>, value: bool) -> bool {
        let old = self.get();
        self.set(py, value);
        old
    }
}

/// A counter changed only with the GIL held (see `GilFlag` for why not `fetch_add`).
pub struct GilCounter(AtomicUsize);

impl GilCounter {
    pub const fn new() -> Self {
        GilCounter(AtomicUsize::new(0))
    }

    #[inline]
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn add(&self, _py: Python<'_>, n: usize) {
        self.0.store(self.get() + n, Ordering::Relaxed);
    }

    /// Returns the count and resets it to zero.
    #[inline]
    pub fn take(&self, _py: Python<'_>) -> usize {
        let n = self.get();
        self.0.store(0, Ordering::Relaxed);
        n
    }
}

/// A shared pointer whose count changes only with the GIL held: an `Arc` without
/// the locked increment and decrement (see `GilFlag`), for the timer slot that a
/// `TimerHandle` and the loop's timer queue share, one clone and two drops per timer.
///
/// Cloning takes a `Python` token. Dropping cannot, so the rule is where the
/// pointers live: only inside Python objects' Rust data (freed by `tp_dealloc`,
/// which holds the GIL) and the loop state behind a `GilCell`, or in locals of
/// functions that hold a token. Debug builds check the GIL on every drop.
pub struct GilRc<T> {
    ptr: NonNull<GilRcBox<T>>,
}

struct GilRcBox<T> {
    count: Cell<usize>,
    value: T,
}

// SAFETY: the count is only read or changed with the GIL held (clone and
// `is_unique` take a token, drops happen under the GIL by the placement rule
// above), and the GIL is a mutex, so no two threads touch it at once. `T: Send +
// Sync` because the value is shared and may be dropped on whichever thread holds
// the GIL.
unsafe impl<T: Send + Sync> Send for GilRc<T> {}
// SAFETY: as for Send: `&GilRc` only gives `&T` and a token-guarded clone.
unsafe impl<T: Send + Sync> Sync for GilRc<T> {}

impl<T> GilRc<T> {
    pub fn new(value: T) -> Self {
        let boxed = Box::new(GilRcBox { count: Cell::new(1), value });
        GilRc { ptr: NonNull::from(Box::leak(boxed)) }
    }

    #[inline]
    pub fn clone_ref(&self, _py: Python<'_>) -> Self {
        let inner = self.inner();
        inner.count.set(inner.count.get() + 1);
        GilRc { ptr: self.ptr }
    }

    /// No other pointer to the value exists.
    #[inline]
    pub fn is_unique(&self, _py: Python<'_>) -> bool {
        self.inner().count.get() == 1
    }

    #[inline]
    fn inner(&self) -> &GilRcBox<T> {
        // SAFETY: the box lives while any pointer to it does, and this is one.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> std::ops::Deref for GilRc<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.inner().value
    }
}

impl<T> Drop for GilRc<T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: PyGILState_Check only reads the calling thread's state.
        debug_assert!(unsafe { pyo3::ffi::PyGILState_Check() } == 1, "GilRc dropped without the GIL");
        let inner = self.inner();
        let left = inner.count.get() - 1;
        inner.count.set(left);
        if left == 0 {
            // SAFETY: the last pointer is going: the box came from `Box::leak` in
            // `new`, and nothing can reach it any more.
            drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
        }
    }
}
