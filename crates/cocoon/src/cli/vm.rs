//! `cocoon vm …`: the VM commands and their shared flags.

use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Subcommand};
use cocoon_engine::model::Hypervisor;
use cocoon_engine::name::{SnapshotName, VmName};
use cocoon_engine::spec::RawDataDisk;

use super::agent::AgentCommand;
use super::parse::*;
use super::*;

/// The VM flags shared by `vm create`, `vm run` and `vm debug`.
#[derive(Debug, Args, Clone)]
pub struct VmFlags {
    /// Use Firecracker instead of Cloud Hypervisor (OCI images only)
    #[arg(long, conflicts_with_all = ["windows", "qemu", "hypervisor"])]
    pub fc: bool,
    /// Use QEMU instead of Cloud Hypervisor (OCI images only, for now)
    #[arg(long, conflicts_with_all = ["windows", "hypervisor"])]
    pub qemu: bool,
    /// The backend: cloud-hypervisor (ch), firecracker (fc) or qemu [default: default_hypervisor]
    #[arg(long, value_name = "VMM", value_parser = Hypervisor::from_str)]
    pub hypervisor: Option<Hypervisor>,
    /// VM name [default: derived from the image, e.g. cocoon-ubuntu-24.04]
    #[arg(long, value_parser = VmName::from_str)]
    pub name: Option<VmName>,
    /// Virtual CPUs (at most the host's CPU count)
    #[arg(long, default_value = "2", value_parser = parse_cpu)]
    pub cpu: u32,
    /// Memory, e.g. 512M, 2G (minimum 512M)
    #[arg(long, default_value = "1G", value_parser = parse_memory)]
    pub memory: u64,
    /// Root disk (copy-on-write) size (minimum 10G)
    #[arg(long, default_value = "10G", value_parser = parse_storage)]
    pub storage: u64,
    /// Number of network interfaces (0 = no network)
    #[arg(long, default_value_t = 1)]
    pub nics: u32,
    /// virtio-net queue depth (0 = 512)
    #[arg(long, default_value = "0", value_parser = parse_queue_size)]
    pub queue_size: u32,
    /// virtio-blk queue depth (0 = 512; Cloud Hypervisor only)
    #[arg(long, default_value = "0", value_parser = parse_disk_queue_size)]
    pub disk_queue_size: u32,
    /// CNI network (conflist name) [default: the first conflist]
    #[arg(
        long,
        default_value = "",
        hide_default_value = true,
        conflicts_with = "bridge"
    )]
    pub network: String,
    /// Attach the TAP to this existing bridge instead of using CNI
    #[arg(long, value_name = "DEV")]
    pub bridge: Option<String>,
    /// Login user for cloud images (cloud-init)
    #[arg(long, default_value = "root", value_parser = parse_user)]
    pub user: String,
    /// Login password for cloud images (cloud-init)
    #[arg(long, default_value = "cocoon", value_parser = parse_password)]
    pub password: String,
    /// Use the host page cache for writable disks instead of direct I/O
    #[arg(long)]
    pub no_direct_io: bool,
    /// Windows guest: UEFI, Hyper-V enlightenments, no cloud-init, no balloon
    #[arg(long)]
    pub windows: bool,
    /// Extra disk: size=20G[,name=NAME][,fstype=ext4|none][,mount=/mnt/x][,directio=on|off|auto] (repeatable)
    #[arg(long = "data-disk", value_name = "SPEC", value_parser = parse_data_disk)]
    pub data_disks: Vec<RawDataDisk>,
    /// Container images: set an environment variable of the main process (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<String>,
    /// No guest agent (no `vm exec`, no identity refresh after a clone)
    #[arg(long)]
    pub no_agent: bool,
    #[command(flatten)]
    pub cpu_control: cgroup::CpuFlags,
    #[command(flatten)]
    pub switches: switches::SwitchFlags,
}

// The size of a VM made from a snapshot (`vm clone`, `vm restore`): the
// snapshot's unless given. (A plain comment: see `CreateArgs`.)
#[derive(Debug, Args, Clone)]
pub struct SnapshotShape {
    /// Virtual CPUs: the snapshot's (0 = as in it; grow the running VM with `vm resize`)
    #[arg(long, default_value = "0", value_parser = parse_cpu_or_inherit)]
    pub cpu: u32,
    /// Memory: the snapshot's (as in it when omitted; grow with `vm resize`)
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Root disk size: the snapshot's (as in it when omitted)
    #[arg(long, value_parser = parse_storage)]
    pub storage: Option<u64>,
}

