//! Real BGP routers in lab namespaces, for tests and `trellis lab up --racks`: BIRD 2,
//! FRR (zebra and bgpd) and GoBGP, each with its files in the lab's directory and
//! stopped (by PID) with the lab.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{wait_for, Lab, LabError, Result};

fn write(path: &std::path::Path, body: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, body).map_err(|e| LabError::Io(format!("{}: {e}", path.display())))
}

/// Wait up to 5 s for a daemon's socket `sock`; the error shows its log.
fn started(sock: &std::path::Path, what: &str, log: &std::path::Path) -> Result<()> {
    if wait_for(Duration::from_secs(5), || sock.exists()) {
        return Ok(());
    }
    Err(LabError::Io(format!(
        "{what} did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    )))
}

fn mkdir(path: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| LabError::Io(format!("{}: {e}", path.display())))
}

/// A neighbour of a router: its address and AS.
pub type Neighbor = (Ipv4Addr, u32);

/// One router: where it runs and whom it peers with.
#[derive(Debug, Clone, Copy)]
pub struct Router<'a> {
    /// Its namespace.
    pub netns: &'a str,
    /// A short name for its files and processes.
    pub tag: &'a str,
    /// Its AS.
    pub asn: u32,
    /// Its identifier.
    pub id: Ipv4Addr,
    /// Its neighbours.
    pub neighbors: &'a [Neighbor],
}

/// Start BIRD as router `r`, exporting its connected networks (`interfaces`) and every
/// route it learns, and programming its kernel. `extra` goes inside each BGP protocol
/// (`graceful restart on;`, `bfd;`, ...). Returns the control socket.
pub fn start_bird(lab: &mut Lab, r: &Router, interfaces: &[&str], extra: &str) -> Result<PathBuf> {
    let Router {
        netns,
        tag,
        asn,
        id,
        neighbors,
    } = *r;
    let dir = lab.dir().join(format!("bird-{tag}"));
    mkdir(&dir)?;
    let mut conf = format!(
        "log \"{}\" all;\nrouter id {id};\nprotocol device {{}}\n\
         protocol direct {{ ipv4; interface {}; }}\n\
         protocol kernel {{ ipv4 {{ export all; }}; merge paths on; }}\n",
        dir.join("bird.log").display(),
        interfaces
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if conf.contains("interface ;") {
        conf = conf.replace("protocol direct { ipv4; interface ; }\n", "");
    }
    for (i, (addr, peer_as)) in neighbors.iter().enumerate() {
        conf.push_str(&format!(
            "protocol bgp p{i} {{\n  local as {asn};\n  neighbor {addr} as {peer_as};\n  \
             hold time 9;\n  connect retry time 1;\n  error wait time 1, 2;\n  {extra}\n  \
             ipv4 {{ import all; export all; }};\n}}\n"
        ));
    }
    let file = dir.join("bird.conf");
    write(&file, conf)?;
    let sock = dir.join("bird.ctl");
    let mut c = Command::new("bird");
    c.args(["-f", "-c"]).arg(&file).arg("-s").arg(&sock);
    lab.spawn(netns, &format!("bird {tag}"), c)?;
    started(&sock, &format!("BIRD {tag}"), &dir.join("bird.log"))?;
    Ok(sock)
}

/// `birdc` on BIRD's socket.
pub fn birdc(sock: &std::path::Path, args: &[&str]) -> String {
    Command::new("birdc")
        .arg("-s")
        .arg(sock)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Start FRR (zebra, then bgpd) as router `r` (eBGP without policies), redistributing
/// its connected networks. Returns the directory of its vty sockets, for [`vtysh`].
pub fn start_frr(lab: &mut Lab, r: &Router) -> Result<PathBuf> {
    let Router {
        netns,
        tag,
        asn,
        id,
        neighbors,
    } = *r;
    let dir = lab.dir().join(format!("frr-{tag}"));
    mkdir(&dir)?;
    let mut bgpd = format!(
        "hostname {tag}\nlog file {}\n!\nrouter bgp {asn}\n bgp router-id {id}\n \
         no bgp ebgp-requires-policy\n bgp graceful-restart\n",
        dir.join("bgpd.log").display()
    );
    for (addr, peer_as) in neighbors {
        bgpd.push_str(&format!(
            " neighbor {addr} remote-as {peer_as}\n neighbor {addr} timers 3 9\n \
             neighbor {addr} timers connect 1\n"
        ));
    }
    bgpd.push_str(
        " address-family ipv4 unicast\n  redistribute connected\n exit-address-family\n!\n",
    );
    let zebra = format!(
        "hostname {tag}\nlog file {}\n!\n",
        dir.join("zebra.log").display()
    );
    write(&dir.join("bgpd.conf"), bgpd)?;
    write(&dir.join("zebra.conf"), zebra)?;
    // FRR drops its privileges to user frr: its files must be theirs.
    let _ = Command::new("chown")
        .args(["-R", "frr:frr"])
        .arg(&dir)
        .status();
    let zserv = dir.join("zserv.api");
    let common = |c: &mut Command, name: &str| {
        c.arg("-f")
            .arg(dir.join(format!("{name}.conf")))
            .arg("-i")
            .arg(dir.join(format!("{name}.pid")))
            .arg("-z")
            .arg(&zserv)
            .arg("--vty_socket")
            .arg(&dir)
            .args(["-u", "frr", "-g", "frr"]);
    };
    let mut z = Command::new("/usr/lib/frr/zebra");
    common(&mut z, "zebra");
    lab.spawn(netns, &format!("zebra {tag}"), z)?;
    started(&zserv, &format!("zebra {tag}"), &dir.join("zebra.log"))?;
    let mut b = Command::new("/usr/lib/frr/bgpd");
    common(&mut b, "bgpd");
    b.args(["-p", "179"]);
    lab.spawn(netns, &format!("bgpd {tag}"), b)?;
    Ok(dir)
}

/// `vtysh -c CMD` against the FRR whose vty sockets are in `dir`.
pub fn vtysh(dir: &std::path::Path, cmd: &str) -> String {
    Command::new("vtysh")
        .arg("--vty_socket")
        .arg(dir)
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Start GoBGP in `netns` as a route reflector (cluster `cluster_id`) of AS `asn` for
/// `clients` (iBGP). Returns the port of its gRPC API, for [`gobgp`].
pub fn start_gobgp_reflector(
    lab: &mut Lab,
    netns: &str,
    asn: u32,
    id: Ipv4Addr,
    cluster_id: Ipv4Addr,
    clients: &[Ipv4Addr],
) -> Result<u16> {
    let dir = lab.dir().join("gobgp");
    mkdir(&dir)?;
    let mut conf = format!("[global.config]\n  as = {asn}\n  router-id = \"{id}\"\n  port = 179\n");
    for c in clients {
        conf.push_str(&format!(
            "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{c}\"\n    peer-as = {asn}\n  \
             [neighbors.timers.config]\n    hold-time = 9\n    keepalive-interval = 3\n    connect-retry = 1\n  \
             [neighbors.route-reflector.config]\n    route-reflector-client = true\n    route-reflector-cluster-id = \"{cluster_id}\"\n  \
             [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = 120\n  \
             [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n    \
             [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n"
        ));
    }
    let file = dir.join("gobgpd.toml");
    write(&file, conf)?;
    let api = 50051;
    let mut c = Command::new("gobgpd");
    c.arg("-f").arg(&file).args([
        "-t",
        "toml",
        "--pprof-disable",
        "--api-hosts",
        &format!("127.0.0.1:{api}"),
    ]);
    lab.spawn(netns, "gobgpd", c)?;
    Ok(api)
}

/// `gobgp ARGS` against the GoBGP in `netns` (its API on loopback there).
pub fn gobgp(lab: &Lab, netns: &str, api: u16, args: &[&str]) -> String {
    let mut argv = vec!["gobgp", "-p"];
    let port = api.to_string();
    argv.push(&port);
    argv.extend_from_slice(args);
    lab.exec_any(netns, &argv)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
