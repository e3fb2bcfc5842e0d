//! Taking over a Bucardo 5 installation in place (`capra import bucardo`):
//! read its catalog ([`bucardo`]), work out what capra would create and
//! what cannot come along ([`plan`]), write capra's catalog and install
//! capture, hand Bucardo's undelivered changes to capra and retire
//! Bucardo's syncs ([`takeover`]), and later remove what Bucardo left in
//! the replicated databases ([`remove`]).
//!
//! No full copy is needed, and no row is lost: capra's capture is
//! committed before Bucardo's logs are read, so every change is in one
//! log or both (see [`takeover`]).

pub mod bucardo;
mod error;
pub mod plan;
pub mod remove;
pub mod takeover;

pub use error::ImportError;