/// The flags of `vm clone`: zero or empty means "as in the snapshot".
#[derive(Debug, Args, Clone)]
pub struct CloneFlags {
    /// Name of the new VM [default: cocoon-clone-<id8>]
    #[arg(long, value_parser = VmName::from_str)]
    pub name: Option<VmName>,
    #[command(flatten)]
    pub shape: SnapshotShape,
    /// Network interfaces (0 = as in the snapshot; may grow, not shrink)
    #[arg(long, default_value_t = 0)]
    pub nics: u32,
    /// virtio-net queue depth (0 = as in the snapshot)
    #[arg(long, default_value = "0", value_parser = parse_queue_size)]
    pub queue_size: u32,
    /// virtio-blk queue depth (0 = as in the snapshot)
    #[arg(long, default_value = "0", value_parser = parse_disk_queue_size)]
    pub disk_queue_size: u32,
    /// CNI network [default: the source VM's]
    #[arg(
        long,
        default_value = "",
        hide_default_value = true,
        conflicts_with = "bridge"
    )]
    pub network: String,
    /// Attach the TAP to this existing bridge instead of using CNI
    #[arg(long, value_name = "DEV")]
    pub bridge: Option<String>,
    /// Use the host page cache for writable disks (inherited unless given)
    #[arg(long)]
    pub no_direct_io: bool,
    /// How memory comes back (default: the backend's own; copy for Cloud Hypervisor, mmap for Firecracker)
    #[arg(long, value_enum, value_name = "MODE")]
    pub restore_mode: Option<RestoreModeArg>,
    /// Same as --restore-mode ondemand (older cocoon)
    #[arg(long, conflicts_with = "restore_mode")]
    pub on_demand: bool,
    /// Pull the snapshot's base image (pinned by digest) if it is missing; with a registry reference as SNAPSHOT, pull the snapshot too
    #[arg(long)]
    pub pull: bool,
    /// CPU control (as in the snapshot unless one is given; then these replace it)
    #[command(flatten)]
    pub cpu_control: cgroup::CpuFlags,
    /// Device switches: the snapshot's always; one it was taken without is refused
    #[command(flatten)]
    pub switches: switches::SwitchFlags,
    /// Add a new data disk to the clone, as `vm create --data-disk` (repeatable; Cloud Hypervisor hot-plugs it on restore)
    #[arg(long = "data-disk", value_name = "SPEC", value_parser = parse_data_disk)]
    pub data_disks: Vec<RawDataDisk>,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM from an image without starting it
    #[command(
        after_help = "Examples:\n  cocoon vm create --name web ghcr.io/cocoonstack/cocoon/ubuntu:24.04\n  cocoon vm create --fc --nics 0 --data-disk size=20G,name=db ghcr.io/cocoonstack/cocoon/ubuntu:24.04"
    )]
    Create(Lazy<CreateArgs>),
    /// Create and start a VM
    #[command(
        after_help = "Examples:\n  cocoon vm run --name dev --cpu 2 --memory 2G ghcr.io/cocoonstack/cocoon/ubuntu:24.04\n  cocoon vm run --nics 0 -o json ghcr.io/cocoonstack/cocoon/ubuntu:24.04\n  cocoon vm run --rm -it --nics 0 alpine:3.20 -- uname -a\n  cocoon vm run --rm -e GREETING=hi python:3.12 -- python3 -c 'import os; print(os.environ[\"GREETING\"])'"
    )]
    Run(Lazy<RunArgs>),
    /// Create and start a new VM from a snapshot
    #[command(
        after_help = "Examples:\n  cocoon vm clone --name dev2 base\n  cocoon vm clone --nics 2 --pull base\n  cocoon vm clone --pull registry.example.com/snaps/base:v1"
    )]
    Clone(Lazy<CloneArgs>),
    /// Start created or stopped VMs
    Start {
        #[command(flatten)]
        output: FormatArg,
        #[arg(required = true, value_name = "VM")]
        vms: Vec<String>,
    },
    /// Stop VMs (graceful shutdown, then SIGTERM, then SIGKILL)
    #[command(
        after_help = "Examples:\n  cocoon vm stop dev\n  cocoon vm stop --timeout 60 dev\n  cocoon vm stop --force dev other"
    )]
    Stop {
        /// Skip the graceful guest shutdown
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the guest to shut down (0 = stop_timeout_seconds)
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        #[command(flatten)]
        output: FormatArg,
        #[arg(required = true, value_name = "VM")]
        vms: Vec<String>,
    },
    /// List VMs
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        output: FormatArg,
    },
    /// Show a VM as JSON
    Inspect {
        #[command(flatten)]
        output: JsonOnlyArg,
        vm: String,
    },
    /// Attach to a VM's console (detach: the escape character, then '.')
    Console {
        /// Escape character, e.g. ^] or ^a
        #[arg(long, default_value = "^]", value_parser = parse_escape)]
        escape_char: u8,
        vm: String,
    },
    #[command(flatten)]
    Agent(AgentCommand),
    /// Print a VM's captured console and serial output
    #[command(
        after_help = "Examples:\n  cocoon vm logs dev\n  cocoon vm logs -f --tail 20 dev\n  cocoon vm logs --vmm dev"
    )]
    Logs {
        /// Keep printing new output until interrupted or the VM stops
        #[arg(short = 'f', long)]
        follow: bool,
        /// Print the VMM process's own log instead of the guest's output
        #[arg(long)]
        vmm: bool,
        /// Only the last N lines (0 = all); with -f, then follow
        #[arg(long, value_name = "N", default_value_t = 0)]
        tail: usize,
        vm: String,
    },
    /// Remove VMs (running VMs need --force)
    Rm {
        /// Stop running VMs first
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        output: FormatArg,
        #[arg(required = true, value_name = "VM")]
        vms: Vec<String>,
    },
    /// Reclaim a VM left in `creating` by a create or clone that died
    ///
    /// Prints the outcome: collected (the record and its name are free),
    /// busy (an operation in flight owns it; nothing touched), not-creating
    /// or not-found. All four exit 0.
    #[command(
        after_help = "Examples:\n  cocoon vm reconcile-stale-create web\n  cocoon vm reconcile-stale-create -o json 3f9c2a1b"
    )]
    ReconcileStaleCreate {
        #[command(flatten)]
        output: FormatArg,
        vm: String,
    },
    /// Restore a running, stopped or hibernated VM from a snapshot
    Restore(Lazy<RestoreArgs>),
    /// Snapshot a running VM and stop it, freeing CPU and memory
    #[command(
        after_help = "The guest is paused, written into a new snapshot and its VMM stopped while still paused: `vm start VM` (or `vm restore VM SNAPSHOT`) brings it back where it was. The VM keeps its disks and network identity; its snapshot cannot be removed while it is hibernated.\n\nExamples:\n  cocoon vm hibernate --name nightly dev\n  cocoon vm start dev"
    )]
    Hibernate {
        /// Name of the snapshot the guest goes into
        #[arg(long, value_parser = SnapshotName::from_str)]
        name: Option<SnapshotName>,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        output: FormatArg,
        vm: String,
    },
    /// Change a VM's vCPUs and memory (a running VM's through its VMM)
    #[command(
        after_help = "A running VM is resized while it runs: Cloud Hypervisor plugs vCPUs (up to the host's CPUs) and memory (up to the host's RAM) in; memory below what its VMM started with is taken by the balloon on every VMM that has one (QEMU and Firecracker cannot plug vCPUs or memory in). A stopped VM has its record changed and boots at the new size. `vm inspect` shows the size; snapshots and clones take it.\n\nExamples:\n  cocoon vm resize --cpu 4 --memory 4G dev\n  cocoon vm resize --memory 768M dev"
    )]
    Resize {
        /// Virtual CPUs (at most the host's CPU count)
        #[arg(long, value_parser = parse_cpu, required_unless_present = "memory")]
        cpu: Option<u32>,
        /// Memory, e.g. 768M, 4G (minimum 512M)
        #[arg(long, value_parser = parse_memory)]
        memory: Option<u64>,
        #[command(flatten)]
        output: FormatArg,
        vm: String,
    },
    /// Print the commands that would launch a VM, without running them
    Debug(Lazy<DebugArgs>),
    /// Show VM status once; --watch refreshes, --event streams changes
    #[command(
        after_help = "Examples:\n  cocoon vm status\n  cocoon vm status -w -n 2\n  cocoon vm status --event --format json dev"
    )]
    Status {
        /// Seconds between liveness checks with --watch or --event (<= 0 means 5)
        #[arg(short = 'n', long, default_value_t = 5, allow_negative_numbers = true)]
        interval: i64,
        /// Redraw the table every interval until interrupted
        #[arg(short = 'w', long, conflicts_with = "event")]
        watch: bool,
        /// Print ADDED/MODIFIED/DELETED events instead of a table
        #[arg(long)]
        event: bool,
        #[command(flatten)]
        output: FormatArg,
        /// Only these VMs (ID, name or ID prefix)
        #[arg(value_name = "VM")]
        vms: Vec<String>,
    },
    /// Attach/detach a raw data disk to a running VM (Cloud Hypervisor, QEMU)
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Grow or shrink a running VM's NICs (Cloud Hypervisor, QEMU)
    #[command(
        after_help = "New NICs are made as `vm create` makes them (CNI ADD of eth<i> on the VM's network, or a TAP on its --bridge) and hot-plugged; NICs are removed from the highest index down (out of the VM, CNI DEL, TAP deleted). The NICs are recorded: they are back after `vm stop`/`vm start` and a snapshot's clones get as many. A VM keeps at least one NIC. Quiesce a NIC inside the guest before removing it. Firecracker cannot hot-plug NICs; on QEMU only NICs `vm net` added can be removed (those a VM is made with have no hot-plug).\n\nExamples:\n  cocoon vm net dev --nics 3\n  cocoon vm net dev --nics 1 -o json"
    )]
    Net {
        /// Target NIC count (1 to 16)
        #[arg(long, required = true)]
        nics: u32,
        #[command(flatten)]
        output: FormatArg,
        vm: String,
    },
    /// Attach/detach a virtiofsd share to a running VM (Cloud Hypervisor, QEMU)
    #[command(subcommand)]
    Fs(FsCommand),
    /// Attach/detach a VFIO PCI passthrough device to a running VM (CH, QEMU)
    #[command(subcommand)]
    Device(DeviceCommand),
}

