//! A real SMTP server on loopback (mailin-embedded) that keeps every mail
//! it receives, for the mail tests.

use std::sync::{Arc, Mutex};

use mailin_embedded::response::OK;
use mailin_embedded::{Handler, Response, Server, SslConfig};

#[derive(Clone)]
struct Keep {
    mails: Arc<Mutex<Vec<String>>>,
    cur: Vec<u8>,
}

impl Handler for Keep {
    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, _to: &[String]) -> Response {
        self.cur.clear();
        OK
    }
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.cur.extend_from_slice(buf);
        Ok(())
    }
    fn data_end(&mut self) -> Response {
        self.mails
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&self.cur).into_owned());
        OK
    }
}

/// A running SMTP server and what it received.
pub struct Smtp {
    /// Its port on 127.0.0.1.
    pub port: u16,
    mails: Arc<Mutex<Vec<String>>>,
}

impl Smtp {
    /// Starts a server on a free port (it lives as long as the test process).
    pub fn start() -> Smtp {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let mut server = Server::new(Keep {
            mails: mails.clone(),
            cur: Vec::new(),
        });
        server
            .with_name("localhost")
            .with_ssl(SslConfig::None)
            .unwrap()
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        Smtp { port, mails }
    }

    /// Every mail so far (headers and body, as received).
    pub fn mails(&self) -> Vec<String> {
        self.mails.lock().unwrap().clone()
    }

    /// Mails whose text contains `s`.
    pub fn with(&self, s: &str) -> Vec<String> {
        self.mails().into_iter().filter(|m| m.contains(s)).collect()
    }
}

/// Points capra's alert mail at the SMTP server on loopback `port` (from
/// and to example.org).
pub fn mail_settings(c: &super::Capra, port: u16) {
    c.ok(&[
        "set",
        "default_email_host=127.0.0.1",
        &format!("default_email_port={port}"),
        "default_email_to=dba@example.org",
        "default_email_from=capra@example.org",
    ]);
}
