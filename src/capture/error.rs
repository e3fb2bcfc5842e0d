//! What can go wrong in this part of capra, by kind of trouble: each variant
//! names the object involved and keeps the cause as its `source`.

use crate::error::{AreaError, Kind};

/// Errors of this part; carried by [`crate::Error`], which renders them.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {}

impl AreaError for CaptureError {
    fn kind(&self) -> Kind {
        match *self {}
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
