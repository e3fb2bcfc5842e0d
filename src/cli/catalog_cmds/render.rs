//! How catalog events read on the terminal: the wording users (and
//! Bucardo scripts that grep it) know.

use std::fmt;

use crate::catalog::event::Event;

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Created { object, name } => write!(f, "Created {} \"{name}\"", object.as_str()),
            Event::Removed { object, name } => write!(f, "Removed {} \"{name}\"", object.as_str()),
            Event::RemovedOwnGroup { object, name } => {
                write!(f, "Removed {} \"{name}\" (created for this sync)", object.as_str())
            }
            Event::AddedMember { db, group, role } => {
                write!(f, "Added database \"{db}\" to dbgroup \"{group}\" as {role}")
            }
            Event::RemovedMember { db, group } => write!(f, "Removed database \"{db}\" from dbgroup \"{group}\""),
            Event::JoinsSync { db, sync } => write!(
                f,
                "Database \"{db}\" joins sync \"{sync}\": it gets a full copy at the next run"
            ),
            Event::UsingDbgroup { group } => write!(f, "Using existing dbgroup \"{group}\""),
            Event::DbUnchanged { db, column } => write!(f, "No change needed for database \"{db}\" {column}"),
            Event::DbPasswordChanged { db } => write!(f, "Changed database \"{db}\" password"),
            Event::DbChanged { db, column, from, to } => write!(
                f,
                "Changed database \"{db}\" {column} from {} to {}",
                from.as_deref().unwrap_or("(none)"),
                to.as_deref().unwrap_or("(none)")
            ),
            Event::CustomcodeChanged { name, column, value } => {
                write!(f, "Changed customcode \"{name}\" {column} to {value}")
            }
        }
    }
}

/// Prints each event as one line (unless `--quiet`).
pub(super) fn say_all(ctx: &crate::cli::Ctx, events: &[Event]) {
    for e in events {
        ctx.say(e.to_string());
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::event::{Event, Object};
    use crate::domain::Role;

    #[test]
    fn wording() {
        assert_eq!(
            Event::removed(Object::Customcode, "c").to_string(),
            "Removed customcode \"c\""
        );
        assert_eq!(
            Event::RemovedOwnGroup {
                object: Object::Relgroup,
                name: "s".into()
            }
            .to_string(),
            "Removed relgroup \"s\" (created for this sync)"
        );
        assert_eq!(
            Event::AddedMember {
                db: "a".into(),
                group: "g".into(),
                role: Role::Fullcopy
            }
            .to_string(),
            "Added database \"a\" to dbgroup \"g\" as fullcopy"
        );
        assert_eq!(
            Event::DbChanged {
                db: "a".into(),
                column: "host",
                from: None,
                to: Some("h".into())
            }
            .to_string(),
            "Changed database \"a\" host from (none) to h"
        );
    }
}
