//! Rule expressions in nf_tables' netlink encoding, the way `nft` encodes the same
//! statements (so `nft list` shows our rules as ordinary nft syntax).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::Attrs;

// Registers: the 16-byte register 1 overlaps the 4-byte registers 8..11.
pub const REG_VERDICT: u32 = 0;
pub const REG_1: u32 = 1;
pub const REG_2: u32 = 2;
pub const REG32_01: u32 = 9;
pub const REG32_02: u32 = 10;

// Verdicts.
pub const NFT_JUMP: i32 = -3;
pub const NFT_GOTO: i32 = -4;
pub const NFT_RETURN: i32 = -5;

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

pub const PAYLOAD_NETWORK: u32 = 1;
pub const PAYLOAD_TRANSPORT: u32 = 2;

pub const META_MARK: u32 = 3;
pub const META_L4PROTO: u32 = 16;

pub const CT_STATE: u32 = 0;
pub const CT_STATUS: u32 = 2;
pub const CT_STATE_NEW: u32 = 8;
const IPS_DST_NAT: u32 = 0x20;

const FIB_F_SADDR: u32 = 1;
const FIB_F_DADDR: u32 = 2;
const FIB_RESULT_ADDRTYPE: u32 = 3;
const RTN_LOCAL: u32 = 2;

pub const CMP_EQ: u32 = 0;
pub const CMP_NEQ: u32 = 1;

/// `IPPROTO_TCP`.
pub const PROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const PROTO_UDP: u8 = 17;

/// Encode a verdict as `NFTA_DATA_VERDICT` contents.
pub fn verdict_data(a: &mut Attrs, code: i32, chain: Option<&str>) {
    a.nest(NFTA_DATA_VERDICT, |v| {
        v.put(NFTA_VERDICT_CODE, &code.to_be_bytes());
        if let Some(c) = chain {
            v.put_str(NFTA_VERDICT_CHAIN, c);
        }
    });
}

/// Encode a value as `NFTA_DATA_VALUE` contents.
pub fn value_data(a: &mut Attrs, bytes: &[u8]) {
    a.put(NFTA_DATA_VALUE, bytes);
}

/// The expressions of one rule (the contents of `NFTA_RULE_EXPRESSIONS`).
#[derive(Debug, Default, Clone)]
pub struct Rule {
    a: Attrs,
}

impl Rule {
    pub fn new() -> Self {
        Rule::default()
    }

    pub fn into_bytes(self) -> std::sync::Arc<[u8]> {
        self.a.into_vec().into()
    }

    pub fn expr(&mut self, name: &str, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        self.a.nest(NFTA_LIST_ELEM, |e| {
            e.put_str(NFTA_EXPR_NAME, name);
            e.nest(NFTA_EXPR_DATA, f);
        });
        self
    }

    // --- raw expressions ---

    pub fn payload(&mut self, dreg: u32, base: u32, offset: u32, len: u32) -> &mut Self {
        self.expr("payload", |d| {
            d.put_be32(1, dreg)
                .put_be32(2, base)
                .put_be32(3, offset)
                .put_be32(4, len);
        })
    }

    pub fn meta_load(&mut self, dreg: u32, key: u32) -> &mut Self {
        self.expr("meta", |d| {
            d.put_be32(2, key).put_be32(1, dreg);
        })
    }

    pub fn meta_set(&mut self, key: u32, sreg: u32) -> &mut Self {
        self.expr("meta", |d| {
            d.put_be32(2, key).put_be32(3, sreg);
        })
    }

    pub fn cmp(&mut self, sreg: u32, op: u32, data: &[u8]) -> &mut Self {
        self.expr("cmp", |d| {
            d.put_be32(1, sreg).put_be32(2, op).nest(3, |v| {
                value_data(v, data);
            });
        })
    }

    pub fn bitwise(&mut self, reg: u32, mask: &[u8], xor: &[u8]) -> &mut Self {
        let len = u32::try_from(mask.len()).expect("small");
        self.expr("bitwise", |d| {
            d.put_be32(1, reg)
                .put_be32(2, reg)
                .put_be32(3, len)
                .nest(4, |v| {
                    value_data(v, mask);
                })
                .nest(5, |v| {
                    value_data(v, xor);
                });
        })
    }

    pub fn lookup(&mut self, sreg: u32, set: &str, dreg: Option<u32>, invert: bool) -> &mut Self {
        self.expr("lookup", |d| {
            d.put_str(1, set).put_be32(2, sreg);
            if let Some(r) = dreg {
                d.put_be32(3, r);
            }
            if invert {
                d.put_be32(5, 1);
            }
        })
    }