// The arguments of `vm create`, defined only when it is invoked
// (`Lazy`). A plain comment: a doc comment would become its about text.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub flags: VmFlags,
    #[command(flatten)]
    pub output: FormatArg,
    pub image: String,
    /// Container images: the command, replacing the image's Cmd (after --)
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

// The arguments of `vm run`, defined only when it is invoked
// (`Lazy`). A plain comment: a doc comment would become its about text.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub flags: VmFlags,
    #[command(flatten)]
    pub output: FormatArg,
    /// Remove the VM when it stops; wait for that, and exit with the
    /// main process's status (container images)
    #[arg(long, conflicts_with = "format")]
    pub rm: bool,
    /// Attach the local terminal to the VM's console once it starts
    /// (as `vm console`; with -t)
    #[arg(short = 'i', long, conflicts_with = "format")]
    pub interactive: bool,
    /// With -i: the console is a terminal (`-it`)
    #[arg(short = 't', long, conflicts_with = "format")]
    pub tty: bool,
    pub image: String,
    /// Container images: the command, replacing the image's Cmd (after --)
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

// The arguments of `vm clone`, defined only when it is invoked
// (`Lazy`). A plain comment: a doc comment would become its about text.
#[derive(Debug, Args)]
pub struct CloneArgs {
    #[command(flatten)]
    pub flags: CloneFlags,
    #[command(flatten)]
    pub output: FormatArg,
    /// Clone from a snapshot directory (`snapshot export --to-dir`) instead of a stored snapshot
    #[arg(long, value_name = "DIR", conflicts_with_all = ["snapshot", "pull"])]
    pub from_dir: Option<PathBuf>,
    #[arg(required_unless_present = "from_dir")]
    pub snapshot: Option<String>,
}

