//! The Trellis node agent: owns IPAM for its node's pod subnet ([`ipam`]), serves the
//! CNI plugin on a unix socket ([`cni_server`]), keeps the node bridge and its nftables
//! table ([`nat`]) in the desired state, and reconciles reservations against live
//! attachments ([`node`]), and admits every pod into the kernel's protections before
//! its ADD answers ([`gate`]: anti-spoofing always, network policy in cluster mode). In
//! cluster mode ([`cluster`]) it also joins a Trellis
//! server: Node registration, heartbeats, the subnet lease, Endpoint publication and
//! the multi-host fabric.

pub mod cluster;
pub mod cni_server;
pub mod gate;
pub mod ipam;
pub mod nat;
pub mod node;
