//! A VM's state to and from a file: QEMU's migration with the `mapped-ram`
//! capability, the format made for files (each RAM page at a fixed offset,
//! written once; the file is as large as guest RAM and sparse).
//!
//! `migrate` and `migrate-incoming` answer at once and the transfer runs in
//! QEMU's background; these helpers start it and poll `query-migrate` until
//! it is `completed`, `failed` or `cancelled`, all within one deadline.
//! Polling rather than waiting for `MIGRATION` events: QEMU sends those only
//! with the `events` capability on, and a poll also sees a migration that
//! ended before the client looked.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::session::Deadline;
use super::{
    CapabilityState, Migrate, MigrateCancel, MigrateIncoming, MigrateSetCapabilities,
    MigrateSetParameters, MigrationCapability, MigrationChannel, MigrationInfo, MigrationStatus,
    Qmp, QueryMigrate, StatusInfo,
};
use crate::error::ApiError;

/// `max-bandwidth` for a save: QEMU's default, 128 MiB/s, throttles even
/// the save of a paused VM to a local file (256 MiB took 1.8 s instead of
/// 0.27 s under QEMU 10.0); 1 TiB/s is no limit.
const UNLIMITED_BANDWIDTH: i64 = 1 << 40;

/// How long the best-effort `migrate_cancel` after a timed-out save may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// `mapped-ram` on, and `x-ignore-shared` explicitly off: both ends of a
/// migration need the same capabilities (QEMU refuses the load otherwise),
/// and QEMU 10.0.2 cannot combine the two: with `share=on` RAM the save
/// fails ("Unable to write to file: Bad address"), without it the load does
/// ("region has bad alignment").
fn file_capabilities() -> MigrateSetCapabilities {
    let set = |capability, state| CapabilityState { capability, state };
    MigrateSetCapabilities {
        capabilities: vec![
            set(MigrationCapability::MappedRam, true),
            set(MigrationCapability::XIgnoreShared, false),
        ],
    }
}

impl Qmp {
    /// Writes the VM's state to `path` (created with mode 0600, or truncated;
    /// taken as it is, commas and all) and returns the
    /// final `query-migrate`. A running VM is stopped by QEMU for the last
    /// pass; either way it is left in `postmigrate` (stopped; `cont` runs it
    /// again, `quit` ends it). On a timeout the migration is cancelled.
    pub async fn save_to_file(
        &mut self,
        path: &Path,
        timeout: Duration,
    ) -> Result<MigrationInfo, ApiError> {
        const OP: &str = "save to file";
        let deadline = Deadline::after(timeout);
        self.execute_by(&file_capabilities(), deadline).await?;
        let parameters = MigrateSetParameters {
            max_bandwidth: Some(UNLIMITED_BANDWIDTH),
            ..Default::default()
        };
        self.execute_by(&parameters, deadline).await?;
        let migrate = Migrate {
            channels: vec![MigrationChannel::file(path)],
        };
        self.execute_by(&migrate, deadline).await?;
        match self.await_migration(OP, deadline).await {
            Err(ApiError::Timeout { op, after }) => {
                if let Err(e) = self.execute_within(&MigrateCancel, CANCEL_TIMEOUT).await {
                    tracing::warn!("cancelling the timed-out save to {}: {e}", path.display());
                }
                Err(ApiError::Timeout { op, after })
            }
            other => other,
        }
    }

    /// Loads the VM's state from `path` into a QEMU started with
    /// `-incoming defer`, and returns `query-status` after. The VM then runs
    /// if the saved one ran, unless QEMU was started with `-S` or [`Qmp::pause`]d
    /// before, which keep it `paused`. A failed load, refused by
    /// `migrate-incoming` (file not there) or failed while loading, leaves
    /// QEMU running (`exit-on-error` off) in `inmigrate`, where it refuses
    /// to load again: end it and start another.
    pub async fn load_from_file(
        &mut self,
        path: &Path,
        timeout: Duration,
    ) -> Result<StatusInfo, ApiError> {
        const OP: &str = "load from file";
        let deadline = Deadline::after(timeout);
        self.execute_by(&file_capabilities(), deadline).await?;
        let incoming = MigrateIncoming {
            channels: vec![MigrationChannel::file(path)],
            exit_on_error: Some(false),
        };
        self.execute_by(&incoming, deadline).await?;
        self.await_migration(OP, deadline).await?;
        self.status().await
    }

    /// Polls `query-migrate` until the migration is over; `Ok` only for
    /// `completed`.
    async fn await_migration(
        &mut self,
        op: &str,
        deadline: Deadline,
    ) -> Result<MigrationInfo, ApiError> {
        let mut interval = Duration::from_millis(5);
        loop {
            let info = match self.execute_by(&QueryMigrate, deadline).await {
                Err(ApiError::Timeout { .. }) => return Err(deadline.expired(op)),
                other => other?,
            };
            match &info.status {
                Some(MigrationStatus::Completed) => return Ok(info),
                Some(status) if status.is_final() => {
                    return Err(ApiError::Migration {
                        op: op.into(),
                        status: status.to_string(),
                        desc: info.error_desc,
                    });
                }
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline.at {
                return Err(deadline.expired(op));
            }
            tokio::time::sleep_until((now + interval).min(deadline.at)).await;
            interval = (interval * 2).min(Duration::from_millis(100));
        }
    }
}
