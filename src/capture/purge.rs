//! Purging replicated change rows from sources (Bucardo's VAC) and counting
//! what still waits (`capra delta`).
//!
//! A change row may go once every consumer of its table has it: its txid is
//! below the oldest consumer snapshot's xmin. A consumer that stops (its
//! sync inactive, the daemon down) holds rows back; `delta` shows its age so
//! nobody is surprised by a growing log, and removing the sync frees them.

use postgres::GenericClient;

use crate::error::{Context, Result};
use crate::pg::RowExt;

/// Rows purged from one source database.
#[derive(Clone, Debug, Default)]
pub struct Purged {
    /// Change rows deleted.
    pub rows: u64,
    /// Tables whose log was looked at.
    pub tables: u64,
}

/// Deletes change rows every consumer has applied; with `older_than`
/// (an interval), only those also older than that.
pub fn purge(c: &mut impl GenericClient, older_than: Option<&str>) -> Result<Purged> {
    let mut out = Purged::default();
    let exists: bool = c
        .query_one("SELECT to_regclass('capra.captured') IS NOT NULL", &[])
        .ctx(|| "looking for capra's change capture".into())?
        .col(0, "whether capra's change capture exists")?;
    if !exists {
        return Ok(out);
    }
    let rows = c
        .query(
            // A consumer ahead of the database (a source restored from a
            // backup) makes its tables' horizon 0: nothing is purged there
            // until the sync is repaired.
            "SELECT cap.id, CASE WHEN bool_or(txid_snapshot_xmin(con.snapshot) > txid_snapshot_xmax(txid_current_snapshot()))
                                 THEN 0 ELSE min(txid_snapshot_xmin(con.snapshot)) END
               FROM capra.captured cap
               JOIN capra.consumer_table ct ON ct.captured = cap.id
               JOIN capra.consumer con ON con.installation = ct.installation AND con.sync = ct.sync
              GROUP BY cap.id ORDER BY cap.id",
            &[],
        )
        .ctx(|| "reading consumer positions".into())?;
    for r in rows {
        let id: i32 = r.col(0, "reading consumer positions")?;
        let horizon: i64 = r.col(1, "reading consumer positions")?;
        let n = match older_than {
            Some(iv) => c.execute(
                &format!(
                    "DELETE FROM capra.delta_{id} WHERE capra_txid < $1 AND capra_ts < now() - $2::text::interval"
                ),
                &[&horizon, &iv],
            ),
            None => c.execute(
                &format!("DELETE FROM capra.delta_{id} WHERE capra_txid < $1"),
                &[&horizon],
            ),
        }
        .ctx(|| format!("purging change log {id}"))?;
        out.rows += n;
        out.tables += 1;
    }
    // Truncation notes every consumer has seen.
    out.rows += c
        .execute(
            "DELETE FROM capra.truncate_log WHERE capra_txid < coalesce((SELECT CASE WHEN bool_or(txid_snapshot_xmin(snapshot) > txid_snapshot_xmax(txid_current_snapshot()))
                    THEN 0 ELSE min(txid_snapshot_xmin(snapshot)) END FROM capra.consumer), 0)",
            &[],
        )
        .ctx(|| "purging truncation notes".into())?;
    Ok(out)
}

/// Consumers of this installation whose sync is no longer in the catalog
/// (a removal whose source commit failed, or a source that was down):
/// they would hold every change row back forever.
pub fn orphans(c: &mut impl GenericClient, installation: &str, known_syncs: &[String]) -> Result<Vec<String>> {
    let exists: bool = c
        .query_one("SELECT to_regclass('capra.consumer') IS NOT NULL", &[])
        .ctx(|| "looking for capra's change capture".into())?
        .col(0, "whether capra's change capture exists")?;
    if !exists {
        return Ok(Vec::new());
    }
    c.query(
        "SELECT sync FROM capra.consumer WHERE installation = $1 AND NOT (sync = ANY($2)) ORDER BY 1",
        &[&installation, &known_syncs],
    )
    .ctx(|| "looking for leftover consumers".into())?
    .iter()
    .map(|r| r.col(0, "looking for leftover consumers"))
    .collect()
}

/// Changes waiting for one consumer on one table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Waiting {
    /// The sync.
    pub sync: String,
    /// `schema.table`.
    pub table: String,
    /// Change rows not yet applied.
    pub rows: i64,
    /// Seconds since the oldest of them was written (lag).
    pub oldest_secs: Option<f64>,
}

