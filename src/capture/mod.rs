//! Change capture on source databases: what capra finds there (discovery),
//! checks there (validation) and installs there; and the fence on every
//! database a daemon writes, which keeps a deposed leader from writing.

mod error;
pub mod fence;
pub mod hazards;
pub mod install;
pub mod purge;
pub mod reconcile;
pub mod validate;

pub use error::CaptureError;
