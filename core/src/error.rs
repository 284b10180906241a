//! Validation errors that name the offending field.

use std::fmt;

/// A value that failed validation, with the path of the field that holds it,
/// e.g. `pool[2].check.expect_status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Prefixes the path with a parent field (`check` + `rise` = `check.rise`).
    pub fn within(mut self, parent: &str) -> Self {
        self.path = if self.path.is_empty() {
            parent.to_string()
        } else if self.path.starts_with('[') {
            format!("{parent}{}", self.path)
        } else {
            format!("{parent}.{}", self.path)
        };
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// How field paths are spelled, after the input being validated, so an
/// error names the field as its author wrote it. A TOML document names its
/// sections in the singular and writes durations with units (`[[pool]]`,
/// `[[pool.backend]]`, `interval`); the wire (`trackwire.v1`) uses plurals
/// and carries durations in milliseconds (`pools`, `backends`,
/// `interval_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldNames {
    Toml,
    Wire,
}

impl FieldNames {
    /// The list of pools: `pool` (`[[pool]]`) or `pools`.
    pub fn pools(self) -> &'static str {
        match self {
            FieldNames::Toml => "pool",
            FieldNames::Wire => "pools",
        }
    }

    /// A pool's list of backends: `backend` (`[[pool.backend]]`) or `backends`.
    pub fn backends(self) -> &'static str {
        match self {
            FieldNames::Toml => "backend",
            FieldNames::Wire => "backends",
        }
    }

    /// A duration field: `interval` in TOML, `interval_ms` on the wire.
    pub fn duration(self, name: &str) -> String {
        match self {
            FieldNames::Toml => name.to_string(),
            FieldNames::Wire => format!("{name}_ms"),
        }
    }
}
