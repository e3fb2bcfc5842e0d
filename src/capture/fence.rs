//! Fencing: on every database a capra daemon writes, a row in
//! `capra.fence` says which leader's term (epoch and holder) may write
//! there. Each of a daemon's write transactions first locks that row FOR
//! SHARE and aborts unless it names its own term ([`check_sql`]); a new
//! leader raises the fence before its first write ([`raise`]), which waits
//! out the old leader's open transactions, and ends them if they do not
//! end on their own (a leader frozen past its lease), so replication goes
//! on while the old one stays frozen, and that one can never commit again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres::Client;

use super::install::sql_literal;
use crate::error::{Context, Result};
use crate::pg::RowExt;

/// SQLSTATE of a write refused by the fence.
pub const FENCED: &str = "CF001";

/// A leader's term, as fences carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    /// capra's installation (several may write one database).
    pub installation: String,
    /// The lease epoch.
    pub epoch: i64,
    /// The daemon process's id.
    pub holder: String,
}

/// What raising the fence found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Raised {
    /// The fence names this term now.
    Ours,
    /// Another term is at or above this one: this daemon lost its term
    /// (or a control database that failed over forgot it).
    Above {
        /// The fence's epoch.
        epoch: i64,
        /// Its holder.
        holder: String,
    },
}

/// Creates the fence table if it is missing, in capra's own schema (which
/// nothing but capra's role may use): an existing fence needs no right
/// beyond using it, a missing schema needs CREATE on the database.
pub fn ensure(c: &mut Client) -> Result<()> {
    const Q: &str = "looking for capra's fence";
    let r = c
        .query_one(
            "SELECT pg_catalog.to_regclass('capra.fence') IS NOT NULL,
                    pg_catalog.to_regnamespace('capra') IS NOT NULL",
            &[],
        )
        .ctx(|| Q.into())?;
    let (fence, schema): (bool, bool) = (r.col(0, Q)?, r.col(1, Q)?);
    if fence {
        return Ok(());
    }
    let mut tx = c.transaction().ctx(|| "creating capra's fence".into())?;
    if schema {
        super::install::refuse_foreign_schema(&mut tx)?;
    } else {
        tx.batch_execute("CREATE SCHEMA IF NOT EXISTS capra; REVOKE ALL ON SCHEMA capra FROM PUBLIC")
            .ctx(|| "creating capra's schema for its fence".into())?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS capra.fence (
             installation text PRIMARY KEY,
             epoch bigint NOT NULL,
             holder text NOT NULL,
             host text,
             pid integer,
             raised timestamptz NOT NULL DEFAULT pg_catalog.now())",
    )
    .ctx(|| "creating capra's fence".into())?;
    tx.commit().ctx(|| "creating capra's fence".into())
}

/// The statement that opens every write transaction of a term: it holds
/// the fence row FOR SHARE to the end of the transaction (so a raise waits
/// for it), and aborts with [`FENCED`] unless the fence names this term.
pub fn check_sql(t: &Term) -> String {
    format!(
        "DO $capra_fence$ BEGIN
           IF pg_catalog.to_regclass('capra.fence') IS NULL THEN
             RAISE EXCEPTION 'capra: fenced: no fence here for epoch %', {} USING ERRCODE = '{FENCED}';
           END IF;
           PERFORM 1 FROM capra.fence WHERE installation = {} AND epoch = {} AND holder = {} FOR SHARE;
           IF NOT FOUND THEN
             RAISE EXCEPTION 'capra: fenced: epoch % may not write here any more', {} USING ERRCODE = '{FENCED}';
           END IF;
         END $capra_fence$",
        t.epoch,
        sql_literal(&t.installation),
        t.epoch,
        sql_literal(&t.holder),
        t.epoch
    )
}

/// Takes this installation's fence off a database capra no longer writes
/// (`capra remove db`): its row, the table once no other installation has
/// one, and capra's schema once nothing else is in it.
pub fn remove(c: &mut Client, installation: &str) -> Result<()> {
    const Q: &str = "removing capra's fence";
    let there: bool = c
        .query_one("SELECT pg_catalog.to_regclass('capra.fence') IS NOT NULL", &[])
        .ctx(|| Q.into())?
        .col(0, Q)?;
    if !there {
        return Ok(());
    }
    let mut tx = c.transaction().ctx(|| Q.into())?;
    tx.execute("DELETE FROM capra.fence WHERE installation = $1", &[&installation])
        .ctx(|| Q.into())?;
    let left: bool = tx
        .query_one("SELECT EXISTS (SELECT 1 FROM capra.fence)", &[])
        .ctx(|| Q.into())?
        .col(0, Q)?;
    if !left {
        tx.batch_execute("DROP TABLE capra.fence").ctx(|| Q.into())?;
        super::install::drop_schema_if_empty(&mut tx)?;
    }
    tx.commit().ctx(|| Q.into())
}

