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

use std::cell::{Cell, UnsafeCell};

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
    pub fn new(value: T) -> Self {
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

    /// Shared access for the garbage collector's `__traverse__`, which runs with the
    /// GIL held but without a `Python` token. `None` while a `with` borrow is active
    /// (a collection triggered inside a closure): visiting nothing then only makes
    /// the collector keep objects alive, never free them early.
    #[inline]
    pub fn peek_for_gc(&self) -> Option<&T> {
        if self.borrowed.get() {
            return None;
        }
        // SAFETY: the GIL is held by the collecting thread, so no other thread is
        // inside `with`, and this thread is not either (checked above).
        Some(unsafe { &*self.value.get() })
    }
}
