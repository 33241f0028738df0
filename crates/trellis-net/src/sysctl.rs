//! Per-namespace sysctls (`/proc/sys/net/...` reflects the caller's network namespace).

use crate::{NetError, Result};

/// Read a sysctl such as `net/ipv4/ip_forward`.
pub fn read(key: &str) -> Result<String> {
    let path = format!("/proc/sys/{key}");
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| NetError::Io {
            what: format!("read {path}"),
            source,
        })
}

/// Set a sysctl only if it differs, so that a restart writes nothing.
/// Returns whether it changed.
pub fn ensure(key: &str, value: &str) -> Result<bool> {
    if read(key)? == value {
        return Ok(false);
    }
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).map_err(|source| NetError::Io {
        what: format!("write {value} to {path}"),
        source,
    })?;
    Ok(true)
}
