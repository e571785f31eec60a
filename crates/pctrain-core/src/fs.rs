//! Files written whole or not at all: a temporary file in the target's folder, flushed to disk,
//! renamed over the target, and the rename itself made durable. A crash leaves the old file or
//! the new one, never a torn one. Folders take another's place in one step.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` (a bare file name, a relative or an absolute path) atomically,
/// creating its folder if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // A bare name's parent is the empty path, which names no folder to open.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Puts the folder `new` in the place of `target`, a folder that may be there already. On Linux
/// the two are exchanged in one step (`renameat2` with `RENAME_EXCHANGE`), so a crash leaves the
/// old folder or the new one in place, never neither; the old one, then under `new`'s name, is
/// removed (if that fails, it stays there for the caller's clean-up of unfinished folders).
/// Elsewhere, or on a filesystem without the exchange, the old folder is removed first.
pub fn replace_dir(new: &Path, target: &Path) -> std::io::Result<()> {
    if !target.exists() {
        return std::fs::rename(new, target);
    }
    #[cfg(target_os = "linux")]
    match exchange(new, target) {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(new);
            return Ok(());
        }
        // No exchange here (an older kernel, some network filesystems).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {}
        Err(e) => return Err(e),
    }
    std::fs::remove_dir_all(target)?;
    std::fs::rename(new, target)
}

/// Exchanges the entries at `a` and `b` in one step.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (a, b) = (c_path(a)?, c_path(b)?);
    // SAFETY: two NUL-terminated paths that live across the call, relative to the working folder.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::{replace_dir, write_atomic};

    #[test]
    fn a_folder_takes_the_place_of_another_whole_or_of_none() {
        let dir = tempfile::tempdir().unwrap();
        let (new, target) = (dir.path().join(".new"), dir.path().join("target"));
        std::fs::create_dir(&new).unwrap();
        std::fs::write(new.join("a"), "new").unwrap();
        replace_dir(&new, &target).unwrap();
        assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "new");
        assert!(!new.exists());

        std::fs::create_dir(&new).unwrap();
        std::fs::write(new.join("b"), "newer").unwrap();
        replace_dir(&new, &target).unwrap();
        assert_eq!(std::fs::read_to_string(target.join("b")).unwrap(), "newer");
        assert!(!target.join("a").exists(), "the old folder's files stayed");
        assert!(
            !new.exists(),
            "the old folder was left under the new one's name"
        );
    }

    #[test]
    fn replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("out.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out.json"]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        write_atomic(&path, b"kept").unwrap();
        // A folder where the file should go: the rename fails, the temporary is removed.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("inside"), b"x").unwrap();
        assert!(write_atomic(&blocked, b"new").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
