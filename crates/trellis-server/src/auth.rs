//! Bearer tokens. `trellis server init` writes an admin and a read-only token; `trellis
//! server token --node N` adds a node token. The server keeps only SHA-256 hashes (in
//! `tokens.json` in its directory) and re-reads the file when it changes.
//!
//! Roles: `admin` may do everything; `read-only` may list, get and watch everything but
//! Secrets; `node` (bound to one node name) may read everything but the Secrets outside
//! `trellis-system` (where BGP passwords live), and write only its own Node, its
//! heartbeat and subnet leases, and Endpoints whose `spec.node` is its own; `ingress`
//! (`trellis ingress`) may read everything, Secrets included, and write only the status
//! of Ingresses.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use trellis_api::objects::{Kind, BGP_SECRET_NAMESPACE};

use crate::error::ApiError;

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "kebab-case")]
pub enum Role {
    /// Everything.
    Admin,
    /// List, get, watch.
    ReadOnly,
    /// A node agent.
    Node {
        /// The node it speaks for.
        node: String,
    },
    /// An ingress proxy.
    Ingress {
        /// Its name (for messages).
        name: String,
    },
}

/// One line of `tokens.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenEntry {
    sha256: String,
    #[serde(flatten)]
    role: Role,
}

/// The token file name inside the server directory.
pub const TOKENS_FILE: &str = "tokens.json";

/// The server's token table.
#[derive(Debug)]
pub struct Tokens {
    path: Option<PathBuf>,
    state: Mutex<(Option<FileStamp>, HashMap<String, Role>)>,
}

/// What tells one version of the token file from the next. The modification time alone
/// does not: it is taken from a coarse clock, so two writes within one tick share it.
/// Every write replaces the file by a rename, so the inode changes with each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.modified().ok(),
        })
    }
}

fn sha256_hex(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random token (32 bytes, hex).
pub fn new_token() -> Result<String, String> {
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "no randomness available".to_string())?;
    Ok(b.iter().map(|b| format!("{b:02x}")).collect())
}

/// Add a token for `role` to the token file in `dir`; returns the token.
pub fn add_token(dir: &Path, role: Role) -> Result<String, String> {
    let path = dir.join(TOKENS_FILE);
    let mut entries: Vec<TokenEntry> = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let token = new_token()?;
    entries.push(TokenEntry {
        sha256: sha256_hex(&token),
        role,
    });
    let tmp = dir.join(format!("{TOKENS_FILE}.tmp"));
    let body = serde_json::to_vec_pretty(&entries).map_err(|e| e.to_string())?;
    write_private(&tmp, &body)?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(token)
}

/// Write a file readable by its owner only.
pub fn write_private(path: &Path, body: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(body)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

impl Tokens {
    /// Tokens from `dir/tokens.json` (re-read when it changes).
    pub fn from_dir(dir: &Path) -> Self {
        Self {
            path: Some(dir.join(TOKENS_FILE)),
            state: Mutex::new((None, HashMap::new())),
        }
    }

    /// A fixed table (tests).
    pub fn fixed(tokens: impl IntoIterator<Item = (String, Role)>) -> Self {
        Self {
            path: None,
            state: Mutex::new((
                None,
                tokens
                    .into_iter()
                    .map(|(t, r)| (sha256_hex(&t), r))
                    .collect(),
            )),
        }
    }

    fn reload_if_changed(&self, st: &mut (Option<FileStamp>, HashMap<String, Role>)) {
        let Some(path) = &self.path else { return };
        let stamp = FileStamp::of(path);
        if stamp.is_some() && stamp == st.0 {
            return;
        }
        match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Vec<TokenEntry>>(&b).map_err(|e| e.to_string()))
        {
            Ok(entries) => {
                st.1 = entries.into_iter().map(|e| (e.sha256, e.role)).collect();
                st.0 = stamp;
            }
            Err(e) => tracing::warn!("reading {}: {e}", path.display()),
        }
    }

    /// The role of the `Authorization` header's bearer token.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Role, ApiError> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("missing bearer token (Authorization: Bearer …)")
            })?;
        let hash = sha256_hex(token);
        let mut st = self
            .state
            .lock()
            .map_err(|_| ApiError::internal("token table lock poisoned"))?;
        if let Some(r) = st.1.get(&hash) {
            return Ok(r.clone());
        }
        self.reload_if_changed(&mut st);
        st.1.get(&hash)
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("unknown token"))
    }
}

