//! Network policy and anti-spoofing for one node: NetworkPolicy and ClusterNetworkPolicy
//! objects compiled into nftables sets, maps and chains of the node's own tables, so
//! that a label change, a new pod or a policy change is a few element updates.
//!
//! - [`guard`]: anti-spoofing on the pod bridges' ports (table `bridge trellis-guard`):
//!   a pod sends only from its own MAC and addresses, answers ARP only for them, and
//!   never acts as a DHCP server.

pub mod guard;

/// Failures of the policy data path.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The kernel refused or failed a request.
    #[error(transparent)]
    Nft(#[from] trellis_net::nftnl::NftError),
}
