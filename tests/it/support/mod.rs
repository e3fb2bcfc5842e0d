//! Test harness: clusters, the capra binary, fixtures, and the reads, loads
//! and waits the tests share.

pub mod bucardo;
pub mod capra;
pub mod cluster;
pub mod daemon;
pub mod data;
pub mod fixtures;
pub mod load;
pub mod proxy;
pub mod smtp;

pub use capra::Capra;
pub use cluster::unique;
