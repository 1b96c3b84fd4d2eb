//! Child processes, free of Python: watching a child's exit through a pidfd and
//! reaping it with `waitpid`, without touching `SIGCHLD` (the application keeps its
//! own handler, and nothing reaps children that are not ours).
//!
//! A pidfd (`pidfd_open(2)`, Linux 5.3) turns readable once when its process exits,
//! so the loop's poller watches it like any fd; reaping then never blocks. Kernels
//! without it answer `ENOSYS` (seccomp filters often `EPERM`, and a process out of
//! fds `EMFILE`): the caller then falls back to a thread blocked in `wait_blocking`. A return code is asyncio's: the exit
//! status, or minus the signal number that killed the process.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// `pidfd_open(pid, 0)`, close-on-exec as every pidfd is.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall with integer arguments; the kernel returns a new fd
    // or -1 with errno set.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just created for us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) })
}

/// asyncio's return code for a `waitpid` status (`os.waitstatus_to_exitcode`).
pub fn returncode(status: libc::c_int) -> i32 {
    if libc::WIFSIGNALED(status) {
        -libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

fn waitpid(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<i32>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid, writable int for the call.
        let ret = unsafe { libc::waitpid(pid, &mut status, flags) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        if ret == 0 {
            return Ok(None);
        }
        // Stopped or continued children are not reported without WUNTRACED or
        // WCONTINUED, so this is an exit.
        return Ok(Some(returncode(status)));
    }
}

/// Reaps `pid` if it has exited: `Ok(None)` while it runs; `ECHILD` when someone
/// else (a `Popen.poll()`, a `waitpid(-1)` handler) reaped it first.
pub fn try_reap(pid: libc::pid_t) -> io::Result<Option<i32>> {
    waitpid(pid, libc::WNOHANG)
}

/// Blocks until `pid` exits and reaps it (the fallback watcher thread).
pub fn wait_blocking(pid: libc::pid_t) -> io::Result<i32> {
    waitpid(pid, 0).map(|rc| rc.expect("waitpid without WNOHANG returns a status"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::process::Command;

    fn wait_readable(fd: libc::c_int) -> bool {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the call.
        unsafe { libc::poll(&mut p, 1, 10_000) == 1 && p.revents & libc::POLLIN != 0 }
    }

    #[test]
    fn pidfd_turns_readable_at_exit_and_reaps_the_status() {
        let child = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        match pidfd_open(pid) {
            Ok(fd) => {
                assert!(wait_readable(fd.as_raw_fd()));
                assert_eq!(try_reap(pid).unwrap(), Some(7));
            }
            Err(e) => {
                assert!(matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)), "{e}");
                assert_eq!(wait_blocking(pid).unwrap(), 7);
            }
        }
        // Reaped: nobody can reap it again.
        assert_eq!(try_reap(pid).unwrap_err().raw_os_error(), Some(libc::ECHILD));
    }

    #[test]
    fn a_running_child_is_not_reaped_and_a_signal_is_negative() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        assert_eq!(try_reap(pid).unwrap(), None);
        // SAFETY: signals our own child, still unreaped, so the pid is ours.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        assert_eq!(wait_blocking(pid).unwrap(), -libc::SIGKILL);
    }

    #[test]
    fn pidfd_open_of_no_such_process_fails() {
        // pid_max is at most 2^22: this pid cannot exist.
        let err = pidfd_open(1 << 30).unwrap_err();
        assert!(matches!(err.raw_os_error(), Some(libc::ESRCH) | Some(libc::EINVAL) | Some(libc::ENOSYS)), "{err}");
    }
}
