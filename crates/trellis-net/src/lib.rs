//! Trellis's hands on the kernel: network namespaces ([`netns`]), links, addresses and
//! routes over rtnetlink ([`netlink`]), nftables ([`nft`] through the tool, [`nftnl`] over netlink) and sysctls ([`sysctl`]).
//! Everything here acts on the namespace it is given (or the caller's current one) and
//! touches only objects it is told to; policy lives in the agent.

pub mod fabric_ops;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod nftnl;
pub mod sysctl;
pub mod uplink;

pub use fabric_ops::{
    FdbEntry, NeighbourEntry, RouteEntry, VxlanAttrs, VxlanSpec, BLACKHOLE_METRIC,
};
pub use netlink::{LinkInfo, Netlink};
pub use netns::Netns;
pub use uplink::UplinkBridge;

/// Errors from kernel operations. Every variant says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed; `errno` is the kernel's error number when it sent one.
    #[error("{op}: {msg}")]
    Netlink {
        /// What was attempted, e.g. `create veth trl1234 <-> eth0`.
        op: String,
        /// The kernel's (or the library's) message.
        msg: String,
        /// Positive errno, when known.
        errno: Option<i32>,
    },
    /// A namespace could not be opened or entered.
    #[error("network namespace {path}: {source}")]
    Netns {
        /// The namespace path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// An nftables command failed.
    #[error("nft: {0}")]
    Nft(String),
    /// Another I/O failure.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl NetError {
    /// The kernel errno of a failed netlink request, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetError::Netlink { errno, .. } => *errno,
            NetError::Netns { source, .. } | NetError::Io { source, .. } => source.raw_os_error(),
            NetError::Nft(_) => None,
        }
    }

    /// True when the failure means "it does not exist" (ENODEV / ENOENT / ESRCH).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH)
        )
    }

    /// True when the failure means "it already exists" (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
}

/// Result alias for this crate.
pub type Result<T, E = NetError> = std::result::Result<T, E>;
