//! The store's errors: why it could not be opened, and what a failed read or write means,
//! kept typed inside raft-rs's errors.

use raft::StorageError;

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store's contents cannot be trusted (a checksum, a structural check or sled itself
    /// failed): it must be moved aside, never used.
    #[error("the store is damaged: {0}")]
    Damaged(String),
    /// The store could not be reached now (locked by another process, no space, no
    /// permission); nothing says its contents are wrong.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

/// A failure of the store. raft-rs carries it boxed in `StorageError::Other`; [`StoreError::of`]
/// gets it back, so that callers tell damage from unavailability by its kind, never by its
/// words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store's contents cannot be trusted (a checksum, a structural check or sled itself
    /// failed): the node reopens the store, which then fails its start-up scan and is
    /// quarantined.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// The store could not be read or written now (a full disk, an I/O error); nothing says
    /// its contents are wrong.
    #[error("{0}")]
    Unavailable(String),
}

impl StoreError {
    /// The store's own error inside a raft-rs error, if it is one.
    pub fn of(e: &raft::Error) -> Option<&StoreError> {
        match e {
            raft::Error::Store(StorageError::Other(inner)) => inner.downcast_ref(),
            _ => None,
        }
    }

    /// Whether `e` says the store is damaged.
    pub fn is_corrupt(e: &raft::Error) -> bool {
        matches!(Self::of(e), Some(StoreError::Corrupt(_)))
    }
}

pub(crate) fn store_error(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(StoreError::Unavailable(
        e.to_string(),
    ))))
}

/// A sled error in words: its I/O errors as the OS says them ("No space left on device"),
/// not as a debug dump.
pub(crate) fn sled_error(e: sled::Error) -> raft::Error {
    match e {
        // sled wraps some OS errors in a debug dump; the kind says the same in words.
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            store_error("no space left on device")
        }
        sled::Error::Io(io) => store_error(format!("I/O error: {io}")),
        // sled's own verdicts on its files: damage, whatever operation met it.
        e @ (sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)) => corrupt("sled", e),
        other => store_error(other),
    }
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(StoreError::Corrupt(format!(
        "{what}: {e}"
    )))))
}

/// Classifies a sled error met while opening: I/O that may pass (a lock, a full disk, a
/// permission) leaves the store alone; anything else means its files cannot be trusted.
pub(crate) fn sled_open_error(e: sled::Error) -> OpenError {
    use std::io::ErrorKind as K;
    match &e {
        sled::Error::Io(io)
            if matches!(
                io.kind(),
                K::WouldBlock
                    | K::PermissionDenied
                    | K::StorageFull
                    | K::QuotaExceeded
                    | K::OutOfMemory
                    | K::Interrupted
                    | K::ReadOnlyFilesystem
            ) =>
        {
            OpenError::Unavailable(e.to_string())
        }
        _ => OpenError::Damaged(format!("sled cannot open it: {e}")),
    }
}

/// Maps an error of our own checks during open: damage stays damage, the rest is I/O.
pub(crate) fn open_error(e: raft::Error) -> OpenError {
    if StoreError::is_corrupt(&e) {
        OpenError::Damaged(e.to_string())
    } else {
        OpenError::Unavailable(e.to_string())
    }
}
