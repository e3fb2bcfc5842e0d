//! Several daemons, one leader. Each daemon process registers in
//! `capra.daemons` and runs a lease thread with a connection of its own
//! (`capra MCP (pid N)`): a standby tries to take the lease every 250 ms,
//! the leader renews it every third of `ha_lease`. The leader may write
//! only until a deadline on its own CLOCK_BOOTTIME (which, unlike a
//! monotonic clock, also counts a suspended VM), counted from when it *sent*
//! its last good renew: the server's lease runs at least that long, so the
//! leader has stopped before any standby may take over. Fences on the
//! written databases (`capture::fence`) make a leader paused past that
//! point harmless anyway.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use super::engine::Event;
use super::watcher::Bounded;
use crate::capture::fence;
use crate::catalog::lease::{self, Ask, Claimant, Lease};
use crate::catalog::runs;
use crate::error::{Context, Result};
use crate::pg::connect::ConnSpec;

/// The part of the lease the leader may use: writes stop at 80 % of it
/// (counted from the send), leaving room for clock-rate drift.
const USABLE: f64 = 0.8;

/// How often a standby tries to take the lease.
const STANDBY_POLL: Duration = Duration::from_millis(250);

/// This daemon's place among the daemons of its control database, shared
/// by the lease thread (which changes it) and the engine (which asks it
/// before every run).
#[derive(Debug)]
pub struct Role {
    /// A random id for this process (pids repeat across hosts).
    pub id: String,
    /// Its host.
    pub host: String,
    /// Its pid.
    pub pid: i32,
    /// `ha_lease`, in seconds.
    pub lease_secs: f64,
    /// The epoch held (0: standby).
    epoch: AtomicI64,
    /// CLOCK_BOOTTIME milliseconds up to which the leader may write.
    until_ms: AtomicU64,
    /// The highest fence epoch seen: a new term goes above it.
    floor: AtomicI64,
    /// The leader as last read, for a standby's status ("pid M on H").
    leader: Mutex<String>,
    /// CLOCK_BOOTTIME ms of the lease thread's last turn (0: none yet).
    turn_ms: AtomicU64,
    /// Whether the daemon stands by, engine stopped, so it may take the
    /// lease (false while a term's engine is still running or stopping).
    standing: AtomicBool,
    /// The main thread asked the lease thread to give the lease up (after
    /// a handover, a lost term or a failed takeover): the reason, and for
    /// how many ms after it this daemon takes none.
    resign: Mutex<Option<(&'static str, u64)>>,
}

impl Role {
    /// A new daemon's role: standby until it takes the lease.
    pub fn new(host: String, lease_secs: f64) -> Arc<Role> {
        Arc::new(Role {
            id: random_id(),
            host,
            pid: std::process::id() as i32,
            lease_secs,
            epoch: AtomicI64::new(0),
            until_ms: AtomicU64::new(0),
            floor: AtomicI64::new(0),
            leader: Mutex::new(String::new()),
            turn_ms: AtomicU64::new(0),
            standing: AtomicBool::new(false),
            resign: Mutex::new(None),
        })
    }

    /// The engine has stopped (or never started): the lease thread may
    /// take the lease.
    pub fn stand_by(&self) {
        self.standing.store(true, Ordering::SeqCst);
    }

    /// The engine of a term has stopped for good: the lease thread gives
    /// the lease up (`why`: "handover", "lost") if it still holds it, so the
    /// term cannot come back by a late renew, and takes none for
    /// `cooloff_ms` (a handover's gives a standby the lead).
    pub fn resign(&self, why: &'static str, cooloff_ms: u64) {
        let mut r = crate::sys::lock(&self.resign);
        *r = Some((why, cooloff_ms));
        self.drop_term();
    }

    /// Whether the lease thread has made its first attempt (so whether
    /// this daemon leads is known).
    pub fn looked(&self) -> bool {
        self.turn_ms.load(Ordering::SeqCst) > 0
    }

    /// Whether the lease thread went round within `d` (the watchdog).
    pub fn turned_within(&self, d: Duration) -> bool {
        boottime_ms().saturating_sub(self.turn_ms.load(Ordering::SeqCst)) <= d.as_millis() as u64
    }

