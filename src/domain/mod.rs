//! capra's words as types: roles, statuses, copy and delete modes, isolation
//! and conflict strategies. Text becomes one of these once, where it enters
//! (the command line, a catalog row), and becomes text again only where it
//! leaves (output, SQL, mail), so the engine never compares strings.

pub mod conflict;

pub use conflict::Strategy;

/// A word that is not one of a domain type's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: expected one of {}", .allowed.join(", "))]
pub struct ParseError {
    /// What was being read (`role`, `deletemethod`, ...).
    pub what: &'static str,
    /// The text found.
    pub value: String,
    /// The spellings accepted.
    pub allowed: Vec<&'static str>,
}

/// Declares an enum stored and shown as fixed lower-case words: parsing,
/// printing, JSON and the catalog's text columns all go through one table.
macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident, $what:literal { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $v),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            /// The stored and printed spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                match s {
                    $($s => Ok($name::$v),)+
                    _ => Err(ParseError {
                        what: $what,
                        value: s.to_string(),
                        allowed: vec![$($s),+],
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // pad, not write_str: tables align these with `{:<w$}`.
                f.pad(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'a> postgres::types::FromSql<'a> for $name {
            fn from_sql(
                ty: &postgres::types::Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                let s = <&str as postgres::types::FromSql>::from_sql(ty, raw)?;
                Ok(s.parse::<$name>()?)
            }
            fn accepts(ty: &postgres::types::Type) -> bool {
                <&str as postgres::types::FromSql>::accepts(ty)
            }
        }

        impl postgres::types::ToSql for $name {
            fn to_sql(
                &self,
                ty: &postgres::types::Type,
                out: &mut postgres::types::private::BytesMut,
            ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
                self.as_str().to_sql(ty, out)
            }
            fn accepts(ty: &postgres::types::Type) -> bool {
                <&str as postgres::types::ToSql>::accepts(ty)
            }
            postgres::types::to_sql_checked!();
        }
    };
}

text_enum! {
    /// What a database does in a dbgroup.
    Role, "role" {
        /// Changes are read here (several sources: multi-master).
        Source = "source",
        /// Receives changes.
        Target = "target",
        /// Receives a full copy every run.
        Fullcopy = "fullcopy",
    }
}

text_enum! {
    /// Whether a database takes part in syncs.
    DbStatus, "database status" {
        /// Used by its syncs.
        Active = "active",
        /// Skipped by its syncs (a target falls behind).
        Inactive = "inactive",
        /// Kept as Bucardo's value; treated as active.
        Stalled = "stalled",
    }
}

text_enum! {
    /// Whether a sync (or a hook) runs.
    Status, "status" {
        /// Runs.
        Active = "active",
        /// Kept in the catalog but never run.
        Inactive = "inactive",
    }
}

text_enum! {
    /// What a catalog relation is.
    RelType, "relation type" {
        /// A table (or a partitioned table).
        Table = "table",
        /// A sequence.
        Sequence = "sequence",
    }
}

text_enum! {
    /// What identifies a table's rows for capra.
    KeyKind, "key kind" {
        /// The primary key.
        Primary = "primary",
        /// A unique index whose columns are all NOT NULL.
        Unique = "unique",
    }
}

text_enum! {
    /// How a full copy empties a target's table.
    DeleteMethod, "deletemethod" {
        /// `DELETE FROM`: slow, but fires nothing and locks least.
        Delete = "delete",
        /// `TRUNCATE`.
        Truncate = "truncate",
        /// `TRUNCATE ... CASCADE`.
        TruncateCascade = "truncate_cascade",
    }
}

text_enum! {
    /// The snapshot a run reads its sources in.
    Isolation, "isolation level" {
        /// PostgreSQL's REPEATABLE READ (a consistent snapshot).
        RepeatableRead = "repeatable read",
        /// SERIALIZABLE (also refuses anomalies; may fail and retry).
        Serializable = "serializable",
    }
}

impl Isolation {
    /// The driver's level for starting the read transaction.
    pub fn level(self) -> postgres::IsolationLevel {
        match self {
            Isolation::RepeatableRead => postgres::IsolationLevel::RepeatableRead,
            Isolation::Serializable => postgres::IsolationLevel::Serializable,
        }
    }
}

/// A sync's `onetimecopy`: whether its next run copies tables whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OneTimeCopy {
    /// Changes only (0).
    Off,
    /// Every table to every target, once (1).
    All,
    /// Only into targets whose table is empty, once (2).
    IfEmpty,
}

impl OneTimeCopy {
    /// The stored number (Bucardo's 0, 1, 2).
    pub fn as_i16(self) -> i16 {
        match self {
            OneTimeCopy::Off => 0,
            OneTimeCopy::All => 1,
            OneTimeCopy::IfEmpty => 2,
        }
    }

    /// Reads the stored number.
    pub fn from_i16(n: i16) -> Result<OneTimeCopy, ParseError> {
        match n {
            0 => Ok(OneTimeCopy::Off),
            1 => Ok(OneTimeCopy::All),
            2 => Ok(OneTimeCopy::IfEmpty),
            _ => Err(ParseError {
                what: "onetimecopy",
                value: n.to_string(),
                allowed: vec!["0", "1", "2"],
            }),
        }
    }

    /// Whether a copy is pending.
    pub fn is_on(self) -> bool {
        self != OneTimeCopy::Off
    }
}

impl std::fmt::Display for OneTimeCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.as_i16().to_string())
    }
}

impl serde::Serialize for OneTimeCopy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i16(self.as_i16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), *r);
        }
        for d in DeleteMethod::ALL {
            assert_eq!(d.to_string().parse::<DeleteMethod>().unwrap(), *d);
        }
        assert_eq!(
            "repeatable read".parse::<Isolation>().unwrap(),
            Isolation::RepeatableRead
        );
        let e = "primary".parse::<Role>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid role \"primary\": expected one of source, target, fullcopy"
        );
        for n in 0..3 {
            assert_eq!(OneTimeCopy::from_i16(n).unwrap().as_i16(), n);
        }
        assert!(OneTimeCopy::from_i16(3).is_err());
        // Output tables pad these like the strings they replaced.
        assert_eq!(format!("[{:<8}]", DbStatus::Active), "[active  ]");
        assert_eq!(format!("[{:>3}]", OneTimeCopy::All), "[  1]");
        assert_eq!(format!("[{:<6}]", Strategy::Priority(vec!["a".into()])), "[a     ]");
    }
}
