//! The `ferroloop._ferroloop` extension module: the Rust half of `ferroloop.Loop`.
//!
//! Modules by asyncio concept: `handles` (Handle, TimerHandle), `scheduling`
//! (call_soon/call_later), `dispatch` (the loop iteration), `fd_callbacks`
//! (add_reader/add_writer), `event_loop` (the class that lists the Rust API).

mod dispatch;
mod event_loop;
mod fd_callbacks;
mod gil_cell;
mod handles;
mod scheduling;

use pyo3::prelude::*;

#[pymodule]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::LoopCore>()?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    Ok(())
}
