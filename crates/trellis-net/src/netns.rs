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

    /// The namespace kept at `path`, created there first when `path` does not hold one
    /// yet: a new, empty network namespace, bind-mounted on `path` (as `ip netns add`
    /// does) so it outlives this process. The parent directory must exist.
    pub fn create_persistent(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Ok(ns) = Netns::open(&path) {
            return Ok(ns);
        }
        let err = |source: std::io::Error| NetError::Netns {
            path: path.display().to_string(),
            source,
        };
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(err)?;
        // A thread of its own enters the new namespace and ends there: the calling
        // thread never leaves its namespace.
        let target = path.clone();
        let made = std::thread::spawn(move || -> std::io::Result<()> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
            let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
            nix::mount::mount(
                Some(own.as_str()),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })
        .join()
        .map_err(|_| err(std::io::Error::other("namespace thread panicked")))?;
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(err(e));
        }
        Netns::open(&path)
    }

    /// Remove a namespace [`Netns::create_persistent`] made: unmount and delete `path`.
    /// The namespace itself goes once nothing else holds it. Absent is fine.
    pub fn remove_persistent(path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if !path.exists() {
            return Ok(());
        }
        match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {} // EINVAL: not mounted
            Err(e) => {
                return Err(NetError::Netns {
                    path: path.display().to_string(),
                    source: e.into(),
                })
            }
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NetError::Netns {
                path: path.display().to_string(),
                source: e,
            }),
            _ => Ok(()),
        }
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

    /// Run `f` inside `ns` (see [`Netns::run`]), or right here when it is `None`.
    pub fn run_in<T>(ns: Option<&Netns>, f: impl FnOnce() -> T) -> Result<T> {
        match ns {
            None => Ok(f()),
            Some(ns) => ns.run(f),
        }
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
