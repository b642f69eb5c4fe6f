//! MD5 for S3's `Content-MD5` header, which Object Lock buckets require (an integrity
//! check of the bytes in transit, not a security measure). Uses the `md-5` crate, which the
//! AWS SDK already depends on.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use ::md5::Digest;

/// An incremental MD5 digest.
pub(crate) struct Md5(::md5::Md5);

impl Md5 {
    pub(crate) fn new() -> Self {
        Self(::md5::Md5::new())
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub(crate) fn finish(self) -> [u8; 16] {
        self.0.finalize().into()
    }
}

/// Returns the MD5 of `length` bytes of `path` from `offset` (one multipart part, or the
/// whole file).
pub(crate) fn md5_of_file_range(
    path: &Path,
    offset: u64,
    length: u64,
) -> std::io::Result<[u8; 16]> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = file.take(length);
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut read_total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        md5.update(&buf[..n]);
        read_total += n as u64;
    }
    if read_total != length {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("expected {length} bytes at offset {offset}, read {read_total}"),
        ));
    }
    Ok(md5.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: [u8; 16]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn md5(data: &[u8]) -> String {
        let mut m = Md5::new();
        m.update(data);
        hex(m.finish())
    }

    #[test]
    fn rfc1321_test_suite() {
        assert_eq!(md5(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5(b"a"), "0cc175b9c0f1b6a831c399e269772661");
        assert_eq!(md5(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(md5(b"message digest"), "f96b697d7cb7938d525a2f31aaf161d0");
        assert_eq!(
            md5(b"abcdefghijklmnopqrstuvwxyz"),
            "c3fcd3d76192e4007dfb496cca67e13b"
        );
        assert_eq!(
            md5(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"),
            "d174ab98d277d9f5a5611c2c9f419d9f"
        );
        assert_eq!(
            md5(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            ),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn incremental_equals_one_shot_at_every_split() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = md5(&data);
        for split in 0..data.len() {
            let mut m = Md5::new();
            m.update(&data[..split]);
            m.update(&data[split..]);
            assert_eq!(hex(m.finish()), whole, "split at {split}");
        }
    }

    #[test]
    fn file_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"xxabcyy").unwrap();
        assert_eq!(
            hex(md5_of_file_range(&path, 2, 3).unwrap()),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert!(md5_of_file_range(&path, 5, 3).is_err());
    }
}
