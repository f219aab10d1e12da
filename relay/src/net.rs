//! Sockets and addresses: `SO_REUSEPORT` UDP sockets (dual-stack where the
//! bind address allows it), raw sockaddr bytes to `SocketAddr` (safe
//! parsing), CPU pinning.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use anyhow::Context;
use nix::sys::socket::SockaddrStorage;
use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size we ask for (the kernel caps it at rmem_max/wmem_max).
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds one worker's UDP socket with `SO_REUSEPORT`. An unspecified IPv6
/// address binds dual-stack. The error names the address.
pub fn bind_udp(addr: SocketAddr) -> anyhow::Result<Socket> {
    bind_udp_with(addr, true)
}

/// Fails when another socket holds `addr` (port not 0), whether or not it
/// has `SO_REUSEPORT`. The workers' sockets share their port through
/// `SO_REUSEPORT`, which would also let them join the sockets of another
/// process of the same user on that port (another relay) and split the
/// traffic with it; a socket bound without it first finds out.
pub fn ensure_port_free(addr: SocketAddr) -> anyhow::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    match bind_udp_with(addr, false) {
        Ok(_probe) => Ok(()),
        Err(e)
            if e.root_cause()
                .downcast_ref::<std::io::Error>()
                .map(std::io::Error::kind)
                == Some(std::io::ErrorKind::AddrInUse) =>
        {
            anyhow::bail!("UDP {addr} is in use by another socket (another whelm-relay running?)")
        }
        Err(e) => Err(e),
    }
}

fn bind_udp_with(addr: SocketAddr, reuse_port: bool) -> anyhow::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .with_context(|| format!("creating UDP socket for {addr}"))?;
    if reuse_port {
        sock.set_reuse_port(true)
            .with_context(|| format!("SO_REUSEPORT on {addr}"))?;
    }
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

/// The IP socket address in a nix `SockaddrStorage` (as the kernel wrote it
/// for `recvmmsg`), with the same reading as [`parse_sockaddr`]: the flow
/// label in network order, the scope id native. `None` for other families.
pub fn from_sockaddr_storage(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        Some(SocketAddr::V4(SocketAddrV4::new(v4.ip(), v4.port())))
    } else {
        a.as_sockaddr_in6().map(|v6| {
            SocketAddr::V6(SocketAddrV6::new(
                v6.ip(),
                v6.port(),
                u32::from_be(v6.flowinfo()),
                v6.scope_id(),
            ))
        })
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
    pin_to_set(&[cpu])
}

/// Restricts the calling thread (and the threads it starts later) to `cpus`.
pub fn pin_to_set(cpus: &[usize]) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for &cpu in cpus {
        set.set(cpu)
            .with_context(|| format!("cpu {cpu} out of range"))?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("sched_setaffinity to cpus {cpus:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_roundtrip() {
        for s in [
            "127.0.0.1:57372",
            "[::1]:5001",
            "[::ffff:127.0.0.2]:1",
            "[fe80::1%3]:9",
        ] {
            let a: SocketAddr = s.parse().unwrap();
            // The engines' two paths from kernel sockaddr bytes: socket2's
            // storage (what the io_uring engine's parse sees) and nix's.
            let sa = socket2::SockAddr::from(a);
            assert_eq!(sa.as_socket(), Some(a));
            assert_eq!(from_sockaddr_storage(&SockaddrStorage::from(a)), Some(a));
        }
        assert_eq!(parse_sockaddr(&[1, 2]), None);
    }

    #[test]
    fn parse_sockaddr_layouts() {
        // sockaddr_in: family (native), port (network), address.
        let mut v4 = Vec::new();
        v4.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4.extend_from_slice(&57372u16.to_be_bytes());
        v4.extend_from_slice(&[127, 0, 0, 1]);
        v4.extend_from_slice(&[0; 8]);
        assert_eq!(
            parse_sockaddr(&v4),
            Some("127.0.0.1:57372".parse().unwrap())
        );
        // sockaddr_in6: family, port, flow (network), address, scope (native).
        let ip: Ipv6Addr = "fe80::1".parse().unwrap();
        let mut v6 = Vec::new();
        v6.extend_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6.extend_from_slice(&5001u16.to_be_bytes());
        v6.extend_from_slice(&0u32.to_be_bytes());
        v6.extend_from_slice(&ip.octets());
        v6.extend_from_slice(&3u32.to_ne_bytes());
        let a: SocketAddr = "[fe80::1%3]:5001".parse().unwrap();
        assert_eq!(parse_sockaddr(&v6), Some(a));
        assert_eq!(parse_sockaddr(&v6[..20]), None);
        assert_eq!(from_sockaddr_storage(&SockaddrStorage::from(a)), Some(a));
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
