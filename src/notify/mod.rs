//! Notifications: alert mail when a sync fails, recovers, runs late or
//! falls behind, and the periodic status report, in tail_n_mail's shape
//! (subject with host and number of items; a header block; numbered items
//! with counts and first/last times). One thread sends; runs only hand it
//! events, so a slow or unreachable mail server never slows replication.
//!
//! One mail per incident when it starts, then the repeats of every open
//! incident in one digest per `email_alert_interval`, and a mail when it
//! ends: a flapping sync cannot cause a storm.

mod error;
pub mod mail;
pub mod report;
pub mod tailmail;

pub use error::NotifyError;

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Local};

use crate::domain::Status;
use crate::error::Context;
use crate::pg::pool::DbPool;
use crate::pg::RowExt;
use crate::schedule::cron::Schedule;
use mail::MailSettings;

/// Something worth telling the recipients.
#[derive(Clone, Debug)]
pub enum Alert {
    /// A run failed.
    Failed {
        /// The sync.
        sync: String,
        /// The error, on one line.
        error: String,
        /// What sort of trouble it is (the mail says what that means).
        kind: crate::error::Kind,
        /// When the sync last ran well, if ever.
        last_good: Option<String>,
    },
    /// A sync works again.
    Recovered {
        /// The sync.
        sync: String,
        /// How many runs had failed.
        failures: u32,
    },
    /// A run set one table aside (the others were applied).
    TableFailed {
        /// The sync.
        sync: String,
        /// `schema.name`.
        table: String,
        /// The error, on one line.
        error: String,
        /// What sort of trouble it is.
        kind: crate::error::Kind,
    },
    /// A table set aside before was applied again.
    TableRecovered {
        /// The sync.
        sync: String,
        /// `schema.name`.
        table: String,
    },
    /// A hook's `ctx.email`.
    Hook {
        /// The sync.
        sync: String,
        /// Subject.
        subject: String,
        /// Body.
        body: String,
    },
    /// This daemon took over from a leader that died, hung, lost the
    /// control database or handed over.
    Takeover {
        /// The new term.
        epoch: i64,
        /// The old leader's pid.
        old_pid: i32,
        /// Its host.
        old_host: String,
        /// How its lease came free.
        how: String,
    },
}

/// What a compare with differences says in a mail: per table and database
/// how many keys differ, and what to run.
fn compare_text(sync: &str, truth: &str, n: i32, report: &str) -> String {
    let doc: serde_json::Value = serde_json::from_str(report).unwrap_or_default();
    let mut lines = vec![format!(
        "Sync \"{sync}\": capra compare found {n} difference(s) with the truth \"{truth}\""
    )];
    for t in doc["tables"].as_array().into_iter().flatten() {
        let len = |k: &str| t[k].as_array().map(|a| a.len()).unwrap_or(0);
        if len("missing") + len("extra") + len("different") > 0 {
            lines.push(format!(
                "  {} on {}: {} missing, {} extra, {} different",
                crate::pg::ident::show_qualified(t["table"].as_str().unwrap_or("?")),
                t["db"].as_str().unwrap_or("?"),
                len("missing"),
                len("extra"),
                len("different")
            ));
        }
    }
    lines.push(format!(
        "See the keys: capra compare {sync}; make them equal: capra compare {sync} --repair"
    ));
    lines.join("\n")
}

/// New incidents within this window share one mail.
const FRESH_WINDOW: Duration = Duration::from_secs(3);

/// One thing that went wrong, as a tail_n_mail item.
#[derive(Clone, Debug)]
struct Incident {
    /// It ended and came back within an interval.
    flapped: bool,
    text: String,
    first: DateTime<Local>,
    last: DateTime<Local>,
    count: u64,
    /// Occurrences not yet in any mail.
    unsent: u64,
}

/// A numbered item of a tail_n_mail-style mail.
#[derive(Clone, Debug)]
pub struct Item {
    /// What happened (may span lines).
    pub text: String,
    /// How often.
    pub count: u64,
    /// First and last time.
    pub first: DateTime<Local>,
    /// Last time.
    pub last: DateTime<Local>,
}

