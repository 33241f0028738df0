//! BFD against a real BIRD 2 (RFC 5880/5881): the sessions come up both ways, and when
//! BIRD stops answering (frozen with SIGSTOP: a hung host, its TCP session still open)
//! its routes leave our kernel within a second — where without BFD they leave only at
//! the hold time's end. Prints both times. Needs root and `bird`/`birdc`.

mod common;

use std::time::Duration;

use common::bird::require;
use common::frozen_peer::time_to_withdraw;

#[test]
fn bfd_tells_a_frozen_peer_within_a_second() {
    require();
    let with_bfd = time_to_withdraw(true);
    let without = time_to_withdraw(false);
    println!("bfd: route withdrawn {with_bfd:?} after the peer froze; without BFD: {without:?}");
    assert!(with_bfd < Duration::from_secs(1), "with BFD: {with_bfd:?}");
    assert!(
        without > Duration::from_secs(5) && without < Duration::from_secs(12),
        "without BFD the hold time (9 s) decides: {without:?}"
    );
}
