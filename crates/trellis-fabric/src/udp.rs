//! The `udp` backend's packet pump: TUN device <-> UDP socket, in userspace.
