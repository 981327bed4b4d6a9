//! Files the configuration names, read once at start-up (DESIGN §4).
//!
//! Outside `T → H → A → router → destination`: this is what `sigma serve`
//! and `sigma check` use, before any listener exists, to read the config
//! file itself and every file it names — world `code` (sigma's world
//! destination), `[[auth.jwt]] key_file`,
//! `[auth.oauth.*] client_secret_file`. Each of them goes through [`read`],
//! so they share one rule:
//!
//! - only a regular file is read: a directory, a device (`/dev/zero`), a
//!   FIFO or a socket is an error, never an endless or blocking read. The
//!   file is opened with `O_NONBLOCK` (opening a FIFO without a writer
//!   returns at once instead of blocking) and checked with `fstat` on the
//!   open descriptor, so a path swapped after a check cannot slip through;
//!   symlinks are followed (secrets are often mounted as symlinks);
//! - at most [`MAX_NAMED_FILE`] bytes (16 MiB) are read: a larger file is an
//!   error, and since the read is `take(max + 1)` a file that grows while it
//!   is read costs at most that much memory.
//!
//! The errors say which file and what is wrong; the caller prefixes the
//! config key (`world.x.code: /dev/zero is not a regular file (a character
//! device)`). This module knows no config key and does not interpret the
//! content.

use std::fmt;
use std::fs::FileType;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest file [`read`] accepts, in bytes (16 MiB).
pub const MAX_NAMED_FILE: u64 = 16 << 20;

/// A file the config names that cannot be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum NamedFileError {
    /// Opening, `fstat` or reading failed.
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// It is not a regular file.
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is instead (`a directory`, `a FIFO`, …).
        kind: &'static str,
    },
    /// It holds more than the cap.
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap, in bytes.
        max: u64,
    },
    /// [`read_to_string`] only: it is not UTF-8.
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
}

impl fmt::Display for NamedFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, error } => write!(f, "cannot read {}: {error}", path.display()),
            Self::NotRegular { path, kind } => {
                write!(f, "{} is not a regular file ({kind})", path.display())
            }
            Self::TooLarge { path, max } => {
                write!(f, "{} is larger than {max} bytes", path.display())
            }
            Self::NotUtf8 { path } => write!(f, "{} is not UTF-8 text", path.display()),
        }
    }
}

impl std::error::Error for NamedFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// The content of the regular file `path`, at most [`MAX_NAMED_FILE`]
/// bytes. Blocking (start-up only).
pub fn read(path: &Path) -> Result<Vec<u8>, NamedFileError> {
    read_capped(path, MAX_NAMED_FILE)
}

/// Like [`read`], for text: the content must be UTF-8.
pub fn read_to_string(path: &Path) -> Result<String, NamedFileError> {
    String::from_utf8(read(path)?).map_err(|_| NamedFileError::NotUtf8 {
        path: path.to_owned(),
    })
}

/// Like [`read`] with the cap `max` bytes.
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, NamedFileError> {
    let io = |error| NamedFileError::Io {
        path: path.to_owned(),
        error,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(NamedFileError::NotRegular {
            path: path.to_owned(),
            kind: describe(meta.file_type()),
        });
    }
    let too_large = || NamedFileError::TooLarge {
        path: path.to_owned(),
        max,
    };
    if meta.len() > max {
        return Err(too_large());
    }
    // The size `fstat` gave (≤ max) is a hint only: the file may change.
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    let limit = max.saturating_add(1);
    Read::take(&file, limit).read_to_end(&mut buf).map_err(io)?;
    if u64::try_from(buf.len()).map_or(true, |n| n > max) {
        return Err(too_large());
    }
    Ok(buf)
}

/// What a file that is not regular is, for the message.
fn describe(t: FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn temp(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sigma-namedfile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_a_regular_file_at_the_cap_and_refuses_one_past() {
        let dir = temp("cap");
        let at = dir.join("at");
        std::fs::write(&at, vec![b'a'; 100]).unwrap();
        assert_eq!(read_capped(&at, 100).unwrap().len(), 100);
        let past = dir.join("past");
        std::fs::write(&past, vec![b'a'; 101]).unwrap();
        let e = read_capped(&past, 100).unwrap_err();
        assert!(
            matches!(e, NamedFileError::TooLarge { max: 100, .. }),
            "{e}"
        );
        assert!(
            e.to_string().ends_with("past is larger than 100 bytes"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sparse_file_over_the_cap_is_refused_without_reading_it() {
        let dir = temp("sparse");
        let p = dir.join("big");
        let f = File::create(&p).unwrap();
        f.set_len(MAX_NAMED_FILE + 1).unwrap();
        let e = read(&p).unwrap_err();
        assert!(matches!(e, NamedFileError::TooLarge { .. }), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn devices_directories_and_fifos_are_not_read() {
        let e = read(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/dev/zero is not a regular file (a character device)"
        );
        let dir = temp("kinds");
        let e = read(&dir).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("is not a regular file (a directory)"),
            "{e}"
        );
        let fifo = dir.join("fifo");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfifo");
        // No writer: a blocking open would hang here.
        let e = read(&fifo).unwrap_err();
        assert!(
            e.to_string().ends_with("is not a regular file (a FIFO)"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_and_non_utf8() {
        let e = read(Path::new("/nonexistent/sigma-x")).unwrap_err();
        assert!(matches!(e, NamedFileError::Io { .. }));
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/sigma-x: "),
            "{e}"
        );
        let dir = temp("utf8");
        let p = dir.join("bin");
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(matches!(
            read_to_string(&p),
            Err(NamedFileError::NotUtf8 { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
