//! A writer for the newc ("070701") cpio format, the only one the kernel
//! unpacks as an initramfs. Written here rather than run `cpio`, so building
//! the test image needs no host tool and no staging tree with real device nodes.

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    next_ino: u32,
}

impl Cpio {
    pub fn new() -> Cpio {
        Cpio::default()
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(path, S_IFDIR | 0o755, 2, (0, 0), b"")
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(path, S_IFREG | mode, 1, (0, 0), data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        self.entry(path, S_IFCHR | mode, 1, (major, minor), b"")
    }

    /// The archive, ended by the trailer entry the format requires.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), b"");
        self.out
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> &mut Self {
        self.next_ino += 1;
        let name_size = u32::try_from(path.len() + 1).expect("short path");
        let file_size = u32::try_from(data.len()).expect("newc files are under 4 GiB");
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        let fields = [
            self.next_ino,
            mode,
            0,
            0,
            nlink,
            0,
            file_size,
            0,
            0,
            rdev.0,
            rdev.1,
            name_size,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(path.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
        self
    }

    /// Header plus name, and data, each end on a 4-byte boundary.
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_newc_with_aligned_names_and_data() {
        let mut cpio = Cpio::new();
        cpio.file("init", 0o755, b"#!");
        let archive = cpio.finish();
        let header = std::str::from_utf8(&archive[..110]).unwrap();
        assert_eq!(
            header,
            concat!(
                "070701", "00000001", // ino
                "000081ed", // regular file, 0755
                "00000000", // uid
                "00000000", // gid
                "00000001", // nlink
                "00000000", // mtime
                "00000002", // filesize
                "00000000", "00000000", "00000000", "00000000", "00000005", // "init\0"
                "00000000",
            )
        );
        // 110 + 5 bytes of name pad to 116; the 2 data bytes pad to 120.
        assert_eq!(&archive[110..116], b"init\0\0");
        assert_eq!(&archive[116..120], b"#!\0\0");
        assert_eq!(&archive[120..126], b"070701");
        assert_eq!(&archive[120 + 110..120 + 121], b"TRAILER!!!\0");
        assert_eq!(archive.len() % 4, 0);
    }
}
