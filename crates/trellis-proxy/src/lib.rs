//! The node's service proxy: makes nftables (family `ip`) route connections for every
//! Service's cluster IP, external IPs, load-balancer IP and node ports to the Service's
//! ready endpoints, and nothing else.
//!
//! The agent computes a [`ServiceModel`] per Service from Services and Endpoints and
//! hands them to a [`Proxy`]: [`Proxy::full_sync`] makes the tables exactly that state
//! (adopting tables left by an earlier agent without changing anything in them),
//! [`Proxy::update`] applies the change of a few services as one small transaction.
//!
//! # Data path
//!
//! The main table `ip <table>` holds what is shared; the services are spread by key over
//! `ip <table>-0` .. `ip <table>-<shards-1>` (see [`ProxyConfig::shards`]).
//!
//! ```text
//! shard: nat-prerouting / nat-output (dstnat, -100)  jump services
//!   services: ip daddr . meta l4proto . th dport vmap @service-ips      (cluster, external, LB IPs)
//!             <node address> meta l4proto . th dport vmap @service-nodeports
//!   svc-<hash>  (per service port: the cluster-wide endpoint choice)
//!       jump mark-off-cluster                 (clients outside the pod CIDRs are masqueraded)
//!       ip saddr @aff-<hash>-<ep> update @aff-<hash>-<ep> { ip saddr } dnat to ep   (ClientIP affinity)
//!       numgen random mod N 0 [update @aff..] dnat to ep1; numgen random mod N-1 0 ... dnat to ep2; ...; dnat to epN
//!   ext-<hash>  (per service port with a node port / external IPs: the external policy)
//!       Cluster: mark for masquerade, goto svc-<hash>
//!       Local:   pod CIDRs and the node itself goto svc-<hash>; others choose among the
//!                local endpoints only (client address kept); none: falls through and
//!                is rejected below
//! main: nat-postrouting (srcnat, 100)  jump masquerading
//!   masquerading: marked packets, and hairpin (ct status dnat, ip saddr . ip daddr @hairpin)
//! main: filter-input / filter-forward / filter-output (-10)  ct state new jump endpoints-check
//!   endpoints-check: @no-endpoint-services / @no-endpoint-nodeports are rejected at once
//!                    (tcp reset, else icmp port unreachable)
//! ```
//!
//! The random spread uses one `numgen` per endpoint with falling moduli (N, N-1, ..., 2,
//! then the last endpoint), which picks each of N endpoints with probability 1/N. There
//! is no per-endpoint chain and no anonymous verdict map: the kernel binds each
//! anonymous set by walking the whole transaction, so a full sync of 10,000 services
//! with one anonymous map each was quadratic (minutes), and 100,000 endpoint chains made
//! every listing slow. Hairpin traffic is found in postrouting with a set of
//! `endpoint . endpoint` pairs instead of a mark in a per-endpoint chain.
//!
//! # Talking to the kernel
//!
//! The tables are read and written over netlink directly (`trellis_net::nftnl`): the `nft`
//! tool dumps the kernel's whole chain list before every command, which alone costs
//! 40 ms at 10,000 chains and seconds at 100,000. A change is one transaction holding
//! exactly the messages it needs; the socket stays open (closing one waits for an RCU
//! grace period). The kernel re-validates every table a transaction adds rules or
//! verdict elements to, walking all its chains: that is why services are sharded — a
//! change costs in proportion to its shard, not to the cluster.
//!
//! Every rule carries a comment with a fingerprint of its chain's intended contents; a
//! full sync reads tables, chains, rule comments, sets and the elements of the fixed
//! maps and changes only what differs, so a restarted agent changes nothing.
//!
//! Measured (`cargo bench -p trellis-proxy --bench sync`, 2 cores, kernel 6.18, 16
//! shards, 10,000 services x 10 endpoints; ranges from a quiet to a loaded machine):
//! full sync into empty tables 1.3-1.5 s (1.4-2.2 s before the fingerprint hash ran a
//! plain loop); full sync of unchanged tables (restart) 0.9-1.35 s, writing nothing;
//! one endpoint added or removed 1.2-1.9 ms mean, 1.5-2.7 ms p99. With a single table
//! the same change took 43 ms (re-validation). Every full sync also reads the UDP
//! conntrack entries when UDP services exist (see `conntrack`).
//!
//! Nothing outside the proxy's tables is touched; a table is never flushed wholesale
//! (shard tables of an earlier shard count are deleted). UDP conntrack entries are
//! deleted one service address, port and endpoint at a time with the `conntrack` tool,
//! never flushed.

