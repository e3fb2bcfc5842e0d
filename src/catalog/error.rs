//! What can go wrong in this part of capra, by kind of trouble: each variant
//! names the object involved and keeps the cause as its `source`.

use crate::error::Kind;

/// Errors of this part; wrapped by [`crate::Error`], which renders them.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {}

impl CatalogError {
    /// What sort of trouble this is.
    pub fn kind(&self) -> Kind {
        match *self {}
    }
}
