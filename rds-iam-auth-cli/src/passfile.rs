//! The token for psql's login, in a file that only that login reads.
//!
//! `PGPASSWORD` would do, but every program psql starts inherits it (`\!`, the pager, the
//! editor, `\copy ... program`) and it sits in `/proc/PID/environ` for psql's whole life.
//! Instead the token goes into a libpq password file (`PGPASSFILE`): mode 0600 in a
//! private 0700 directory, removed as soon as libpq has read it (libpq reads its password
//! file once, when it sets up the connection), and in any case when psql exits. A pipe
//! cannot serve: libpq ignores a password file that is not a regular file.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A password file holding one token, removed with its directory on drop.
pub struct Passfile {
    dir: PathBuf,
    path: PathBuf,
}

impl Passfile {
    /// Writes `token` as the password for any host, port, database and user.
    pub fn create(token: &str) -> io::Result<Self> {
        let dir = private_dir()?;
        let path = dir.join("pgpass");
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(line(token).as_bytes()));
        let passfile = Self { dir, path };
        written.map(|()| passfile)
    }

    /// Where the file is (for `PGPASSFILE`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file as soon as a reader closes it, from a thread of its own: call it
    /// before starting the program that reads it, so that its read cannot be missed.
    pub fn remove_after_first_read(&self) -> io::Result<()> {
        use inotify::{Inotify, WatchMask};
        let mut inotify = Inotify::init()?;
        inotify
            .watches()
            .add(&self.path, WatchMask::CLOSE_NOWRITE)?;
        let path = self.path.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 1024];
            if inotify.read_events_blocking(&mut buffer).is_ok() {
                let _ = std::fs::remove_file(&path);
            }
        });
        Ok(())
    }
}

impl Drop for Passfile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `*:*:*:*:PASSWORD`, with `\` and `:` escaped as libpq's password file format wants.
fn line(token: &str) -> String {
    let escaped = token.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:*:{escaped}\n")
}

/// A new directory only this user can enter, under the temporary directory.
fn private_dir() -> io::Result<PathBuf> {
    let base = std::env::temp_dir();
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut last = None;
    for attempt in 0..16u32 {
        let dir = base.join(format!("rds-iam-auth-psql-{pid}-{nanos:x}-{attempt}"));
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free directory name")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colons_and_backslashes_are_escaped() {
        assert_eq!(line("h:5432/?a=b\\c"), "*:*:*:*:h\\:5432/?a=b\\\\c\n");
    }

    #[test]
    fn the_file_is_private_and_gone_after_drop() {
        use std::os::unix::fs::PermissionsExt;
        let passfile = Passfile::create("host:5432/?X-Amz-Signature=abc").expect("created");
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(passfile.path()), 0o600);
        assert_eq!(mode(passfile.path().parent().expect("dir")), 0o700);
        let (file, dir) = (passfile.path().to_owned(), passfile.dir.clone());
        drop(passfile);
        assert!(!file.exists() && !dir.exists());
    }

    #[test]
    fn a_read_removes_the_file() {
        let passfile = Passfile::create("token").expect("created");
        passfile.remove_after_first_read().expect("watch");
        assert_eq!(
            std::fs::read_to_string(passfile.path()).expect("read"),
            "*:*:*:*:token\n"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while passfile.path().exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!passfile.path().exists(), "removed after the first read");
    }
}
