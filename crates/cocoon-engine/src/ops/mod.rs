//! The operations: one file per command the engine runs, each with its
//! request type, its steps as short named functions, and tests for its
//! decisions. `Engine` (engine.rs) is the door to them; they run on one
//! [`Ctx`](crate::context::Ctx) and use the domains (store, image, net,
//! snapshot, guest, console, supervise) and the VMM backends.

mod blob_fetch;
pub mod gc;
pub mod image_import;
pub mod image_pull;
pub mod image_query;
pub mod kernel;
pub mod recover;
pub mod snapshot_check;
pub mod snapshot_dir;
pub mod snapshot_export;
pub mod snapshot_gc;
pub mod snapshot_import;
pub mod snapshot_pull;
pub mod snapshot_pull_base;
mod snapshot_pull_whole;
pub mod snapshot_push;
mod snapshot_push_whole;
pub mod snapshot_query;
pub mod snapshot_save;
pub mod vm_agent;
pub mod vm_clone;
pub mod vm_create;
pub mod vm_debug;
pub mod vm_device;
pub mod vm_disk;
pub mod vm_fs;
pub mod vm_hibernate;
pub mod vm_launch;
pub mod vm_net;
pub mod vm_query;
pub mod vm_reconcile;
pub mod vm_remove;
mod vm_replug;
pub mod vm_resize;
pub mod vm_restore;
pub mod vm_start;
pub mod vm_stop;
pub mod watch;

// Steps shared by several operations.
mod cidata;
mod clone_files;
mod disk_swap;
mod host_path;
mod hot_plugged;
mod image_record;
mod new_vm;
pub(crate) mod vm_cgroup;
mod vm_plan;
