//! Trellis wire types shared by processes, no kernel code:
//!
//! - [`objects`]: the cluster API objects (`apiVersion: trellis/v1`: Network, Node, Pod,
//!   Endpoint, Service), parsed from JSON or YAML manifests and validated, with errors
//!   that name the offending field;
//! - [`agent`]: the agent <-> CNI plugin protocol;
//! - [`naming`]: deterministic names of the kernel objects Trellis creates;
//! - [`watch`]: the list, watch-event and subnet-lease envelopes around objects.

pub mod agent;
pub mod naming;
pub mod objects;
pub mod watch;
