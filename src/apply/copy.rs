//! The COPY pipe: rows stream from the source into every chosen target at
//! once through one buffer, never a whole table in memory.

use std::io::{Read, Write};

use postgres::Transaction;

use crate::error::{Context, Error, Result};

/// An I/O error of a COPY stream as capra's error: the server's own error
/// when the stream carried one (its SQLSTATE and detail), else the I/O error.
fn io_err(context: impl Fn() -> String, e: std::io::Error) -> Error {
    if !e.get_ref().is_some_and(|r| r.is::<postgres::Error>()) {
        return Error::Io {
            context: context(),
            source: e,
        };
    }
    let kind = e.kind();
    match e.into_inner().map(|inner| inner.downcast::<postgres::Error>()) {
        Some(Ok(inner)) => Error::Db {
            context: context(),
            detail: crate::pg::error::describe(&inner),
            driver: *inner,
        },
        Some(Err(other)) => Error::Io {
            context: context(),
            source: std::io::Error::new(kind, other),
        },
        None => Error::Io {
            context: context(),
            source: kind.into(),
        },
    }
}

/// Streams one COPY out of a source into the chosen receivers at once:
/// `dests` pairs a receiver with the `COPY ... FROM STDIN` it runs there
/// (a table, or a staging table). Returns the rows each received.
pub(crate) fn pipe(
    stx: &mut Transaction<'_>,
    query: &str,
    txs: &mut [Transaction<'_>],
    dests: &[(usize, String)],
    names: &[String],
    what: &str,
) -> Result<Vec<u64>> {
    let mut writers = Vec::new();
    for (i, tx) in txs.iter_mut().enumerate() {
        if let Some((_, into)) = dests.iter().find(|d| d.0 == i) {
            let w = tx
                .copy_in(into.as_str())
                .ctx(|| format!("starting COPY into {what} on \"{}\"", names[i]))?;
            writers.push((i, w));
        }
    }
    let mut reader = stx.copy_out(query).ctx(|| format!("starting COPY from {what}"))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| io_err(|| format!("reading {what} from the source"), e))?;
        if n == 0 {
            break;
        }
        for (i, w) in writers.iter_mut() {
            w.write_all(&buf[..n])
                .map_err(|e| io_err(|| format!("writing {what} to \"{}\"", names[*i]), e))?;
        }
    }
    drop(reader);
    let mut rows = vec![0; dests.len()];
    for (i, w) in writers {
        let n = w
            .finish()
            .ctx(|| format!("finishing COPY into {what} on \"{}\"", names[i]))?;
        if let Some(j) = dests.iter().position(|d| d.0 == i) {
            rows[j] = n;
        }
    }
    Ok(rows)
}
