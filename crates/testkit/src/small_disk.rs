//! A small disk for the tests of a full disk (issue #9): a 16 MB ext4 filesystem in an image
//! file, loop-mounted for one test. ext4 rather than tmpfs because on a real disk more than data
//! writes run out of space: a directory that has to grow (a new file, a rename into it, a new
//! folder) fails with ENOSPC too, where a tmpfs would accept it.
//!
//! Mounting needs root (CI runs the tests as root); elsewhere [`SmallDisk::mount`] says why on
//! stderr and the test skips.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The disk's size: room for a few small builds, full in a fraction of a second.
const SIZE: &str = "16M";

/// ENOSPC.
const NO_SPACE: i32 = 28;

/// A small ext4 filesystem mounted for one test, unmounted when dropped (even when the test
/// fails).
pub struct SmallDisk {
    mount: PathBuf,
    /// Holds the image file and the mount point; removed after the unmount.
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a fresh, empty disk. `None`, with the reason on stderr, where this process may not
    /// mount (not root, or a container without loop devices): the caller returns, skipping.
    pub fn mount() -> Option<SmallDisk> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!(
                "SKIPPED: mounting a small disk needs root (run the tests as root, as CI does)"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary folder");
        let image = dir.path().join("disk.img");
        let mount = dir.path().join("disk");
        std::fs::create_dir(&mount).expect("create the mount point");
        let mut create = Command::new("truncate");
        create.args(["-s", SIZE]).arg(&image);
        // 4 KiB blocks, as on a disk of any size (mkfs would pick 1 KiB for one this small);
        // `-m 0`: no blocks reserved for root, who runs these tests and would write on.
        let mut format = Command::new("mkfs.ext4");
        format
            .args(["-q", "-F", "-b", "4096", "-m", "0"])
            .arg(&image);
        let mut attach = Command::new("mount");
        attach.args(["-o", "loop"]).arg(&image).arg(&mount);
        for step in [&mut create, &mut format, &mut attach] {
            let failure = match step.stdin(Stdio::null()).output() {
                Ok(output) if output.status.success() => continue,
                Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_string(),
                Err(error) => error.to_string(),
            };
            eprintln!(
                "SKIPPED: cannot make a small disk: {} failed: {failure} (the disk-full tests \
                 need root with loop devices, e.g. a privileged container)",
                step.get_program().to_string_lossy()
            );
            return None;
        }
        Some(SmallDisk { mount, dir })
    }

    /// The disk's root folder.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// A new folder `name` on the disk owned by the user and group `owner`, for a server that
    /// runs as another user than the test (the test Postgres, for a tablespace). The folder that
    /// holds the mount point becomes passable for that user (not readable).
    pub(crate) fn folder_owned_by(&self, name: &str, owner: (u32, u32)) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let folder = self.mount.join(name);
        std::fs::create_dir(&folder).expect("create a folder on the small disk");
        std::os::unix::fs::chown(&folder, Some(owner.0), Some(owner.1))
            .expect("hand the folder on the small disk over");
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("let other users pass through to the small disk");
        folder
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Fills the disk: afterwards no file on it can take one more block of data.
    pub fn fill(&self) {
        self.fill_leaving(0);
    }

    /// Fills the disk, then frees `bytes` of it again: room for that much, and not more.
    pub fn fill_leaving(&self, bytes: u64) {
        let mut filler = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .expect("open the filler file");
        // ext4 keeps blocks reserved for a file's pending writes and hands back the unused ones
        // when the file is synced: fill until a write right after a sync is refused too.
        loop {
            for chunk in [vec![0u8; 64 * 1024], vec![0u8; 1024]] {
                while write_or_full(&mut filler, &chunk) {}
            }
            filler.sync_all().expect("sync the filler file");
            if !write_or_full(&mut filler, &[0u8; 1024]) {
                break;
            }
        }
        if bytes > 0 {
            let length = filler.metadata().expect("the filler's size").len();
            filler
                .set_len(length.saturating_sub(bytes))
                .expect("shrink the filler file");
            filler.sync_all().expect("sync the filler file");
        }
    }

    /// Frees what [`SmallDisk::fill`] took: the disk has room again.
    pub fn free(&self) {
        match std::fs::remove_file(self.filler()) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => panic!("remove the filler file: {error}"),
        }
    }
}

/// Writes `chunk`; `false` once the disk is full.
fn write_or_full(file: &mut std::fs::File, chunk: &[u8]) -> bool {
    match file.write_all(chunk) {
        Ok(()) => true,
        Err(error) if error.raw_os_error() == Some(NO_SPACE) => false,
        Err(error) => panic!("filling the disk: {error}"),
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a process that still has a file open there (a server the test started) does not
        // keep the mount point, and the loop device goes with the last user.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .stderr(Stdio::null())
            .status();
    }
}
