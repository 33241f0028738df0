//! `trellis server`: `init` (CA, server certificate, admin and read-only tokens),
//! `token` (add a node or read-only token), `run` (the API server).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use ipnet::Ipv4Net;
use trellis_server::auth::{self, Role, Tokens};
use trellis_server::{serve, tls, Server, ServerConfig};

/// Default server directory.
const DEFAULT_DIR: &str = "/var/lib/trellis/server";

#[derive(clap::Subcommand, Debug)]
pub enum ServerCmd {
    /// Make the CA, the server certificate and the admin and read-only tokens.
    Init(InitArgs),
    /// Add a token: for one node (`--node NAME`), an ingress (`--ingress NAME`) or
    /// read-only; prints it.
    Token(TokenArgs),
    /// Run the API server.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Directory for certificates, keys, tokens (and the embedded store by default).
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// Names and addresses the server certificate is valid for (repeatable; localhost
    /// and 127.0.0.1 are always included).
    #[arg(long = "san")]
    sans: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The server directory.
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// A token that may write only this node's objects.
    #[arg(long, conflicts_with_all = ["read_only", "ingress"])]
    node: Option<String>,
    /// A token for `trellis ingress`: reads routes, Services, Endpoints and Secrets;
    /// writes only Ingress status.
    #[arg(long, conflicts_with = "read_only")]
    ingress: Option<String>,
    /// A read-only token.
    #[arg(long)]
    read_only: bool,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The server directory (certificates, tokens).
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// The store: `embedded:PATH` (default: DIR/store.redb) or `etcd:URL[,URL…]`.
    #[arg(long)]
    store: Option<String>,
    /// Serve plain HTTP instead of TLS (tokens travel in clear text).
    #[arg(long)]
    insecure_http: bool,
    /// Where cluster IPs come from.
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cidr: Ipv4Net,
    /// Node port range, `LOW-HIGH`.
    #[arg(long, default_value = "30000-32767")]
    node_port_range: String,
    /// Seconds without a heartbeat before a node is not ready.
    #[arg(long, default_value_t = 20)]
    node_lease_ttl: u64,
    /// Seconds after that before its subnets may go to other nodes.
    #[arg(long, default_value_t = 300)]
    subnet_grace: u64,
}

pub fn run(cmd: ServerCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ServerCmd::Init(a) => init(&a),
        ServerCmd::Token(a) => {
            let role = match (a.node, a.ingress, a.read_only) {
                (Some(node), _, _) => Role::Node { node },
                (None, Some(name), _) => Role::Ingress { name },
                (None, None, true) => Role::ReadOnly,
                (None, None, false) => bail!("say --node NAME, --ingress NAME or --read-only"),
            };
            let t = auth::add_token(&a.dir, role).map_err(anyhow::Error::msg)?;
            println!("{t}");
            Ok(ExitCode::SUCCESS)
        }
        ServerCmd::Run(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(serve_main(a))
        }
    }
}

fn init(a: &InitArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&a.dir).with_context(|| a.dir.display().to_string())?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(a.sans.iter().cloned());
    let made = tls::init(&a.dir, &names).map_err(anyhow::Error::msg)?;
    if !made {
        eprintln!(
            "{}: already initialised (CA exists); nothing changed",
            a.dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let admin = auth::add_token(&a.dir, Role::Admin).map_err(anyhow::Error::msg)?;
    let ro = auth::add_token(&a.dir, Role::ReadOnly).map_err(anyhow::Error::msg)?;
    auth::write_private(&a.dir.join("admin.token"), admin.as_bytes())
        .map_err(anyhow::Error::msg)?;
    auth::write_private(&a.dir.join("readonly.token"), ro.as_bytes())
        .map_err(anyhow::Error::msg)?;
    println!(
        "initialised {dir}: CA {dir}/{ca}, admin token {dir}/admin.token, read-only token {dir}/readonly.token",
        dir = a.dir.display(),
        ca = tls::CA_CERT
    );
    Ok(ExitCode::SUCCESS)
}

fn parse_range(s: &str) -> anyhow::Result<std::ops::RangeInclusive<u16>> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("--node-port-range {s:?}: expected LOW-HIGH"))?;
    let (a, b): (u16, u16) = (a.trim().parse()?, b.trim().parse()?);
    if a == 0 || a > b {
        bail!("--node-port-range {s:?}: expected 1 <= LOW <= HIGH");
    }
    Ok(a..=b)
}

async fn serve_main(a: RunArgs) -> anyhow::Result<ExitCode> {
    crate::init_tracing();
    let store_spec = a
        .store
        .clone()
        .unwrap_or_else(|| format!("embedded:{}", a.dir.join("store.redb").display()));
    let tls_cfg = if a.insecure_http {
        tracing::warn!("serving plain HTTP: bearer tokens travel in clear text");
        None
    } else {
        Some(tls::server_config(&a.dir).map_err(|e| {
            anyhow::anyhow!(
                "{e} (run `trellis server init --dir {}` first, or pass --insecure-http)",
                a.dir.display()
            )
        })?)
    };
    if !a.dir.join(auth::TOKENS_FILE).exists() {
        bail!(
            "{}: no tokens (run `trellis server init --dir {}` first)",
            a.dir.join(auth::TOKENS_FILE).display(),
            a.dir.display()
        );
    }
    let store = trellis_server::open_store(&store_spec)
        .await
        .map_err(anyhow::Error::msg)?;
    let cfg = ServerConfig {
        service_cidr: a.service_cidr,
        node_port_range: parse_range(&a.node_port_range)?,
        node_lease_ttl: std::time::Duration::from_secs(a.node_lease_ttl),
        subnet_grace: std::time::Duration::from_secs(a.subnet_grace),
        ..ServerConfig::default()
    };
    let server = Arc::new(Server {
        store,
        tokens: Tokens::from_dir(&a.dir),
        cfg,
    });
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("listen on {}", a.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        store = %store_spec,
        tls = !a.insecure_http,
        "trellis server ready"
    );
    tokio::spawn(trellis_server::run_compactor(server.clone()));
    tokio::spawn(trellis_server::alloc::run_node_lifecycle(server.clone()));
    tokio::spawn(trellis_server::alloc::run_lb_allocator(server.clone()));
    serve::serve(listener, serve::router(server), tls_cfg).await?;
    Ok(ExitCode::SUCCESS)
}
