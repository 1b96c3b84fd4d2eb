//! The OS-facing core of ferroloop, free of Python types so that `cargo test` can
//! exercise it directly.
//!
//! It owns the three things an event loop iteration needs from the operating system
//! and from data structures: the clock (`clock`), the timer queue ordered by deadline
//! (`timers`), and readiness polling with a cross-thread waker (`poller`); plus the
//! non-blocking socket syscalls behind the loop's `sock_*` methods (`sockio`), and the
//! demand-sized free list the loop keeps emptied handles in (`pool`). The PyO3
//! crate above maps asyncio's API onto these pieces; nothing here knows what a
//! callback is.

pub mod child;
pub mod clock;
pub mod dgram;
pub mod poller;
pub mod pool;
pub mod sockio;
pub mod timers;
pub mod writebuf;
