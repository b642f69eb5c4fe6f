//! [`LocalDirSink`]: objects as files under a root directory, keys as relative paths.
//!
//! A put hard-links the staged file (already complete and fsync'd by the pipeline) into a
//! temporary name in [`TMP_DIR`] under the root (same file system, outside `AWSLogs/`), or
//! copies and fsyncs it when the root is on another file system, renames it over the final
//! name and fsyncs both directories: a reader of the key tree sees nothing or the whole
//! file, never a temporary one, and after a crash the file is either complete or absent.
//! Temporary files a killed process left behind are removed by the next startup check.
//! The staged file is linked or copied, never moved: it stays until the caller deletes it.
//!
//! Directories are created 0750 and files end up 0640 (less the umask for created
//! entries), readable by the group of the output's readers. A hard link shares the staged
//! file's inode (0600 in the state directory), so its mode is set to 0640 before the
//! rename makes it visible.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::{ObjectSink, PutOutcome, SinkError, SinkErrorKind, unique_suffix};
use crate::file_modes::{self, OUTPUT_DIR_MODE, OUTPUT_FILE_MODE};

/// The directory the startup check writes its probe file into (under the root, outside
/// `AWSLogs/`).
pub const PROBE_DIR: &str = ".flowlog-probe";

/// The directory temporary copies are written into before their rename into the key tree
/// (under the root, outside `AWSLogs/`).
pub const TMP_DIR: &str = ".flowlog-tmp";

/// Temporary files older than this are leftovers of a killed writer (a copy takes seconds),
/// removed by the startup check.
const STALE_TMP_SECS: u64 = 600;

/// Writes objects as files under `root` (`root/{key}`).
#[derive(Debug, Clone)]
pub struct LocalDirSink {
    root: PathBuf,
}

impl LocalDirSink {
    /// Creates `root` (and its parents) if needed; the sink keeps its absolute path.
    pub fn new(root: impl AsRef<Path>) -> Result<Self, SinkError> {
        let root = root.as_ref();
        let target = format!("file://{}", root.display());
        file_modes::create_dir_all(root, OUTPUT_DIR_MODE)
            .map_err(|e| io_error("create", &target, "cannot create the directory", e))?;
        let root = fs::canonicalize(root)
            .map_err(|e| io_error("create", &target, "cannot resolve the directory", e))?;
        Ok(Self { root })
    }

    /// Returns the (absolute) root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Returns the file a key is stored in, refusing keys that are not safe relative
    /// paths (see [`validate_key`]).
    pub fn path_for(&self, key: &str) -> Result<PathBuf, SinkError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn url_for(&self, key: &str) -> String {
        format!("file://{}", self.root.join(key).display())
    }
}

/// Refuses keys that could escape the root or alias other keys: empty, absolute,
/// containing a backslash or NUL, or with an empty, `.` or `..` component.
pub fn validate_key(key: &str) -> Result<(), SinkError> {
    let refuse = |reason: &'static str| {
        Err(SinkError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return refuse("is empty");
    }
    if key.starts_with('/') {
        return refuse("is absolute (starts with '/')");
    }
    if key.contains('\\') {
        return refuse("contains a backslash");
    }
    if key.contains('\0') {
        return refuse("contains a NUL byte");
    }
    for component in key.split('/') {
        match component {
            "" => return refuse("has an empty path component"),
            "." => return refuse("has a \".\" path component"),
            ".." => return refuse("has a \"..\" path component"),
            _ => {}
        }
    }
    // Belt and braces: what the OS would make of it must be plain names only.
    if !Path::new(key)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return refuse("is not a plain relative path");
    }
    Ok(())
}

#[async_trait::async_trait]
impl ObjectSink for LocalDirSink {
    async fn put_file(&self, key: &str, path: &Path) -> Result<PutOutcome, SinkError> {
        let dest = self.path_for(key)?;
        let target = self.url_for(key);
        let source = path.to_owned();
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || copy_atomically(&root, &source, &dest, &target))
            .await
            .map_err(|e| {
                SinkError::failed(
                    "put",
                    self.url_for(key),
                    SinkErrorKind::LocalIo,
                    "the copy task did not finish",
                    Some(Box::new(e)),
                )
            })??;
        Ok(PutOutcome::Stored)
    }

    async fn check(&self) -> Result<(), SinkError> {
        let root = self.root.clone();
        let target = format!("file://{}", root.join(PROBE_DIR).display());
        let task_target = target.clone();
        tokio::task::spawn_blocking(move || write_and_remove_probe(&root, &task_target))
            .await
            .map_err(|e| {
                SinkError::failed(
                    "check",
                    target,
                    SinkErrorKind::LocalIo,
                    "the probe task did not finish",
                    Some(Box::new(e)),
                )
            })?
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}

