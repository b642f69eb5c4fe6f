//! Packet sockets: the few socket calls pnet does not make (open, receive buffer, fanout,
//! `PACKET_STATISTICS`).

use super::*;

/// The few socket calls pnet does not make. Each function documents what it passes to
/// the kernel; the descriptors come from [`open_packet_socket`] and are owned by pnet's
/// receiver while in use.
#[allow(unsafe_code)]
pub(super) mod sys {
    use std::io;
    use std::mem;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    pub(super) fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
        if ret == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    pub(super) fn socklen<T>() -> libc::socklen_t {
        libc::socklen_t::try_from(mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
    }

    pub(super) fn set_int(
        fd: RawFd,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: passes a pointer to a live `c_int` and its exact size; the kernel only
        // reads it.
        check(unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&raw const value).cast::<libc::c_void>(),
                socklen::<libc::c_int>(),
            )
        })
        .map(drop)
    }

    pub(super) fn get_int(
        fd: RawFd,
        level: libc::c_int,
        name: libc::c_int,
    ) -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = socklen::<libc::c_int>();
        // SAFETY: passes a pointer to a live `c_int` with its size in `len`; the kernel
        // writes at most `len` bytes and updates `len`.
        check(unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&raw mut value).cast::<libc::c_void>(),
                &raw mut len,
            )
        })?;
        Ok(value)
    }

    /// Opens an `AF_PACKET` raw socket that receives every protocol on interface
    /// `ifindex` only, with a receive buffer of about `buffer_bytes` (forced past
    /// `net.core.rmem_max` when the process has CAP_NET_ADMIN). Returns the socket and the
    /// kernel's actual buffer size.
    pub fn open_packet_socket(ifindex: u32, buffer_bytes: usize) -> io::Result<(OwnedFd, usize)> {
        // Protocol 0: the socket receives nothing until it is bound to the interface
        // below (created with ETH_P_ALL it would see every interface's traffic until then).
        // SAFETY: socket(2) with constant arguments; no memory is passed.
        let fd = check(unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0)
        })?;
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = socket.as_raw_fd();
        let size = libc::c_int::try_from(buffer_bytes).unwrap_or(libc::c_int::MAX);
        if set_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
            set_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, size)?;
        }
        let index = libc::c_int::try_from(ifindex)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let address = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as libc::c_ushort,
            sll_protocol: (libc::ETH_P_ALL as u16).to_be(),
            sll_ifindex: index,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: passes a pointer to a live `sockaddr_ll` and its exact size; the kernel
        // only reads it.
        check(unsafe {
            libc::bind(
                raw,
                (&raw const address).cast::<libc::sockaddr>(),
                socklen::<libc::sockaddr_ll>(),
            )
        })?;
        let actual = get_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
        Ok((socket, usize::try_from(actual).unwrap_or(0)))
    }

    /// Puts socket `fd` into a `PACKET_FANOUT_HASH` group: a new group with an id chosen
    /// by the kernel when `group` is `None`, else the given one. Returns the group id.
    pub fn join_fanout(fd: RawFd, group: Option<u16>) -> io::Result<u16> {
        let hash = libc::PACKET_FANOUT_HASH;
        let arg = match group {
            None => (hash | libc::PACKET_FANOUT_FLAG_UNIQUEID) << 16,
            Some(id) => (hash << 16) | u32::from(id),
        };
        set_int(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_FANOUT,
            libc::c_int::from_ne_bytes(arg.to_ne_bytes()),
        )?;
        // The kernel answers `id | type << 16 | flags << 24`.
        let value = get_int(fd, libc::SOL_PACKET, libc::PACKET_FANOUT)?;
        u16::try_from(value & 0xffff).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
    }

    /// Returns the packets the kernel queued on socket `fd` and those it dropped (buffer
    /// full) since the previous call (`PACKET_STATISTICS` resets on read).
    pub fn take_stats(fd: RawFd) -> io::Result<(u64, u64)> {
        let mut stats = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = socklen::<libc::tpacket_stats>();
        // SAFETY: passes a pointer to a live `tpacket_stats` with its size in `len`; the
        // kernel writes at most `len` bytes.
        check(unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut stats).cast::<libc::c_void>(),
                &raw mut len,
            )
        })?;
        // The kernel reports `tp_packets` with the drops included.
        let drops = u64::from(stats.tp_drops);
        Ok((u64::from(stats.tp_packets).saturating_sub(drops), drops))
    }

    /// Returns and clears the pending error of socket `fd` (0: none).
    pub fn take_error(fd: RawFd) -> io::Result<i32> {
        get_int(fd, libc::SOL_SOCKET, libc::SO_ERROR)
    }

    /// Returns the interface index socket `fd` is bound to; the kernel sets it to -1 when
    /// the interface is unregistered.
    pub fn bound_ifindex(fd: RawFd) -> io::Result<i32> {
        let mut address = libc::sockaddr_ll {
            sll_family: 0,
            sll_protocol: 0,
            sll_ifindex: 0,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        let mut len = socklen::<libc::sockaddr_ll>();
        // SAFETY: passes a pointer to a live `sockaddr_ll` with its size in `len`; the
        // kernel writes at most `len` bytes.
        check(unsafe {
            libc::getsockname(
                fd,
                (&raw mut address).cast::<libc::sockaddr>(),
                &raw mut len,
            )
        })?;
        Ok(address.sll_ifindex)
    }
}

/// A packet socket read through pnet.
pub(super) struct CaptureSocket {
    pub(super) rx: Box<dyn DataLinkReceiver>,
    /// The socket `rx` reads: owned (and closed) by `rx`, so only used while `rx` lives.
    pub(super) fd: RawFd,
    /// The kernel's receive buffer size.
    pub(super) buffer_bytes: usize,
}

pub(super) fn open_capture_socket(
    iface: &NetworkInterface,
    capture: &CaptureSettings,
) -> Result<CaptureSocket, CaptureError> {
    let open_error = |source| CaptureError::Open {
        interface: iface.name.clone(),
        source,
    };
    let (socket, buffer_bytes) =
        sys::open_packet_socket(iface.index, capture.socket_buffer_bytes).map_err(open_error)?;
    // From here pnet owns the descriptor: it closes it on its own errors and when the
    // receiver is dropped.
    let fd = socket.into_raw_fd();
    let config = Config {
        read_timeout: Some(READ_TIMEOUT),
        read_buffer_size: READ_BUFFER_BYTES,
        promiscuous: capture.promiscuous,
        socket_fd: Some(fd),
        ..Config::default()
    };
    match pnet_datalink::channel(iface, config) {
        Ok(Channel::Ethernet(_tx, rx)) => Ok(CaptureSocket {
            rx,
            fd,
            buffer_bytes,
        }),
        Ok(_) => Err(CaptureError::NotEthernet(iface.name.clone())),
        Err(source) => Err(open_error(source)),
    }
}
