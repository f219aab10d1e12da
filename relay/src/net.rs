//! Sockets and addresses: `SO_REUSEPORT` UDP sockets (dual-stack where the
//! bind address allows it), raw sockaddr bytes to `SocketAddr` (safe
//! parsing), CPU pinning.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size we ask for (the kernel caps it at rmem_max/wmem_max).
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds one worker's UDP socket with `SO_REUSEPORT`. An unspecified IPv6
/// address binds dual-stack. The error names the address.
pub fn bind_udp(addr: SocketAddr) -> anyhow::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .with_context(|| format!("creating UDP socket for {addr}"))?;
    sock.set_reuse_port(true)
        .with_context(|| format!("SO_REUSEPORT on {addr}"))?;
    if let IpAddr::V6(ip) = addr.ip()
        && ip.is_unspecified()
    {
        sock.set_only_v6(false)
            .with_context(|| format!("dual-stack (IPV6_V6ONLY off) on {addr}"))?;
    }
    // Best effort: a small buffer only costs drops under bursts.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    sock.bind(&addr.into())
        .with_context(|| format!("binding UDP {addr}"))?;
    Ok(sock)
}

/// The port a socket is bound to.
pub fn local_addr(sock: &Socket) -> anyhow::Result<SocketAddr> {
    sock.local_addr()
        .context("reading bound address")?
        .as_socket()
        .context("bound address is not an IP socket address")
}

/// Parses the sockaddr bytes the kernel wrote (`sockaddr_in` or
/// `sockaddr_in6`, native-endian family, network-order port and address).
pub fn parse_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*b.first()?, *b.get(1)?]);
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    if i32::from(family) == libc::AF_INET {
        let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
        Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
    } else if i32::from(family) == libc::AF_INET6 {
        let flow = u32::from_be_bytes(b.get(4..8)?.try_into().ok()?);
        let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
        let scope = u32::from_ne_bytes(b.get(24..28)?.try_into().ok()?);
        Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            flow,
            scope,
        )))
    } else {
        None
    }
}

/// An address in the family of a socket: IPv4 destinations become
/// v4-mapped when the socket is IPv6 (dual-stack).
pub fn for_socket(addr: SocketAddr, socket_is_v6: bool) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if socket_is_v6 => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        _ => addr,
    }
}

/// An address for logs: v4-mapped IPv6 shown as IPv4.
pub fn display_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Pins the calling thread to one CPU.
pub fn pin_to(cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .with_context(|| format!("cpu {cpu} out of range"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("sched_setaffinity to cpu {cpu}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_roundtrip() {
        for s in ["127.0.0.1:57372", "[::1]:5001", "[::ffff:127.0.0.2]:1"] {
            let a: SocketAddr = s.parse().unwrap();
            let sa = socket2::SockAddr::from(a);
            // SAFETY (test): SockAddr's storage is valid for len() bytes.
            let bytes =
                unsafe { std::slice::from_raw_parts(sa.as_ptr().cast::<u8>(), sa.len() as usize) };
            assert_eq!(parse_sockaddr(bytes), Some(a));
        }
        assert_eq!(parse_sockaddr(&[1, 2]), None);
    }

    #[test]
    fn mapped() {
        let a: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let m = for_socket(a, true);
        assert_eq!(m.to_string(), "[::ffff:127.0.0.1]:5");
        assert_eq!(display_addr(m), a);
        assert_eq!(for_socket(a, false), a);
    }
}
