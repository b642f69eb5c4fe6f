//! Modes of the directories and files the aggregator creates.
//!
//! The state directory (WAL, staged files, manifest) holds records before they are
//! published and the agents' delivery state, so only the service user may read it:
//! directories 0700, files 0600. The local sink's output is meant for a group of readers
//! (an analytics job, a log shipper): directories 0750, files 0640.
//!
//! Modes are given when an entry is created (`DirBuilderExt::mode`,
//! `OpenOptionsExt::mode`), so there is no moment in which the wider mode of the umask
//! applies; the umask can still narrow them. An existing state directory with group or
//! other permission bits (made by an earlier release) is narrowed once at startup by
//! [`prepare_state_dir`].

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode of the directories under the state directory (and of the state directory itself
/// when the aggregator creates it).
pub const STATE_DIR_MODE: u32 = 0o700;
/// Mode of the files under the state directory.
pub const STATE_FILE_MODE: u32 = 0o600;
/// Mode of the local sink's directories.
pub const OUTPUT_DIR_MODE: u32 = 0o750;
/// Mode of the local sink's files.
pub const OUTPUT_FILE_MODE: u32 = 0o640;

/// Creates `dir` and its missing ancestors, each with `mode` (less the umask).
pub fn create_dir_all(dir: &Path, mode: u32) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(mode).create(dir)
}

/// Creates the state directory with [`STATE_DIR_MODE`], or, when it exists with group or
/// other permission bits, narrows it to [`STATE_DIR_MODE`] (logged): files that earlier
/// releases created under it with the umask's mode are then out of other users' reach.
pub fn prepare_state_dir(dir: &Path) -> io::Result<()> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(STATE_DIR_MODE))?;
                tracing::info!(
                    dir = %dir.display(),
                    old_mode = format!("{mode:04o}"),
                    new_mode = format!("{STATE_DIR_MODE:04o}"),
                    "narrowed the permissions of the state directory"
                );
            }
            Ok(())
        }
        // Not a directory: creating it fails with the reason.
        Ok(_) => create_dir_all(dir, STATE_DIR_MODE),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir_all(dir, STATE_DIR_MODE),
        Err(e) => Err(e),
    }
}
