//! Deterministic names for the kernel objects Trellis creates.

/// Prefix of every interface Trellis creates (DESIGN.md: "Interfaces Trellis creates start with `trl`").
pub const LINK_PREFIX: &str = "trl";

/// Maximum length of a Linux interface name (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Default name of the node bridge that pod veths attach to.
pub const DEFAULT_BRIDGE: &str = "trl0";

/// The pod bridge of a network other than the agent's first (which uses
/// [`DEFAULT_BRIDGE`] or the agent's `--bridge`): `trlb` + 8 hex digits of the
/// network's name, stable across restarts and flag order.
pub fn network_bridge(network: &str) -> String {
    let h = fnv1a64([b"bridge/".as_slice(), network.as_bytes()]);
    format!("{LINK_PREFIX}b{:08x}", h >> 32)
}

/// The host-side veth name of one attachment: `trl` + 12 hex digits of a stable
/// 64-bit FNV-1a hash of `container_id/ifname`. Both the plugin and the agent derive
/// it, so either can find the link of an attachment without asking the other.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = fnv1a64([container_id.as_bytes(), b"/", ifname.as_bytes()]);
    format!("{LINK_PREFIX}{:012x}", h >> 16)
}

/// 64-bit FNV-1a over the concatenation of `parts`: a stable hash for names and
/// fingerprints that must not change between builds (unlike `std`'s hasher).
pub fn fnv1a64<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    // A plain loop per part: a flattened iterator costs several times the multiply
    // (the proxy hashes every rule's bytes on a full sync).
    for part in parts {
        for &b in part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Check an interface name the way the kernel's `dev_valid_name` does, returning a
/// human-readable reason when it is not valid.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > IFNAME_MAX {
        return Err(format!(
            "is {} bytes long, the kernel allows at most {IFNAME_MAX}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("may not be '.' or '..'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("contains the forbidden character {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        // Names and rule fingerprints persist in the kernel: the hash must never change.
        assert_eq!(fnv1a64([]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64([b"a".as_slice()]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64([b"foobar".as_slice()]), 0x8594_4171_f739_67e8);
        assert_eq!(
            fnv1a64([b"foo".as_slice(), b"", b"bar"]),
            fnv1a64([b"foobar".as_slice()])
        );
        assert_eq!(network_bridge("blue"), network_bridge("blue"));
        assert!(
            network_bridge("a-network-name-of-sixty-three-characters-is-still-a-short-name").len()
                <= IFNAME_MAX
        );
    }

    #[test]
    fn host_veth_name_is_stable_and_fits() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert!(a.len() <= IFNAME_MAX, "{a}");
        assert!(a.starts_with("trl"));
    }

    #[test]
    fn ifname_validation() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("").is_err());
        assert!(validate_ifname("a234567890123456").is_err());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("a b").is_err());
        assert!(validate_ifname("..").is_err());
    }
}
