//! The unix socket the CNI plugin talks to (protocol: `trellis_api::agent`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use trellis_api::agent::{codes, Request, RequestError, Response};

use crate::node::Node;

/// Bind the socket. A leftover socket file from a killed agent is replaced; a socket
/// another live agent is listening on is an error.
pub async fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(format!(
                "another agent is already listening on {}",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(|e| format!("remove stale {}: {e}", path.display()))?;
    }
    let l = UnixListener::bind(path).map_err(|e| format!("bind {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    Ok(l)
}

/// Serve requests forever, one task per connection.
pub async fn serve(listener: UnixListener, node: Arc<Node>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_one(stream, &node).await {
                        tracing::debug!("plugin connection: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept on CNI socket: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_one(stream: UnixStream, node: &Node) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let resp = match Request::from_line(line.trim_end()) {
        Ok(req) => {
            tracing::debug!(?req.op, "request");
            node.handle(req.op).await
        }
        Err(e @ RequestError::Version(_)) => {
            Response::error(codes::INCOMPATIBLE_VERSION, e.to_string())
        }
        Err(e) => Response::error(codes::DECODE, e.to_string()),
    };
    let mut out = serde_json::to_string(&resp).expect("response serializes");
    out.push('\n');
    w.write_all(out.as_bytes()).await?;
    w.shutdown().await
}
