//! `trellis lab tenants`: two (or more) tenants side by side in a lab made by `lab up`,
//! with the same address range, so the same pod addresses: each gets a Tenant, a
//! Network (`--cidr`), a Namespace and a pod on every node; then every pod fetches the
//! page of every address of the range from inside its own world and the table shows
//! who answered. Every answer must come from the asker's own tenant.

use std::net::Ipv4Addr;
use std::process::ExitCode;

use anyhow::{bail, Context};
use trellis_lab::Lab;

use crate::lab_cmd::sibling;

/// The pod page port.
const PORT: u16 = 80;

/// `trellis lab tenants`.
#[derive(clap::Args, Debug)]
pub struct TenantsArgs {
    /// Lab name.
    #[arg(long, default_value = "demo")]
    lab: String,
    /// The tenants, comma-separated (DNS-1123 labels).
    #[arg(long, default_value = "red,blue", value_delimiter = ',')]
    tenants: Vec<String>,
    /// The network range every tenant uses.
    #[arg(long, default_value = "10.250.0.0/16")]
    cidr: ipnet::Ipv4Net,
}

/// One tenant pod of the demo.
struct TenantPod {
    tenant: String,
    node: String,
    netns: String,
    ip: Ipv4Addr,
}

pub fn run(a: TenantsArgs) -> anyhow::Result<ExitCode> {
    // Everything is checked before anything is made.
    if a.tenants.len() < 2 {
        bail!("--tenants: name at least two tenants to show side by side");
    }
    for t in &a.tenants {
        trellis_api::objects::validate_dns1123_label(t)
            .map_err(|m| anyhow::anyhow!("--tenants {t:?}: {m}"))?;
    }
    if a.cidr.trunc() != a.cidr {
        bail!("--cidr {}: host bits set (use {})", a.cidr, a.cidr.trunc());
    }
    let trellis = std::env::current_exe()?;
    let plugin = sibling("trellis-cni")?;
    let mut lab = Lab::load(&a.lab)?;
    let mut manifests = String::new();
    for t in &a.tenants {
        manifests += &format!(
            "apiVersion: trellis/v1\nkind: Tenant\nmetadata: {{name: {t}}}\n---\n\
             apiVersion: trellis/v1\nkind: Network\nmetadata: {{name: {t}-pods}}\nspec: {{cidr: {}, tenant: {t}}}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {{name: {t}}}\nspec: {{tenant: {t}}}\n---\n",
            a.cidr
        );
    }
    lab.apply(&trellis, &manifests)
        .context("create the tenants")?;
    // The agents learn the namespaces' tenants from their watch.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut pods = Vec::new();
    for t in &a.tenants {
        for n in 0..lab.state.nodes.len() {
            let node = lab.state.nodes[n].name.clone();
            let short = format!("{node}-{t}");
            if let Some(p) = lab.state.pods.iter().find(|p| p.name == short) {
                bail!(
                    "lab {} already has a pod {} (run lab tenants once per lab)",
                    lab.state.name,
                    p.name
                );
            }
            let lp = lab.add_pod(n, t)?;
            let args = format!("K8S_POD_NAMESPACE={t};K8S_POD_NAME={t}-{node}");
            let mut ip = None;
            for _ in 0..50 {
                match lab.cni_add_pod_with(&plugin, &lp.netns, &args) {
                    Ok(x) => {
                        ip = Some(x);
                        break;
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
                }
            }
            let ip = ip.with_context(|| format!("ADD of {short} kept failing"))?;
            let www = lab.dir().join(format!("www-{short}"));
            std::fs::create_dir_all(&www)?;
            std::fs::write(www.join("index.html"), format!("{t}/{node}\n"))?;
            let mut httpd = std::process::Command::new("busybox");
            httpd
                .args(["httpd", "-f", "-p", &PORT.to_string(), "-h"])
                .arg(&www);
            lab.spawn(&lp.netns, &format!("httpd {short}"), httpd)?;
            pods.push(TenantPod {
                tenant: t.clone(),
                node,
                netns: lp.netns,
                ip,
            });
        }
    }
    lab.save()?;
    println!("TENANT   NODE   POD ADDRESS");
    for p in &pods {
        println!("{:<8} {:<6} {}", p.tenant, p.node, p.ip);
    }
    // Each pod asks every address; the answer must come from its own tenant.
    let mut ips: Vec<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    ips.sort();
    ips.dedup();
    println!();
    let header: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
    println!("{:<14} {}", "FROM \\ TO", header.join("   "));
    let mut ok = true;
    for p in &pods {
        let mut cells = Vec::new();
        for ip in &ips {
            let url = format!("http://{ip}:{PORT}/");
            let page = lab
                .exec_any(
                    &p.netns,
                    &["timeout", "2", "busybox", "wget", "-q", "-O-", &url],
                )
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            let own = page.split('/').next() == Some(p.tenant.as_str());
            let mine = pods.iter().any(|q| q.tenant == p.tenant && q.ip == *ip);
            // Its own tenant answers for its addresses; nobody else ever does.
            ok &= own == mine && (page.is_empty() || own);
            let width = ip.to_string().len();
            cells.push(format!(
                "{:<width$}",
                if page.is_empty() { "-" } else { page.as_str() }
            ));
        }
        println!(
            "{:<14} {}",
            format!("{}/{}", p.tenant, p.node),
            cells.join("   ")
        );
    }
    println!();
    if ok {
        println!(
            "the same addresses in {} worlds: every pod reached only its own tenant's pods",
            a.tenants.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("some pod reached another tenant, or not its own: see the table");
        Ok(ExitCode::FAILURE)
    }
}
