//! Talks to the node agent over its unix socket (protocol: `trellis_api::agent`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use trellis_api::agent::{codes, Op, Request, Response};

use crate::error::CniError;

/// Why the agent could not answer.
#[derive(Debug)]
pub enum CallError {
    /// Nobody listens on the socket (agent not running): worth retrying later.
    Unreachable(String),
    /// The agent answered with an error.
    Agent(CniError),
}

impl From<CallError> for CniError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unreachable(m) => CniError::new(codes::TRY_AGAIN, m),
            CallError::Agent(e) => e,
        }
    }
}

/// Send one request about `network` (`None`: the agent's first) and wait for the
/// answer. Errors from the agent keep its code.
pub fn call(socket: &str, network: Option<&str>, op: Op) -> Result<Response, CallError> {
    let unreachable = |e: std::io::Error| {
        CallError::Unreachable(format!(
            "the Trellis agent is not reachable at {socket}: {e} (is `trellis agent` running on this node?)"
        ))
    };
    let mut s = UnixStream::connect(socket).map_err(unreachable)?;
    // ADDs are serialised in the agent; leave room for a burst of them.
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(unreachable)?;
    let mut line = Request::new(op)
        .for_network(network.map(str::to_string))
        .to_line();
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut resp = String::new();
    BufReader::new(&s)
        .read_line(&mut resp)
        .map_err(unreachable)?;
    if resp.is_empty() {
        return Err(CallError::Unreachable(format!(
            "the Trellis agent at {socket} closed the connection without answering"
        )));
    }
    match serde_json::from_str::<Response>(&resp) {
        Ok(Response::Error(e)) => Err(CallError::Agent(CniError::new(e.code, e.msg))),
        Ok(r) => Ok(r),
        Err(e) => Err(CallError::Agent(CniError::new(
            codes::DECODE,
            format!("undecodable answer from the agent at {socket}: {e}"),
        ))),
    }
}
