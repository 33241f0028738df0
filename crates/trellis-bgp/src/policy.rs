//! What a peer may send us and what we send it: prefix filters (Calico's `BGPFilter`
//! rules) and the loop checks of RFC 4271 §9.1.2 (our AS in the path) and RFC 4456 §8
//! (our identifier as ORIGINATOR_ID, our cluster in CLUSTER_LIST).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::attrs::Attrs;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Take (or send) the route.
    Accept,
    /// Drop it.
    Reject,
}

/// How a rule's CIDR is compared with a route's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MatchOp {
    /// The prefix is the CIDR.
    Equal,
    /// The prefix is not the CIDR.
    NotEqual,
    /// The prefix lies within the CIDR (or is it).
    In,
    /// The prefix does not lie within the CIDR.
    NotIn,
}

/// One rule: the first that matches decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// What it does.
    pub action: Action,
    /// How it matches.
    pub op: MatchOp,
    /// Against what.
    pub cidr: Ipv4Net,
}

/// An ordered list of rules; a route no rule matches is accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Filter {
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

impl Rule {
    fn matches(&self, p: Ipv4Net) -> bool {
        let within = self.cidr.contains(&p);
        match self.op {
            MatchOp::Equal => p == self.cidr,
            MatchOp::NotEqual => p != self.cidr,
            MatchOp::In => within,
            MatchOp::NotIn => !within,
        }
    }
}

impl Filter {
    /// Whether `prefix` passes.
    pub fn accepts(&self, prefix: Ipv4Net) -> bool {
        self.rules
            .iter()
            .find(|r| r.matches(prefix))
            .is_none_or(|r| r.action == Action::Accept)
    }
}

/// Why a received route is refused by the loop checks, if it is.
pub fn loop_check(
    asn: u32,
    router_id: Ipv4Addr,
    cluster_id: Option<Ipv4Addr>,
    ebgp: bool,
    a: &Attrs,
) -> Option<&'static str> {
    if ebgp && a.as_path.contains(&asn) {
        return Some("our AS is in its AS_PATH");
    }
    if a.originator_id == Some(router_id) {
        return Some("we are its ORIGINATOR_ID");
    }
    if cluster_id.is_some_and(|c| a.cluster_list.contains(&c)) {
        return Some("our cluster is in its CLUSTER_LIST");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_decides() {
        let f = Filter {
            rules: vec![
                Rule {
                    action: Action::Reject,
                    op: MatchOp::Equal,
                    cidr: "10.244.0.0/16".parse().unwrap(),
                },
                Rule {
                    action: Action::Accept,
                    op: MatchOp::In,
                    cidr: "10.244.0.0/16".parse().unwrap(),
                },
                Rule {
                    action: Action::Reject,
                    op: MatchOp::NotIn,
                    cidr: "10.96.0.0/12".parse().unwrap(),
                },
            ],
        };
        assert!(!f.accepts("10.244.0.0/16".parse().unwrap()));
        assert!(f.accepts("10.244.3.0/24".parse().unwrap()));
        assert!(!f.accepts("192.168.0.0/24".parse().unwrap()));
        assert!(f.accepts("10.96.0.10/32".parse().unwrap()));
        assert!(Filter::default().accepts("0.0.0.0/0".parse().unwrap()));
    }

    #[test]
    fn loops_are_refused() {
        let me = Ipv4Addr::new(10, 0, 0, 1);
        let cluster = Some(Ipv4Addr::new(1, 1, 1, 1));
        let mut a = Attrs::local(Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(loop_check(64512, me, cluster, false, &a), None);
        a.as_path = vec![65001, 64512];
        assert!(loop_check(64512, me, cluster, true, &a).is_some());
        a.as_path.clear();
        a.originator_id = Some(me);
        assert!(loop_check(64512, me, None, false, &a).is_some());
        a.originator_id = None;
        a.cluster_list = vec![Ipv4Addr::new(1, 1, 1, 1)];
        assert!(loop_check(64512, me, cluster, false, &a).is_some());
    }
}
