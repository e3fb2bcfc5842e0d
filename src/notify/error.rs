//! What can go wrong in this part of capra, by kind of trouble: each variant
//! names the object involved and keeps the cause as its `source`.
//!
//! The mail variants' messages already carry the mail library's words, as
//! they always did; the library's error is kept (`cause`) but is not a
//! `source` that a renderer would print a second time.

use std::path::PathBuf;

use lettre::address::AddressError;

use crate::error::{AreaError, Kind};

/// Errors of this part; carried by [`crate::Error`], which renders them.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The sender (`default_email_from`, or a tail_n_mail FROM) is not an
    /// address.
    #[error("mail: bad sender {from:?} (default_email_from): {cause}")]
    Sender {
        /// The sender as configured.
        from: String,
        /// Why it is not an address.
        cause: AddressError,
    },

    /// A recipient (`default_email_to`, a tail_n_mail EMAIL, or the one
    /// given to `mail test`) is not an address.
    #[error("mail: bad recipient {to:?} (default_email_to): {cause}")]
    Recipient {
        /// The recipient as given.
        to: String,
        /// Why it is not an address.
        cause: AddressError,
    },

    /// The mail could not be put together (no recipient, say).
    #[error("mail: building the message: {cause}")]
    Message {
        /// The library's reason.
        cause: lettre::error::Error,
    },

    /// The local sendmail program failed or refused the mail.
    #[error("mail: sending through {program}: {cause}")]
    Sendmail {
        /// The program (`email_sendmail`).
        program: String,
        /// What it said.
        cause: lettre::transport::sendmail::Error,
    },

    /// TLS to the mail server could not be set up (`email_tls`).
    #[error("mail: {mode} setup: {cause}")]
    TlsSetup {
        /// `TLS` or `STARTTLS`.
        mode: &'static str,
        /// The mail server (`default_email_host`).
        host: String,
        /// Why.
        cause: lettre::transport::smtp::Error,
    },

    /// The mail server could not be reached or refused the mail.
    #[error("mail: sending to {server}: {cause}")]
    Smtp {
        /// The mail server, in words, without the password.
        server: String,
        /// What went wrong.
        cause: lettre::transport::smtp::Error,
    },

    /// A tail_n_mail config file could not be read.
    #[error("reading {}: {source}", .path.display())]
    ReadConfig {
        /// The config file.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },

    /// A tail_n_mail state file (the position in the logs) could not be
    /// written.
    #[error("writing {}: {source}", .path.display())]
    WriteState {
        /// The state file (`CONFIG.state`).
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

impl AreaError for NotifyError {
    fn kind(&self) -> Kind {
        match self {
            NotifyError::Sender { .. }
            | NotifyError::Recipient { .. }
            | NotifyError::Message { .. }
            | NotifyError::TlsSetup { .. } => Kind::Input,
            NotifyError::Sendmail { .. } | NotifyError::ReadConfig { .. } | NotifyError::WriteState { .. } => {
                Kind::System
            }
            NotifyError::Smtp { cause, .. } => {
                if cause.is_response() || cause.is_transient() || cause.is_permanent() {
                    Kind::Server
                } else {
                    Kind::Connection
                }
            }
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_kinds() {
        let cause = "not an address".parse::<lettre::message::Mailbox>().unwrap_err();
        let e = NotifyError::Recipient {
            to: "not an address".into(),
            cause,
        };
        assert!(
            e.to_string()
                .starts_with("mail: bad recipient \"not an address\" (default_email_to): "),
            "{e}"
        );
        assert_eq!(e.kind(), Kind::Input);
        let e = NotifyError::WriteState {
            path: "/nowhere/t.conf.state".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert_eq!(e.to_string(), "writing /nowhere/t.conf.state: permission denied");
        assert_eq!(crate::Error::from(e).kind(), Kind::System);
    }
}
