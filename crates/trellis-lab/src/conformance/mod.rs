//! NetworkPolicy and ClusterNetworkPolicy conformance: an independent oracle, a case
//! generator over the standard layout, and a prober that measures what a lab's pods can
//! really reach.
//!
//! - [`oracle`]: what the specification says about one packet (pure; written from the
//!   Kubernetes NetworkPolicy semantics and the API types' documentation, never from the
//!   data path's code).
//! - [`cases`]: the standard layout (namespaces `x`, `y`, `z`, pods `a`, `b`, `c` in
//!   each, two nodes, named ports `serve-80-tcp` ...) and a few hundred cases, each a set
//!   of objects (policies, label changes) whose expected matrix comes from the oracle.
//! - [`probe`]: TCP and UDP echo servers on ports 80 and 81 in every pod, and a prober
//!   that tries every pod → pod × port × protocol at once.
//!
//! The matrices of both sides are [`Matrix`]es; [`render_comparison`] prints expected
//! against probed the way cyclonus does, one table per port and protocol.

pub mod cases;
pub mod oracle;
pub mod probe;

use std::fmt::{self, Write as _};

use trellis_api::objects::PolicyProtocol;

use oracle::{Endpoint, Oracle, Probe};

/// A destination port and protocol: one column of probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortProto {
    /// The port.
    pub port: u16,
    /// TCP or UDP.
    pub protocol: PolicyProtocol,
}

impl PortProto {
    /// TCP port `port`.
    pub const fn tcp(port: u16) -> Self {
        PortProto {
            port,
            protocol: PolicyProtocol::Tcp,
        }
    }

    /// UDP port `port`.
    pub const fn udp(port: u16) -> Self {
        PortProto {
            port,
            protocol: PolicyProtocol::Udp,
        }
    }
}

impl fmt::Display for PortProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

/// The columns the standard layout probes: TCP and UDP on ports 80 and 81.
pub const PROBE_COLUMNS: [PortProto; 4] = [
    PortProto::tcp(80),
    PortProto::tcp(81),
    PortProto::udp(80),
    PortProto::udp(81),
];

/// Reachability of every pod → pod pair on every column: `allowed[column][from][to]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    /// The pods (`namespace/name`), rows and columns of each table.
    pub pods: Vec<String>,
    /// The ports and protocols, one table each.
    pub columns: Vec<PortProto>,
    cells: Vec<bool>,
}

impl Matrix {
    /// A matrix with every cell `value`.
    pub fn filled(pods: Vec<String>, columns: Vec<PortProto>, value: bool) -> Self {
        let n = columns.len() * pods.len() * pods.len();
        Matrix {
            pods,
            columns,
            cells: vec![value; n],
        }
    }

    /// What `oracle` expects for every pair of its pods on `columns`.
    pub fn expected(oracle: &Oracle, columns: &[PortProto]) -> Self {
        let pods: Vec<String> = oracle.pods.iter().map(|p| p.key()).collect();
        let mut m = Matrix::filled(pods, columns.to_vec(), false);
        for (c, col) in columns.iter().enumerate() {
            for s in 0..m.pods.len() {
                for d in 0..m.pods.len() {
                    let allowed = oracle.allows(&Probe {
                        src: Endpoint::Pod(s),
                        dst: Endpoint::Pod(d),
                        port: col.port,
                        protocol: col.protocol,
                    });
                    m.set(c, s, d, allowed);
                }
            }
        }
        m
    }

    fn index(&self, column: usize, from: usize, to: usize) -> usize {
        let n = self.pods.len();
        assert!(column < self.columns.len() && from < n && to < n);
        (column * n + from) * n + to
    }

    /// Cell `column`, `from` → `to`.
    pub fn get(&self, column: usize, from: usize, to: usize) -> bool {
        self.cells[self.index(column, from, to)]
    }

    /// Set cell `column`, `from` → `to`.
    pub fn set(&mut self, column: usize, from: usize, to: usize, allowed: bool) {
        let i = self.index(column, from, to);
        self.cells[i] = allowed;
    }

    /// How many cells are allowed.
    pub fn allowed_count(&self) -> usize {
        self.cells.iter().filter(|c| **c).count()
    }

    /// Every cell.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether the matrix has no cell.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The cells where `self` (expected) and `probed` differ, as (column, from, to);
    /// `ignore_loopback` leaves out a pod's traffic to itself.
    pub fn differences(
        &self,
        probed: &Matrix,
        ignore_loopback: bool,
    ) -> Vec<(usize, usize, usize)> {
        assert_eq!(self.pods, probed.pods, "matrices over different pods");
        assert_eq!(
            self.columns, probed.columns,
            "matrices over different columns"
        );
        let n = self.pods.len();
        let mut v = Vec::new();
        for c in 0..self.columns.len() {
            for s in 0..n {
                for d in 0..n {
                    if ignore_loopback && s == d {
                        continue;
                    }
                    if self.get(c, s, d) != probed.get(c, s, d) {
                        v.push((c, s, d));
                    }
                }
            }
        }
        v
    }
}

