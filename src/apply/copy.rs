//! The COPY pipe: rows stream from the source into every chosen target at
//! once through one buffer, never a whole table in memory.

use std::io::{Read, Write};

use postgres::Transaction;

use crate::catalog::model::Relation;
use crate::error::{Context, Error, Result};

fn io_err(context: impl Fn() -> String, e: std::io::Error) -> Error {
    if e.get_ref().is_some_and(|r| r.is::<postgres::Error>()) {
        let inner = e
            .into_inner()
            .expect("checked")
            .downcast::<postgres::Error>()
            .expect("checked");
        return Error::Db {
            context: context(),
            detail: crate::pg::error::describe(&inner),
            source: *inner,
        };
    }
    Error::Io {
        context: context(),
        source: e,
    }
}

/// Streams one COPY out of the source into the chosen targets at once;
/// returns rows written (summed over targets).
pub(crate) fn pipe(
    stx: &mut Transaction<'_>,
    query: &str,
    txs: &mut [Transaction<'_>],
    idx: &[usize],
    names: &[String],
    t: &Relation,
    cols: &str,
) -> Result<u64> {
    let into = format!("COPY {} ({cols}) FROM STDIN", t.name.sql());
    let mut writers = Vec::new();
    for (i, tx) in txs.iter_mut().enumerate() {
        if idx.contains(&i) {
            let w = tx
                .copy_in(into.as_str())
                .ctx(|| format!("starting COPY into {} on \"{}\"", t.name.human(), names[i]))?;
            writers.push((i, w));
        }
    }
    let mut reader = stx
        .copy_out(query)
        .ctx(|| format!("starting COPY from {}", t.name.human()))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| io_err(|| format!("reading {} from the source", t.name.human()), e))?;
        if n == 0 {
            break;
        }
        for (i, w) in writers.iter_mut() {
            w.write_all(&buf[..n])
                .map_err(|e| io_err(|| format!("writing {} to \"{}\"", t.name.human(), names[*i]), e))?;
        }
    }
    drop(reader);
    let mut rows = 0;
    for (i, w) in writers {
        rows += w
            .finish()
            .ctx(|| format!("finishing COPY into {} on \"{}\"", t.name.human(), names[i]))?;
    }
    Ok(rows)
}
