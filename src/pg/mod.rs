//! PostgreSQL plumbing every part shares: connecting like libpq, quoting
//! identifiers, and reading driver errors.

pub mod connect;
pub mod error;
pub mod ident;
pub mod pool;