/// Renders a mail in tail_n_mail's shape: the subject names the host and
/// the number of items; the body has a header block, then numbered items
/// with their counts and first/last times.
pub fn tnm_mail(prefix: &str, host: &str, what: &str, items: &[Item]) -> (String, String) {
    let total: u64 = items.iter().map(|i| i.count).sum();
    let subject = format!(
        "[{prefix}] {host}: {} {}{}",
        total,
        if total == 1 { "item" } else { "items" },
        if what.is_empty() {
            String::new()
        } else {
            format!(" ({what})")
        }
    );
    let mut body = format!(
        "Date: {}\nHost: {host}\nSent by: capra {}\nItems: {} ({total} in all)\n",
        Local::now().format("%a %b %e %H:%M:%S %Y %Z"),
        env!("CARGO_PKG_VERSION"),
        items.len()
    );
    for (n, i) in items.iter().enumerate() {
        let when = if i.count == 1 {
            format!("{}", i.first.format("%Y-%m-%d %H:%M:%S"))
        } else {
            format!(
                "First: {} Last: {}",
                i.first.format("%Y-%m-%d %H:%M:%S"),
                i.last.format("%Y-%m-%d %H:%M:%S")
            )
        };
        body.push_str(&format!("\n[{}] ({}) Count: {}\n{}\n", n + 1, when, i.count, i.text));
    }
    (subject, body)
}

/// The notifier's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Notifier {
    tx: Arc<Mutex<Sender<Alert>>>,
    running: Arc<std::sync::atomic::AtomicBool>,
}

impl Notifier {
    /// Hands an alert to the notifier thread.
    pub fn send(&self, a: Alert) {
        let _ = crate::sys::lock(&self.tx).send(a);
    }

