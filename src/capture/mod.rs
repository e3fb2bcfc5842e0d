//! Change capture on source databases: what capra finds there (discovery),
//! checks there (validation) and installs there.

pub mod install;
pub mod purge;
pub mod reconcile;
pub mod validate;
