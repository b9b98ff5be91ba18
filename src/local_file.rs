//! The operator's own files that a run reads when it starts: the inventory, known_hosts,
//! a kubeconfig and the files it names (a tokenFile, certificates), SSH identity files.
//! Each must be a regular file of a sane size, read with a bounded reader: a path that
//! names `/dev/zero`, a FIFO or a directory is refused with an error naming it, instead
//! of growing the process until it is killed, blocking forever, or being read as empty.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest file postflight reads at start. Real ones are far smaller (an inventory
/// of hundreds of nodes, a known_hosts of thousands of keys, a kubeconfig with embedded
/// certificates are all well under 1 MiB); a few MiB more than any of them.
pub const MAX_BYTES: u64 = 4 * 1024 * 1024;

/// A file that cannot be used, and why; says which file it is and what it was for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {}: {problem}", path.display())]
pub struct LocalFileError {
    /// What the file is for: "known_hosts", "the inventory".
    pub what: String,
    pub path: PathBuf,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("not a regular file ({0}); give the path of the file itself")]
    NotRegular(&'static str),
    #[error("larger than {0} bytes, which no real one is; refusing to read it")]
    TooLarge(u64),
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Unreadable(String),
}

impl LocalFileError {
    /// Whether the file is simply not there.
    pub fn missing(&self) -> bool {
        matches!(self.problem, Problem::Missing(_))
    }
}

/// What kind of thing a path names, in the words of `ls -l`'s first column.
fn kind_of(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Reads `path` whole, if it is a regular file of at most `limit` bytes. `what` names
/// the file in errors ("known_hosts", "the inventory").
///
/// # Errors
/// It is missing or unreadable, not a regular file (checked before it is opened, so a
/// FIFO is never waited on), or larger than `limit` (also one that grows while read).
pub fn read_limited(path: &Path, what: &str, limit: u64) -> Result<Vec<u8>, LocalFileError> {
    let refused = |problem: Problem| LocalFileError {
        what: what.to_string(),
        path: path.to_path_buf(),
        problem,
    };
    let io_error = |error: std::io::Error| {
        refused(match error.kind() {
            std::io::ErrorKind::NotFound => Problem::Missing(error.to_string()),
            _ => Problem::Unreadable(error.to_string()),
        })
    };
    let not_regular =
        |file_type: std::fs::FileType| refused(Problem::NotRegular(kind_of(file_type)));
    let too_large = || refused(Problem::TooLarge(limit));
    let metadata = std::fs::metadata(path).map_err(io_error)?;
    if !metadata.file_type().is_file() {
        return Err(not_regular(metadata.file_type()));
    }
    if metadata.len() > limit {
        return Err(too_large());
    }
    let file = std::fs::File::open(path).map_err(io_error)?;
    // Again on what was opened: the path may have been replaced since.
    let opened = file.metadata().map_err(io_error)?;
    if !opened.file_type().is_file() {
        return Err(not_regular(opened.file_type()));
    }
    let mut bytes = Vec::with_capacity(opened.len().min(limit) as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read_limited`] with [`MAX_BYTES`].
///
/// # Errors
/// As [`read_limited`].
pub fn read(path: &Path, what: &str) -> Result<Vec<u8>, LocalFileError> {
    read_limited(path, what, MAX_BYTES)
}

/// [`read`], as UTF-8 text.
///
/// # Errors
/// As [`read_limited`], or the file is not UTF-8.
pub fn read_text(path: &Path, what: &str) -> Result<String, LocalFileError> {
    String::from_utf8(read(path, what)?).map_err(|_| LocalFileError {
        what: what.to_string(),
        path: path.to_path_buf(),
        problem: Problem::Unreadable("not UTF-8 text".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, "198.18.0.11 ssh-ed25519 AAAA\n").unwrap();
        assert_eq!(
            read_text(&file, "known_hosts").unwrap(),
            "198.18.0.11 ssh-ed25519 AAAA\n"
        );
    }

    #[test]
    fn dev_zero_is_refused_at_once_naming_it() {
        let started = std::time::Instant::now();
        let error = read(Path::new("/dev/zero"), "the inventory").unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(
            error.to_string(),
            "the inventory /dev/zero: not a regular file (a character device); give the path of the file itself"
        );
    }

    #[test]
    fn a_directory_is_refused_as_one_not_read_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let error = read(dir.path(), "known_hosts").unwrap_err();
        assert_eq!(error.problem, Problem::NotRegular("a directory"), "{error}");
        assert!(error
            .to_string()
            .contains(&dir.path().display().to_string()));
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let error = read(&fifo, "the kubeconfig").unwrap_err();
        assert!(error.to_string().contains("(a FIFO)"), "{error}");
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big");
        std::fs::write(&file, vec![b'x'; 11]).unwrap();
        assert!(read_limited(&file, "the token file", 11).is_ok());
        let error = read_limited(&file, "the token file", 10).unwrap_err();
        assert_eq!(
            error,
            LocalFileError {
                what: "the token file".into(),
                path: file,
                problem: Problem::TooLarge(10),
            }
        );
    }

    #[test]
    fn a_missing_file_says_so() {
        let error = read(Path::new("/nonexistent/postflight"), "known_hosts").unwrap_err();
        assert!(error.missing(), "{error}");
        assert!(error
            .to_string()
            .starts_with("known_hosts /nonexistent/postflight: "));
    }
}
