//! Compatibility levels and checks, as Confluent defines them.

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;

/// A compatibility level; `BACKWARD` unless configured otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    /// No checks.
    None,
    /// The new schema reads data written with the latest one.
    #[default]
    Backward,
    /// ... with every earlier one.
    BackwardTransitive,
    /// The latest schema reads data written with the new one.
    Forward,
    /// ... every earlier one does.
    ForwardTransitive,
    /// Both directions, against the latest.
    Full,
    /// Both directions, against every earlier one.
    FullTransitive,
}

impl std::str::FromStr for Level {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "NONE" => Level::None,
            "BACKWARD" => Level::Backward,
            "BACKWARD_TRANSITIVE" => Level::BackwardTransitive,
            "FORWARD" => Level::Forward,
            "FORWARD_TRANSITIVE" => Level::ForwardTransitive,
            "FULL" => Level::Full,
            "FULL_TRANSITIVE" => Level::FullTransitive,
            _ => return Err(()),
        })
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        })
    }
}

impl Level {
    /// Problems registering `new` after `existing` (oldest first); empty if compatible.
    pub fn check(self, new: &Schema, existing: &[Schema]) -> Vec<String> {
        let (backward, forward, transitive) = match self {
            Level::None => return Vec::new(),
            Level::Backward => (true, false, false),
            Level::BackwardTransitive => (true, false, true),
            Level::Forward => (false, true, false),
            Level::ForwardTransitive => (false, true, true),
            Level::Full => (true, true, false),
            Level::FullTransitive => (true, true, true),
        };
        let against: Vec<&Schema> = if transitive {
            existing.iter().collect()
        } else {
            existing.last().into_iter().collect()
        };
        let mut problems = Vec::new();
        for old in against {
            if backward && let Err(e) = SchemaCompatibility::can_read(old, new) {
                problems.push(format!(
                    "new schema cannot read data written with an earlier one: {e}"
                ));
            }
            if forward && let Err(e) = SchemaCompatibility::can_read(new, old) {
                problems.push(format!(
                    "an earlier schema cannot read data written with the new one: {e}"
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn backward_allows_new_fields_with_defaults_only() {
        let v1 = schema(r#"{"name":"a","type":"string"}"#);
        let with_default =
            schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int","default":0}"#);
        let without = schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
        assert!(
            Level::Backward
                .check(&with_default, std::slice::from_ref(&v1))
                .is_empty()
        );
        assert!(
            !Level::Backward
                .check(&without, std::slice::from_ref(&v1))
                .is_empty()
        );
        assert!(Level::None.check(&without, &[v1]).is_empty());
    }

    #[test]
    fn forward_refuses_removing_a_field_without_default() {
        let v1 = schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
        let v2 = schema(r#"{"name":"a","type":"string"}"#);
        assert!(
            Level::Backward
                .check(&v2, std::slice::from_ref(&v1))
                .is_empty()
        );
        assert!(
            !Level::Forward
                .check(&v2, std::slice::from_ref(&v1))
                .is_empty()
        );
        assert!(!Level::Full.check(&v2, &[v1]).is_empty());
    }
}
