//! Network namespaces: open one by path and run code inside it on the current thread.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::{NetError, Result};

/// An open network namespace (an fd on `/proc/.../ns/net` or a bind mount of one).
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Open the namespace at `path` (e.g. `/run/netns/x` or `/proc/123/ns/net`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| NetError::Netns {
            path: path.display().to_string(),
            source,
        })?;
        // Make sure it really is a network namespace: entering anything else must fail
        // here rather than half-way through an operation.
        let st = nix::sys::statfs::fstatfs(file.as_fd()).map_err(|e| NetError::Netns {
            path: path.display().to_string(),
            source: e.into(),
        })?;
        let nsfs = nix::sys::statfs::NSFS_MAGIC;
        let procfs = nix::sys::statfs::PROC_SUPER_MAGIC;
        if st.filesystem_type() != nsfs && st.filesystem_type() != procfs {
            return Err(NetError::Netns {
                path: path.display().to_string(),
                source: std::io::Error::other("not a network namespace file"),
            });
        }
        Ok(Netns { file, path })
    }

    /// The namespace the calling thread is in now.
    pub fn current() -> Result<Self> {
        Self::open(format!("/proc/self/task/{}/ns/net", nix::unistd::gettid()))
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw fd, e.g. for `IFLA_NET_NS_FD`.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Switch the calling thread into this namespace until the guard drops.
    pub fn enter(&self) -> Result<NetnsGuard> {
        let back = Netns::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Netns {
            path: self.path.display().to_string(),
            source: e.into(),
        })?;
        Ok(NetnsGuard { back })
    }

    /// Run `f` on the calling thread inside this namespace, then switch back.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let _guard = self.enter()?;
        Ok(f())
    }
}

/// Returns the thread to its previous namespace on drop.
#[derive(Debug)]
pub struct NetnsGuard {
    back: Netns,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Failing to return would leave this thread in a foreign namespace, and every
        // later kernel call on it would act there: abort rather than continue.
        if let Err(e) = setns(self.back.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            eprintln!(
                "trellis-net: cannot return to network namespace {}: {e}",
                self.back.path.display()
            );
            std::process::abort();
        }
    }
}
