//! The `ferroloop._ferroloop` extension module: the Rust half of `ferroloop.Loop`.
//!
//! Modules by asyncio concept: `handles` (Handle, TimerHandle), `scheduling`
//! (call_soon/call_later; `fastcall` is their C entry), `dispatch` (the loop iteration), `fd_callbacks`
//! (add_reader/add_writer), `sock` and `sendfile` (the `sock_*` coroutines), `buffer`
//! (Python buffers as bytes), `transport`/`listener` (streams), `tls` (the TLS layer
//! over a stream transport), `udp` (datagram transports), `pipes` (pipe transports),
//! `subprocess` (child exit watching), `unix_paths` (UNIX socket files), `event_loop` (the class that lists the Rust API).

mod buffer;
mod dispatch;
mod event_loop;
mod fastcall;
mod fd_callbacks;
mod flow_control;
mod gil_cell;
mod handles;
mod io_context;
mod listener;
mod pipes;
mod reading;
mod scheduling;
mod sendfile;
mod signals;
mod sock;
mod subprocess;
mod tls;
mod transport;
mod udp;
mod unix_paths;

use pyo3::prelude::*;

// GilCell relies on the GIL for exclusion: on free-threaded builds, importing this
// module must re-enable the GIL (PyO3 0.30 defaults to `gil_used = false`).
#[pymodule(gil_used = true)]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::LoopCore>()?;
    fastcall::install(
        &m.py().get_type::<event_loop::LoopCore>(),
        &m.py().get_type::<handles::TimerHandle>(),
        &m.py().get_type::<sock::SockOp>(),
    )?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    m.add_class::<sock::SockOp>()?;
    m.add_class::<transport::StreamTransportCore>()?;
    m.add_class::<listener::Listener>()?;
    m.add_class::<tls::TlsCore>()?;
    m.add_class::<udp::DatagramTransportCore>()?;
    m.add_class::<pipes::PipeTransportCore>()?;
    m.add_class::<subprocess::ChildWatch>()?;
    m.add_function(wrap_pyfunction!(subprocess::wait_child_blocking, m)?)?;
    m.add_function(wrap_pyfunction!(fastcall::install_transport_method, m)?)?;
    m.add_function(wrap_pyfunction!(unix_paths::remove_if_socket, m)?)?;
    m.add_function(wrap_pyfunction!(unix_paths::inode_of, m)?)?;
    m.add_function(wrap_pyfunction!(unix_paths::remove_if_inode, m)?)?;
    Ok(())
}