mod conntrack;
mod live;
mod proxy;
mod render;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub use proxy::{Proxy, SyncReport, DEFAULT_SHARDS};
pub use trellis_api::objects::Protocol;

/// The bit of the packet mark that asks for masquerade in postrouting.
pub const MASQUERADE_MARK: u32 = 0x4000;

/// One Service, as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceModel {
    /// `namespace/name`.
    pub key: String,
    /// The cluster IP; `None` for headless and `ExternalName` services, for which
    /// nothing is programmed.
    pub cluster_ip: Option<Ipv4Addr>,
    /// `externalIPs` and the load-balancer IP: accepted like the cluster IP on every
    /// node, under the external traffic policy.
    pub external_ips: Vec<Ipv4Addr>,
    /// The ports.
    pub ports: Vec<PortModel>,
    /// `Some(seconds)` for `sessionAffinity: ClientIP`.
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`: node ports, external IPs and the load-balancer IP
    /// use only endpoints on this node and keep the client address (cluster IP traffic
    /// always uses every endpoint).
    pub local_only: bool,
    /// The ready endpoints.
    pub endpoints: Vec<EndpointModel>,
}

/// One port of a [`ServiceModel`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortModel {
    /// The port's name (empty for a single unnamed port).
    pub name: String,
    /// The port on the cluster IP and the external IPs.
    pub port: u16,
    /// The port on the endpoints.
    pub target_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The port on every node address, for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
}

/// One ready endpoint of a [`ServiceModel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointModel {
    /// The endpoint's address.
    pub ip: Ipv4Addr,
    /// Whether it runs on this node.
    pub local: bool,
}

/// What the proxy is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The main table's name (family `ip`), e.g. `trellis-svc`; the shards are
    /// `<table>-0`, `<table>-1`, ...
    pub table: String,
    /// This node's addresses on which node ports are accepted; empty: every local
    /// address except 127.0.0.0/8 (`fib daddr type local`).
    pub node_ips: Vec<Ipv4Addr>,
    /// The pod CIDRs: connections from them to a cluster IP keep their source address
    /// (except hairpin); connections from anywhere else are masqueraded.
    pub cluster_cidrs: Vec<Ipv4Net>,
    /// How many shard tables the services are spread over ([`DEFAULT_SHARDS`]; at
    /// least 1). Every nf_tables transaction re-validates each table it touches in
    /// full, so a change costs time in proportion to its shard's size, not the whole
    /// service count; each shard costs a new connection one extra hash lookup. Keep it
    /// fixed: changing it moves every service (one transaction, then the old shards
    /// are deleted).
    pub shards: u16,
    /// The conntrack-tools program the UDP clean-up runs (`conntrack`, from `PATH`).
    pub conntrack: String,
}

impl ProxyConfig {
    /// A configuration with [`DEFAULT_SHARDS`] shards.
    pub fn new(
        table: impl Into<String>,
        node_ips: Vec<Ipv4Addr>,
        cluster_cidrs: Vec<Ipv4Net>,
    ) -> Self {
        ProxyConfig {
            table: table.into(),
            node_ips,
            cluster_cidrs,
            shards: DEFAULT_SHARDS,
            conntrack: "conntrack".into(),
        }
    }
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A netlink socket operation failed.
    #[error("netlink: {what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a transaction or a request.
    #[error("nftables: {0}")]
    Nft(String),
    /// The table name is not usable.
    #[error("invalid table name {0:?}")]
    InvalidTable(String),
    /// [`Proxy::update`] was called before a successful [`Proxy::full_sync`].
    #[error("update before the first full sync")]
    NotSynced,
    /// The `conntrack` tool could not be run or failed.
    #[error("conntrack: {0}")]
    Conntrack(String),
}

impl From<trellis_net::nftnl::NftError> for ProxyError {
    fn from(e: trellis_net::nftnl::NftError) -> Self {
        use trellis_net::nftnl::NftError;
        match e {
            NftError::Netlink { what, source } => ProxyError::Netlink { what, source },
            NftError::Nft(m) => ProxyError::Nft(m),
        }
    }
}
