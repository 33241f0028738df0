//! `trellis lab up|down|exec|status`: a persistent lab for the demo and for poking around.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use trellis_lab::{cni, Lab};

#[derive(clap::Subcommand, Debug)]
pub enum LabCmd {
    /// Create a lab: an underlay, N nodes each running an agent, P pods per node.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Pods per node.
        #[arg(long, default_value_t = 2)]
        pods: usize,
        /// Lab name (namespaces are called trlab-NAME-...).
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// Remove a lab (or all persistent labs with --all).
    Down {
        /// Lab name.
        #[arg(default_value = "demo")]
        name: String,
        /// Remove every persistent lab.
        #[arg(long)]
        all: bool,
    },
    /// Run a command inside a lab namespace: `u`, a node (`n1`) or a pod (`n1-p1`).
    Exec {
        /// Lab name.
        name: String,
        /// Target namespace.
        target: String,
        /// The command.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Show a lab's namespaces, addresses and processes.
    Status {
        /// Lab name (all labs when omitted).
        name: Option<String>,
    },
}

fn sibling(bin: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name(bin);
    if !p.exists() {
        bail!("{} not found next to {}", bin, me.display());
    }
    Ok(p)
}

pub fn run(cmd: LabCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCmd::Up { nodes, pods, name } => up(nodes, pods, &name),
        LabCmd::Down { name, all } => {
            let names = if all {
                trellis_lab::list_persistent()
            } else {
                vec![name]
            };
            let mut failed = false;
            for n in names {
                let lab = Lab::load(&n)?;
                for e in lab.destroy() {
                    eprintln!("{n}: {e}");
                    failed = true;
                }
                println!("lab {n} removed");
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        LabCmd::Exec { name, target, argv } => {
            let lab = Lab::load(&name)?;
            let ns = lab.resolve(&target).with_context(|| {
                format!("lab {name} has no namespace {target:?} (try u, n1, n1-p1)")
            })?;
            let status = lab.command(&ns, &argv[0]).args(&argv[1..]).status()?;
            Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
        }
        LabCmd::Status { name } => {
            let names = match name {
                Some(n) => vec![n],
                None => trellis_lab::list_persistent(),
            };
            if names.is_empty() {
                println!("no labs");
            }
            for n in names {
                print_status(&Lab::load(&n)?);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_status(lab: &Lab) {
    let s = &lab.state;
    println!("lab {}  (state: {})", s.name, lab.dir().display());
    println!(
        "  underlay  {:<28} {}.1/24 on bridge trlu0",
        s.underlay,
        trellis_lab::UNDERLAY_PREFIX
    );
    for (i, n) in s.nodes.iter().enumerate() {
        println!(
            "  node {:<4} {:<28} {}  pods {}",
            n.name,
            n.netns,
            n.addr,
            cni::pod_cidr(i)
        );
    }
    for p in &s.pods {
        let ip = p.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
        println!("  pod  {:<7} {:<28} {}", p.name, p.netns, ip);
    }
    for p in &s.procs {
        println!("  proc {:<7} pid {}", p.what, p.pid);
    }
}

fn up(nodes: usize, pods: usize, name: &str) -> anyhow::Result<ExitCode> {
    let trellis = std::env::current_exe()?;
    let plugin = sibling("trellis-cni")?;
    let mut lab = Lab::new_persistent(name, nodes)?;
    // Until the lab is complete, a failure tears it down (Drop); persist() at the end.
    let res = (|| -> anyhow::Result<()> {
        for n in 0..nodes {
            lab.start_agent(&trellis, n, &[])?;
            for p in 1..=pods {
                let pod = lab.add_pod(n, &format!("p{p}"))?;
                lab.cni_add_pod(&plugin, &pod.netns)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = res {
        let errs = lab.destroy();
        bail!("lab up failed: {e:#} (cleanup errors: {errs:?})");
    }
    lab.persist()?;
    print_status(&lab);
    println!();
    println!("reachability (ping; rows = from, columns = to):");
    let targets: Vec<(String, std::net::Ipv4Addr)> = lab
        .state
        .pods
        .iter()
        .filter_map(|p| p.ip.map(|ip| (p.name.clone(), ip)))
        .chain(std::iter::once((
            "underlay".to_string(),
            format!("{}.1", trellis_lab::UNDERLAY_PREFIX)
                .parse()
                .expect("ip"),
        )))
        .collect();
    print!("{:>10}", "");
    for (t, _) in &targets {
        print!(" {t:>9}");
    }
    println!();
    let sources: Vec<(String, String)> = lab
        .state
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.netns.clone()))
        .chain(
            lab.state
                .pods
                .iter()
                .map(|p| (p.name.clone(), p.netns.clone())),
        )
        .collect();
    for (s, ns) in &sources {
        print!("{s:>10}");
        for (_, ip) in &targets {
            print!(" {:>9}", if lab.ping(ns, *ip) { "ok" } else { "-" });
        }
        println!();
    }
    println!();
    println!("Pods on one node share its bridge trl0; traffic leaving a node is masqueraded");
    println!("to the node address. Pods on different nodes reach each other once the");
    println!("cluster backends land (multi-host milestone); until then '-' is expected there.");
    println!();
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "trellis".into());
    println!("Where to look:");
    println!("  {me} lab exec {name} n1 -- ip -br addr          # bridge trl0 and pod veths");
    println!("  {me} lab exec {name} n1 -- nft list table ip trellis   # masquerade + host ports");
    println!("  {me} lab exec {name} n1-p1 -- ip route           # pod default route");
    println!(
        "  less {}/agent-n1.log                    # agent log",
        lab.dir().display()
    );
    println!("  {me} lab down {name}");
    Ok(ExitCode::SUCCESS)
}
