//! Leadership among several daemons on one control database: a lease in
//! `capra.lease`, taken and renewed by one conditional UPDATE timed by the
//! control server's clock only, so no daemon's clock (or pause) decides
//! who leads. The epoch only grows; a new leader's writes carry it, so the
//! old leader's can be fenced off on every database capra writes.
//!
//! A standby takes the lease when it is free (released by a clean stop),
//! expired, or at once when the holder's lease session is provably gone:
//! its backend pid and start time are absent from `pg_stat_activity` and
//! it started after the server did (a restarted control server forgets
//! every session, which proves nothing about the holder). A daemon that
//! may not see another role's session start time (no `pg_read_all_stats`)
//! goes by the pid alone.

use postgres::GenericClient;

use crate::error::{Context, Result};
use crate::pg::RowExt;

/// SQL over the lease row `l`: its holder's lease session is provably
/// gone (its backend pid and start time are absent, and it started after
/// the server did; a daemon that may not see another role's start times
/// goes by the pid alone).
pub(crate) const HOLDER_GONE: &str = "(l.backend_start > pg_catalog.pg_postmaster_start_time()
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                       WHERE a.pid OPERATOR(pg_catalog.=) l.backend_pid
                         AND (a.backend_start OPERATOR(pg_catalog.=) l.backend_start OR a.backend_start IS NULL)))";

/// Who asks for the lease.
#[derive(Clone, Debug)]
pub struct Claimant<'a> {
    /// This daemon process's random id.
    pub id: &'a str,
    /// Its host.
    pub host: &'a str,
    /// Its pid.
    pub pid: i32,
}

/// The lease as held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The term: above every earlier one.
    pub epoch: i64,
    /// When this term began, as the server tells it.
    pub since: String,
}

/// What a take-or-renew asks.
#[derive(Clone, Copy, Debug)]
pub struct Ask {
    /// The epoch this daemon holds (0: none).
    pub held: i64,
    /// The highest fence epoch this daemon has seen: a new term is above it.
    pub floor: i64,
    /// Whether it may take a lease it does not hold (false: renew only).
    pub may_take: bool,
    /// How long the lease lasts from now, in seconds.
    pub secs: f64,
}

/// Takes the lease (free, expired, or its holder's session provably gone)
/// or renews this daemon's own; None when another holds it. A daemon of
/// capra before several daemons existed holds an advisory lock instead:
/// while one does, nobody takes the lease (it would run the syncs twice).
/// The lease
/// session must be a direct one (not through a transaction pooler): its
/// backend is what a standby looks for.
pub fn take_or_renew(c: &mut impl GenericClient, me: &Claimant<'_>, ask: Ask) -> Result<Option<Held>> {
    const Q: &str = "taking or renewing the lease";
    let row = c
        .query_opt(
            &format!(
                "UPDATE capra.lease l SET
                 epoch = CASE WHEN l.holder = $1 AND l.epoch = $2 THEN l.epoch
                              ELSE GREATEST(l.epoch, $3::bigint) + 1 END,
                 since = CASE WHEN l.holder = $1 AND l.epoch = $2 THEN l.since
                              ELSE pg_catalog.clock_timestamp() END,
                 holder = $1, host = $4, pid = $5,
                 backend_pid = pg_catalog.pg_backend_pid(),
                 backend_start = (SELECT a.backend_start FROM pg_catalog.pg_stat_activity a
                                   WHERE a.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()),
                 lease_until = pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => $6),
                 renewed = pg_catalog.clock_timestamp(), released = NULL
             WHERE (l.holder = $1 AND l.epoch = $2)
                OR ($7 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_locks k
                                        WHERE k.locktype = 'advisory' AND k.granted
                                          AND k.database = (SELECT d.oid FROM pg_catalog.pg_database d
                                                             WHERE d.datname = pg_catalog.current_database())
                                          AND k.classid::bigint = $8::int::bigint
                                          AND k.objid::bigint = $9::int::bigint AND k.objsubid = 2)
                       AND (l.holder IS NULL
                            OR l.lease_until <= pg_catalog.clock_timestamp()
                            OR {HOLDER_GONE}))
             RETURNING l.epoch, pg_catalog.to_char(l.since, 'YYYY-MM-DD HH24:MI:SS.MS')"
            ),
            &[
                &me.id,
                &ask.held,
                &ask.floor,
                &me.host,
                &me.pid,
                &ask.secs,
                &ask.may_take,
                &super::runs::DAEMON_LOCK.0,
                &super::runs::DAEMON_LOCK.1,
            ],
        )
        .ctx(|| Q.into())?;
    row.map(|r| {
        Ok(Held {
            epoch: r.col(0, Q)?,
            since: r.col(1, Q)?,
        })
    })
    .transpose()
}

/// Gives the lease up at once, if still held; `why` ("stop", "handover",
/// "lost") tells the next leader whether it takes over or merely starts.
/// `floor`, the highest fence epoch this daemon saw, is kept as the epoch,
/// so the next term is above every fence (a control database that failed
/// over may have forgotten terms).
pub fn release(c: &mut impl GenericClient, me: &Claimant<'_>, epoch: i64, why: &str, floor: i64) -> Result<bool> {
    Ok(c.execute(
        "UPDATE capra.lease SET holder = NULL, lease_until = pg_catalog.clock_timestamp(), released = $3,
                epoch = GREATEST(epoch, $4::bigint)
          WHERE holder = $1 AND epoch = $2",
        &[&me.id, &epoch, &why, &floor],
    )
    .ctx(|| "releasing the lease".into())?
        > 0)
}

/// The lease as the server sees it now.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    /// The current (or last) term.
    pub epoch: i64,
    /// Its holder's id, host and pid, while held.
    pub holder: Option<(String, String, i32)>,
    /// Seconds left before it expires (negative: expired).
    pub left: Option<f64>,
    /// The last holder's host and pid, and why it let go (None: it did
    /// not, or there never was one).
    pub last: Option<(String, i32, Option<String>)>,
    /// Whether the holder's lease session is provably gone.
    pub session_gone: bool,
}

/// Reads the lease.
pub fn read(c: &mut impl GenericClient) -> Result<Lease> {
    const Q: &str = "reading the lease";
    let r = c
        .query_one(
            &format!(
                "SELECT epoch, holder, host, pid,
                        extract(epoch FROM lease_until - pg_catalog.clock_timestamp())::float8, released,
                        {HOLDER_GONE} IS TRUE
                   FROM capra.lease l"
            ),
            &[],
        )
        .ctx(|| Q.into())?;
    let holder: Option<String> = r.col(1, Q)?;
    let host: Option<String> = r.col(2, Q)?;
    let pid: Option<i32> = r.col(3, Q)?;
    Ok(Lease {
        last: host.clone().map(|h| (h, pid.unwrap_or(0), r.col(5, Q).ok().flatten())),
        session_gone: r.col(6, Q)?,
        epoch: r.col(0, Q)?,
        holder: match holder {
            Some(h) => Some((
                h,
                r.col::<_, Option<String>>(2, Q)?.unwrap_or_default(),
                r.col::<_, Option<i32>>(3, Q)?.unwrap_or(0),
            )),
            None => None,
        },
        left: r.col(4, Q)?,
    })
}
