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

/// A password: kept and passed on, never shown. Its `Debug` prints
/// asterisks, so no derived `Debug` of a struct holding one (a command's
/// flags, a database to add, the mail settings) can carry it into a log,
/// an error or a panic message.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The password itself, for the one place that hands it on (a
    /// connection, an SMTP login, the catalog).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"********\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Secret::new(s))
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn a_secret_never_shows_in_debug() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "\"********\"");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(\"********\")");
        assert_eq!(s.expose(), "hunter2");
    }
}
