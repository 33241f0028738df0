//! `trellis agent`: single-node mode (`--pod-cidr`) or cluster mode (`--server`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use ipnet::Ipv4Net;
use trellis_agent::cluster::{self, ClusterConfig};
use trellis_agent::cni_server::{self, Networks};
use trellis_agent::node::{Node, NodeConfig};

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// This node's pod subnet (single-node mode), e.g. 10.244.1.0/24.
    #[arg(long, required_unless_present = "server", conflicts_with = "server")]
    pod_cidr: Option<Ipv4Net>,
    /// Cluster mode: the Trellis server (`https://host:6443`); the subnet comes from it.
    #[arg(long, requires = "node")]
    server: Option<String>,
    /// Cluster mode: the node's bearer token (`trellis server token --node NAME`).
    #[arg(long, env = "TRELLIS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Cluster mode: a file holding the token (instead of --token).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Cluster mode: the CA certificate that signed the server's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Cluster mode: this node's name.
    #[arg(long)]
    node: Option<String>,
    /// Cluster mode: a Network this agent serves (repeatable; default: `default`). The
    /// first uses --bridge, --state-dir and the table `ip trellis`; the others get their
    /// own bridge (`trlb<hash>`), `STATE_DIR/networks/NAME` and `ip trellis-net-NAME`.
    /// A plugin configuration picks one with its "network" key (default: the first).
    #[arg(long = "network")]
    networks: Vec<String>,
    /// Cluster mode: the underlay link (default: the one carrying the default route).
    #[arg(long)]
    uplink: Option<String>,
    /// Cluster mode: the underlay address (default: the uplink's first IPv4 address).
    #[arg(long)]
    address: Option<std::net::Ipv4Addr>,
    /// Cluster mode: seconds between heartbeats (keep well under the server's lease TTL).
    #[arg(long, default_value_t = 5.0)]
    heartbeat: f64,
    /// Cluster mode: seconds between fabric drift checks and Endpoint re-publication.
    #[arg(long, default_value_t = 30.0)]
    resync: f64,
    /// Cluster mode: the cluster DNS domain.
    #[arg(long, default_value = trellis_agent::cluster::services::DEFAULT_DOMAIN)]
    cluster_domain: String,
    /// Cluster mode: upstream resolver for names outside the cluster domain, `IP[:PORT]`
    /// (repeatable; default: the nameservers of /etc/resolv.conf).
    #[arg(long = "dns-upstream")]
    dns_upstreams: Vec<String>,
    /// Cluster mode: seconds between full syncs of the service proxy.
    #[arg(long, default_value_t = 300.0)]
    proxy_full_resync: f64,
    /// Pod CIDRs of the whole cluster: traffic to them is not masqueraded
    /// (default: the pod subnet).
    #[arg(long = "cluster-cidr")]
    cluster_cidrs: Vec<Ipv4Net>,
    /// Addresses of the pod subnet never handed out (repeatable).
    #[arg(long = "exclude")]
    excluded: Vec<Ipv4Net>,
    /// The bridge pods attach to.
    #[arg(long, default_value = trellis_api::naming::DEFAULT_BRIDGE)]
    bridge: String,
    /// Pod MTU (default: the MTU of the link carrying the default route).
    #[arg(long)]
    mtu: Option<u32>,
    /// Directory for the IPAM state file.
    #[arg(long, default_value = "/var/lib/trellis")]
    state_dir: PathBuf,
    /// The unix socket the CNI plugin connects to.
    #[arg(long, default_value = trellis_api::agent::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Seconds between reconcile sweeps.
    #[arg(long, default_value_t = 30)]
    sweep_interval: u64,
    /// Seconds a reservation may lack its veth before the sweep releases it.
    #[arg(long, default_value_t = 60)]
    orphan_grace: u64,
}