impl Role {
    /// Whether this role may change anything at all.
    pub fn may_write(&self) -> bool {
        !matches!(self, Role::ReadOnly)
    }

    /// Refuse unless the role may write an object of `plural` named `name` whose node
    /// (for Endpoints: `spec.node`) is `node`.
    pub fn check_write(
        &self,
        plural: &str,
        name: &str,
        node: Option<&str>,
    ) -> Result<(), ApiError> {
        match self {
            Role::Admin => Ok(()),
            Role::ReadOnly => Err(ApiError::forbidden(
                "read-only token: writes are not allowed",
            )),
            Role::Node { node: me } => {
                let ok = match plural {
                    "nodes" => name == me,
                    "endpoints" => node == Some(me.as_str()),
                    _ => false,
                };
                if ok {
                    Ok(())
                } else {
                    Err(ApiError::forbidden(format!(
                        "node {me} may not write {plural}/{name}{}",
                        node.map(|n| format!(" (node {n})")).unwrap_or_default()
                    )))
                }
            }
            Role::Ingress { .. } if plural == "ingresses" => Ok(()),
            Role::Ingress { name: me } => Err(ApiError::forbidden(format!(
                "ingress {me} may write only the status of Ingresses, not {plural}/{name}"
            ))),
        }
    }

    /// Refuse unless the role may read objects of `kind` in namespace `ns` (`None`: all
    /// namespaces): Secrets are for admins and ingresses; nodes read only those of
    /// [`BGP_SECRET_NAMESPACE`] (BGP passwords); read-only tokens none.
    pub fn check_read(&self, kind: Kind, ns: Option<&str>) -> Result<(), ApiError> {
        match (self, kind) {
            (Role::ReadOnly, Kind::Secret) => Err(ApiError::forbidden(
                "read-only token: Secrets are not readable",
            )),
            (Role::Node { node }, Kind::Secret) if ns != Some(BGP_SECRET_NAMESPACE) => {
                Err(ApiError::forbidden(format!(
                    "node {node}: only the Secrets of namespace {BGP_SECRET_NAMESPACE} (BGP passwords) are readable"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Refuse unless the role may act for node `node` (heartbeats, subnet leases).
    pub fn check_node(&self, node: &str) -> Result<(), ApiError> {
        match self {
            Role::Admin => Ok(()),
            Role::Node { node: me } if me == node => Ok(()),
            _ => Err(ApiError::forbidden(format!("may not act for node {node}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        let dir = tempfile::tempdir().unwrap();
        let admin = add_token(dir.path(), Role::Admin).unwrap();
        let node = add_token(dir.path(), Role::Node { node: "n1".into() }).unwrap();
        let t = Tokens::from_dir(dir.path());
        assert_eq!(
            t.authenticate(Some(&format!("Bearer {admin}"))).unwrap(),
            Role::Admin
        );
        let r = t.authenticate(Some(&format!("Bearer {node}"))).unwrap();
        assert!(r.check_write("nodes", "n1", None).is_ok());
        assert_eq!(
            r.check_write("nodes", "n2", None).unwrap_err().reason,
            "Forbidden"
        );
        assert!(r.check_write("endpoints", "e", Some("n1")).is_ok());
        assert!(r.check_write("endpoints", "e", Some("n2")).is_err());
        assert!(r.check_write("services", "s", None).is_err());
        assert!(r
            .check_read(Kind::Secret, Some(BGP_SECRET_NAMESPACE))
            .is_ok());
        assert!(r.check_read(Kind::Secret, Some("default")).is_err());
        assert!(r.check_read(Kind::Secret, None).is_err());
        assert!(Role::ReadOnly.check_read(Kind::Secret, None).is_err());
        assert!(Role::ReadOnly.check_read(Kind::Service, None).is_ok());
        let ing = Role::Ingress {
            name: "edge".into(),
        };
        assert!(ing.check_read(Kind::Secret, None).is_ok());
        assert!(ing.check_write("ingresses", "web", None).is_ok());
        assert!(ing.check_write("services", "web", None).is_err());
        assert_eq!(
            t.authenticate(Some("Bearer nope")).unwrap_err().reason,
            "Unauthorized"
        );
        assert!(t.authenticate(None).is_err());
        // a token added later is picked up, even within the same tick of the file clock
        let ro = add_token(dir.path(), Role::ReadOnly).unwrap();
        assert_eq!(
            t.authenticate(Some(&format!("Bearer {ro}"))).unwrap(),
            Role::ReadOnly
        );
    }
}
