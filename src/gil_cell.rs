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
