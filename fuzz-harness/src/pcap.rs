//! `pcap`: the agent's pcap / pcapng reader, as `--replay` uses it.

use std::io::Write;

use flowlog_agent::decode;
use flowlog_agent::pcap::PcapPackets;

/// Most packets read from one input.
const MAX_PACKETS: usize = 100_000;

/// Writes `data` to a file, opens it with [`PcapPackets::open`] and reads every packet,
/// decoding each frame whose link type is supported. Checks that the reader ends after
/// its first error (one that skips a single packet excepted), that packets never hold more bytes than the file, that errors carry a
/// message naming the file, and that decoded packets are sane.
pub fn pcap(data: &[u8]) {
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if file.write_all(data).and_then(|()| file.flush()).is_err() {
        return;
    }
    let path = file.path();
    let mut packets = match PcapPackets::open(path) {
        Ok(packets) => packets,
        Err(e) => {
            check_error(&e, path);
            return;
        }
    };
    for _ in 0..MAX_PACKETS {
        match packets.next_ref() {
            None => break,
            Some(Ok(packet)) => {
                assert!(packet.data.len() <= data.len());
                if let Some(link) = packet.link
                    && let Ok(meta) = decode::decode_frame(link, packet.data)
                {
                    crate::decode_frame::check_packet(link, packet.data, &meta);
                }
            }
            Some(Err(e)) if e.is_packet_skipped() => check_error(&e, path),
            Some(Err(e)) => {
                check_error(&e, path);
                assert!(packets.next_ref().is_none(), "a packet after an error");
                break;
            }
        }
    }
}

fn check_error(error: &flowlog_agent::pcap::PcapError, path: &std::path::Path) {
    crate::assert_has_message(error);
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "the error does not name the file: {error}"
    );
}
