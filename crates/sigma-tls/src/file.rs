//! Reading the certificate and key files `S` is given: the bounded rule
//! of `sigma_core::namedfile` (regular files only, opened `O_NONBLOCK` and
//! checked with `fstat` on the open descriptor, symlinks followed, at most
//! [`MAX_FILE`] bytes), with errors that leave naming the file to the
//! caller.
//!
//! Outside `T → S → H → …`: used at start-up, on reload (`SIGHUP`) and by
//! ACME to read PEM files. The content is not interpreted here.

use std::path::Path;

use sigma_core::namedfile::{self, NamedFileError};

/// The largest certificate or key file accepted, in bytes (16 MiB).
pub const MAX_FILE: u64 = namedfile::MAX_NAMED_FILE;

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

impl From<NamedFileError> for FileError {
    fn from(e: NamedFileError) -> Self {
        match e {
            NamedFileError::Io { error, .. } => Self::Io(error),
            NamedFileError::NotRegular { kind, .. } => Self::NotRegular(kind),
            NamedFileError::TooLarge { .. } => Self::TooLarge,
            // `NotUtf8` comes from `read_to_string` only, never from `read`.
            other => Self::Io(std::io::Error::other(other.to_string())),
        }
    }
}

/// Reads a regular file of at most [`MAX_FILE`] bytes.
pub fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    Ok(namedfile::read(path)?)
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
