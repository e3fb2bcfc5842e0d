//! Sending one mail with the `capra set` mail settings: SMTP (plain,
//! STARTTLS or implicit TLS, with or without AUTH) or the local sendmail,
//! and a copy appended to `email_debug_file`. Never called on a run's
//! thread: the notifier sends.

use std::io::Write;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Message, SendmailTransport, SmtpTransport, Transport};
use postgres::GenericClient;

use super::NotifyError;
use crate::catalog::model;
use crate::error::Result;

/// Where Bucardo (and capra) send nothing: the default recipient.
pub const NOBODY: &str = "nobody@example.com";

/// The mail settings, read from the catalog when a mail is sent (so `capra
/// set` acts without a reload).
#[derive(Clone, Debug)]
pub struct MailSettings {
    /// Recipients (`default_email_to`, comma separated).
    pub to: Vec<String>,
    /// Sender (`default_email_from`).
    pub from: String,
    /// SMTP host and port.
    pub host: String,
    /// SMTP port.
    pub port: u16,
    /// `none`, `starttls` or `tls`.
    pub tls: String,
    /// AUTH user (empty: no AUTH).
    pub user: String,
    /// AUTH password (never printed).
    pub pass: crate::sys::Secret,
    /// `smtp` or `sendmail`.
    pub transport: String,
    /// The sendmail program.
    pub sendmail: String,
    /// Every mail is also appended here (empty: not).
    pub debug_file: String,
    /// Seconds an SMTP exchange may take.
    pub timeout: f64,
}

impl MailSettings {
    /// Reads the settings.
    pub fn load(c: &mut impl GenericClient) -> Result<MailSettings> {
        let mut get = |n: &str| model::setting(c, n);
        Ok(MailSettings {
            to: get("default_email_to")?
                .split([',', ' '])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            from: get("default_email_from")?,
            host: get("default_email_host")?,
            port: get("default_email_port")?.parse().unwrap_or(25),
            tls: get("email_tls")?,
            user: get("email_auth_user")?,
            pass: crate::sys::Secret::new(get("email_auth_pass")?),
            transport: get("email_transport")?,
            sendmail: get("email_sendmail")?,
            debug_file: get("email_debug_file")?,
            timeout: get("email_timeout")?.parse().unwrap_or(10.0),
        })
    }

    /// Whether mail goes anywhere (Bucardo's rule: nothing is sent while the
    /// recipient is still nobody@example.com).
    pub fn enabled(&self) -> bool {
        !self.to.is_empty() && !self.to.iter().all(|t| t == NOBODY)
    }

    /// Where mail goes, in words, without the password.
    pub fn describe(&self) -> String {
        if self.transport == "sendmail" {
            format!("{} (sendmail)", self.sendmail)
        } else {
            format!(
                "smtp://{}{}:{} (TLS: {})",
                if self.user.is_empty() {
                    String::new()
                } else {
                    format!("{}@", self.user)
                },
                self.host,
                self.port,
                self.tls
            )
        }
    }

    /// Sends one plain-text mail to `to` (default: the configured
    /// recipients); returns what the server answered.
    pub fn send(&self, to: Option<&[String]>, subject: &str, body: &str) -> Result<String> {
        let to = to.unwrap_or(&self.to);
        let from = if self.from.is_empty() || self.from == NOBODY {
            format!("capra@{}", crate::sys::hostname())
        } else {
            self.from.clone()
        };
        let msg = message(&from, to, subject, body)?;
        if !self.debug_file.is_empty() {
            self.append_debug_copy(&from, to, subject, body);
        }
        if self.transport == "sendmail" {
            SendmailTransport::new_with_command(&self.sendmail)
                .send(&msg)
                .map_err(|cause| NotifyError::Sendmail {
                    program: self.sendmail.clone(),
                    cause,
                })?;
            return Ok(format!("handed to {}", self.sendmail));
        }
        self.send_smtp(&msg)
    }

    /// Appends the mail to `email_debug_file` (a failure is only logged).
    fn append_debug_copy(&self, from: &str, to: &[String], subject: &str, body: &str) {
        let text = format!(
            "From: {from}\nTo: {}\nSubject: {subject}\nDate: {}\n\n{body}\n\n",
            to.join(", "),
            chrono::Local::now().to_rfc2822()
        );
        if let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.debug_file)
            .and_then(|mut f| f.write_all(text.as_bytes()))
        {
            tracing::warn!("Cannot append to email_debug_file {}: {e}", self.debug_file);
        }
    }

    /// Sends through the SMTP server; returns its answer.
    fn send_smtp(&self, msg: &Message) -> Result<String> {
        let tls_err = |mode: &'static str| {
            move |cause| NotifyError::TlsSetup {
                mode,
                host: self.host.clone(),
                cause,
            }
        };
        let mut b = match self.tls.as_str() {
            "tls" => SmtpTransport::relay(&self.host).map_err(tls_err("TLS"))?,
            "starttls" => SmtpTransport::starttls_relay(&self.host).map_err(tls_err("STARTTLS"))?,
            _ => SmtpTransport::builder_dangerous(&self.host),
        }
        .port(self.port)
        .timeout(Some(Duration::from_secs_f64(self.timeout.clamp(1.0, 3600.0))));
        if !self.user.is_empty() {
            b = b.credentials(Credentials::new(self.user.clone(), self.pass.expose().to_string()));
        }
        let resp = b.build().send(msg).map_err(|cause| NotifyError::Smtp {
            server: self.describe(),
            cause,
        })?;
        Ok(format!(
            "{} {}",
            resp.code(),
            resp.message().collect::<Vec<_>>().join(" ")
        ))
    }
}

/// The plain-text mail, its addresses checked.
fn message(from: &str, to: &[String], subject: &str, body: &str) -> Result<Message> {
    let mut m = Message::builder()
        .from(from.parse().map_err(|cause| NotifyError::Sender {
            from: from.to_string(),
            cause,
        })?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for t in to {
        m = m.to(t
            .parse()
            .map_err(|cause| NotifyError::Recipient { to: t.clone(), cause })?);
    }
    Ok(m.body(body.to_string())
        .map_err(|cause| NotifyError::Message { cause })?)
}