    pub fn immediate_data(&mut self, dreg: u32, data: &[u8]) -> &mut Self {
        self.expr("immediate", |d| {
            d.put_be32(1, dreg).nest(2, |v| {
                value_data(v, data);
            });
        })
    }

    pub fn immediate_verdict(&mut self, code: i32, chain: Option<&str>) -> &mut Self {
        self.expr("immediate", |d| {
            d.put_be32(1, REG_VERDICT)
                .nest(2, |v| verdict_data(v, code, chain));
        })
    }

    // --- matches ---

    /// `ip saddr <net>` (or `ip daddr` with `dst`).
    pub fn ip_in(&mut self, dst: bool, net: Ipv4Net) -> &mut Self {
        let off = if dst { 16 } else { 12 };
        let bytes = usize::from(net.prefix_len()).div_ceil(8);
        let addr = net.network().octets();
        if bytes == 0 {
            return self;
        }
        self.payload(
            REG_1,
            PAYLOAD_NETWORK,
            off,
            u32::try_from(bytes).expect("<= 4"),
        );
        if !net.prefix_len().is_multiple_of(8) {
            let mask = net.netmask().octets();
            self.bitwise(REG_1, &mask[..bytes], &[0u8; 4][..bytes]);
        }
        self.cmp(REG_1, CMP_EQ, &addr[..bytes])
    }

    /// `ip saddr <addr>` / `ip daddr <addr>`.
    pub fn ip_eq(&mut self, dst: bool, addr: Ipv4Addr) -> &mut Self {
        self.ip_in(dst, Ipv4Net::new(addr, 32).expect("/32"))
    }

    /// `ip daddr != 127.0.0.0/8`.
    pub fn daddr_not_loopback(&mut self) -> &mut Self {
        self.payload(REG_1, PAYLOAD_NETWORK, 16, 1)
            .cmp(REG_1, CMP_NEQ, &[127])
    }

    /// `meta l4proto <proto>`.
    pub fn l4proto(&mut self, proto: u8) -> &mut Self {
        self.meta_load(REG_1, META_L4PROTO)
            .cmp(REG_1, CMP_EQ, &[proto])
    }

    /// `fib daddr type local` (or `fib saddr type local` with `!dst`).
    pub fn fib_local(&mut self, dst: bool) -> &mut Self {
        let flags = if dst { FIB_F_DADDR } else { FIB_F_SADDR };
        self.expr("fib", |d| {
            d.put_be32(1, REG_1)
                .put_be32(2, FIB_RESULT_ADDRTYPE)
                .put_be32(3, flags);
        })
        .cmp(REG_1, CMP_EQ, &RTN_LOCAL.to_ne_bytes())
    }

    /// `ct state new`.
    pub fn ct_state_new(&mut self) -> &mut Self {
        self.expr("ct", |d| {
            d.put_be32(2, CT_STATE).put_be32(1, REG_1);
        })
        .bitwise(REG_1, &CT_STATE_NEW.to_ne_bytes(), &[0; 4])
        .cmp(REG_1, CMP_NEQ, &[0; 4])
    }

    /// `ct status dnat`.
    pub fn ct_status_dnat(&mut self) -> &mut Self {
        self.expr("ct", |d| {
            d.put_be32(2, CT_STATUS).put_be32(1, REG_1);
        })
        .bitwise(REG_1, &IPS_DST_NAT.to_ne_bytes(), &[0; 4])
        .cmp(REG_1, CMP_NEQ, &[0; 4])
    }

    /// `meta mark & <bit> == <bit>`.
    pub fn mark_has(&mut self, bit: u32) -> &mut Self {
        self.meta_load(REG_1, META_MARK)
            .bitwise(REG_1, &bit.to_ne_bytes(), &[0; 4])
            .cmp(REG_1, CMP_EQ, &bit.to_ne_bytes())
    }

    /// `ip daddr . meta l4proto . th dport` loaded for a lookup (12 bytes at reg 1).
    fn load_daddr_proto_port(&mut self) -> &mut Self {
        self.payload(REG_1, PAYLOAD_NETWORK, 16, 4)
            .meta_load(REG32_01, META_L4PROTO)
            .payload(REG32_02, PAYLOAD_TRANSPORT, 2, 2)
    }

    /// `meta l4proto . th dport` loaded for a lookup (8 bytes at reg 1).
    fn load_proto_port(&mut self) -> &mut Self {
        self.meta_load(REG_1, META_L4PROTO)
            .payload(REG32_01, PAYLOAD_TRANSPORT, 2, 2)
    }