/// One sync's waiting changes on one source, over all its tables: what
/// `status` shows and the metrics export, from one computation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pending {
    /// Change rows not yet applied.
    pub rows: i64,
    /// Seconds since the oldest of them was written; None when none waits.
    pub oldest_secs: Option<f64>,
}

/// Sums [`waiting`]'s rows per sync.
pub fn pending_by_sync(w: &[Waiting]) -> std::collections::BTreeMap<String, Pending> {
    let mut out: std::collections::BTreeMap<String, Pending> = std::collections::BTreeMap::new();
    for x in w {
        let p = out.entry(x.sync.clone()).or_default();
        p.rows += x.rows;
        if let Some(o) = x.oldest_secs {
            p.oldest_secs = Some(p.oldest_secs.map_or(o, |a| a.max(o)));
        }
    }
    out
}

/// Rows in this source's change logs, from PostgreSQL's statistics: cheap
/// at any log size, and a second or so behind.
pub fn log_rows(c: &mut impl GenericClient) -> Result<i64> {
    c.query_one(
        "SELECT coalesce(sum(n_live_tup), 0)::int8 FROM pg_catalog.pg_stat_user_tables
          WHERE schemaname = 'capra' AND relname OPERATOR(pg_catalog.~) '^delta_[0-9]+$'",
        &[],
    )
    .ctx(|| "counting capra's change log rows".into())?
    .col(0, "counting capra's change log rows")
}

/// What waits on this source for the given installation's syncs (all when
/// `syncs` is empty).
pub fn waiting(c: &mut impl GenericClient, installation: &str, syncs: &[String]) -> Result<Vec<Waiting>> {
    let exists: bool = c
        .query_one("SELECT to_regclass('capra.captured') IS NOT NULL", &[])
        .ctx(|| "looking for capra's change capture".into())?
        .col(0, "whether capra's change capture exists")?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows = c
        .query(
            "SELECT ct.sync, cap.id, cap.schemaname || '.' || cap.relname, con.snapshot::text
               FROM capra.consumer_table ct
               JOIN capra.captured cap ON cap.id = ct.captured
               JOIN capra.consumer con ON con.installation = ct.installation AND con.sync = ct.sync
              WHERE ct.installation = $1 AND (cardinality($2::text[]) = 0 OR ct.sync = ANY($2))
              ORDER BY 1, 3",
            &[&installation, &syncs],
        )
        .ctx(|| "reading consumers".into())?;
    let mut out = Vec::new();
    const Q: &str = "reading consumers";
    for r in rows {
        let id: i32 = r.col(1, Q)?;
        let table: String = r.col(2, Q)?;
        let snap: String = r.col(3, Q)?;
        let w = c
            .query_one(
                &format!(
                    "SELECT count(*), extract(epoch from now() - min(capra_ts))::float8 FROM capra.delta_{id}
                      WHERE capra_txid >= txid_snapshot_xmin($1::text::txid_snapshot)
                        AND NOT txid_visible_in_snapshot(capra_txid, $1::text::txid_snapshot)"
                ),
                &[&snap],
            )
            .ctx(|| {
                format!(
                    "counting waiting changes of {}",
                    crate::pg::ident::show_qualified(&table)
                )
            })?;
        let counted = format!(
            "counting waiting changes of {}",
            crate::pg::ident::show_qualified(&table)
        );
        out.push(Waiting {
            sync: r.col(0, Q)?,
            rows: w.col(0, &counted)?,
            oldest_secs: w.col(1, &counted)?,
            table,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_sums_rows_and_keeps_the_oldest_age_per_sync() {
        let w = |sync: &str, table: &str, rows: i64, oldest: Option<f64>| Waiting {
            sync: sync.into(),
            table: table.into(),
            rows,
            oldest_secs: oldest,
        };
        let p = pending_by_sync(&[
            w("a", "t1", 3, Some(2.0)),
            w("a", "t2", 4, Some(9.5)),
            w("a", "t3", 0, None),
            w("b", "t1", 0, None),
        ]);
        assert_eq!(
            p["a"],
            Pending {
                rows: 7,
                oldest_secs: Some(9.5)
            }
        );
        assert_eq!(p["b"], Pending::default());
        assert_eq!(p.len(), 2);
    }
}
