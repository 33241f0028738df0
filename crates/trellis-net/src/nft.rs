//! nftables through the `nft` tool: atomic scripts (`nft -f -`) and JSON listings.
//! Scripts always name the table explicitly; nothing here flushes a ruleset.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{NetError, Result};

/// Apply `script` as one atomic transaction in the caller's network namespace.
pub fn apply(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetError::Io {
            what: "run nft (is the nftables package installed?)".into(),
            source,
        })?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(|source| NetError::Io {
            what: "write to nft".into(),
            source,
        })?;
    let out = child.wait_with_output().map_err(|source| NetError::Io {
        what: "wait for nft".into(),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Nft(format!(
            "{}\nscript was:\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// `nft -j list <what>` parsed; `Ok(None)` when the object does not exist.
pub fn list_json(what: &str) -> Result<Option<serde_json::Value>> {
    let mut args = vec!["-j", "list"];
    args.extend(what.split_whitespace());
    let out = Command::new("nft")
        .args(&args)
        .output()
        .map_err(|source| NetError::Io {
            what: "run nft (is the nftables package installed?)".into(),
            source,
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(NetError::Nft(format!("list {what}: {}", err.trim())));
    }
    serde_json::from_slice(&out.stdout)
        .map(Some)
        .map_err(|e| NetError::Nft(format!("list {what}: bad JSON from nft: {e}")))
}

/// The objects of a `nft -j list` answer (the entries of its `nftables` array).
pub fn objects(v: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    v.get("nftables")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
}
