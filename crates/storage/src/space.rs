//! Telling a full disk from other failures, so that the API and the worker can say what to do
//! (free some space) instead of reporting an internal error or retrying in vain.

use std::error::Error;
use std::io::ErrorKind;

/// Whether `error`, or any error in its chain of sources, is a disk refusing to grow: no space
/// left on the device (ENOSPC) or the disk quota used up (EDQUOT). Works through `object_store`
/// errors, [`crate::StorageError`] and `anyhow` chains (pass `error.as_ref()`).
pub fn is_out_of_space(error: &(dyn Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(io.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
        }) {
            return true;
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_found_anywhere_in_the_chain() {
        let full = std::io::Error::from_raw_os_error(28);
        let wrapped = anyhow::Error::new(full).context("upload index.html");
        assert!(is_out_of_space(wrapped.as_ref()));
        let quota = std::io::Error::from_raw_os_error(122);
        assert!(is_out_of_space(&quota));
        let other = anyhow::Error::new(std::io::Error::from(ErrorKind::PermissionDenied))
            .context("upload index.html");
        assert!(!is_out_of_space(other.as_ref()));
    }
}