/// Puts `source` at `dest` through a temporary name in [`TMP_DIR`]: a hard link when the
/// root is on the same file system (the pipeline only puts files it has fsync'd, so the
/// bytes need no second sync), else a copy that is fsync'd; then fsyncs of the directories
/// created on the way and of the final directory.
fn copy_atomically(root: &Path, source: &Path, dest: &Path, target: &str) -> Result<(), SinkError> {
    let mut input = File::open(source).map_err(|e| {
        let reason = format!("cannot open the staged file {}", source.display());
        io_error("put", target, &reason, e)
    })?;
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Err(SinkError::failed(
            "put",
            target,
            SinkErrorKind::InvalidKey,
            "the key has no file name",
            None,
        ));
    };
    create_dirs_durably(root, dir)
        .map_err(|e| io_error("put", target, "cannot create the directory", e))?;

    let tmp_dir = root.join(TMP_DIR);
    file_modes::create_dir_all(&tmp_dir, OUTPUT_DIR_MODE)
        .map_err(|e| io_error("put", target, "cannot create the temporary directory", e))?;
    let tmp = tmp_dir.join(format!(
        "{}.{}.tmp",
        name.to_string_lossy(),
        unique_suffix()
    ));
    let written = (|| {
        // A link saves copying and syncing the bytes again; another file system (or one
        // without hard links) gets a copy.
        let linked = fs::hard_link(source, &tmp).is_ok();
        if linked {
            // The link is the staged file's inode: give it the output's mode before it
            // becomes visible under the key.
            fs::set_permissions(&tmp, fs::Permissions::from_mode(OUTPUT_FILE_MODE))?;
        } else {
            let mut output = File::options()
                .write(true)
                .create_new(true)
                .mode(OUTPUT_FILE_MODE)
                .open(&tmp)?;
            io::copy(&mut input, &mut output)?;
            output.sync_all()?;
        }
        fs::rename(&tmp, dest)?;
        if linked {
            // When `dest` already is a link to the same file (the same staged file put
            // again), rename does nothing and leaves the temporary name.
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        flowlog_runtime::sync_dir(dir)?;
        flowlog_runtime::sync_dir(&tmp_dir)
    })();
    if let Err(e) = written {
        // Best effort: the temporary file is garbage either way.
        let _ = fs::remove_file(&tmp);
        let reason = format!("cannot write {} via {}", dest.display(), tmp.display());
        return Err(io_error("put", target, &reason, e));
    }
    Ok(())
}