    /// The lease's view of this daemon.
    pub fn claimant(&self) -> Claimant<'_> {
        Claimant {
            id: &self.id,
            host: &self.host,
            pid: self.pid,
        }
    }

    /// The epoch held (0 on a standby).
    pub fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Whether this daemon leads and its lease has not run out: nothing
    /// writes otherwise.
    pub fn may_write(&self) -> bool {
        self.epoch() > 0 && boottime_ms() < self.until_ms.load(Ordering::SeqCst)
    }

    /// The highest fence epoch seen.
    pub fn floor(&self) -> i64 {
        self.floor.load(Ordering::SeqCst)
    }

    /// A fence above this daemon's term was found: the next term goes
    /// above it.
    pub fn saw_fence(&self, epoch: i64) {
        self.floor.fetch_max(epoch, Ordering::SeqCst);
    }

    /// The role, for systemd's STATUS line and the log.
    pub fn describe(&self) -> String {
        match self.epoch() {
            0 => {
                let l = crate::sys::lock(&self.leader).clone();
                if l.is_empty() {
                    "standby, no leader".into()
                } else {
                    format!("standby, leader {l}")
                }
            }
            e => format!("leader (epoch {e})"),
        }
    }

    /// Holds the term until the deadline counted from `sent_ms`.
    fn hold(&self, epoch: i64, sent_ms: u64) {
        let usable = (self.lease_secs * USABLE * 1000.0) as u64;
        self.until_ms.store(sent_ms + usable, Ordering::SeqCst);
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    /// The term is over: nothing writes any more.
    fn drop_term(&self) {
        self.until_ms.store(0, Ordering::SeqCst);
    }

    /// The term is over and the lease thread stands by; the engine may
    /// still be stopping, so nothing is taken until [`Role::stand_by`].
    fn end_term(&self) {
        self.drop_term();
        self.epoch.store(0, Ordering::SeqCst);
    }
}

/// CLOCK_BOOTTIME in milliseconds: monotonic, and it counts a suspend.
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe {
        libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts);
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

fn random_id() -> String {
    use std::io::Read;
    let mut b = [0u8; 8];
    let got = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if got.is_err() {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = (n as u64 ^ (std::process::id() as u64) << 32).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// How a daemon came to lead.
#[derive(Clone, Debug)]
pub struct Took {
    /// Its term.
    pub epoch: i64,
    /// The daemon that led before, if it did not simply stop: it is taken
    /// over from (its runs aborted, every sync kicked, a mail sent).
    pub from: Option<Previous>,
    /// How the lease came free, for the log.
    pub how: String,
}

/// The daemon that led before a takeover.
#[derive(Clone, Debug)]
pub struct Previous {
    /// Its host.
    pub host: String,
    /// Its pid.
    pub pid: i32,
}

/// Registers this daemon in `capra.daemons` (status lists it); rows of
/// daemons gone for ten minutes (killed, so they never left) go.
pub fn register(c: &mut impl postgres::GenericClient, role: &Role, piddir: &str) -> Result<()> {
    c.execute(
        "DELETE FROM capra.daemons WHERE heartbeat < pg_catalog.clock_timestamp() - interval '10 minutes'",
        &[],
    )
    .ctx(|| "registering the daemon".into())?;
    c.execute(
        "INSERT INTO capra.daemons (id, host, pid, piddir, version, role) VALUES ($1, $2, $3, $4, $5, 'standby')",
        &[&role.id, &role.host, &role.pid, &piddir, &env!("CARGO_PKG_VERSION")],
    )
    .ctx(|| "registering the daemon".into())?;
    Ok(())
}

/// Takes this daemon out of `capra.daemons` and gives its lease up (a
/// clean stop or a handover); trouble is logged, never fatal.
pub fn leave(spec: &ConnSpec, role: &Role, why: &str) {
    let done = crate::pg::connect::resolve_for(spec, &format!("capra MCP (pid {})", role.pid), "control database")
        .and_then(|r| crate::pg::connect::open(&r, "the control database"))
        .and_then(|mut c| {
            if role.epoch() > 0 {
                lease::release(&mut c, &role.claimant(), role.epoch(), why, role.floor())?;
            }
            c.execute("DELETE FROM capra.daemons WHERE id = $1", &[&role.id])
                .ctx(|| "leaving the daemons list".into())?;
            Ok(())
        });
    role.drop_term();
    if let Err(e) = done {
        tracing::warn!("Could not give the lease up cleanly (a standby takes over when it expires): {e}");
    }
}

/// The lease thread, as the daemon holds it.
pub struct LeaseThread {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl LeaseThread {
    /// Starts it.
    pub fn start(
        spec: ConnSpec,
        role: Arc<Role>,
        events: tokio::sync::mpsc::UnboundedSender<Event>,
    ) -> Result<LeaseThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let join = crate::sys::spawn("capra-lease", move || {
            let _r = crate::logging::role("MCP", None);
            Keeper {
                spec,
                role,
                events,
                stop: s,
                conn: None,
                cooloff_ms: 0,
                next_renew_ms: 0,
                last_beat_ms: 0,
                last: None,
                reported: false,
            }
            .run()
        })?;
        Ok(LeaseThread { stop, join: Some(join) })
    }

    /// Stops it (within one bounded call) and waits.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// The lease thread's state.
struct Keeper {
    spec: ConnSpec,
    role: Arc<Role>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    stop: Arc<AtomicBool>,
    conn: Option<Bounded>,
    cooloff_ms: u64,
    next_renew_ms: u64,
    last_beat_ms: u64,
    /// The lease as a standby last read it (who leads, and how it ends).
    last: Option<Lease>,
    /// Whether trouble reaching the control database was logged.
    reported: bool,
}

impl Keeper {
    /// Each attempt's bound: a sixth of the lease (so a renew every third,
    /// plus two attempts, stays inside it), at least half a second.
    fn bound(&self) -> Duration {
        Duration::from_secs_f64((self.role.lease_secs / 6.0).max(0.5))
    }

    fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            let resign = crate::sys::lock(&self.role.resign).take();
            if let Some((why, cooloff)) = resign {
                self.give_up(why, cooloff);
            }
            if self.conn.is_none() {
                if let Err(e) = self.connect() {
                    self.trouble(&e);
                    self.role.turn_ms.store(boottime_ms(), Ordering::SeqCst);
                    self.check_deadline();
                    std::thread::sleep(STANDBY_POLL);
                    continue;
                }
            }
            let turn = if self.role.epoch() == 0 {
                self.stand_by()
            } else {
                self.renew()
            };
            if let Err(e) = turn {
                self.failed(&e);
            }
            self.role.turn_ms.store(boottime_ms(), Ordering::SeqCst);
            self.check_deadline();
            self.listen();
        }
    }

    /// The term is over: the lease goes (if the control database answers;
    /// else it expires), carrying the highest fence epoch seen so the next
    /// leader's term is above it, and this daemon takes none for a while.
    fn give_up(&mut self, why: &'static str, cooloff: u64) {
        let (role, epoch) = (self.role.clone(), self.role.epoch());
        if epoch > 0 {
            if let Some(conn) = &self.conn {
                let floor = role.floor();
                let r = conn.call_text(self.bound(), move |c| {
                    lease::release(c, &role.claimant(), epoch, why, floor).map_err(text)
                });
                if let Err(e) = r {
                    tracing::warn!("Could not give the lease up at once ({e}); a standby takes over when it expires");
                }
            }
        }
        self.role.end_term();
        self.cooloff_ms = boottime_ms() + cooloff;
    }

    fn trouble(&mut self, e: &str) {
        if !self.reported {
            tracing::warn!("The lease connection to the control database failed ({e}); retrying");
            self.reported = true;
        }
    }

    /// A leader past its deadline steps down: its runs are cancelled and
    /// it stands by.
    fn check_deadline(&mut self) {
        // A term the main thread ended is given up (released) instead.
        if crate::sys::lock(&self.role.resign).is_some() {
            return;
        }
        if self.role.epoch() > 0 && !self.role.may_write() {
            let why = format!(
                "could not renew the lease of epoch {} in time (ha_lease {}s)",
                self.role.epoch(),
                self.role.lease_secs
            );
            self.role.end_term();
            let _ = self.events.send(Event::StepDown(why));
        }
    }

    fn connect(&mut self) -> std::result::Result<(), String> {
        let bound = self.bound();
        let mut r = crate::pg::connect::resolve_for(
            &self.spec,
            &format!("capra MCP (pid {})", self.role.pid),
            "control database",
        )
        .map_err(|e| e.to_string())?;
        r.config.connect_timeout(bound);
        r.config.tcp_user_timeout(bound);
        let c = crate::pg::connect::open(&r, "the control database").map_err(|e| e.to_string())?;
        let c = Bounded::new(c)?;
        let ms = bound.as_millis() as i64;
        c.call(bound, move |c| {
            c.batch_execute(&format!(
                "SET statement_timeout = {ms}; SET lock_timeout = {ms}; LISTEN {}",
                runs::CONTROL_CHANNEL
            ))
        })?;
        if self.reported {
            tracing::info!("The lease connection to the control database works again");
            self.reported = false;
        }
        self.conn = Some(c);
        Ok(())
    }

    /// A standby's turn: read who leads, take the lease if it is free.
    fn stand_by(&mut self) -> std::result::Result<(), String> {
        let (role, cooloff) = (self.role.clone(), self.cooloff_ms);
        let may_take = self.role.standing.load(Ordering::SeqCst);
        let beat = self.beat_due();
        let Some(conn) = &self.conn else { return Ok(()) };
        let (before, took) = conn.call_text(self.bound(), move |c| {
            if beat {
                c.execute(
                    "UPDATE capra.daemons SET heartbeat = pg_catalog.clock_timestamp(), role = 'standby' WHERE id = $1",
                    &[&role.id],
                )
                .map_err(text)?;
            }
            let before = lease::read(c).map_err(text)?;
            let ask = Ask {
                held: 0,
                floor: role.floor(),
                may_take: may_take && boottime_ms() >= cooloff,
                secs: role.lease_secs,
            };
            let sent = boottime_ms();
            let took = lease::take_or_renew(c, &role.claimant(), ask).map_err(text)?;
            Ok((before, took.map(|h| (h, sent))))
        })?;
        *crate::sys::lock(&self.role.leader) = match &before.holder {
            Some((_, host, pid)) => format!("pid {pid} on {host}"),
            None => String::new(),
        };
        if took.is_none() {
            if let Some((id, _, _)) = &before.holder {
                if *id == self.role.id {
                    // Held by this daemon, which leads nothing (an answer
                    // that came after its call had timed out): let it go.
                    let (role, floor) = (self.role.clone(), self.role.floor());
                    if let Some(conn) = &self.conn {
                        conn.call_text(self.bound(), move |c| {
                            let epoch = before_epoch(c)?;
                            lease::release(c, &role.claimant(), epoch, "lost", floor).map_err(text)
                        })?;
                    }
                }
            }
        }
        if let Some((held, sent)) = took {
            self.role.standing.store(false, Ordering::SeqCst);
            self.role.hold(held.epoch, sent);
            self.next_renew_ms = sent + (self.role.lease_secs * 1000.0 / 3.0) as u64;
            let _ = self.events.send(Event::Lead(took_from(held.epoch, &before)));
        }
        self.last = Some(before);
        Ok(())
    }

    /// The leader's turn: renew when due; a lease someone else holds now
    /// ends the term at once.
    fn renew(&mut self) -> std::result::Result<(), String> {
        let now = boottime_ms();
        if now < self.next_renew_ms {
            return Ok(());
        }
        let role = self.role.clone();
        let Some(conn) = &self.conn else { return Ok(()) };
        let epoch = role.epoch();
        let got = conn.call_text(self.bound(), move |c| {
            let ask = Ask {
                held: epoch,
                floor: role.floor(),
                may_take: false,
                secs: role.lease_secs,
            };
            let got = lease::take_or_renew(c, &role.claimant(), ask).map_err(text)?;
            c.execute(
                "UPDATE capra.daemons SET heartbeat = pg_catalog.clock_timestamp(), role = 'leader' WHERE id = $1",
                &[&role.id],
            )
            .map_err(text)?;
            Ok(got)
        });
        match got {
            Ok(Some(h)) if h.epoch == epoch => {
                // Checked and held under one lock: a term the main thread
                // ended meanwhile never comes back.
                let resigning = crate::sys::lock(&self.role.resign);
                if resigning.is_some() || self.role.epoch() != epoch {
                    return Ok(());
                }
                self.role.hold(epoch, now);
                drop(resigning);
                self.next_renew_ms = now + (self.role.lease_secs * 1000.0 / 3.0) as u64;
                self.last_beat_ms = now;
                Ok(())
            }
            Ok(_) => {
                self.role.end_term();
                let _ = self.events.send(Event::StepDown(format!(
                    "another daemon holds the lease now (this one led epoch {epoch})"
                )));
                Ok(())
            }
            Err(e) => {
                // Try again soon (each attempt is bounded) until the deadline.
                self.next_renew_ms = now + 250;
                Err(e)
            }
        }
    }

    /// A standby's heartbeat goes out every 2 s (the leader's rides on
    /// each renew).
    fn beat_due(&mut self) -> bool {
        let now = boottime_ms();
        if now.saturating_sub(self.last_beat_ms) >= 2000 {
            self.last_beat_ms = now;
            true
        } else {
            false
        }
    }

    /// Waits a moment for requests on the control channel: stop reaches
    /// every daemon, handover only the leader.
    fn listen(&mut self) {
        let Some(conn) = &self.conn else { return };
        let wait = STANDBY_POLL;
        let got = conn.call(wait + self.bound(), move |c| {
            let mut out = Vec::new();
            let mut n = c.notifications();
            let first = n.timeout_iter(wait).next()?;
            if let Some(m) = first {
                out.push(m.payload().to_string());
                let mut more = n.iter();
                while let Some(m) = more.next()? {
                    out.push(m.payload().to_string());
                }
            }
            Ok(out)
        });
        match got {
            Ok(payloads) => {
                for p in payloads {
                    if p == "stop" || p.starts_with("stop ") {
                        let why = p.strip_prefix("stop").unwrap_or("").trim();
                        let why = if why.is_empty() { "capra stop" } else { why };
                        let _ = self.events.send(Event::Stop(why.to_string()));
                    } else if p == "handover" && self.role.epoch() > 0 {
                        let _ = self.events.send(Event::Handover);
                    }
                }
            }
            Err(e) => self.failed(&e),
        }
    }

    /// A call failed: a broken connection is opened again; a slow answer
    /// keeps it (the next call queues behind the slow one), since closing
    /// it would end the holder's backend and let a standby take over while
    /// this leader may still write.
    fn failed(&mut self, e: &str) {
        let leading = self.role.epoch() > 0;
        if !leading || !e.starts_with("no answer within") {
            self.conn = None;
            if leading {
                // Its backend is gone, which a standby may take for the
                // holder's: renew at once on a new connection.
                self.next_renew_ms = 0;
            }
        }
        self.trouble(e);
    }
}

/// The epoch of the lease row now (to release a lease this daemon holds
/// without knowing its term).
fn before_epoch(c: &mut postgres::Client) -> std::result::Result<i64, String> {
    lease::read(c).map(|l| l.epoch).map_err(text)
}

fn text<E: std::fmt::Display>(e: E) -> String {
    crate::pg::error::flatten(&e.to_string())
}

/// How the lease came to this daemon, from the lease as read just before.
fn took_from(epoch: i64, before: &Lease) -> Took {
    let last = before.last.clone();
    match (&before.holder, last) {
        (Some((_, host, pid)), _) => Took {
            epoch,
            how: if before.session_gone {
                "its lease session was gone".into()
            } else {
                "its lease expired".into()
            },
            from: Some(Previous {
                host: host.clone(),
                pid: *pid,
            }),
        },
        (None, Some((host, pid, released))) => {
            let handover = released.as_deref() == Some("handover");
            Took {
                epoch,
                how: if handover {
                    "it handed over".into()
                } else {
                    "it stopped".into()
                },
                from: handover.then_some(Previous { host, pid }),
            }
        }
        (None, None) => Took {
            epoch,
            how: "first start".into(),
            from: None,
        },
    }
}

impl super::engine::Engine {
    /// Makes the fence on `db` name this term before the term's first write
    /// there (ending the old term's open transactions if they hold it);
    /// once per database per term. A fence above this term means the term
    /// is over: the daemon steps down.
    pub fn fence(&self, db: &crate::catalog::model::Db) -> Result<()> {
        if crate::sys::lock(&self.raised).contains(&db.name) {
            return Ok(());
        }
        // One raise per database at a time in this process: a second one
        // would wait for, and end, the first one's session.
        let gate = crate::sys::lock(&self.raising)
            .entry(db.name.clone())
            .or_default()
            .clone();
        let _one = crate::sys::lock(&gate);
        if crate::sys::lock(&self.raised).contains(&db.name) {
            return Ok(());
        }
        let mut c = self.pools.get(db)?;
        fence::ensure(&mut c)?;
        let monitor = self.pools.get(db)?;
        let wait_ms = (self.role.lease_secs * 2000.0).min(20_000.0) as u64;
        match fence::raise(&mut c, monitor, &self.term, &self.host, self.pid, wait_ms)? {
            fence::Raised::Ours if self.may_write() => {
                crate::sys::lock(&self.raised).insert(db.name.clone());
                Ok(())
            }
            fence::Raised::Ours => Err(crate::Error::Rejected(format!(
                "not writing to \"{}\": this daemon's lease of epoch {} ran out",
                db.name, self.term.epoch
            ))),
            fence::Raised::Above { epoch, holder } => {
                self.role.saw_fence(epoch);
                let why = format!(
                    "database \"{}\" is fenced by epoch {epoch} (holder {holder}), above or beside this daemon's epoch {}; the control database may have failed over and forgotten a term",
                    db.name, self.term.epoch
                );
                // The term writes nothing more; the lease thread gives the
                // lease up carrying that epoch, so the next term is above it.
                // (An engine of an earlier term in this process, still
                // winding down, must not end the current one.)
                if self.role.epoch() == self.term.epoch {
                    self.role.resign("lost", 1000);
                    self.send_event(Event::StepDown(why.clone()));
                }
                Err(crate::Error::Rejected(why))
            }
        }
    }

    /// Raises the fence on every database at once at takeover (each waits
    /// out, or ends, the old leader's transactions there); one that cannot
    /// be reached now is fenced before its first write later.
    pub fn fence_all(self: &Arc<Self>, dbs: Vec<crate::catalog::model::Db>) {
        let handles: Vec<_> = dbs
            .into_iter()
            .filter_map(|db| {
                let me = self.clone();
                crate::sys::spawn("capra-fence-raise", move || {
                    if let Err(e) = me.fence(&db) {
                        tracing::warn!("Fence on database \"{}\" not raised yet: {e}", db.name);
                    }
                })
                .ok()
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
    }

    /// Whether this engine's term is the one held and its lease has not
    /// run out: an engine of an earlier term (still winding down) may not.
    pub fn may_write(&self) -> bool {
        self.role.epoch() == self.term.epoch && self.role.may_write()
    }

    /// Who records runs: this leader in its term.
    pub fn runner(&self) -> runs::Runner<'_> {
        runs::Runner {
            pid: self.pid,
            host: &self.host,
            holder: &self.term.holder,
            epoch: self.term.epoch,
        }
    }

    /// Every database the active syncs write: their targets, and the
    /// sources of delta syncs (positions, capture).
    pub fn written_dbs(&self) -> Vec<crate::catalog::model::Db> {
        let mut out: Vec<crate::catalog::model::Db> = Vec::new();
        let Ok(mut c) = self.control.get() else { return out };
        let Ok(syncs) = crate::catalog::model::syncs(&mut *c) else {
            return out;
        };
        for s in syncs.iter().filter(|s| s.status == crate::domain::Status::Active) {
            if let Ok(p) = crate::catalog::plan::SyncPlan::load(&mut *c, &s.name) {
                let sources = if p.is_delta() { p.sources } else { Vec::new() };
                for d in sources.into_iter().chain(p.targets).chain(p.fullcopy) {
                    if !out.iter().any(|o| o.name == d.name) {
                        out.push(d);
                    }
                }
            }
        }
        out
    }

    /// A write was refused by a fence: raise the fences again before the
    /// next writes (a dropped fence is recreated; a higher one ends the
    /// term).
    pub fn forget_fences(&self) {
        crate::sys::lock(&self.raised).clear();
    }
}
