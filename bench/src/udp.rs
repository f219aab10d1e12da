//! UDP sockets for load and batched syscalls (`recvmmsg`/`sendmmsg` through
//! nix's wrappers, no `unsafe` here).
//!
//! A load socket is non-blocking, has large buffers, and asks the kernel for
//! receive timestamps (`SO_TIMESTAMPNS`, CLOCK_REALTIME, taken when the
//! packet entered the receiving socket's stack: on loopback, right when the
//! process under test sent it) and for its drop counter (`SO_RXQ_OVFL`: a
//! packet the bench's own socket dropped is the bench's fault, never the
//! relay's).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrIn, SockaddrStorage, recvmmsg, sendmmsg,
    setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;

/// Socket buffer size asked for (the kernel may cap it at rmem_max/wmem_max
/// unless the process may force it).
pub const SOCKET_BUFFER: usize = 8 << 20;

/// A bound load socket and what the kernel agreed to.
#[derive(Debug)]
pub struct LoadSocket {
    /// The socket (non-blocking).
    pub sock: UdpSocket,
    /// Its bound address.
    pub addr: SocketAddrV4,
    /// `SO_TIMESTAMPNS` accepted.
    pub kernel_ts: bool,
    /// `SO_RXQ_OVFL` accepted.
    pub drop_counter: bool,
}

