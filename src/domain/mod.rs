//! capra's words as types: roles, statuses, copy and delete modes, isolation
//! and conflict strategies. Text becomes one of these once, where it enters
//! (the command line, a catalog row), and becomes text again only where it
//! leaves (output, SQL, mail), so the engine never compares strings.

pub mod conflict;