/// Whether an error is the fence refusing a write.
pub fn is_fenced(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code() == FENCED)
}

/// Raises the fence to term `t` on the database `c` is connected to. While
/// it waits for the old term's open transactions, `monitor` (a second
/// connection as the same role) ends the ones holding it up; it waits at
/// most `wait_ms` in all (then an error: the next run tries again). A fence
/// that names the term already is left alone: raising it again would wait
/// for, and end, this term's own transactions.
pub fn raise<M>(c: &mut Client, monitor: M, t: &Term, host: &str, pid: i32, wait_ms: u64) -> Result<Raised>
where
    M: std::ops::DerefMut<Target = Client> + Send + 'static,
{
    const Q: &str = "raising capra's fence";
    if let Some(now) = read(c, t)? {
        if now == (t.epoch, t.holder.clone()) {
            return Ok(Raised::Ours);
        }
    }
    let me: i32 = c
        .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
        .ctx(|| Q.into())?
        .col(0, Q)?;
    let done = Arc::new(AtomicBool::new(false));
    let watch = {
        let done = done.clone();
        crate::sys::spawn("capra-fence", move || end_blockers(monitor, me, &done))?
    };
    let row = c.transaction().and_then(|mut tx| {
        tx.batch_execute(&format!("SET LOCAL lock_timeout = {wait_ms}"))?;
        let row = tx.query_opt(
            "INSERT INTO capra.fence (installation, epoch, holder, host, pid) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (installation) DO UPDATE
                SET epoch = EXCLUDED.epoch, holder = EXCLUDED.holder, host = EXCLUDED.host,
                    pid = EXCLUDED.pid, raised = pg_catalog.now()
              WHERE capra.fence.epoch OPERATOR(pg_catalog.<) EXCLUDED.epoch
             RETURNING epoch",
            &[&t.installation, &t.epoch, &t.holder, &host, &pid],
        )?;
        tx.commit()?;
        Ok(row)
    });
    done.store(true, Ordering::SeqCst);
    let _ = watch.join();
    if row.ctx(|| Q.into())?.is_some() {
        return Ok(Raised::Ours);
    }
    match read(c, t)? {
        Some((epoch, holder)) if epoch == t.epoch && holder == t.holder => Ok(Raised::Ours),
        Some((epoch, holder)) => Ok(Raised::Above { epoch, holder }),
        None => Ok(Raised::Above {
            epoch: t.epoch,
            holder: "(none)".into(),
        }),
    }
}

/// The fence of `t`'s installation, unlocked: (epoch, holder).
fn read(c: &mut Client, t: &Term) -> Result<Option<(i64, String)>> {
    const Q: &str = "reading capra's fence";
    c.query_opt(
        "SELECT epoch, holder FROM capra.fence WHERE installation = $1",
        &[&t.installation],
    )
    .ctx(|| Q.into())?
    .map(|r| Ok((r.col(0, Q)?, r.col(1, Q)?)))
    .transpose()
}

/// Ends, every 100 ms until `done`, the sessions of capra's own role that
/// block backend `waiter`: the old term's transactions holding the fence.
/// None of this term's can be among them: its check locks the row only
/// when the row names this term, which a raise only happens without (and
/// the caller raises once per database at a time).
fn end_blockers<M: std::ops::DerefMut<Target = Client>>(mut monitor: M, waiter: i32, done: &AtomicBool) {
    let mut warned = false;
    while !done.load(Ordering::SeqCst) {
        let r = monitor.execute(
            "SELECT pg_catalog.pg_terminate_backend(b)
               FROM pg_catalog.unnest(pg_catalog.pg_blocking_pids($1)) AS b
               JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) b
              WHERE a.usename OPERATOR(pg_catalog.=) CURRENT_USER",
            &[&waiter],
        );
        if let Err(e) = r {
            if !warned {
                tracing::warn!(
                    "capra could not end the old leader's sessions: {}",
                    crate::pg::error::describe(&e)
                );
                warned = true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
