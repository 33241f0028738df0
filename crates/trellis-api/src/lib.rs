//! Trellis wire types shared by processes: today the agent <-> CNI plugin protocol
//! ([`agent`]); the cluster API objects join in a later milestone. No kernel code here.

pub mod agent;
pub mod naming;
