//! CNI errors: a code from the spec (or Trellis's own, >= 100) and a message that names
//! the offending field or variable. Printed on stdout as the spec's error JSON.

use serde::Serialize;
pub use trellis_api::agent::codes;

/// A CNI error result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    /// Error code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation, when there is one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with no details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Attach details.
    pub fn with_details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }

    /// Invalid environment variable (code 4).
    pub fn env(var: &str, why: impl std::fmt::Display) -> Self {
        Self::new(codes::INVALID_ENV, format!("{var}: {why}"))
    }

    /// Invalid network configuration (code 7).
    pub fn config(field: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            codes::INVALID_CONFIG,
            format!("network config field `{field}`: {why}"),
        )
    }

    /// The spec JSON for this error in `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("serializes");
        v["cniVersion"] = cni_version.into();
        v
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}
