//! `vm disk attach|detach`: hot-plug on a running VM, with upstream's
//! commands, flags and `-o json` (`cmd/vm/commands.go` buildDiskCommand).

use std::path::PathBuf;
use std::str::FromStr;

use clap::{Subcommand, ValueEnum};
use cocoon_engine::name::{DeviceId, DiskName, FsTag, PciAddress};
use cocoon_engine::spec::DirectIo;

use super::FormatArg;

#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Hot-attach an existing raw disk file (or block device) to a running VM
    #[command(
        after_help = "The disk is recorded with the VM: it is back after `vm stop`/`vm start`, and a snapshot (then a clone or restore) keeps a copy of it (a read-only one blocks snapshots). The file is never removed by cocoon. Firecracker cannot hot-plug disks.\n\nExamples:\n  cocoon vm disk attach dev --path /srv/disks/scratch.raw --name scratch\n  cocoon vm disk attach dev --path /dev/vg0/data --name data --readonly"
    )]
    Attach {
        /// Absolute path to an existing raw disk file or block device (never deleted by cocoon)
        #[arg(long, value_name = "PATH")]
        path: PathBuf,
        /// Disk name: the guest's /dev/disk/by-id/virtio-<name> and the detach key
        #[arg(long, value_parser = DiskName::from_str)]
        name: DiskName,
        /// Attach read-only
        #[arg(long)]
        readonly: bool,
        /// O_DIRECT for the disk: on, off or auto (off for files on tmpfs)
        #[arg(long, value_enum, default_value_t = DirectIoArg::Auto)]
        directio: DirectIoArg,
        #[command(flatten)]
        output: FormatArg,
        vm: String,
    },
    /// Detach a hot-attached disk from a running VM (keeps the backing file)
    Detach {
        /// Disk name used at attach
        #[arg(long, value_parser = DiskName::from_str)]
        name: DiskName,
        #[command(flatten)]
        output: FormatArg,
        vm: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum FsCommand {
    /// Attach a vhost-user-fs device to a running VM
    #[command(
        after_help = "The VM must have been created with --shared-memory. The share is recorded with the VM and plugged again at `vm start` if virtiofsd serves the socket again (it exits when the VMM it served stops; without it the VM starts without the share, with a warning). A VM with a share cannot be snapshotted or hibernated (detach it first). In the guest: mount -t virtiofs <tag> /mnt. Firecracker has no virtio-fs.\n\nExamples:\n  virtiofsd --socket-path /run/vfs/dev.sock --shared-dir /srv/share &\n  cocoon vm fs attach dev --socket /run/vfs/dev.sock --tag share"
    )]
    Attach {
        /// Absolute path to a virtiofsd unix socket (required)
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// Guest mount tag (required; also detach key)
        #[arg(long, value_parser = FsTag::from_str)]
        tag: FsTag,
        /// Request queues (0 = default 1)
        #[arg(long, default_value_t = 0)]
        num_queues: u32,
        /// Queue depth (0 = default 1024)
        #[arg(long, default_value_t = 0)]
        queue_size: u32,
        #[command(flatten)]
        output: FormatArg,
        vm: String,
    },
    /// Detach a vhost-user-fs device from a running VM
    Detach {
        /// Guest mount tag (required)
        #[arg(long, value_parser = FsTag::from_str)]
        tag: FsTag,
        #[command(flatten)]
        output: FormatArg,
        vm: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Attach a VFIO PCI device to a running VM
    #[command(
        after_help = "The device must be bound to vfio-pci (with the IOMMU on); that is the host's setup, not cocoon's. The device is recorded with the VM and passed through again at `vm start` if still bound to vfio-pci. A VM with one cannot be snapshotted or hibernated (detach it first). Firecracker has no VFIO.\n\nExamples:\n  cocoon vm device attach dev --pci 0000:01:00.0 --id gpu0\n  cocoon vm device detach dev --id gpu0"
    )]
    Attach {
        /// BDF (01:00.0 / 0000:01:00.0) or sysfs path /sys/bus/pci/devices/<bdf>
        #[arg(long, value_parser = PciAddress::from_str)]
        pci: PciAddress,
        /// Device id (default cocoon-pci-<bdf>; must not start with cocoon-)
        #[arg(long, value_parser = DeviceId::from_str)]
        id: Option<DeviceId>,
        #[command(flatten)]
        output: FormatArg,
        vm: String,
    },
    /// Detach a VFIO PCI device from a running VM
    Detach {
        /// Device id returned by attach (required)
        #[arg(long)]
        id: String,
        #[command(flatten)]
        output: FormatArg,
        vm: String,
    },
}

/// `--directio`'s values, upstream's `on|off|auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DirectIoArg {
    On,
    Off,
    Auto,
}

impl From<DirectIoArg> for DirectIo {
    fn from(arg: DirectIoArg) -> DirectIo {
        match arg {
            DirectIoArg::On => DirectIo::On,
            DirectIoArg::Off => DirectIo::Off,
            DirectIoArg::Auto => DirectIo::Auto,
        }
    }
}
