//! Sends Ethernet/IPv4/UDP frames of a fixed size out of one interface at a fixed rate,
//! for measuring live capture (`benches/live_capture.sh`).
//!
//! ```text
//! udp_blast --interface IF --dst-mac MAC --src IP --dst IP --rate PPS --seconds S
//!           [--frame-bytes 64] [--flows 64] [--dst-port 9] [--batch 32]
//! ```
//!
//! Frames are written with an `AF_PACKET` socket bound to the interface, in batches of
//! `--batch` per `sendmmsg(2)` call, bypassing the qdisc. `--flows` source ports (10000,
//! 10001, …) take turns. The pace is kept against the clock: after each batch the sender
//! waits until the time the frames sent so far were due. At the end one line is printed:
//! `sent=N seconds=S rate=PPS errors=E`.

#![allow(unsafe_code)]

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The options.
#[derive(Debug)]
struct Options {
    interface: String,
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    rate: u64,
    seconds: f64,
    frame_bytes: usize,
    flows: u16,
    dst_port: u16,
    batch: usize,
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn parse_options() -> Result<Options, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let need = |name: &str| get(name).ok_or_else(|| format!("{name} is required"));
    fn num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
        v.parse()
            .map_err(|_| format!("{name}: '{v}' is not a number"))
    }
    let options = Options {
        interface: need("--interface")?.to_owned(),
        dst_mac: parse_mac(need("--dst-mac")?).ok_or("--dst-mac: not a MAC address")?,
        src: num("--src", need("--src")?)?,
        dst: num("--dst", need("--dst")?)?,
        rate: num("--rate", need("--rate")?)?,
        seconds: num("--seconds", need("--seconds")?)?,
        frame_bytes: num("--frame-bytes", get("--frame-bytes").unwrap_or("64"))?,
        flows: num("--flows", get("--flows").unwrap_or("64"))?,
        dst_port: num("--dst-port", get("--dst-port").unwrap_or("9"))?,
        batch: num("--batch", get("--batch").unwrap_or("32"))?,
    };
    if options.frame_bytes < 42 || options.frame_bytes > 1514 {
        return Err("--frame-bytes must be between 42 and 1514".into());
    }
    if options.rate == 0 || options.flows == 0 || options.batch == 0 || options.seconds <= 0.0 {
        return Err("--rate, --flows, --batch and --seconds must be positive".into());
    }
    Ok(options)
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One frame: Ethernet, IPv4 (no options), UDP (no checksum), zero payload.
fn frame(o: &Options, src_mac: [u8; 6], src_port: u16) -> Vec<u8> {
    let ip_len = o.frame_bytes - 14;
    let mut f = Vec::with_capacity(o.frame_bytes);
    f.extend_from_slice(&o.dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&o.src.octets());
    ip[16..20].copy_from_slice(&o.dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&o.dst_port.to_be_bytes());
    f.extend_from_slice(&((ip_len - 20) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(o.frame_bytes, 0);
    f
}

fn interface_mac(name: &str) -> Result<[u8; 6], String> {
    let path = format!("/sys/class/net/{name}/address");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_mac(text.trim()).ok_or_else(|| format!("{path}: not a MAC address"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An `AF_PACKET` socket bound to `interface` that bypasses the qdisc.
fn open(interface: &str) -> Result<OwnedFd, String> {
    let name = std::ffi::CString::new(interface).map_err(|_| "bad interface name")?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(format!("no interface {interface}"));
    }
    // SAFETY: socket(2) with constant arguments; no memory is passed.
    let fd =
        check(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })
            .map_err(|e| format!("socket: {e}"))?;
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: passes a pointer to a live `c_int` and its size; the kernel only reads it.
    check(unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map_err(|e| format!("PACKET_QDISC_BYPASS: {e}"))?;
    let address = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as libc::c_ushort,
        // Protocol 0: the socket only sends, it receives nothing.
        sll_protocol: 0,
        sll_ifindex: index as libc::c_int,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    };
    // SAFETY: passes a pointer to a live `sockaddr_ll` and its size; the kernel only reads
    // it.
    check(unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const address).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })
    .map_err(|e| format!("bind to {interface}: {e}"))?;
    Ok(socket)
}

fn main() -> ExitCode {
    let o = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(64);
        }
    };
    let (socket, src_mac) =
        match open(&o.interface).and_then(|s| Ok((s, interface_mac(&o.interface)?))) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
    let frames: Vec<Vec<u8>> = (0..o.flows)
        .map(|i| frame(&o, src_mac, 10_000u16.wrapping_add(i)))
        .collect();
    // One batch of message headers per flow offset, built once: batch k starts at frame
    // (k * batch) % flows.
    let mut iovecs: Vec<libc::iovec> = (0..o.batch + frames.len())
        .map(|i| libc::iovec {
            iov_base: frames[i % frames.len()].as_ptr() as *mut libc::c_void,
            iov_len: o.frame_bytes,
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = (0..o.batch + frames.len())
        .map(|i| {
            // SAFETY: all-zero is a valid `msghdr` (null pointers, zero lengths).
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &raw mut iovecs[i];
            msg.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: msg,
                msg_len: 0,
            }
        })
        .collect();
    let total = (o.rate as f64 * o.seconds) as u64;
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut errors: u64 = 0;
    let mut offset = 0usize;
    while sent < total {
        let n = usize::try_from(total - sent)
            .unwrap_or(usize::MAX)
            .min(o.batch);
        // SAFETY: `headers[offset..offset + n]` are initialised `mmsghdr`s whose iovecs
        // point into `frames`, which outlives the call; the kernel reads them and writes
        // only `msg_len`.
        let ret = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers[offset..].as_mut_ptr(),
                n as libc::c_uint,
                0,
            )
        };
        if ret < 0 {
            errors += 1;
            let e = io::Error::last_os_error();
            if errors > 1_000_000 {
                eprintln!("error: sendmmsg keeps failing: {e}");
                return ExitCode::FAILURE;
            }
            continue;
        }
        let done = ret as u64;
        sent += done;
        offset = (offset + done as usize) % frames.len();
        // Keep the pace: wait until the frames sent so far were due.
        let due = started + Duration::from_secs_f64(sent as f64 / o.rate as f64);
        loop {
            let now = Instant::now();
            if now >= due {
                break;
            }
            let ahead = due - now;
            if ahead > Duration::from_micros(200) {
                std::thread::sleep(ahead - Duration::from_micros(100));
            } else {
                std::hint::spin_loop();
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "sent={sent} seconds={seconds:.3} rate={:.0} errors={errors}",
        sent as f64 / seconds
    );
    ExitCode::SUCCESS
}
