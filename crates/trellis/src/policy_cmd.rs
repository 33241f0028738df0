//! `trellis policy explain POD` and `trellis policy check SRC DST:PORT[/PROTO]`: policy
//! answers computed from the server's objects (Namespaces, NetworkPolicies,
//! ClusterNetworkPolicies, Pods, Endpoints, Nodes), the same model the agents compile.
//!
//! Each tenant is a world of its own, with its own addresses and policies: an answer
//! is computed from one world's objects, the world of the pod named (`NAMESPACE/NAME`
//! or `NAME`), else of the namespace `-n` names; an address is looked up in that world.
//! Two pods of different worlds never reach each other, whatever their policies say.

use std::net::Ipv4Addr;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use trellis_api::objects::{AnyObject, Kind};
use trellis_client::Client;
use trellis_policy::explain::{explain, verdict_text};
use trellis_policy::model::{tenants_of, world_of, End, Inputs, PodInfo};

use crate::cli_cmd::{ConnArgs, NsArgs};

/// `trellis policy ...`.
#[derive(clap::Subcommand, Debug)]
pub enum PolicyCmd {
    /// Which policies select a pod, in evaluation order, and its effective ingress and
    /// egress allow-lists (with the pods each rule matches now).
    Explain {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        ns: NsArgs,
        /// The pod: NAME, NAMESPACE/NAME, or its address.
        pod: String,
    },
    /// The verdict for one flow and the rule that gives it. Exit status 0 when allowed,
    /// 1 when denied.
    Check {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        ns: NsArgs,
        /// The source: a pod (NAME, NAMESPACE/NAME) or an address.
        src: String,
        /// The destination and port: POD:PORT[/PROTO] or ADDRESS:PORT[/PROTO]
        /// (PROTO tcp, udp or sctp; default tcp).
        dst: String,
    },
}

/// Run a `policy` subcommand.
pub fn run(cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            match cmd {
                PolicyCmd::Explain { conn, ns, pod } => {
                    let all = load(&conn.client()?).await?;
                    let (inputs, _) = world(&all, &[&pod], ns.ns())?;
                    let p = find_pod(&inputs, &pod, ns.ns())?;
                    print!("{}", explain(&inputs, p));
                    Ok(ExitCode::SUCCESS)
                }
                PolicyCmd::Check { conn, ns, src, dst } => {
                    let (dst, port, proto) = parse_dst(&dst)?;
                    let all = load(&conn.client()?).await?;
                    let (inputs, tenant) = world(&all, &[&src, &dst], ns.ns())?;
                    if let Some(t) = &tenant {
                        println!("in the world of tenant {t}");
                    }
                    let src = end(&inputs, &src, ns.ns())?;
                    let dst = end(&inputs, &dst, ns.ns())?;
                    let v = inputs.check(src, dst, proto, port);
                    print!("{}", verdict_text(&src, &dst, proto, port, &v));
                    Ok(if v.allowed() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
            }
        })
}

/// The namespace a flow end names (`NAMESPACE/NAME`, or `NAME` in `ns`); `None` for
/// an address.
fn named_namespace<'a>(s: &'a str, ns: &'a str) -> Option<&'a str> {
    if s.parse::<Ipv4Addr>().is_ok() {
        return None;
    }
    Some(s.split_once('/').map_or(ns, |(n, _)| n))
}

