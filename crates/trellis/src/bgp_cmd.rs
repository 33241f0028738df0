//! `trellis bgp status [NODE]`: every BGP session of the nodes (or of one), as their
//! agents report them in their Node's status — like `birdc show protocols`.

use std::process::ExitCode;

use anyhow::{bail, Context};
use trellis_api::objects::{parse_rfc3339, AnyObject, BgpSession, Node};

use crate::cli_cmd::ConnArgs;
use crate::cli_table::align;

/// `trellis bgp ...`.
#[derive(clap::Subcommand, Debug)]
pub enum BgpCmd {
    /// Each session's state, how long it has been in it, prefixes received and sent,
    /// graceful restart and BFD, and why it last ended.
    Status {
        #[command(flatten)]
        conn: ConnArgs,
        /// Only this node's sessions.
        node: Option<String>,
    },
}

/// Run a `bgp` subcommand.
pub fn run(cmd: BgpCmd) -> anyhow::Result<ExitCode> {
    let BgpCmd::Status { conn, node } = cmd;
    let client = conn.client()?;
    let nodes: Vec<Node> = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let path = match &node {
                Some(n) => format!("/v1/nodes/{n}"),
                None => "/v1/nodes".to_string(),
            };
            let v = client.get(&path).await.with_context(|| path.clone())?;
            let items = match node {
                Some(_) => vec![v],
                None => v["items"].as_array().cloned().unwrap_or_default(),
            };
            items
                .into_iter()
                .map(|i| match AnyObject::from_value(i) {
                    Ok(AnyObject::Node(n)) => Ok(n),
                    Ok(o) => bail!("expected a Node, got a {}", o.kind()),
                    Err(e) => bail!("a Node that does not parse: {e}"),
                })
                .collect::<anyhow::Result<Vec<Node>>>()
        })?;
    let now = std::time::SystemTime::now();
    print!("{}", table(&nodes, now));
    Ok(ExitCode::SUCCESS)
}

/// How long ago `since` was, short (`3d4h`, `5m12s`, `40s`).
fn age(since: &str, now: std::time::SystemTime) -> String {
    let Ok(t) = parse_rfc3339(since) else {
        return "?".into();
    };
    let s = now.duration_since(t).unwrap_or_default().as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The sessions of `nodes` as a table.
fn table(nodes: &[Node], now: std::time::SystemTime) -> String {
    let header: Vec<String> = [
        "NODE", "PEER", "AS", "STATE", "SINCE", "RECEIVED", "SENT", "GR", "BFD", "INFO",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect();
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .flat_map(|n| n.status.bgp.iter().map(move |s| (n, s)))
        .map(|(n, s): (&Node, &BgpSession)| {
            vec![
                n.metadata.name.clone(),
                s.peer.to_string(),
                s.as_number.to_string(),
                s.state.clone(),
                age(&s.since, now),
                s.received.to_string(),
                s.sent.to_string(),
                match (s.graceful_restart, s.stale) {
                    (_, true) => "restarting".into(),
                    (Some(t), false) => format!("{t}s"),
                    (None, false) => "-".into(),
                },
                s.bfd.clone().unwrap_or_else(|| "-".into()),
                s.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no BGP sessions\n".into();
    }
    align(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sessions_as_a_table() {
        let n: Node = serde_json::from_value(json!({
            "apiVersion": "trellis/v1", "kind": "Node", "metadata": {"name": "n1"},
            "spec": {"address": "192.0.2.1"},
            "status": {"bgp": [{"peer": "192.0.2.2", "asNumber": 64512, "state": "Established",
                                "since": "2026-01-01T00:00:00Z", "received": 3, "sent": 1,
                                "gracefulRestart": 120, "bfd": "Up"}]}
        }))
        .unwrap();
        let now = parse_rfc3339("2026-01-01T00:05:10Z").unwrap();
        let t = table(&[n], now);
        let row = t.lines().nth(1).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "n1",
                "192.0.2.2",
                "64512",
                "Established",
                "5m10s",
                "3",
                "1",
                "120s",
                "Up"
            ]
        );
        assert_eq!(table(&[], now), "no BGP sessions\n");
    }
}
