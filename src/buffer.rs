//! `BufView`: a borrowed Python buffer (`bytes`, `bytearray`, `memoryview`, `array`,
//! `mmap`...) seen as plain bytes, the way the socket module's `y*`/`w*` arguments see
//! it: any C-contiguous buffer, whatever its item format.
//!
//! PyO3's `PyBuffer<u8>` insists on a byte item format, which would reject an
//! `array('i')` that `socket.send` accepts, hence this small wrapper. While a view is
//! held the exporter cannot resize the object (a `bytearray` raises `BufferError`),
//! which is what keeps a pending `sock_sendall` from losing or corrupting data, as the
//! `memoryview` asyncio keeps does.

use std::os::raw::c_int;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

pub struct BufView {
    view: ffi::Py_buffer,
}

// SAFETY: a `BufView` is created, read and released only by code holding the GIL
// (the loop's operations run with it, and `Drop` attaches to the interpreter before
// releasing). The raw pointers inside are never dereferenced without it.
unsafe impl Send for BufView {}
// SAFETY: shared access only reads the pointer and length, under the GIL as above.
unsafe impl Sync for BufView {}

impl BufView {
    /// A contiguous view of `obj`; `writable` asks for a writable one (`w*`).
    pub fn get(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<Self> {
        let flags: c_int = if writable { ffi::PyBUF_WRITABLE } else { ffi::PyBUF_SIMPLE };
        let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
        // SAFETY: `obj` is a live object (GIL held through `Bound`); `view` is valid
        // for writes; on failure nothing needs releasing.
        if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) } != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        // SAFETY: PyObject_GetBuffer succeeded and filled `view`.
        Ok(BufView { view: unsafe { view.assume_init() } })
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.view.len.max(0) as usize
    }

    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        if self.len() == 0 {
            return &[];
        }
        // SAFETY: the exporter guarantees `buf` points to `len` readable, contiguous
        // bytes for as long as the view is held (PyBUF_SIMPLE implies contiguity).
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.len()) }
    }

    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len() == 0 {
            return &mut [];
        }
        debug_assert!(self.view.readonly == 0);
        // SAFETY: as in `as_slice`, and the view was requested writable (`get` with
        // `writable`; read-only exporters refuse PyBUF_WRITABLE).
        unsafe { std::slice::from_raw_parts_mut(self.view.buf as *mut u8, self.len()) }
    }
}

impl Drop for BufView {
    fn drop(&mut self) {
        Python::attach(|_| {
            // SAFETY: the view was filled by a successful PyObject_GetBuffer and is
            // released exactly once, with the GIL held.
            unsafe { ffi::PyBuffer_Release(&mut self.view) }
        });
    }
}

/// A read-only buffer for the length of a call: an exact `bytes` read in place (it is
/// immutable: no buffer export to make and release, and a write queue may keep it by
/// reference), anything else through a `BufView`. `BufView` itself is for views kept
/// beyond the call (`sock_sendall`) and writable ones.
pub enum ReadBuf<'a, 'py> {
    Bytes(&'a Bound<'py, PyBytes>),
    View(BufView),
}

impl<'a, 'py> ReadBuf<'a, 'py> {
    #[inline]
    pub fn get(obj: &'a Bound<'py, PyAny>) -> PyResult<Self> {
        match obj.cast_exact::<PyBytes>() {
            Ok(bytes) => Ok(ReadBuf::Bytes(bytes)),
            Err(_) => BufView::get(obj, false).map(ReadBuf::View),
        }
    }

    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            ReadBuf::Bytes(bytes) => bytes.as_bytes(),
            ReadBuf::View(view) => view.as_slice(),
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// The `bytes` object, when it is one.
    #[inline]
    pub fn bytes(&self) -> Option<&'a Bound<'py, PyBytes>> {
        match self {
            ReadBuf::Bytes(bytes) => Some(bytes),
            ReadBuf::View(_) => None,
        }
    }
}

/// An exact `bytes` object held by reference. Its contents never change, so a write
/// queue may send from it later instead of copying it now
/// (`ferroloop_core::writebuf::WriteQueue::push_kept`). The queue releases it inside
/// its transport's state borrow, an exception to `gil_cell`'s rule that is safe
/// because freeing an exact `bytes` only frees memory: no `__del__`, no weakref
/// callbacks, no collection.
pub struct KeptBytes {
    _obj: Py<PyBytes>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: `ptr` points into the immutable `bytes` that `_obj` keeps alive; reading
// it needs no lock. The reference itself is dropped only where the transport's state
// is, with the GIL held.
unsafe impl Send for KeptBytes {}
// SAFETY: shared access only reads the immutable bytes, as above.
unsafe impl Sync for KeptBytes {}

impl KeptBytes {
    pub fn new(bytes: &Bound<'_, PyBytes>) -> Self {
        let data = bytes.as_bytes();
        KeptBytes { ptr: data.as_ptr(), len: data.len(), _obj: bytes.clone().unbind() }
    }
}

impl AsRef<[u8]> for KeptBytes {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` readable bytes at `ptr`, alive and unchanged while `_obj` is held.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}