/// The policy inputs of the world the ends (`ends`, then namespace `ns`) are in, and
/// its tenant (`None`: the default world). Ends named in two worlds: an error saying
/// no packet crosses between them.
fn world(all: &[AnyObject], ends: &[&str], ns: &str) -> anyhow::Result<(Inputs, Option<String>)> {
    let tenant_of = tenants_of(all);
    let tenant = |n: &str| tenant_of.get(n).cloned();
    let named: Vec<(&str, Option<String>)> = ends
        .iter()
        .filter_map(|e| named_namespace(e, ns).map(|n| (n, tenant(n))))
        .collect();
    if let [(a, ta), (b, tb)] = named.as_slice() {
        if ta != tb {
            let w = |t: &Option<String>| match t {
                Some(t) => format!("tenant {t}"),
                None => "the default world".to_string(),
            };
            bail!(
                "{a} is in {} and {b} in {}: no packet crosses between worlds, whatever the policies",
                w(ta),
                w(tb)
            );
        }
    }
    let world = named.first().map_or_else(|| tenant(ns), |(_, t)| t.clone());
    let objects: Vec<&AnyObject> = all
        .iter()
        .filter(|o| world_of(o, &tenant_of).is_none_or(|t| t == world))
        .collect();
    Ok((Inputs::from_objects(objects), world))
}

/// Every object policy reads, from the server.
async fn load(client: &Client) -> anyhow::Result<Vec<AnyObject>> {
    let mut objects = Vec::new();
    for kind in [
        Kind::Namespace,
        Kind::NetworkPolicy,
        Kind::ClusterNetworkPolicy,
        Kind::Pod,
        Kind::Endpoint,
        Kind::Node,
    ] {
        let list = client
            .get(&format!("/v1/{}", kind.plural()))
            .await
            .with_context(|| format!("list {}", kind.plural()))?;
        for item in list["items"].as_array().cloned().unwrap_or_default() {
            objects.push(
                AnyObject::from_value(item)
                    .map_err(|e| anyhow!("the server sent a {kind} that does not parse: {e}"))?,
            );
        }
    }
    Ok(objects)
}

/// A pod by address, `NAMESPACE/NAME` or `NAME` (in `ns`).
fn find_pod<'a>(inputs: &'a Inputs, s: &str, ns: &str) -> anyhow::Result<&'a PodInfo> {
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return inputs
            .pods
            .get(&ip)
            .ok_or_else(|| anyhow!("no pod has address {ip}"));
    }
    let (ns, name) = s.split_once('/').unwrap_or((ns, s));
    let found: Vec<&PodInfo> = inputs
        .pods
        .values()
        .filter(|p| p.namespace == ns && p.name == name)
        .collect();
    match found.as_slice() {
        [p] => Ok(p),
        [] => bail!("no pod {ns}/{name} (pods are known by their Endpoints: is it running?)"),
        _ => bail!(
            "{ns}/{name} has {} attachments; name it by address",
            found.len()
        ),
    }
}

/// A flow end: a pod, or an address that is no pod.
fn end<'a>(inputs: &'a Inputs, s: &str, ns: &str) -> anyhow::Result<End<'a>> {
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Ok(match inputs.pods.get(&ip) {
            Some(p) => End::Pod(p),
            None => End::Addr(ip),
        });
    }
    Ok(End::Pod(find_pod(inputs, s, ns)?))
}

/// `DST:PORT[/PROTO]` → (DST, port, protocol number).
fn parse_dst(s: &str) -> anyhow::Result<(String, u16, u8)> {
    let (dst, rest) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{s:?}: expected DST:PORT[/PROTO], e.g. web-1:80/tcp"))?;
    let (port, proto) = rest.split_once('/').unwrap_or((rest, "tcp"));
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| anyhow!("{s:?}: port {port:?} is not between 1 and 65535"))?;
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        other => bail!("{s:?}: protocol {other:?} is not tcp, udp or sctp"),
    };
    Ok((dst.to_string(), port, proto))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        assert_eq!(parse_dst("web:80").unwrap(), ("web".into(), 80, 6));
        assert_eq!(parse_dst("x/web:53/UDP").unwrap(), ("x/web".into(), 53, 17));
        assert_eq!(
            parse_dst("10.0.0.1:9/sctp").unwrap(),
            ("10.0.0.1".into(), 9, 132)
        );
        assert!(parse_dst("web")
            .unwrap_err()
            .to_string()
            .contains("DST:PORT"));
        assert!(parse_dst("web:0").is_err());
        assert!(parse_dst("web:80/icmp")
            .unwrap_err()
            .to_string()
            .contains("icmp"));
    }
}
