//! Dead-peer detection: how long a peer's route stays in our kernel after the peer stops
//! answering, with BFD (100 ms × 3) and with the BGP hold time (9 s) alone, in the same
//! run.
//!
//! Run as root with BIRD 2: `cargo bench -p trellis-bgp --bench bfd_detection`
//! (`TRELLIS_BENCH_ROUNDS`, default 5, per mode).
//!
//! Each round is a fresh lab of two nodes: BIRD (AS 65001, BFD on, graceful restart on)
//! in node 2 announces 10.99.0.0/24 to our speaker in node 1, whose peer has BFD on or
//! off. Once the route is in node 1's kernel (and BIRD's BFD session is up), BIRD is
//! frozen with SIGSTOP — a hung host: no packet, no FIN, its TCP session still open —
//! and the clock runs until the route is gone from node 1 (polled every 20 ms).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::bird::require;
use common::frozen_peer::time_to_withdraw;

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}

fn main() {
    require();
    let rounds: usize = std::env::var("TRELLIS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(5);
    let mut bfd = Vec::new();
    let mut hold = Vec::new();
    for r in 0..rounds {
        bfd.push(time_to_withdraw(true));
        hold.push(time_to_withdraw(false));
        eprintln!(
            "round {}: bfd {:.0} ms, hold time {:.0} ms",
            r + 1,
            bfd[r].as_secs_f64() * 1e3,
            hold[r].as_secs_f64() * 1e3
        );
    }
    println!("\ndead-peer detection: peer frozen -> its route gone from our kernel ({rounds} rounds each)");
    println!("                          p50        p99        max   (ms)");
    for (what, v) in [("BFD 100 ms x 3", &bfd), ("hold time 9 s, no BFD", &hold)] {
        println!(
            "{what:<22}{:>9.0}{:>11.0}{:>11.0}",
            pct(v, 0.5).as_secs_f64() * 1e3,
            pct(v, 0.99).as_secs_f64() * 1e3,
            pct(v, 1.0).as_secs_f64() * 1e3
        );
    }
    let pass = pct(&bfd, 0.99) <= Duration::from_secs(1);
    println!(
        "target BFD p99 <= 1 s: {}",
        if pass { "PASS" } else { "FAIL" }
    );
}
