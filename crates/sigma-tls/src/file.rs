//! Reading the certificate and key files `S` is given, with one bounded
//! rule (the same as `crates/sigma-core/src/namedfile.rs`, which this crate
//! cannot depend on).
//!
//! Outside `T → S → H → …`: used at start-up, on reload (`SIGHUP`) and by
//! ACME to read PEM files. Only a regular file is read (a directory, a
//! device, a FIFO or a socket is an error, never an endless or blocking
//! read: the file is opened `O_NONBLOCK` and checked with `fstat` on the
//! open descriptor), symlinks are followed, at most [`MAX_FILE`] bytes are
//! read. The content is not interpreted here.

use std::fs::FileType;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest certificate or key file accepted, in bytes (16 MiB).
pub const MAX_FILE: u64 = 16 << 20;

/// Why a file could not be read (the caller names the file).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Opening, `fstat` or reading failed.
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    /// It is not a regular file.
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    /// It is larger than [`MAX_FILE`].
    #[error("larger than {MAX_FILE} bytes")]
    TooLarge,
}

/// Reads a regular file of at most [`MAX_FILE`] bytes.
pub fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular(kind(meta.file_type())));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_FILE {
        return Err(FileError::TooLarge);
    }
    Ok(bytes)
}

fn kind(t: FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_directories_and_fifos() {
        assert!(matches!(
            read(Path::new("/dev/zero")),
            Err(FileError::NotRegular("a character device"))
        ));
        assert!(matches!(
            read(Path::new("/")),
            Err(FileError::NotRegular("a directory"))
        ));
        assert!(matches!(
            read(Path::new("/nonexistent/x.pem")),
            Err(FileError::Io(_))
        ));
    }

    #[test]
    fn reads_up_to_the_cap() {
        let dir = std::env::temp_dir().join(format!("sigma-tls-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(read(&p).unwrap(), b"hello");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(MAX_FILE).unwrap();
        assert_eq!(read(&p).unwrap().len() as u64, MAX_FILE);
        f.set_len(MAX_FILE + 1).unwrap();
        assert!(matches!(read(&p), Err(FileError::TooLarge)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
