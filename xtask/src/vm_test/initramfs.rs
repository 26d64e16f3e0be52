//! A guest's initramfs: an uncompressed newc cpio archive (what the kernel unpacks
//! into its rootfs), written by hand since it is a few dozen bytes of header per file.
use std::io::{self, Write};

pub struct Archive {
    bytes: Vec<u8>,
    inode: u32,
}

const DIR: u32 = 0o040_755;
const FILE: u32 = 0o100_644;
const EXECUTABLE: u32 = 0o100_755;

impl Archive {
    pub fn new() -> Self {
        Self {
            bytes: Vec::new(),
            inode: 0,
        }
    }

    pub fn dir(&mut self, path: &str) {
        self.entry(path, DIR, &[]);
    }

    pub fn file(&mut self, path: &str, data: &[u8]) {
        self.entry(path, FILE, data);
    }

    pub fn executable(&mut self, path: &str, data: &[u8]) {
        self.entry(path, EXECUTABLE, data);
    }

    pub fn finish(mut self, out: &mut impl Write) -> io::Result<()> {
        self.inode = 0;
        self.entry("TRAILER!!!", 0, &[]);
        out.write_all(&self.bytes)
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.inode += 1;
        let name = path.trim_start_matches('/');
        let name = if name.is_empty() { "." } else { name };
        let nlink = if mode == DIR { 2 } else { 1 };
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn entries_are_newc_and_aligned() {
        let mut archive = super::Archive::new();
        archive.dir("/modules");
        archive.file("/cmd", b"true");
        let mut out = Vec::new();
        archive.finish(&mut out).expect("into a Vec");
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        // The name follows the 110-byte header, NUL-terminated.
        assert_eq!(&out[110..118], b"modules\0");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("cmd\0"));
        assert!(text.contains("true"));
        assert!(text.contains("TRAILER!!!\0"));
    }
}
