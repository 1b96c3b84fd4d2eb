//! The filesystem side of UNIX socket endpoints: a stale socket file removed before
//! binding, and a server's socket file removed at close if it is still the one it
//! bound (3.13's `cleanup_socket`).
//!
//! asyncio makes the same `stat`/`unlink` calls, on the loop thread. They are here
//! rather than in the Python glue so that they are not Python-level blocking calls:
//! tools that flag those inside a running loop (blockbuster, in aiohttp's and
//! anyio's test suites) allow asyncio's by its file and function names, which
//! ferroloop's code cannot have; uvloop makes them in C for the same reason.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::fd_callbacks::os_error;

/// A path as `os.stat` takes it: `str`, `bytes` or path-like (`os.fsencode`).
fn fs_path(path: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    let encoded = path.py().import("os")?.call_method1("fsencode", (path,))?;
    Ok(PathBuf::from(OsStr::from_bytes(encoded.cast::<PyBytes>()?.as_bytes())))
}

/// Removes `path` if it is a socket file (following symlinks, as `os.stat`); an
/// `OSError` (`FileNotFoundError`...) if it cannot be looked at or removed.
#[pyfunction]
pub fn remove_if_socket(py: Python<'_>, path: &Bound<'_, PyAny>) -> PyResult<()> {
    let path = fs_path(path)?;
    py.detach(|| {
        if std::fs::metadata(&path)?.file_type().is_socket() {
            std::fs::remove_file(&path)?;
        }
        Ok(())
    })
    .map_err(os_error)
}

/// The inode number of `path` (`os.stat(path).st_ino`).
#[pyfunction]
pub fn inode_of(py: Python<'_>, path: &Bound<'_, PyAny>) -> PyResult<u64> {
    let path = fs_path(path)?;
    py.detach(|| std::fs::metadata(&path).map(|m| m.ino())).map_err(os_error)
}

/// Removes `path` if its inode is still `ino`: the socket file a server bound,
/// not one another process put there since.
#[pyfunction]
pub fn remove_if_inode(py: Python<'_>, path: &Bound<'_, PyAny>, ino: u64) -> PyResult<()> {
    let path = fs_path(path)?;
    py.detach(|| {
        if std::fs::metadata(&path)?.ino() == ino {
            std::fs::remove_file(&path)?;
        }
        Ok(())
    })
    .map_err(os_error)
}
