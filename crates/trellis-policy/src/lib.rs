//! Network policy and anti-spoofing for one node: NetworkPolicy and ClusterNetworkPolicy
//! objects compiled into nftables sets and chains of the node's own tables, so that a
//! label change, a new pod or a policy change is a few element updates.
//!
//! - [`model`]: the inputs (namespaces, pods, nodes, policies) as pure data, pod
//!   identities, and [`model::Inputs::check`], the verdict of a flow from the objects
//!   with the rule that gives it (the specification the data path implements);
//! - [`compile`]: the incremental compiler from inputs (or explicit changes) to set
//!   elements; [`index`]: the inverted indexes that find what a change affects;
//!   [`elements`]: atoms spelled out per address and merged into disjoint elements;
//! - [`table`]: the table `ip trellis-policy` and its reconciler (full sync, deltas);
//! - [`explain`]: `trellis policy explain|check` as text;
//! - [`guard`]: anti-spoofing on the pod bridges' ports (tables `bridge trellis-guard`
//!   and `inet trellis-guard`): a pod sends only from its own MAC and addresses,
//!   answers ARP only for them, and never acts as a DHCP server or IPv6 router.

pub mod compile;
pub mod elements;
pub mod explain;
pub mod guard;
pub mod index;
pub mod model;
pub mod table;

/// Failures of the policy data path.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The kernel refused or failed a request.
    #[error(transparent)]
    Nft(#[from] trellis_net::nftnl::NftError),
    /// A guard port that no interface could be (a bad name or MAC).
    #[error("{0}")]
    InvalidPort(String),
}