pub fn run(a: AgentArgs) -> anyhow::Result<ExitCode> {
    crate::init_tracing();
    if let Err(why) = trellis_api::naming::validate_ifname(&a.bridge) {
        anyhow::bail!("--bridge {:?} {why}", a.bridge);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut networks = a.networks.clone();
        if networks.is_empty() {
            networks.push("default".into());
        }
        for n in &networks {
            if let Err(why) = trellis_api::objects::validate_dns1123_label(n) {
                anyhow::bail!("--network {n:?}: {why}");
            }
        }
        // Anti-spoofing (and, in cluster mode, policy) for every pod of every network.
        let gate = trellis_agent::gate::Gate::new();
        let served = match (&a.server, a.pod_cidr) {
            (Some(server), _) => {
                let cfg = ClusterConfig {
                    client: trellis_client::Config {
                        server: server.clone(),
                        ca: a.ca.clone(),
                        token: a.token.clone(),
                        token_file: a.token_file.clone(),
                    },
                    node: a.node.clone().context("--node is required with --server")?,
                    networks: networks.clone(),
                    uplink: a.uplink.clone(),
                    address: a.address,
                    bridge: a.bridge.clone(),
                    state_dir: a.state_dir.clone(),
                    heartbeat: Duration::from_secs_f64(a.heartbeat),
                    resync: Duration::from_secs_f64(a.resync),
                    orphan_grace: Duration::from_secs(a.orphan_grace),
                    domain: a.cluster_domain.clone(),
                    dns_upstreams: a
                        .dns_upstreams
                        .iter()
                        .map(|s| parse_upstream(s))
                        .collect::<anyhow::Result<_>>()?,
                    proxy_full_resync: Duration::from_secs_f64(a.proxy_full_resync),
                    gate: gate.clone(),
                    sweep_interval: Duration::from_secs(a.sweep_interval),
                };
                // Each network's sweeper runs from the networks controller.
                let (served, local) = cluster::start(cfg).await?;
                let subnets: Vec<String> = served
                    .nodes()
                    .iter()
                    .map(|n| n.ipam().subnet().to_string())
                    .collect();
                tracing::info!(?subnets, uplink = local.uplink, "node ready (cluster mode)");
                served
            }
            (None, Some(pod_subnet)) => {
                if networks.len() > 1 {
                    anyhow::bail!("single-node mode (--pod-cidr) serves one network; --network more than once needs --server");
                }
                let cfg = NodeConfig {
                    pod_subnet,
                    cluster_cidrs: a.cluster_cidrs,
                    excluded: a.excluded,
                    bridge: a.bridge,
                    nat_table: trellis_agent::nat::DEFAULT_TABLE.into(),
                    mtu: a.mtu,
                    state_dir: a.state_dir,
                    orphan_grace: Duration::from_secs(a.orphan_grace),
                    l2: None,
                    gate: gate.clone(),
                    world: None,
                };
                let (node, report) = Node::start(cfg).await.map_err(anyhow::Error::msg)?;
                tracing::info!(?report, "node ready");
                tokio::spawn(
                    node.clone()
                        .run_sweeper(Duration::from_secs(a.sweep_interval)),
                );
                Networks::fixed(vec![(networks[0].clone(), node)])
            }
            (None, None) => anyhow::bail!("either --pod-cidr or --server is required"),
        };
        let listener = cni_server::bind(&a.socket)
            .await
            .map_err(anyhow::Error::msg)
            .context("CNI socket")?;
        tracing::info!(socket = %a.socket.display(), "serving the CNI plugin");
        // The guard table holds exactly the reservations: at start and every sweep.
        if let Err(e) = gate.sync() {
            tracing::warn!("{e}");
        }
        let every = Duration::from_secs(a.sweep_interval);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = gate.sync() {
                    tracing::warn!("{e}");
                }
            }
        });
        let server = tokio::spawn(cni_server::serve(listener, served));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = server => {}
        }
        // Leave every kernel object in place: pods keep their network while the agent
        // is down. Only the socket goes, so plugins get "try again later".
        let _ = std::fs::remove_file(&a.socket);
        tracing::info!("stopped; kernel state left in place");
        Ok(ExitCode::SUCCESS)
    })
}

/// `IP` or `IP:PORT` (port 53 by default).
fn parse_upstream(s: &str) -> anyhow::Result<std::net::SocketAddr> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = s
        .parse()
        .with_context(|| format!("--dns-upstream {s:?}: expected IP or IP:PORT"))?;
    Ok(std::net::SocketAddr::new(ip, 53))
}
