//! Upgrading the binary without refusing a connection: the running proxy serves a unix
//! socket; a new proxy started with the same `--handover` path connects to it and
//! receives the listening sockets themselves (`SCM_RIGHTS`), starts accepting on them,
//! and says so; only then does the old proxy stop accepting and drain. The listening
//! sockets never close, so no connection attempt meets a closed port.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Handover errors.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// A socket call failed.
    #[error("handover socket: {0}")]
    Io(#[from] std::io::Error),
    /// Passing descriptors failed.
    #[error("passing the listening sockets: {0}")]
    Sys(#[from] nix::Error),
    /// The other side said something else.
    #[error("handover: {0}")]
    Protocol(String),
}

/// Ask the proxy serving `path` for its listening sockets (`None` when no proxy
/// answers there). The old proxy keeps accepting until [`Taken::ready`].
pub fn take(path: &Path) -> Result<Option<Taken>, HandoverError> {
    let mut s = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    };
    s.write_all(b"TAKE\n")?;
    let mut names = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut names)];
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(v) = c {
            // SAFETY: the kernel just gave us these descriptors; nothing else owns them.
            fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let n = msg.bytes;
    let text = String::from_utf8_lossy(&names[..n]).to_string();
    let labels: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    if labels.len() != fds.len() {
        return Err(HandoverError::Protocol(format!(
            "got {} sockets for labels {labels:?}",
            fds.len()
        )));
    }
    Ok(Some(Taken {
        stream: s,
        sockets: labels.into_iter().zip(fds).collect(),
    }))
}

/// Listening sockets taken over from the old proxy.
#[derive(Debug)]
pub struct Taken {
    stream: UnixStream,
    /// `http` / `https` → the listening socket.
    pub sockets: Vec<(String, OwnedFd)>,
}

impl Taken {
    /// Tell the old proxy we accept now (it stops accepting and drains).
    pub fn ready(mut self) -> Result<(), HandoverError> {
        self.stream.write_all(b"READY\n")?;
        let mut buf = [0u8; 8];
        let _ = self.stream.read(&mut buf);
        Ok(())
    }
}

/// Serve handovers at `path` (replacing a stale socket file) for the listening sockets
/// `sockets`; returns when a new proxy said READY.
pub fn serve(path: &Path, sockets: &[(String, RawFd)]) -> Result<(), HandoverError> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    loop {
        let (mut s, _) = l.accept()?;
        let mut line = [0u8; 5];
        if s.read_exact(&mut line).is_err() || &line != b"TAKE\n" {
            continue;
        }
        let names: String = sockets.iter().map(|(n, _)| format!("{n} ")).collect();
        let fds: Vec<RawFd> = sockets.iter().map(|(_, fd)| *fd).collect();
        sendmsg::<()>(
            s.as_raw_fd(),
            &[IoSlice::new(names.as_bytes())],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )?;
        let mut ready = [0u8; 6];
        if s.read_exact(&mut ready).is_ok() && &ready == b"READY\n" {
            let _ = s.write_all(b"BYE\n");
            // The new proxy serves the path from now on; it removes and binds it itself.
            return Ok(());
        }
    }
}
