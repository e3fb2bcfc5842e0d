//! Change capture on source databases: what capra finds there (discovery),
//! checks there (validation) and installs there.

mod error;
pub mod hazards;
pub mod install;
pub mod purge;
pub mod reconcile;
pub mod validate;

pub use error::CaptureError;
