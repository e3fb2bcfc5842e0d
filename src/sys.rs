//! Process-wide plumbing every layer may use: this host's name, locks that
//! survive a panicked holder, and threads whose failure to start is an error
//! rather than a panic.

use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// This host's name (for run records and mail).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Locks a mutex even when a thread panicked while holding it: a run that
/// panicked is caught and reported, and the maps it touched (pools, cancel
/// handles) stay usable, so one bad run cannot wedge every later one.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts a named thread; when the system refuses (systemd's `TasksMax`,
/// `ulimit -u`), says which thread and which limit instead of panicking.
pub fn spawn<T, F>(name: &str, f: F) -> Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|source| Error::Spawn {
            thread: name.to_string(),
            source,
        })
}