    /// `ip daddr . meta l4proto . th dport vmap @<map>`.
    pub fn vmap_daddr_proto_port(&mut self, map: &str) -> &mut Self {
        self.load_daddr_proto_port()
            .lookup(REG_1, map, Some(REG_VERDICT), false)
    }

    /// `meta l4proto . th dport vmap @<map>`.
    pub fn vmap_proto_port(&mut self, map: &str) -> &mut Self {
        self.load_proto_port()
            .lookup(REG_1, map, Some(REG_VERDICT), false)
    }

    /// `ip daddr . meta l4proto . th dport @<set>`.
    pub fn in_daddr_proto_port(&mut self, set: &str) -> &mut Self {
        self.load_daddr_proto_port().lookup(REG_1, set, None, false)
    }

    /// `meta l4proto . th dport @<set>`.
    pub fn in_proto_port(&mut self, set: &str) -> &mut Self {
        self.load_proto_port().lookup(REG_1, set, None, false)
    }

    /// `ip saddr . ip daddr @<set>`.
    pub fn in_saddr_daddr(&mut self, set: &str) -> &mut Self {
        self.payload(REG_1, PAYLOAD_NETWORK, 12, 4)
            .payload(REG32_01, PAYLOAD_NETWORK, 16, 4)
            .lookup(REG_1, set, None, false)
    }

    /// `ip saddr @<set>`.
    pub fn saddr_in_set(&mut self, set: &str) -> &mut Self {
        self.payload(REG_1, PAYLOAD_NETWORK, 12, 4)
            .lookup(REG_1, set, None, false)
    }

    /// `numgen random mod <modulus> 0`.
    pub fn numgen_is_zero(&mut self, modulus: u32) -> &mut Self {
        self.expr("numgen", |d| {
            d.put_be32(1, REG_1).put_be32(2, modulus).put_be32(3, 1);
        })
        .cmp(REG_1, CMP_EQ, &0u32.to_ne_bytes())
    }

    // --- statements ---

    /// `meta mark set meta mark or <bit>`.
    pub fn mark_set(&mut self, bit: u32) -> &mut Self {
        self.meta_load(REG_1, META_MARK)
            .bitwise(REG_1, &(!bit).to_ne_bytes(), &bit.to_ne_bytes())
            .meta_set(META_MARK, REG_1)
    }

    /// `meta mark set meta mark xor <bit>` (clears a bit known to be set).
    pub fn mark_toggle(&mut self, bit: u32) -> &mut Self {
        self.meta_load(REG_1, META_MARK)
            .bitwise(REG_1, &u32::MAX.to_ne_bytes(), &bit.to_ne_bytes())
            .meta_set(META_MARK, REG_1)
    }

    /// `update @<set> { ip saddr }`.
    pub fn update_saddr(&mut self, set: &str) -> &mut Self {
        self.payload(REG_1, PAYLOAD_NETWORK, 12, 4)
            .expr("dynset", |d| {
                d.put_be32(4, REG_1).put_be32(3, 1).put_str(1, set);
            })
    }

    /// `meta l4proto <proto> dnat to <addr>:<port>`.
    pub fn dnat(&mut self, proto: u8, addr: Ipv4Addr, port: u16) -> &mut Self {
        self.l4proto(proto)
            .immediate_data(REG_1, &addr.octets())
            .immediate_data(REG_2, &port.to_be_bytes())
            .expr("nat", |d| {
                d.put_be32(1, 1) // NFT_NAT_DNAT
                    .put_be32(2, 2) // NFPROTO_IPV4
                    .put_be32(3, REG_1)
                    .put_be32(5, REG_2)
                    .put_be32(7, 2); // NF_NAT_RANGE_PROTO_SPECIFIED
            })
    }

    /// `masquerade fully-random`.
    pub fn masquerade(&mut self) -> &mut Self {
        self.expr("masq", |d| {
            d.put_be32(1, 0x10);
        })
    }

    /// `reject with tcp reset` (`tcp`) or `reject` (ICMP port unreachable).
    pub fn reject(&mut self, tcp: bool) -> &mut Self {
        self.expr("reject", |d| {
            if tcp {
                d.put_be32(1, 1).put(2, &[0]);
            } else {
                d.put_be32(1, 0).put(2, &[3]);
            }
        })
    }

    /// `jump <chain>` / `goto <chain>` / `return` / `accept`.
    pub fn verdict(&mut self, code: i32, chain: Option<&str>) -> &mut Self {
        self.immediate_verdict(code, chain)
    }

    pub fn jump(&mut self, chain: &str) -> &mut Self {
        self.verdict(NFT_JUMP, Some(chain))
    }

    pub fn goto(&mut self, chain: &str) -> &mut Self {
        self.verdict(NFT_GOTO, Some(chain))
    }
}
