//! Applying changes: one run of a sync (Bucardo's KID).

pub mod conflict;
pub mod copy;
pub mod pools;
pub mod run;
pub mod sequences;