// The arguments of `vm restore`, defined only when it is invoked
// (`Lazy`). A plain comment: a doc comment would become its about text.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub shape: SnapshotShape,
    /// How memory comes back (default: the backend's own; copy for Cloud Hypervisor, mmap for Firecracker)
    #[arg(long, value_enum, value_name = "MODE")]
    pub restore_mode: Option<RestoreModeArg>,
    /// Same as --restore-mode ondemand (older cocoon)
    #[arg(long, conflicts_with = "restore_mode")]
    pub on_demand: bool,
    /// CPU control (the VM's own unless one is given; then these replace it)
    #[command(flatten)]
    pub cpu_control: cgroup::CpuFlags,
    /// Device switches: the snapshot's always; one it was taken without is refused
    #[command(flatten)]
    pub switches: switches::SwitchFlags,
    /// Restore from a snapshot directory (`snapshot export --to-dir`) instead of a stored snapshot
    #[arg(long, value_name = "DIR", conflicts_with = "snapshot")]
    pub from_dir: Option<PathBuf>,
    /// With --from-dir or --pull: restore a snapshot taken from another VM (its shape must still match)
    #[arg(long)]
    pub force: bool,
    /// SNAPSHOT is a registry reference (`snapshot push`): pull it, restore it, drop it
    #[arg(long, conflicts_with = "from_dir")]
    pub pull: bool,
    #[command(flatten)]
    pub output: FormatArg,
    pub vm: String,
    #[arg(required_unless_present = "from_dir")]
    pub snapshot: Option<String>,
}

// The arguments of `vm debug`, defined only when it is invoked
// (`Lazy`). A plain comment: a doc comment would become its about text.
#[derive(Debug, Args)]
pub struct DebugArgs {
    #[command(flatten)]
    pub flags: VmFlags,
    /// Maximum vCPUs for hotplug
    #[arg(long, default_value_t = 8)]
    pub max_cpu: u32,
    /// Balloon size in MiB (0 = half the memory)
    #[arg(long, default_value_t = 0)]
    pub balloon: u64,
    /// Path of the COW disk to use
    #[arg(long, value_name = "PATH")]
    pub cow: Option<PathBuf>,
    /// Cloud Hypervisor binary to print
    #[arg(long = "ch", default_value = "cloud-hypervisor", value_name = "BINARY")]
    pub ch: String,
    pub image: String,
}
