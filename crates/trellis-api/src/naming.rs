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
    for b in parts.into_iter().flatten() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
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