/// Binds a load socket on an IPv4 address.
pub fn load_socket(bind: SocketAddrV4) -> io::Result<LoadSocket> {
    let sock = UdpSocket::bind(bind)?;
    sock.set_nonblocking(true)?;
    let addr = match sock.local_addr()? {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => return Err(io::Error::other("bound an IPv6 address")),
    };
    if setsockopt(&sock, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(&sock, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(&sock, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(&sock, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    let kernel_ts = setsockopt(&sock, sockopt::ReceiveTimestampns, &true).is_ok();
    let drop_counter = setsockopt(&sock, sockopt::RxqOvfl, &1).is_ok();
    Ok(LoadSocket {
        sock,
        addr,
        kernel_ts,
        drop_counter,
    })
}

/// A plain socket with large buffers (the baseline forwarder's), blocking
/// with a read timeout so its loop can check for shutdown.
pub fn forwarder_socket(bind: SocketAddrV4, timeout: std::time::Duration) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(timeout))?;
    if setsockopt(&sock, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(&sock, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(&sock, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(&sock, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    Ok(sock)
}

/// What one received datagram came with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes received (truncated to the buffer length).
    pub len: usize,
    /// Kernel receive time, CLOCK_REALTIME ns.
    pub kernel_real_ns: Option<u64>,
    /// The socket's cumulative drop counter at this packet.
    pub drops: Option<u32>,
    /// Source address.
    pub from: Option<SocketAddrV4>,
}

/// Fixed receive batch: buffers and headers allocated once.
#[derive(Debug)]
pub struct RecvBatch {
    hdrs: MultiHeaders<SockaddrStorage>,
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
}

impl RecvBatch {
    /// `batch` buffers of `buf_len` bytes each.
    pub fn new(batch: usize, buf_len: usize) -> RecvBatch {
        let cmsg = nix::cmsg_space!(TimeSpec, u32);
        RecvBatch {
            hdrs: MultiHeaders::preallocate(batch, Some(cmsg)),
            bufs: vec![vec![0u8; buf_len]; batch],
            meta: Vec::with_capacity(batch),
        }
    }

    /// One non-blocking `recvmmsg`. Returns how many datagrams arrived
    /// (0 when none was waiting).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_flags(fd, MsgFlags::MSG_DONTWAIT)
    }

    /// One `recvmmsg` on a blocking socket that waits for the first datagram
    /// (up to the socket's `SO_RCVTIMEO`) and takes what else is queued.
    pub fn recv_wait(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_flags(fd, MsgFlags::MSG_WAITFORONE)
    }

    fn recv_flags(&mut self, fd: RawFd, flags: MsgFlags) -> io::Result<usize> {
        self.meta.clear();
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
            .bufs
            .iter_mut()
            .map(|b| [IoSliceMut::new(b.as_mut_slice())])
            .collect();
        let res = match recvmmsg(fd, &mut self.hdrs, iovs.iter_mut(), flags, None) {
            Ok(r) => r,
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return Ok(0),
            Err(e) => return Err(io::Error::from(e)),
        };
        for m in res {
            let mut meta = RecvMeta {
                len: m.bytes,
                from: m.address.and_then(|a: SockaddrStorage| {
                    a.as_sockaddr_in().map(|s| SocketAddrV4::from(*s))
                }),
                ..RecvMeta::default()
            };
            if let Ok(cmsgs) = m.cmsgs() {
                for c in cmsgs {
                    match c {
                        ControlMessageOwned::ScmTimestampns(t) => {
                            meta.kernel_real_ns = Some(
                                (t.tv_sec() as u64)
                                    .saturating_mul(1_000_000_000)
                                    .saturating_add(t.tv_nsec() as u64),
                            )
                        }
                        ControlMessageOwned::RxqOvfl(d) => meta.drops = Some(d),
                        _ => {}
                    }
                }
            }
            self.meta.push(meta);
        }
        Ok(self.meta.len())
    }

    /// Datagram `i` of the last `recv`.
    pub fn get(&self, i: usize) -> Option<(&[u8], &RecvMeta)> {
        let m = self.meta.get(i)?;
        let b = self.bufs.get(i)?;
        Some((&b[..m.len.min(b.len())], m))
    }
}

/// Reusable `sendmmsg` headers.
#[derive(Debug)]
pub struct SendHeaders {
    hdrs: MultiHeaders<SockaddrIn>,
    addrs: Vec<Option<SockaddrIn>>,
    cap: usize,
}

impl SendHeaders {
    /// Headers for up to `batch` datagrams per call.
    pub fn new(batch: usize) -> SendHeaders {
        SendHeaders {
            hdrs: MultiHeaders::preallocate(batch, None),
            addrs: Vec::with_capacity(batch),
            cap: batch,
        }
    }

    /// Most datagrams per call.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// One non-blocking `sendmmsg` of up to `capacity()` datagrams. Returns
    /// how many the kernel took (0 when the socket buffer is full).
    pub fn send(&mut self, fd: RawFd, msgs: &[(&[u8], SocketAddrV4)]) -> io::Result<usize> {
        let msgs = &msgs[..msgs.len().min(self.cap)];
        if msgs.is_empty() {
            return Ok(0);
        }
        self.addrs.clear();
        self.addrs
            .extend(msgs.iter().map(|(_, a)| Some(SockaddrIn::from(*a))));
        let iovs: Vec<[IoSlice<'_>; 1]> = msgs.iter().map(|(b, _)| [IoSlice::new(b)]).collect();
        match sendmmsg(
            fd,
            &mut self.hdrs,
            &iovs,
            &self.addrs,
            [],
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(r) => Ok(r.count()),
            Err(Errno::EAGAIN) | Err(Errno::EINTR) | Err(Errno::ENOBUFS) => Ok(0),
            Err(e) => Err(io::Error::from(e)),
        }
    }
}

/// The raw descriptor of a socket (for the batch calls).
pub fn fd(s: &UdpSocket) -> RawFd {
    s.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn batch_round_trip_with_kernel_timestamps() {
        let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let a = load_socket(lo).unwrap();
        let b = load_socket(lo).unwrap();
        let mut sh = SendHeaders::new(8);
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let msgs: Vec<(&[u8], SocketAddrV4)> =
            payloads.iter().map(|p| (p.as_slice(), b.addr)).collect();
        assert_eq!(sh.send(fd(&a.sock), &msgs).unwrap(), 5);
        let mut rb = RecvBatch::new(8, 2048);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < 5 && std::time::Instant::now() < deadline {
            let n = rb.recv(fd(&b.sock)).unwrap();
            for i in 0..n {
                let (bytes, m) = rb.get(i).unwrap();
                assert_eq!(m.from, Some(a.addr));
                if b.kernel_ts {
                    assert!(m.kernel_real_ns.is_some());
                }
                got.push(bytes.to_vec());
            }
        }
        assert_eq!(got, payloads);
        assert_eq!(rb.recv(fd(&b.sock)).unwrap(), 0);
    }
}
