//! The kernel side of the plugin: the veth pair, the pod address and its default route.

use trellis_api::agent::{codes, Lease};
use trellis_api::naming::host_veth_name;
use trellis_net::netlink::format_mac;
use trellis_net::{NetError, Netlink, Netns};

use crate::config::Env;
use crate::error::CniError;
use crate::result::{CniResult, Interface, IpConfig, Route};

fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::new(codes::IO_FAILURE, format!("start runtime: {e}")))
}

fn kernel(e: NetError) -> CniError {
    CniError::new(codes::KERNEL, e.to_string())
}

/// A netlink connection where the lease's bridge lives: the node's namespace, or the
/// tenant world the agent names.
fn host_netlink(lease: &Lease) -> Result<Netlink, CniError> {
    match &lease.host_netns {
        None => Netlink::connect().map_err(kernel),
        Some(path) => {
            let ns = Netns::open(path).map_err(kernel)?;
            Netlink::connect_in(&ns).map_err(kernel)
        }
    }
}

/// Create and configure the attachment; returns this plugin's part of the result.
pub fn add(
    env: &Env,
    netns: &Netns,
    lease: &Lease,
    mtu: u32,
    mac: Option<[u8; 6]>,
) -> Result<CniResult, CniError> {
    let rt = runtime()?;
    rt.block_on(async {
        let host = host_netlink(lease)?;
        let cont = Netlink::connect_in(netns).map_err(kernel)?;
        let br = host
            .link(&lease.bridge)
            .await
            .map_err(kernel)?
            .ok_or_else(|| {
                CniError::new(
                    codes::KERNEL,
                    format!("bridge {} does not exist on this node (is the agent running in this network namespace?)", lease.bridge),
                )
            })?;
        let host_name = host_veth_name(&env.container_id, &env.ifname);
        // The agent removed any stale host link of this name before answering, so
        // "exists" here means the container already has an interface called CNI_IFNAME.
        host.create_veth(&host_name, br.index, mtu, &env.ifname, netns, mac)
            .await
            .map_err(|e| {
                if e.is_exists() {
                    CniError::new(
                        codes::KERNEL,
                        format!(
                            "interface {} already exists in the container namespace {}",
                            env.ifname, env.netns
                        ),
                    )
                } else {
                    kernel(e)
                }
            })?;
        let c = cont.link(&env.ifname).await.map_err(kernel)?.ok_or_else(|| {
            CniError::new(codes::KERNEL, format!("{} vanished from the container after creation", env.ifname))
        })?;
        cont.add_addr(c.index, lease.address).await.map_err(kernel)?;
        cont.set_up(c.index).await.map_err(kernel)?;
        cont.add_default_route(c.index, lease.gateway).await.map_err(kernel)?;
        let h = host.link(&host_name).await.map_err(kernel)?;
        if let Some(h) = &h {
            host.set_hairpin(h.index).await.map_err(kernel)?;
        }
        Ok(CniResult {
            interfaces: vec![
                Interface {
                    name: lease.bridge.clone(),
                    mac: format_mac(&br.mac),
                    ..Default::default()
                },
                Interface {
                    name: host_name,
                    mac: h.map(|h| format_mac(&h.mac)).unwrap_or_default(),
                    mtu: Some(mtu),
                    ..Default::default()
                },
                Interface {
                    name: env.ifname.clone(),
                    mac: format_mac(&c.mac),
                    sandbox: Some(env.netns.clone()),
                    mtu: Some(mtu),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                address: lease.address.to_string(),
                gateway: Some(lease.gateway.to_string()),
                interface: Some(2),
                ..Default::default()
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some(lease.gateway.to_string()),
                ..Default::default()
            }],
            ..Default::default()
        })
    })
}

/// Delete the host end of the attachment's veth (the container end goes with it).
/// Absent is success.
pub fn del_host_link(env: &Env) -> Result<(), CniError> {
    let rt = runtime()?;
    rt.block_on(async {
        let nl = Netlink::connect().map_err(kernel)?;
        if let Some(l) = nl
            .link(&host_veth_name(&env.container_id, &env.ifname))
            .await
            .map_err(kernel)?
        {
            match nl.del_link(l.index).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(kernel(e)),
            }
        }
        Ok(())
    })
}

/// Verify the attachment is plumbed as the lease says.
pub fn check(env: &Env, netns: &Netns, lease: &Lease) -> Result<(), CniError> {
    let fail = |m: String| CniError::new(codes::CHECK_FAILED, m);
    let rt = runtime()?;
    rt.block_on(async {
        let host = host_netlink(lease)?;
        let cont = Netlink::connect_in(netns).map_err(kernel)?;
        let host_name = host_veth_name(&env.container_id, &env.ifname);
        let br = host
            .link(&lease.bridge)
            .await
            .map_err(kernel)?
            .ok_or_else(|| fail(format!("bridge {} is missing", lease.bridge)))?;
        let h = host
            .link(&host_name)
            .await
            .map_err(kernel)?
            .ok_or_else(|| fail(format!("host veth {host_name} is missing")))?;
        if h.master != Some(br.index) {
            return Err(fail(format!(
                "host veth {host_name} is not attached to {}",
                lease.bridge
            )));
        }
        if !h.up {
            return Err(fail(format!("host veth {host_name} is down")));
        }
        let c = cont
            .link(&env.ifname)
            .await
            .map_err(kernel)?
            .ok_or_else(|| fail(format!("{} is missing in {}", env.ifname, env.netns)))?;
        if !c.up {
            return Err(fail(format!("{} is down in the container", env.ifname)));
        }
        if !cont
            .addrs(c.index)
            .await
            .map_err(kernel)?
            .contains(&lease.address)
        {
            return Err(fail(format!(
                "{} lacks address {}",
                env.ifname, lease.address
            )));
        }
        let routes = cont.routes().await.map_err(kernel)?;
        if !routes
            .iter()
            .any(|(dst, gw, _)| dst.prefix_len() == 0 && *gw == Some(lease.gateway))
        {
            return Err(fail(format!(
                "the container has no default route via {}",
                lease.gateway
            )));
        }
        Ok(())
    })
}