/// Expected against probed, one table per column with a difference (rows: from,
/// columns: to): `.` allowed as expected, `X` denied as expected, `+` allowed but
/// expected denied (a leak), `-` denied but expected allowed; `~` a pod to itself when
/// `ignore_loopback`. Below the tables, every difference with the oracle's reason
/// (`explain`) and the probe's outcome (`observed`).
pub fn render_comparison(
    expected: &Matrix,
    probed: &Matrix,
    ignore_loopback: bool,
    explain: impl Fn(usize, usize, usize) -> String,
    observed: impl Fn(usize, usize, usize) -> String,
) -> String {
    let diffs = expected.differences(probed, ignore_loopback);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} of {} probes differ (. allowed, X denied, + allowed but expected denied, - denied but expected allowed{})",
        diffs.len(),
        expected.len(),
        if ignore_loopback { ", ~ a pod to itself, not compared" } else { "" }
    );
    let width = expected
        .pods
        .iter()
        .map(|p| p.len())
        .max()
        .unwrap_or(1)
        .max(4);
    for (c, col) in expected.columns.iter().enumerate() {
        if !diffs.iter().any(|d| d.0 == c) {
            continue;
        }
        let _ = writeln!(out, "{col}:");
        let _ = write!(out, "{:width$}", "");
        for p in &expected.pods {
            let _ = write!(out, " {p:>width$}");
        }
        out.push('\n');
        for (s, from) in expected.pods.iter().enumerate() {
            let _ = write!(out, "{from:width$}");
            for d in 0..expected.pods.len() {
                let (e, p) = (expected.get(c, s, d), probed.get(c, s, d));
                let mark = match (e, p) {
                    _ if ignore_loopback && s == d => '~',
                    (true, true) => '.',
                    (false, false) => 'X',
                    (false, true) => '+',
                    (true, false) => '-',
                };
                let _ = write!(out, " {mark:>width$}");
            }
            out.push('\n');
        }
    }
    for (c, s, d) in diffs {
        let _ = writeln!(
            out,
            "  {} -> {} {}: expected {}, probed {}",
            expected.pods[s],
            expected.pods[d],
            expected.columns[c],
            explain(c, s, d),
            observed(c, s, d),
        );
    }
    out
}

/// One table per column of a single matrix (`.` allowed, `X` denied).
pub fn render_matrix(m: &Matrix) -> String {
    let width = m.pods.iter().map(|p| p.len()).max().unwrap_or(1).max(4);
    let mut out = String::new();
    for (c, col) in m.columns.iter().enumerate() {
        let _ = writeln!(out, "{col}:");
        let _ = write!(out, "{:width$}", "");
        for p in &m.pods {
            let _ = write!(out, " {p:>width$}");
        }
        out.push('\n');
        for (s, from) in m.pods.iter().enumerate() {
            let _ = write!(out, "{from:width$}");
            for d in 0..m.pods.len() {
                let mark = if m.get(c, s, d) { '.' } else { 'X' };
                let _ = write!(out, " {mark:>width$}");
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_marks_leaks_and_blocks() {
        let pods = vec!["x/a".to_string(), "x/b".to_string()];
        let cols = vec![PortProto::tcp(80), PortProto::udp(81)];
        let mut e = Matrix::filled(pods.clone(), cols.clone(), true);
        e.set(0, 0, 1, false);
        let mut p = Matrix::filled(pods, cols, true);
        p.set(1, 1, 0, false);
        p.set(1, 1, 1, false);
        assert_eq!(
            e.differences(&p, false),
            vec![(0, 0, 1), (1, 1, 0), (1, 1, 1)]
        );
        assert_eq!(e.differences(&p, true), vec![(0, 0, 1), (1, 1, 0)]);
        let s = render_comparison(&e, &p, true, |_, _, _| "why".into(), |_, _, _| "how".into());
        assert!(s.starts_with("2 of 8 probes differ"), "{s}");
        assert!(s.contains("TCP/80:\n"), "{s}");
        assert!(s.contains("x/a     ~    +\n"), "{s}");
        assert!(s.contains("x/b     -    ~\n"), "{s}");
        assert!(
            s.contains("  x/a -> x/b TCP/80: expected why, probed how\n"),
            "{s}"
        );
        assert!(render_matrix(&e).contains("x/a     .    X\n"));
    }
}
