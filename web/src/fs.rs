//! Files only this user reads, written whole or not at all: a crash mid-write leaves the old file
//! (or none), never half of the new one.

use std::path::Path;

/// Writes `bytes` to `path` (mode 0600) through `tmp`, synced, then renamed over `path`, and the
/// rename synced. The error names the file that failed.
pub fn write_private_atomic(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), (std::path::PathBuf, std::io::Error)> {
    lpmesh_durable::replace_file(path, tmp, bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_whole_for_this_user_only() {
        let dir = std::env::temp_dir().join(format!("lpmesh-web-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (p, t) = (dir.join("f"), dir.join("f.tmp"));
        write_private_atomic(&p, &t, b"one").unwrap();
        write_private_atomic(&p, &t, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!t.exists());
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let (e, _) = write_private_atomic(&p, &dir.join("no/such/dir.tmp"), b"x").unwrap_err();
        assert_eq!(e, dir.join("no/such/dir.tmp"));
        assert_eq!(std::fs::read(&p).unwrap(), b"two", "a failed write leaves the old file");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
