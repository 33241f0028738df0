//! The `trellis` command: `trellis agent` runs the node agent, `trellis lab` manages
//! network-namespace labs. Thin: each subcommand calls into its crate.

mod agent_cmd;
mod lab_cmd;

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
    /// Network-namespace labs: `up`, `down`, `exec`, `status`.
    #[command(subcommand)]
    Lab(lab_cmd::LabCmd),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Agent(a) => agent_cmd::run(a),
        Cmd::Lab(l) => lab_cmd::run(l),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
