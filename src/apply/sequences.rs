//! Sequences: their value and settings read on the source and written on
//! targets where they differ from what was applied before.

use postgres::Transaction;

use crate::catalog::model::Relation;
use crate::error::{Context, Result};
use crate::pg::discover;
use crate::pg::RowExt;

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SeqState {
    last_value: i64,
    is_called: bool,
    attrs: Option<(i64, i64, i64, i64, i64, bool)>,
}

/// Reads each sequence's value and settings on the source.
pub(crate) fn read_sequences(stx: &mut Transaction<'_>, seqs: &[Relation]) -> Result<Vec<SeqState>> {
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let v = discover::server_version(stx)?;
    let mut out = Vec::new();
    for s in seqs {
        let r = stx
            .query_one(&format!("SELECT last_value, is_called FROM {}", s.name.sql()), &[])
            .ctx(|| format!("reading sequence {}", s.name.shown()))?;
        let attrs = if v >= 100000 {
            stx.query_opt(
                "SELECT start_value, increment_by, min_value, max_value, cache_size, cycle FROM pg_catalog.pg_sequences
                  WHERE schemaname = $1 AND sequencename = $2",
                &[&s.name.schema, &s.name.name],
            )
            .ctx(|| format!("reading sequence {}", s.name.shown()))?
            .map(|a| settings(&a))
            .transpose()?
        } else {
            let a = stx
                .query_one(
                    &format!(
                        "SELECT start_value, increment_by, min_value, max_value, cache_value, is_cycled FROM {}",
                        s.name.sql()
                    ),
                    &[],
                )
                .ctx(|| format!("reading sequence {}", s.name.shown()))?;
            Some(settings(&a)?)
        };
        out.push(SeqState {
            last_value: r.col(0, "a sequence's value")?,
            is_called: r.col(1, "a sequence's value")?,
            attrs,
        });
    }
    Ok(out)
}

/// A sequence's settings from a row of start, increment, min, max, cache
/// and cycle (pg_sequences, or the sequence itself before PostgreSQL 10).
fn settings(a: &postgres::Row) -> Result<(i64, i64, i64, i64, i64, bool)> {
    let what = "a sequence's settings";
    Ok((
        a.col(0, what)?,
        a.col(1, what)?,
        a.col(2, what)?,
        a.col(3, what)?,
        a.col(4, what)?,
        a.col(5, what)?,
    ))
}

/// Writes a sequence's value (and differing settings) on a target.
pub(crate) fn apply_sequence(tx: &mut Transaction<'_>, db: &str, s: &Relation, v: &SeqState) -> Result<()> {
    if let Some((start, inc, min, max, cache, cycle)) = v.attrs {
        let mine = read_sequences(tx, std::slice::from_ref(s))?.pop().and_then(|x| x.attrs);
        if mine != v.attrs {
            // RESTART WITH the source's value keeps the current value inside
            // the new bounds; setval below then sets is_called.
            tx.batch_execute(&format!(
                "ALTER SEQUENCE {} INCREMENT BY {inc} MINVALUE {min} MAXVALUE {max} START WITH {start} RESTART WITH {} CACHE {cache} {}CYCLE",
                s.name.sql(),
                v.last_value,
                if cycle { "" } else { "NO " }
            ))
            .ctx(|| format!("changing the settings of sequence {} on \"{db}\"", s.name.shown()))?;
        }
    }
    tx.query_one(
        "SELECT setval($1::text::regclass, $2, $3)",
        &[&s.name.sql(), &v.last_value, &v.is_called],
    )
    .ctx(|| format!("setting sequence {} on \"{db}\"", s.name.shown()))?;
    Ok(())
}
