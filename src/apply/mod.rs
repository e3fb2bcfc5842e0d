//! Applying changes: one run of a sync (Bucardo's KID).

pub mod plan;
pub mod run;
