//! [`ValidationError`]: what every parse and validation step returns.

use std::fmt;

/// A manifest that does not parse or does not validate: the dotted path of the offending
/// field (`spec.ports[1].nodePort`, `metadata.labels["app"]`, `kind`) and what is wrong
/// with it. `Display` is `field: message` (just `message` when `field` is empty, as for a
/// JSON or YAML syntax error, whose message carries the line and column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", DisplayError(self))]
pub struct ValidationError {
    /// Dotted path of the field, with `[i]` for list items and `["key"]` for map keys;
    /// empty when the input is not even a JSON/YAML document.
    pub field: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl ValidationError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error with `prefix.` put in front of its field (`spec` + `cidr` →
    /// `spec.cidr`; `spec.ports` + `[1].port` → `spec.ports[1].port`).
    pub(crate) fn under(mut self, prefix: &str) -> Self {
        self.field = join(prefix, &self.field);
        self
    }
}

/// Join a path prefix and a relative path: no dot before `[`, none when either is empty.
pub(crate) fn join(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else if rest.is_empty() {
        prefix.to_string()
    } else if rest.starts_with('[') {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}.{rest}")
    }
}

struct DisplayError<'a>(&'a ValidationError);

impl fmt::Display for DisplayError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.field.is_empty() {
            f.write_str(&self.0.message)
        } else {
            write!(f, "{}: {}", self.0.field, self.0.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_join() {
        let e = ValidationError::new("cidr", "bad").under("spec");
        assert_eq!(e.field, "spec.cidr");
        assert_eq!(e.to_string(), "spec.cidr: bad");
        let e = ValidationError::new("[1].port", "bad").under("spec.ports");
        assert_eq!(e.field, "spec.ports[1].port");
        assert_eq!(ValidationError::new("", "syntax").to_string(), "syntax");
    }
}
