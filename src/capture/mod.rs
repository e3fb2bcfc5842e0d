//! Change capture on source databases: what capra finds there (discovery),
//! checks there (validation) and installs there.

pub mod discover;
pub mod validate;