    /// Whether the notifier thread still runs (it ends after sending what
    /// was left when told to stop).
    pub fn running(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Starts the notifier thread; it reads its settings from the control
    /// database before each mail and stops when `stop` says so.
    pub fn start(
        control: DbPool,
        host: String,
        installation: String,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> Notifier {
        let (tx, rx) = channel();
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let r2 = running.clone();
        let spawned = crate::sys::spawn("notify", move || {
            let _r = crate::logging::role("MCP", None);
            let mut s = State::new(control, host);
            s.installation = installation;
            s.run(rx, stop);
            r2.store(false, std::sync::atomic::Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            // Replication goes on without mail; nothing waits for a
            // notifier that never ran.
            tracing::error!("{e}; no alert mail will be sent");
            running.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        Notifier {
            tx: Arc::new(Mutex::new(tx)),
            running,
        }
    }
}

struct State {
    control: DbPool,
    host: String,
    incidents: BTreeMap<String, Incident>,
    /// Mails that could not be sent, retried every minute (at most 20).
    queue: Vec<(String, String)>,
    last_digest: Instant,
    last_retry: Instant,
    last_check: Instant,
    report_next: Option<DateTime<Local>>,
    report_spec: String,
    tnm_next: Option<DateTime<Local>>,
    tnm_spec: String,
    /// `email_alert_interval`, read every second.
    interval: Duration,
    /// Ends of flaps, for the next digest.
    pending_flaps: Vec<Item>,
    /// Incidents that started in the last few seconds, not mailed yet.
    fresh: Vec<(String, String)>,
    fresh_since: Instant,
    installation: String,
    last_backlog: Instant,
    /// Incidents that ended less than an interval ago: one that starts
    /// again meanwhile goes into the digest, not into a mail of its own.
    cooling: BTreeMap<String, (Instant, Incident)>,
    /// The newest compare outcome already looked at (None before the
    /// first check: outcomes from before the daemon started are not mailed).
    compare_seen: Option<String>,
}

impl State {
    fn new(control: DbPool, host: String) -> State {
        State {
            control,
            host,
            incidents: BTreeMap::new(),
            queue: Vec::new(),
            last_digest: Instant::now(),
            last_retry: Instant::now(),
            last_check: Instant::now(),
            report_next: None,
            report_spec: String::new(),
            tnm_next: None,
            tnm_spec: String::new(),
            interval: Duration::from_secs(600),
            cooling: BTreeMap::new(),
            pending_flaps: Vec::new(),
            fresh: Vec::new(),
            fresh_since: Instant::now(),
            installation: String::new(),
            last_backlog: Instant::now() - Duration::from_secs(3600),
            compare_seen: None,
        }
    }

    fn setting(&self, name: &str) -> Option<String> {
        let mut c = self.control.get().ok()?;
        crate::catalog::model::setting(&mut *c, name).ok()
    }

    fn settings(&self) -> Option<MailSettings> {
        let mut c = self.control.get().ok()?;
        MailSettings::load(&mut *c).ok()
    }

    /// Sends now, or queues for a retry; never fails the caller.
    fn mail(&mut self, subject: String, body: String) {
        let Some(s) = self.settings() else {
            tracing::warn!("Cannot read the mail settings; mail \"{subject}\" is queued");
            self.queue_mail(subject, body);
            return;
        };
        if !s.enabled() {
            tracing::info!("Mail not sent (default_email_to is not set): {subject}");
            return;
        }
        match s.send(None, &subject, &body) {
            Ok(r) => tracing::info!("Sent mail \"{subject}\" to {}: {r}", s.to.join(", ")),
            Err(e) => {
                tracing::error!("Cannot send mail \"{subject}\" ({e}); retrying every minute");
                self.queue_mail(subject, body);
            }
        }
    }

    fn queue_mail(&mut self, subject: String, body: String) {
        if self.queue.len() >= 20 {
            self.queue.remove(0);
        }
        self.queue.push((subject, body));
    }

    fn one(&mut self, what: &str, text: String) {
        let now = Local::now();
        let (s, b) = tnm_mail(
            "capra",
            &self.host,
            what,
            &[Item {
                text,
                count: 1,
                first: now,
                last: now,
            }],
        );
        self.mail(s, b);
    }

    /// An incident starts (one mail now) or repeats (counted for the digest).
    fn incident(&mut self, key: &str, what: &str, text: String) {
        let now = Local::now();
        if let Some(i) = self.incidents.get_mut(key) {
            i.count += 1;
            i.unsent += 1;
            i.last = now;
            i.text = if i.flapped {
                format!("{text}\n(it had recovered and failed again)")
            } else {
                text
            };
            return;
        }
        // Back within an interval of its end: a flap, for the digest.
        if let Some((_, mut i)) = self.cooling.remove(key) {
            i.count += 1;
            i.unsent += 1;
            i.last = now;
            i.flapped = true;
            i.text = format!("{text}\n(it had recovered and failed again)");
            self.incidents.insert(key.to_string(), i);
            return;
        }
        self.incidents.insert(
            key.to_string(),
            Incident {
                flapped: false,
                text: text.clone(),
                first: now,
                last: now,
                count: 1,
                unsent: 0,
            },
        );
        // New incidents of the next few seconds go out in one mail (fifty
        // syncs behind one dead server: one mail, fifty items).
        if self.fresh.is_empty() {
            self.fresh_since = Instant::now();
        }
        self.fresh.push((what.to_string(), text));
    }

    /// Sends the incidents that started in the last few seconds: one mail.
    fn flush_fresh(&mut self) {
        if self.fresh.is_empty() {
            return;
        }
        let fresh = std::mem::take(&mut self.fresh);
        let now = Local::now();
        let what = if fresh.len() == 1 {
            fresh[0].0.clone()
        } else {
            format!("{} incidents", fresh.len())
        };
        let items: Vec<Item> = fresh
            .into_iter()
            .map(|(_, text)| Item {
                text,
                count: 1,
                first: now,
                last: now,
            })
            .collect();
        let (s, b) = tnm_mail("capra", &self.host, &what, &items);
        self.mail(s, b);
    }

    /// An incident ends: one mail, with what repeated since the last mail
    /// (a flap that ends again within the interval is left to the digest).
    fn resolved(&mut self, key: &str, what: &str, text: String) {
        if let Some(mut i) = self.incidents.remove(key) {
            // Still in the few seconds before its first mail: that goes out
            // first, so the recovery never comes before the failure.
            self.flush_fresh();
            if i.flapped {
                i.text = format!("{text} (it flapped)");
                i.unsent += 1;
                let items = vec![Item {
                    text: i.text.clone(),
                    count: i.unsent,
                    first: i.first,
                    last: Local::now(),
                }];
                i.unsent = 0;
                self.cooling.insert(key.to_string(), (Instant::now(), i));
                self.pending_flaps.extend(items);
                return;
            }
            let extra = if i.unsent > 0 {
                format!("\n(after {} more failure(s) since the last mail)", i.unsent)
            } else {
                String::new()
            };
            i.unsent = 0;
            self.cooling.insert(key.to_string(), (Instant::now(), i));
            self.one(what, format!("{text}{extra}"));
        }
    }

    fn handle(&mut self, a: Alert) {
        match a {
            Alert::Failed {
                sync,
                error,
                kind,
                last_good,
            } => self.incident(
                &format!("failed:{sync}"),
                "sync failed",
                format!(
                    "Sync \"{sync}\" failed: {error}\nKind: {} ({})\nLast good run: {}",
                    kind.as_str(),
                    kind.advice(),
                    last_good.unwrap_or_else(|| "never".into())
                ),
            ),
            Alert::Recovered { sync, failures } => self.resolved(
                &format!("failed:{sync}"),
                "sync recovered",
                format!("Sync \"{sync}\" is working again after {failures} failed run(s)"),
            ),
            Alert::TableFailed {
                sync,
                table,
                error,
                kind,
            } => self.incident(
                &format!("table:{sync}:{table}"),
                "table failed",
                format!(
                    "Sync \"{sync}\" could not apply table {} (the other tables were applied; its changes are tried again): {error}\nKind: {} ({})",
                    crate::pg::ident::show_qualified(&table),
                    kind.as_str(),
                    kind.advice()
                ),
            ),
            Alert::TableRecovered { sync, table } => self.resolved(
                &format!("table:{sync}:{table}"),
                "table recovered",
                format!(
                    "Sync \"{sync}\" applies table {} again",
                    crate::pg::ident::show_qualified(&table)
                ),
            ),
            Alert::Hook { sync, subject, body } => self.one("hook", format!("Sync \"{sync}\": {subject}\n{body}")),
            Alert::Takeover {
                epoch,
                old_pid,
                old_host,
                how,
            } => self.one(
                "takeover",
                format!(
                    "capra on {} (pid {}) took over as leader (epoch {epoch}) from pid {old_pid} on {old_host}: {how}.\nIts runs were aborted and every sync is run again; nothing needs doing unless the old host keeps failing (see capra status).",
                    self.host,
                    std::process::id()
                ),
            ),
        }
    }

    /// One digest of every incident that repeated since its last mail.
    fn digest(&mut self) {
        let mut items: Vec<Item> = std::mem::take(&mut self.pending_flaps);
        items.extend(self.incidents.values().filter(|i| i.unsent > 0).map(|i| Item {
            text: i.text.clone(),
            count: i.unsent,
            first: i.first,
            last: i.last,
        }));
        if items.is_empty() {
            return;
        }
        for i in self.incidents.values_mut() {
            i.unsent = 0;
        }
        let (s, b) = tnm_mail("capra", &self.host, "digest", &items);
        self.mail(s, b);
    }

    /// Late syncs (overdue / expired, Bucardo's thresholds) and the
    /// status report schedule.
    fn check(&mut self) {
        let Ok(mut c) = self.control.get() else { return };
        let late = LateSync::load(&mut *c);
        drop(c);
        match late {
            Ok(rows) => {
                for r in rows {
                    self.lateness(r);
                }
            }
            Err(e) => tracing::debug!("Cannot check for late syncs: {e}"),
        }
        self.tailmail();
        if self.last_backlog.elapsed() >= Duration::from_secs(backlog_every()) {
            self.last_backlog = Instant::now();
            self.backlog();
        }
        self.status_report_due();
        self.compares();
    }

    /// A compare (`capra compare` or `compare_schedule`) that found
    /// differences opens an incident for its sync; one that found none
    /// ends it.
    fn compares(&mut self) {
        let Ok(mut c) = self.control.get() else { return };
        let rows = c.query(
            "SELECT sync, truth, differences, report::text,
                    to_char(ran_at, 'YYYY-MM-DD HH24:MI:SS.US TZH:TZM'), to_char(now(), 'YYYY-MM-DD HH24:MI:SS.US TZH:TZM')
               FROM capra.compare_result WHERE ran_at > coalesce($1::text::timestamptz, now()) ORDER BY ran_at",
            &[&self.compare_seen],
        );
        drop(c);
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("Cannot read compare outcomes: {e}");
                return;
            }
        };
        if self.compare_seen.is_none() {
            self.compare_seen = Some(String::new());
        }
        for r in rows {
            let (Ok(sync), Ok(truth), Ok(n), Ok(report), Ok(at)) = (
                r.try_get::<_, String>(0),
                r.try_get::<_, String>(1),
                r.try_get::<_, i32>(2),
                r.try_get::<_, String>(3),
                r.try_get::<_, String>(4),
            ) else {
                continue;
            };
            self.compare_seen = Some(at);
            let key = format!("compare:{sync}");
            if n > 0 {
                self.incident(&key, "compare difference", compare_text(&sync, &truth, n, &report));
            } else if self.incidents.contains_key(&key) {
                self.resolved(
                    &key,
                    "compare identical",
                    format!("Sync \"{sync}\" compares identical with \"{truth}\" again"),
                );
            }
        }
        if self.compare_seen.as_deref() == Some("") {
            // First look: start from the database's now.
            if let Ok(mut c) = self.control.get() {
                if let Ok(r) = c.query_one("SELECT to_char(now(), 'YYYY-MM-DD HH24:MI:SS.US TZH:TZM')", &[]) {
                    self.compare_seen = r.try_get(0).ok();
                }
            }
        }
    }

    /// Opens or ends a sync's expired and overdue incidents.
    fn lateness(&mut self, r: LateSync) {
        let Some(age) = r.age else { return };
        let sync = r.sync;
        for (late, limit) in [(Late::Expired, r.expired), (Late::Overdue, r.overdue)] {
            let key = format!("{late}:{sync}");
            if limit > 0.0 && age > limit {
                if !self.incidents.contains_key(&key) {
                    self.incident(
                        &key,
                        &format!("sync {late}"),
                        format!(
                            "Sync \"{sync}\" is {}: no good run for {:.0} s (limit {:.0} s)",
                            late.shouted(),
                            age,
                            limit
                        ),
                    );
                }
            } else if self.incidents.contains_key(&key) {
                self.resolved(&key, "sync on time", format!("Sync \"{sync}\" is no longer {late}"));
            }
        }
    }

    /// The status report: capra status, on a schedule.
    fn status_report_due(&mut self) {
        let spec = self.setting("status_report_schedule").unwrap_or_default();
        if spec != self.report_spec {
            self.report_spec = spec.clone();
            self.report_next = Schedule::parse(&spec).ok().and_then(|s| s.next_after(&Local::now()));
        }
        if let Some(at) = self.report_next {
            if Local::now() >= at {
                self.report_next = Schedule::parse(&self.report_spec)
                    .ok()
                    .and_then(|s| s.next_after(&at.max(Local::now())));
                self.status_report();
            }
        }
    }

    /// The log monitor on its schedule (`tailmail_config`).
    fn tailmail(&mut self) {
        let Some(config) = self.setting("tailmail_config").filter(|c| !c.is_empty()) else {
            self.tnm_next = None;
            self.tnm_spec.clear();
            return;
        };
        let spec = self.setting("tailmail_schedule").unwrap_or_default();
        if spec != self.tnm_spec {
            self.tnm_spec = spec.clone();
            self.tnm_next = Schedule::parse(&spec).ok().and_then(|s| s.next_after(&Local::now()));
        }
        let Some(at) = self.tnm_next else { return };
        if Local::now() < at {
            return;
        }
        self.tnm_next = Schedule::parse(&self.tnm_spec)
            .ok()
            .and_then(|s| s.next_after(&at.max(Local::now())));
        let d = match tailmail::run(std::path::Path::new(&config)) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("tailmail {config}: {e}");
                return;
            }
        };
        if d.total > 0 || d.mailzero {
            if tailmail::placeholder_recipients(&d.to) {
                tracing::warn!("tailmail {config}: its EMAIL lines hold placeholder addresses; not sent");
                return;
            }
            let Some(mut s) = self.settings() else { return };
            if let Some(f) = &d.from {
                s.from = f.clone();
            }
            match s.send(Some(&d.to), &d.subject, &d.body) {
                Ok(r) => tracing::info!("tailmail: mailed {} match(es) to {}: {r}", d.total, d.to.join(", ")),
                Err(e) => {
                    // The position stays: the same lines come next time.
                    tracing::error!("tailmail: cannot send ({e}); retrying at the next slot");
                    return;
                }
            }
        }
        if let Err(e) = d.save() {
            // The next slot would mail the same lines again: say so loudly.
            tracing::error!(
                "tailmail {config}: cannot keep its position ({e}); the same lines will be mailed again: let the daemon write {config}.state (under systemd, keep the config in /var/lib/capra)"
            );
        }
    }

    /// Syncs with more change rows waiting than `email_backlog_rows`.
    fn backlog(&mut self) {
        let limit: i64 = self
            .setting("email_backlog_rows")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if limit <= 0 {
            return;
        }
        let Ok(mut c) = self.control.get() else { return };
        let mut per_sync: BTreeMap<String, i64> = BTreeMap::new();
        let mut sources: BTreeMap<String, crate::catalog::model::Db> = BTreeMap::new();
        if let Ok(syncs) = crate::catalog::model::syncs(&mut *c) {
            for s in syncs.iter().filter(|s| s.status == Status::Active) {
                per_sync.entry(s.name.clone()).or_insert(0);
                if let Ok(p) = crate::catalog::plan::SyncPlan::load(&mut *c, &s.name) {
                    for d in p.sources {
                        sources.insert(d.name.clone(), d);
                    }
                }
            }
        }
        drop(c);
        let mut unknown = false;
        for (name, db) in sources {
            match db
                .connect()
                .and_then(|mut sc| crate::capture::purge::waiting(&mut sc, &self.installation, &[]))
            {
                Ok(w) => {
                    for x in w {
                        *per_sync.entry(x.sync.clone()).or_insert(0) += x.rows;
                    }
                }
                Err(e) => {
                    unknown = true;
                    tracing::debug!("Backlog check on \"{name}\": {e}");
                }
            }
        }
        for (sync, rows) in per_sync {
            let key = format!("backlog:{sync}");
            if rows > limit {
                if !self.incidents.contains_key(&key) {
                    self.incident(
                        &key,
                        "change backlog",
                        format!("Sync \"{sync}\" has {rows} change rows waiting (email_backlog_rows = {limit})"),
                    );
                }
            } else if self.incidents.contains_key(&key) && !unknown {
                self.resolved(
                    &key,
                    "backlog cleared",
                    format!("Sync \"{sync}\" has caught up ({rows} change rows waiting)"),
                );
            }
        }
    }

    fn status_report(&mut self) {
        let body = (|| -> crate::error::Result<(String, usize)> {
            let mut c = self.control.get()?;
            let daemon_up = crate::catalog::runs::daemon(&mut *c)?.is_some();
            let mut rows = Vec::new();
            for s in crate::catalog::model::syncs(&mut *c)? {
                rows.push(report::sync_status(&mut *c, &s, daemon_up)?);
            }
            let bad = rows
                .iter()
                .filter(|r| matches!(r.state, report::SyncState::Bad { .. }))
                .count();
            Ok((report::status_table(&rows), bad))
        })();
        match body {
            Ok((table, bad)) => {
                let now = Local::now();
                let (s, b) = tnm_mail(
                    "capra",
                    &self.host,
                    "status report",
                    &[Item {
                        text: format!("capra status ({bad} failing):\n\n{table}"),
                        count: 1,
                        first: now,
                        last: now,
                    }],
                );
                self.mail(s, b);
            }
            Err(e) => tracing::error!("Cannot build the status report: {e}"),
        }
    }

    fn run(mut self, rx: Receiver<Alert>, stop: Arc<std::sync::atomic::AtomicBool>) {
        loop {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                // Say what happened last before leaving.
                while let Ok(a) = rx.try_recv() {
                    self.handle(a);
                }
                self.flush_fresh();
                self.digest();
                if !self.queue.is_empty() {
                    tracing::error!(
                        "Stopping with {} unsent mail(s): {}",
                        self.queue.len(),
                        self.queue.iter().map(|q| q.0.as_str()).collect::<Vec<_>>().join("; ")
                    );
                }
                return;
            }
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(a) => self.handle(a),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if !self.fresh.is_empty() && self.fresh_since.elapsed() >= FRESH_WINDOW {
                self.flush_fresh();
            }
            if self.last_digest.elapsed() >= self.interval {
                self.last_digest = Instant::now();
                self.digest();
            }
            if self.last_check.elapsed() >= Duration::from_secs(1) {
                self.last_check = Instant::now();
                if let Some(v) = self.setting("email_alert_interval").and_then(|v| v.parse::<f64>().ok()) {
                    self.interval = Duration::from_secs_f64(v.clamp(1.0, 1e9));
                }
                let interval = self.interval;
                self.cooling.retain(|_, (at, _)| at.elapsed() < interval);
                self.check();
            }
            if !self.queue.is_empty() && self.last_retry.elapsed() >= Duration::from_secs(60) {
                self.last_retry = Instant::now();
                let q = std::mem::take(&mut self.queue);
                for (s, b) in q {
                    self.mail(s, b);
                }
            }
        }
    }
}