/// Creates `dir` and its missing ancestors below `root`, then fsyncs the parent of each
/// directory it created, so the new entries survive a crash.
fn create_dirs_durably(root: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(d) = cursor {
        if d.is_dir() || d == root {
            break;
        }
        missing.push(d);
        cursor = d.parent();
    }
    file_modes::create_dir_all(dir, OUTPUT_DIR_MODE)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent() {
            flowlog_runtime::sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Removes temporary copies older than [`STALE_TMP_SECS`] (left by a writer killed between
/// its copy and its rename); returns how many were removed.
fn remove_stale_tmp_files(root: &Path) -> usize {
    let Ok(entries) = fs::read_dir(root.join(TMP_DIR)) else {
        return 0;
    };
    let stale = std::time::Duration::from_secs(STALE_TMP_SECS);
    let mut removed = 0;
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= stale);
        if old && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(
            removed,
            dir = %root.join(TMP_DIR).display(),
            "removed temporary files left by an interrupted writer"
        );
    }
    removed
}

fn write_and_remove_probe(root: &Path, target: &str) -> Result<(), SinkError> {
    remove_stale_tmp_files(root);
    use std::io::Write as _;
    let dir = root.join(PROBE_DIR);
    let file = dir.join(unique_suffix());
    file_modes::create_dir_all(&dir, OUTPUT_DIR_MODE)
        .map_err(|e| io_error("check", target, "cannot create the probe directory", e))?;
    let written = (|| {
        let mut f = File::options().write(true).create_new(true).open(&file)?;
        f.write_all(b"flowlog sink probe; safe to delete\n")?;
        f.sync_all()
    })();
    let removed = fs::remove_file(&file);
    written.map_err(|e| io_error("check", target, "cannot write the probe file", e))?;
    removed.map_err(|e| io_error("check", target, "cannot remove the probe file", e))?;
    // Another check may be running concurrently; then the directory is not empty yet.
    let _ = fs::remove_dir(&dir);
    Ok(())
}

/// Maps an I/O error: permission problems, read-only file systems and missing files need
/// an operator; anything else (disk full, interrupted, …) may pass.
fn io_error(op: &'static str, target: &str, what: &str, e: io::Error) -> SinkError {
    let kind = match e.kind() {
        io::ErrorKind::PermissionDenied
        | io::ErrorKind::ReadOnlyFilesystem
        | io::ErrorKind::NotFound => SinkErrorKind::LocalPermanent,
        _ => SinkErrorKind::LocalIo,
    };
    SinkError::failed(op, target, kind, format!("{what}: {e}"), Some(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_put_on_the_same_file_system_links_and_a_second_put_leaves_nothing_behind() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        let staged = dir.path().join("staged");
        fs::write(&staged, b"data").unwrap();
        let key = "AWSLogs/123456789012/vpcflowlogs/eu-west-3/2024/01/01/x.log.gz";
        fs::create_dir_all(&root).unwrap();
        for _ in 0..2 {
            copy_atomically(&root, &staged, &root.join(key), "t").unwrap();
            assert_eq!(files(&root), vec![key.to_owned()]);
        }
        let (a, b) = (
            fs::metadata(&staged).unwrap(),
            fs::metadata(root.join(key)).unwrap(),
        );
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "linked, not copied");
        // The caller deletes its staged file; the object stays.
        fs::remove_file(&staged).unwrap();
        assert_eq!(fs::read(root.join(key)).unwrap(), b"data");
    }

    #[test]
    fn temporary_copies_never_appear_in_the_key_tree_and_stale_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        let staged = dir.path().join("staged");
        fs::write(&staged, b"data").unwrap();
        let key = "AWSLogs/123456789012/vpcflowlogs/eu-west-3/2024/01/01/x.log.gz";
        fs::create_dir_all(&root).unwrap();
        copy_atomically(&root, &staged, &root.join(key), "t").unwrap();
        assert_eq!(files(&root), vec![key.to_owned()]);
        assert_eq!(fs::read(root.join(key)).unwrap(), b"data");

        // A writer killed between copy and rename leaves its copy in the temporary
        // directory only; the startup check removes it once it is old.
        let leftover = root.join(TMP_DIR).join("x.log.gz.1.tmp");
        fs::write(&leftover, b"partial").unwrap();
        assert_eq!(
            remove_stale_tmp_files(&root),
            0,
            "a fresh copy may be in use"
        );
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(STALE_TMP_SECS + 1);
        File::options()
            .write(true)
            .open(&leftover)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(remove_stale_tmp_files(&root), 1);
        assert_eq!(files(&root), vec![key.to_owned()]);
    }

    #[test]
    fn keys_are_validated() {
        for good in [
            "a",
            "a/b.log.gz",
            "p/AWSLogs/1/vpcflowlogs/r/2018/06/20/x_fe.log.gz",
            "a..b/c",
            ".hidden/x",
        ] {
            assert!(validate_key(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("/abs", "absolute"),
            ("a/../b", "\"..\""),
            ("..", "\"..\""),
            ("./a", "\".\""),
            ("a//b", "empty path component"),
            ("a/", "empty path component"),
            ("a\\b", "backslash"),
            ("a\0b", "NUL"),
        ] {
            let err = validate_key(bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
            assert!(!err.is_retryable());
        }
    }

    #[tokio::test]
    async fn put_creates_parents_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalDirSink::new(dir.path().join("out")).unwrap();
        let staged = dir.path().join("staged");
        std::fs::write(&staged, b"hello").unwrap();
        let out = sink.put_file("a/b/c.log.gz", &staged).await.unwrap();
        assert_eq!(out, PutOutcome::Stored);
        assert_eq!(
            std::fs::read(sink.root().join("a/b/c.log.gz")).unwrap(),
            b"hello"
        );
        assert!(staged.exists(), "the staged file stays");
        let names: Vec<_> = std::fs::read_dir(sink.root().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("c.log.gz")]);
        assert!(sink.describe().starts_with("file:///"));
    }

    #[tokio::test]
    async fn missing_staged_file_is_permanent() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalDirSink::new(dir.path()).unwrap();
        let err = sink
            .put_file("k", &dir.path().join("missing"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), SinkErrorKind::LocalPermanent);
        assert!(
            err.to_string().contains("cannot open the staged file"),
            "{err}"
        );
    }
}
