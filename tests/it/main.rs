//! capra's integration tests: one binary, so the throwaway clusters are
//! shared and the crate is linked once. Every test makes its own databases.

mod support;

mod catalog_cli;
mod compare;
mod connections;
mod daemon;
mod dba_day;
mod faults;
mod field_reports;
mod fuzz;
mod ha;
mod import;
mod install;
mod knobs;
mod layouts;
mod mail;
mod metrics;
mod multimaster;
mod packages;
mod plugins;
mod quickstart;
mod replication;
mod security;
mod structure;
mod tailmail;
mod units;
mod validate;
mod versions;