/// How late a sync is, by Bucardo's two thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Late {
    /// Past `overdue`.
    Overdue,
    /// Past `expired`.
    Expired,
}

impl Late {
    /// The word in incident keys and mails.
    fn as_str(self) -> &'static str {
        match self {
            Late::Overdue => "overdue",
            Late::Expired => "expired",
        }
    }

    /// The word as the failure mail says it (expired is shouted).
    fn shouted(self) -> &'static str {
        match self {
            Late::Overdue => "overdue",
            Late::Expired => "EXPIRED",
        }
    }
}

impl std::fmt::Display for Late {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An active sync with a lateness threshold, and the age of its last good
/// run (or empty run, or of the daemon).
struct LateSync {
    sync: String,
    /// Seconds; 0 when not set.
    overdue: f64,
    /// Seconds; 0 when not set.
    expired: f64,
    /// Seconds since the sync was last known good (none: no daemon row).
    age: Option<f64>,
}

impl LateSync {
    /// Every active sync with an overdue or expired threshold.
    fn load(c: &mut impl postgres::GenericClient) -> crate::error::Result<Vec<LateSync>> {
        let rows = c
            .query(
                "SELECT s.name,
                    extract(epoch FROM s.overdue)::float8, extract(epoch FROM s.expired)::float8,
                    extract(epoch FROM now() - coalesce(greatest((SELECT r.ended FROM capra.run r WHERE r.id = st.last_good), st.last_empty), d.started))::float8
               FROM capra.sync s
               LEFT JOIN capra.sync_state st ON st.sync = s.name
               CROSS JOIN (SELECT min(started) AS started FROM capra.daemon) d
              WHERE s.status = 'active' AND (s.overdue > '0' OR s.expired > '0')",
                &[],
            )
            .ctx(|| "checking for late syncs".into())?;
        rows.iter().map(LateSync::from_row).collect()
    }

    fn from_row(r: &postgres::Row) -> crate::error::Result<LateSync> {
        const WHAT: &str = "reading a sync's lateness";
        Ok(LateSync {
            sync: r.col(0, WHAT)?,
            overdue: r.col(1, WHAT)?,
            expired: r.col(2, WHAT)?,
            age: r.col(3, WHAT)?,
        })
    }
}

/// Seconds between backlog checks (each connects to every source):
/// `CAPRA_TEST_BACKLOG_EVERY` for tests, else a minute.
fn backlog_every() -> u64 {
    std::env::var("CAPRA_TEST_BACKLOG_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}
