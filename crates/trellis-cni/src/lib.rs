//! The Trellis CNI plugin (spec 1.1, answering 0.4.0, 1.0.0 and 1.1.0): ADD, DEL,
//! CHECK, STATUS, GC and VERSION. The node agent owns the addresses; this plugin asks it
//! for one, then plumbs the veth pair, address and default route itself.
//!
//! `run` is the whole plugin minus process I/O, so tests can drive it directly.

pub mod agent_client;
pub mod config;
pub mod error;
mod plumb;
pub mod result;

use trellis_api::agent::{codes, AddRequest, GcRequest, Op, Response};

use crate::agent_client::{call, CallError};
use crate::config::{Command, Env, NetConf, SUPPORTED_VERSIONS};
use crate::error::CniError;

/// What a successful invocation prints (nothing for DEL, GC and STATUS).
pub type Output = Option<serde_json::Value>;

/// Run one invocation: `lookup` reads `CNI_*` variables, `stdin` is the config.
/// On error, the caller prints the error JSON in [`error_version`]`(stdin)`.
pub fn run(lookup: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Output, CniError> {
    let env = Env::from_lookup(lookup)?;
    if env.command == Command::Version {
        let v = config::peek_version(stdin).unwrap_or_else(|| "1.1.0".into());
        return Ok(Some(serde_json::json!({
            "cniVersion": v,
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf = config::parse(stdin)?;
    match env.command {
        Command::Add => add(&env, &conf).map(Some),
        Command::Del => del(&env, &conf).map(|()| None),
        Command::Check => check(&env, &conf).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        Command::Gc => gc(&conf).map(|()| None),
        Command::Version => unreachable!("handled above"),
    }
}

/// The version errors are reported in: the config's when it is a supported one.
pub fn error_version(stdin: &[u8]) -> String {
    config::peek_version(stdin).unwrap_or_else(|| "1.1.0".into())
}

fn need_version(conf: &NetConf, cmd: &str) -> Result<(), CniError> {
    if conf.cni_version != "1.1.0" {
        return Err(CniError::new(
            codes::INCOMPATIBLE_VERSION,
            format!(
                "{cmd} needs cniVersion 1.1.0, the config says {}",
                conf.cni_version
            ),
        ));
    }
    Ok(())
}

fn add(env: &Env, conf: &NetConf) -> Result<serde_json::Value, CniError> {
    let requested_ip = match conf.requested_ip {
        Some(ip) => Some(ip),
        None => env.requested_ip()?,
    };
    let mac = match conf.mac {
        Some(m) => Some(m),
        None => env.requested_mac()?,
    };
    // Open the netns before reserving anything: a bad CNI_NETNS must change nothing.
    let netns = trellis_net::Netns::open(&env.netns).map_err(|e| CniError::env("CNI_NETNS", e))?;
    let req = AddRequest {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: env.netns.clone(),
        requested_ip,
        port_mappings: conf.port_mappings.clone(),
        pod_namespace: env.args.get("K8S_POD_NAMESPACE").cloned(),
        pod_name: env.args.get("K8S_POD_NAME").cloned(),
        labels: env.labels()?,
        mac: mac.map(|m| trellis_net::netlink::format_mac(&m)),
    };
    let lease = match call(&conf.agent_socket, conf.network.as_deref(), Op::Add(req))? {
        Response::Lease(l) => l,
        other => {
            return Err(CniError::new(
                codes::DECODE,
                format!("unexpected answer to ADD from the agent: {other:?}"),
            ))
        }
    };
    let mtu = conf.mtu.unwrap_or(lease.mtu);
    // The agent decides the MAC (anti-spoofing binds the port to it).
    let mac = lease
        .mac
        .as_deref()
        .and_then(trellis_net::netlink::parse_mac)
        .or(mac);
    match plumb::add(env, &netns, &lease, mtu, mac) {
        Ok(ours) => {
            let mut out = conf.prev_result.clone().unwrap_or_default();
            out.append(ours);
            if out.dns.is_empty() {
                out.dns = conf.dns.clone();
            }
            if out.dns.is_empty() {
                if let Some(d) = &lease.dns {
                    out.dns.nameservers = d.nameservers.iter().map(|a| a.to_string()).collect();
                    out.dns.search = d.search.clone();
                    out.dns.options = d.options.clone();
                }
            }
            Ok(out.to_json(&conf.cni_version))
        }
        Err(e) => {
            // Leave nothing behind: the link (if any) and the reservation.
            let _ = plumb::del_host_link(env);
            let _ = call(
                &conf.agent_socket,
                conf.network.as_deref(),
                Op::Del(env.attachment()),
            );
            Err(e)
        }
    }
}

fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    match call(
        &conf.agent_socket,
        conf.network.as_deref(),
        Op::Del(env.attachment()),
    ) {
        Ok(_) => Ok(()),
        // Without the agent, still cut the pod off; the agent's sweep frees the address
        // when it is back (its veth is gone).
        Err(CallError::Unreachable(_)) => plumb::del_host_link(env),
        Err(CallError::Agent(e)) => Err(e),
    }
}

fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("prevResult", "is required for CHECK"))?;
    let lease = match call(
        &conf.agent_socket,
        conf.network.as_deref(),
        Op::Check(env.attachment()),
    )? {
        Response::Lease(l) => l,
        other => {
            return Err(CniError::new(
                codes::DECODE,
                format!("unexpected answer to CHECK from the agent: {other:?}"),
            ))
        }
    };
    if !prev
        .ips
        .iter()
        .any(|ip| ip.address == lease.address.to_string())
    {
        return Err(CniError::new(
            codes::CHECK_FAILED,
            format!(
                "prevResult does not list {}, the address the agent holds for this container",
                lease.address
            ),
        ));
    }
    let netns = trellis_net::Netns::open(&env.netns).map_err(|e| CniError::env("CNI_NETNS", e))?;
    plumb::check(env, &netns, &lease)
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    need_version(conf, "STATUS")?;
    match call(&conf.agent_socket, conf.network.as_deref(), Op::Status) {
        Ok(Response::Status(s)) if s.free == 0 => Err(CniError::new(
            codes::NOT_AVAILABLE,
            format!(
                "no free address left in {} ({} reserved)",
                s.subnet, s.reserved
            ),
        )),
        Ok(_) => Ok(()),
        Err(CallError::Unreachable(m)) => Err(CniError::new(codes::NOT_AVAILABLE, m)),
        Err(CallError::Agent(e)) => Err(CniError::new(codes::NOT_AVAILABLE, e.msg)),
    }
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    need_version(conf, "GC")?;
    call(
        &conf.agent_socket,
        conf.network.as_deref(),
        Op::Gc(GcRequest {
            valid_attachments: conf.valid_attachments.clone(),
        }),
    )?;
    Ok(())
}

/// The process entry point: read the environment and stdin, print the result or the
/// error JSON, exit 0 or 1.
pub fn main() -> ! {
    use std::io::{Read, Write};
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let res = match read {
        Ok(_) => run(|k| std::env::var(k).ok(), &stdin),
        Err(e) => Err(CniError::new(codes::IO_FAILURE, format!("read stdin: {e}"))),
    };
    let mut out = std::io::stdout().lock();
    match res {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            std::process::exit(0)
        }
        Ok(None) => std::process::exit(0),
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&error_version(&stdin)));
            std::process::exit(1)
        }
    }
}
