//! The `trellis` command: `trellis agent` runs the node agent, `trellis server` the API
//! server, `trellis lab` manages network-namespace labs; `apply`, `get`, `delete`,
//! `watch`, `api-resources` and `config` are the API client. Thin: each subcommand calls into its crate.

/// mimalloc: the ingress allocates per request on every worker; glibc malloc cost about 9% of
/// its CPU in the benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod agent_cmd;
mod bgp_cmd;
mod cli_cmd;
mod cli_table;
mod ingress_cmd;
mod lab_cmd;
mod lab_echo_cmd;
mod lab_pod_cmd;
mod lab_tenants_cmd;
mod policy_cmd;
mod server_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "trellis", version, about = "Trellis container network fabric")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the node agent (IPAM, CNI socket, nftables).
    Agent(agent_cmd::AgentArgs),
    /// BGP sessions of the nodes: `status [NODE]`.
    #[command(subcommand)]
    Bgp(bgp_cmd::BgpCmd),
    /// The L7 HTTP(S) entry: Ingress and HTTPRoute objects, straight to pods.
    Ingress(ingress_cmd::IngressArgs),
    /// Network-namespace labs: `up`, `down`, `exec`, `status`.
    #[command(subcommand)]
    Lab(lab_cmd::LabCmd),
    /// Network policy answers from the server's objects: `explain POD`, `check SRC DST:PORT`.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCmd),
    /// The API server: `init`, `token`, `run`.
    #[command(subcommand)]
    Server(server_cmd::ServerCmd),
    /// The client: `apply`, `get`, `delete`, `watch`, `api-resources`, `config`.
    #[command(flatten)]
    Cli(cli_cmd::CliCmd),
}

/// Logs to stderr, filtered by `TRELLIS_LOG` (default `info`).
fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRELLIS_LOG")
                // hickory-server logs every DNS query at info
                .unwrap_or_else(|_| "info,hickory_server=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Agent(a) => agent_cmd::run(a),
        Cmd::Bgp(c) => bgp_cmd::run(c),
        Cmd::Ingress(a) => ingress_cmd::run(a),
        Cmd::Lab(l) => lab_cmd::run(l),
        Cmd::Policy(c) => policy_cmd::run(c),
        Cmd::Server(c) => server_cmd::run(c),
        Cmd::Cli(c) => cli_cmd::run(c),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
