//! PostgreSQL plumbing every part shares: connecting like libpq, quoting
//! identifiers, and reading driver errors.

pub mod connect;
pub mod discover;
pub mod error;
pub mod ident;
pub mod pool;

/// Reads a column of a row from a server capra does not control without
/// panicking: an unexpected NULL or type (another version, another
/// extension, a user's odd catalog) becomes an error naming the query.
pub trait RowExt {
    /// Column `idx` as `T`, or an error saying what capra was reading.
    fn col<'a, I, T>(&'a self, idx: I, what: &str) -> crate::Result<T>
    where
        I: postgres::row::RowIndex + std::fmt::Display,
        T: postgres::types::FromSql<'a>;
}

impl RowExt for postgres::Row {
    fn col<'a, I, T>(&'a self, idx: I, what: &str) -> crate::Result<T>
    where
        I: postgres::row::RowIndex + std::fmt::Display,
        T: postgres::types::FromSql<'a>,
    {
        use crate::error::Context;
        let label = idx.to_string();
        self.try_get(idx).ctx(|| format!("{what}: column {label}"))
    }
}
