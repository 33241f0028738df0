//! TCP MD5 signatures (RFC 2385), BGP's session passwords: a key per peer address on a
//! socket (`TCP_MD5SIG`). On a listener, the key covers the connections accepted from
//! that address; on a connecting socket, the connection itself.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

/// The longest key the kernel takes.
pub const MAX_KEY_LEN: usize = 80;

/// `struct tcp_md5sig` of `<linux/tcp.h>`.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; MAX_KEY_LEN],
}

/// Set (`Some`) or remove (`None`) the key for `peer` on socket `fd`.
pub fn set_key(fd: RawFd, peer: Ipv4Addr, key: Option<&[u8]>) -> io::Result<()> {
    let key = key.unwrap_or_default();
    if key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a TCP MD5 password is at most {MAX_KEY_LEN} bytes, this one {}",
                key.len()
            ),
        ));
    }
    // SAFETY: an all-zero tcp_md5sig is valid (plain integers and byte arrays).
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    // SAFETY: sockaddr_storage is large enough and suitably aligned for a sockaddr_in.
    let sin =
        unsafe { &mut *(&mut sig.addr as *mut libc::sockaddr_storage as *mut libc::sockaddr_in) };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_addr.s_addr = u32::from(peer).to_be();
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: fd is a socket the caller owns; sig lives across the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            &sig as *const TcpMd5Sig as *const libc::c_void,
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // Removing a key that is not there.
    if key.is_empty() && e.raw_os_error() == Some(libc::ENOENT) {
        return Ok(());
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn keys_are_set_and_removed_on_a_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = Ipv4Addr::new(127, 0, 0, 2);
        set_key(l.as_raw_fd(), peer, Some(b"secret")).unwrap();
        set_key(l.as_raw_fd(), peer, None).unwrap();
        set_key(l.as_raw_fd(), peer, None).unwrap();
        let long = [b'x'; MAX_KEY_LEN + 1];
        let e = set_key(l.as_raw_fd(), peer, Some(&long)).unwrap_err();
        assert!(e.to_string().contains("at most 80"), "{e}");
    }
}
