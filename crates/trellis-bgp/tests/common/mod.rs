//! Helpers of the speaker's lab tests (each test file uses some of them).
#![allow(dead_code)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::thread::JoinHandle;

use trellis_bgp::fsm::Local;
use trellis_bgp::session::PeerConfig;

/// Run the future `f` makes on a runtime of its own, on a thread inside lab namespace
/// `netns` (the test's other threads stay where they are).
pub fn block_on_in<T, F>(netns: &str, f: impl FnOnce() -> F + Send + 'static) -> JoinHandle<T>
where
    T: Send + 'static,
    F: Future<Output = T>,
{
    let h = trellis_lab::spawn_in_netns(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(f()))
    })
    .expect("a thread in the lab namespace");
    std::thread::spawn(move || {
        h.join()
            .expect("the namespace thread")
            .expect("entering the namespace")
    })
}

/// Our session from `local` (AS 65000, hold time 9 s) to `peer` (AS `peer_asn`, port 179).
pub fn peer_config(local: Ipv4Addr, peer: Ipv4Addr, peer_asn: u32) -> PeerConfig {
    PeerConfig {
        local: Local {
            asn: 65000,
            router_id: local,
            peer_asn,
            hold_time: 9,
        },
        peer: SocketAddrV4::new(peer, 179),
        local_address: local,
    }
}
