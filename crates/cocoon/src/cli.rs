//! The command line: cocoon's command tree, flags, defaults and validation
//! (docs/reference/cocoon-v0.3.8.md §1), as clap definitions. Per-value validation happens here, in
//! value parsers, so a bad flag is a usage error (exit 2) before anything runs. `--name` parses
//! into the engine's validated name types, so clap refuses a bad name with the engine's message.

use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use cocoon_engine::model::Hypervisor;
use cocoon_engine::name::{SnapshotName, VmName};
use cocoon_engine::spec::{self, RawDataDisk};

const ROOT_EXAMPLES: &str = "\
Examples:
  cocoon image pull ghcr.io/cocoonstack/cocoon/ubuntu:24.04
  cocoon vm run --name dev --cpu 2 --memory 2G ghcr.io/cocoonstack/cocoon/ubuntu:24.04
  cocoon vm ls
  cocoon snapshot save --name base dev
  cocoon vm clone --name dev2 base

Exit codes: 0 success, 1 error, 2 usage error (bad flag or value).";

#[derive(Debug, Parser)]
#[command(
    name = "cocoon",
    about = "Daemonless microVM engine: Cloud Hypervisor and Firecracker VMs from OCI and cloud images",
    after_help = ROOT_EXAMPLES,
    disable_version_flag = true,
    propagate_version = false,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes. Each overrides its config key and `COCOON_*` variable.
#[derive(Debug, Args, Default)]
pub struct GlobalArgs {
    /// Config file (TOML) [env: COCOON_CONFIG] [default: /etc/cocoon/config.toml if present]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Root directory for state, images and snapshots [env: COCOON_ROOT_DIR] [default: /var/lib/cocoon]
    #[arg(long, global = true, value_name = "DIR")]
    pub root_dir: Option<String>,
    /// Runtime directory for VM sockets and disks [env: COCOON_RUN_DIR] [default: <root-dir>/run]
    #[arg(long, global = true, value_name = "DIR")]
    pub run_dir: Option<String>,
    /// Directory for VMM and console logs [env: COCOON_LOG_DIR] [default: /var/log/cocoon]
    #[arg(long, global = true, value_name = "DIR")]
    pub log_dir: Option<String>,
    /// CNI network config directory [env: COCOON_CNI_CONF_DIR] [default: /etc/cni/net.d]
    #[arg(long, global = true, value_name = "DIR")]
    pub cni_conf_dir: Option<String>,
    /// CNI plugin directory [env: COCOON_CNI_BIN_DIR] [default: /opt/cni/bin]
    #[arg(long, global = true, value_name = "DIR")]
    pub cni_bin_dir: Option<String>,
    /// DNS servers for guests, comma separated [env: COCOON_DNS] [default: 8.8.8.8,1.1.1.1]
    #[arg(long, global = true, value_name = "IPS")]
    pub dns: Option<String>,
    /// Log level: trace, debug, info, warn, error [env: COCOON_LOG_LEVEL] [default: info]
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

impl GlobalArgs {
    /// The flags the user gave, as (config key, raw value).
    pub fn config_flags(&self) -> Vec<(&'static str, String)> {
        [
            ("root_dir", &self.root_dir),
            ("run_dir", &self.run_dir),
            ("log_dir", &self.log_dir),
            ("cni_conf_dir", &self.cni_conf_dir),
            ("cni_bin_dir", &self.cni_bin_dir),
            ("dns", &self.dns),
            ("log.level", &self.log_level),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.clone().map(|v| (key, v)))
        .collect()
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage images (OCI VM images and cloud images)
    #[command(subcommand)]
    Image(ImageCommand),
    /// Manage virtual machines
    #[command(subcommand)]
    Vm(VmCommand),
    /// Manage snapshots of VMs
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Remove unreferenced blobs, stale records and leaked VM resources
    #[command(after_help = "Examples:\n  cocoon gc --dry-run\n  cocoon gc -o json")]
    Gc {
        /// List what would be removed without removing anything
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        output: FormatArg,
    },
    /// Check whether this host can run VMs, and how to fix what is missing
    ///
    /// cocoon's doctor/check.sh as a command. It only looks: it changes nothing and does not
    /// open the state database, so it also works when root_dir is broken. Every item is OK,
    /// WARN (some features will not work) or FAIL (no VM can run), with the fix; exit 0 iff a VM can run.
    #[command(
        after_help = "Examples:\n  cocoon doctor\n  cocoon doctor -o json | jq '.checks[] | select(.status != \"ok\")'\n  COCOON_CH_BINARY=/opt/ch/cloud-hypervisor cocoon doctor"
    )]
    Doctor {
        #[command(flatten)]
        output: FormatArg,
    },
    /// Show version information
    Version,
    /// Generate a shell completion script
    #[command(
        after_help = "Examples:\n  cocoon completion bash > /etc/bash_completion.d/cocoon\n  cocoon completion zsh > \"${fpath[1]}/_cocoon\"\n  cocoon completion fish > ~/.config/fish/completions/cocoon.fish"
    )]
    Completion {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write man pages for every command into DIR
    #[command(hide = true)]
    ManPages { dir: PathBuf },
}

/// `--restore-mode`: how a restored VM's memory comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestoreModeArg {
    /// Cloud Hypervisor: read the whole memory file in (its default)
    Copy,
    /// Cloud Hypervisor: fill pages on first touch (userfaultfd)
    Ondemand,
    /// Map the memory file copy-on-write (Firecracker's way and default)
    Mmap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    /// zstd, multi-threaded (default)
    Zstd,
    Gzip,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Args, Clone, Copy)]
pub struct FormatArg {
    /// Output format
    #[arg(short = 'o', long = "format", value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

impl FormatArg {
    pub fn json(self) -> bool {
        self.format == Format::Json
    }
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull OCI images or cloud images (http/https URLs)
    #[command(
        after_help = "Examples:\n  cocoon image pull ghcr.io/cocoonstack/cocoon/ubuntu:24.04\n  cocoon image pull https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img"
    )]
    Pull {
        /// Re-download a cloud image even if the URL is cached
        #[arg(long)]
        force: bool,
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Import an image from local files (tar layers, qcow2, raw, gzip) or stdin
    #[command(
        after_help = "Examples:\n  cocoon image import myimg rootfs.qcow2\n  cocoon image import myimg disk.qcow2.part1 disk.qcow2.part2\n  zcat disk.raw.gz | cocoon image import myimg"
    )]
    Import {
        name: String,
        /// Files to import; stdin when omitted
        #[arg(value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// List images
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        output: FormatArg,
    },
    /// Remove images from the index (blobs are reclaimed by gc)
    Rm {
        #[arg(required = true, value_name = "ID")]
        images: Vec<String>,
    },
    /// Show an image as JSON
    Inspect { image: String },
}

fn parse_cpu(s: &str) -> Result<u32, String> {
    let cpu: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    spec::validate_cpu(cpu, spec::host_cpus()).map_err(|e| e.to_string())?;
    Ok(cpu)
}

/// 0 means "inherit from the snapshot".
fn parse_cpu_or_inherit(s: &str) -> Result<u32, String> {
    if s == "0" { Ok(0) } else { parse_cpu(s) }
}

fn parse_memory(s: &str) -> Result<u64, spec::SpecError> {
    spec::parse_memory(s)
}

fn parse_storage(s: &str) -> Result<u64, spec::SpecError> {
    spec::parse_storage(s)
}

fn parse_queue_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    spec::validate_queue_size("--queue-size", n).map_err(|e| e.to_string())?;
    Ok(n)
}

fn parse_disk_queue_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    spec::validate_queue_size("--disk-queue-size", n).map_err(|e| e.to_string())?;
    Ok(n)
}

fn parse_user(s: &str) -> Result<String, spec::SpecError> {
    spec::validate_user(s).map(|()| s.to_string())
}

fn parse_password(s: &str) -> Result<String, spec::SpecError> {
    spec::validate_password(s).map(|()| s.to_string())
}

fn parse_data_disk(s: &str) -> Result<RawDataDisk, spec::SpecError> {
    spec::parse_data_disk(s)
}

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
}

/// The flags of `vm clone`: zero or empty means "as in the snapshot".
#[derive(Debug, Args, Clone)]
pub struct CloneFlags {
    /// Name of the new VM [default: cocoon-clone-<id8>]
    #[arg(long, value_parser = VmName::from_str)]
    pub name: Option<VmName>,
    /// Virtual CPUs (0 = as in the snapshot; may grow, not shrink)
    #[arg(long, default_value = "0", value_parser = parse_cpu_or_inherit)]
    pub cpu: u32,
    /// Memory (as in the snapshot when omitted; may grow, not shrink)
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Root disk size (as in the snapshot when omitted; may grow, not shrink)
    #[arg(long, value_parser = parse_storage)]
    pub storage: Option<u64>,
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
    /// Pull the snapshot's base image (pinned by digest) if it is missing
    #[arg(long)]
    pub pull: bool,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM from an image without starting it
    #[command(
        after_help = "Examples:\n  cocoon vm create --name web ghcr.io/cocoonstack/cocoon/ubuntu:24.04\n  cocoon vm create --fc --nics 0 --data-disk size=20G,name=db ghcr.io/cocoonstack/cocoon/ubuntu:24.04"
    )]
    Create {
        #[command(flatten)]
        flags: VmFlags,
        #[command(flatten)]
        output: FormatArg,
        image: String,
    },
    /// Create and start a VM
    #[command(
        after_help = "Examples:\n  cocoon vm run --name dev --cpu 2 --memory 2G ghcr.io/cocoonstack/cocoon/ubuntu:24.04\n  cocoon vm run --nics 0 -o json ghcr.io/cocoonstack/cocoon/ubuntu:24.04"
    )]
    Run {
        #[command(flatten)]
        flags: VmFlags,
        #[command(flatten)]
        output: FormatArg,
        image: String,
    },
    /// Create and start a new VM from a snapshot
    #[command(
        after_help = "Examples:\n  cocoon vm clone --name dev2 base\n  cocoon vm clone --cpu 4 --memory 4G --pull base"
    )]
    Clone {
        #[command(flatten)]
        flags: CloneFlags,
        #[command(flatten)]
        output: FormatArg,
        snapshot: String,
    },
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
    Inspect { vm: String },
    /// Attach to a VM's console (detach with the escape character followed by '.')
    Console {
        /// Escape character, e.g. ^] or ^a
        #[arg(long, default_value = "^]", value_parser = spec::parse_escape_char)]
        escape_char: u8,
        vm: String,
    },
    #[command(flatten)]
    Agent(crate::cli_agent::AgentCommand),
    /// Print a VM's captured console and serial output
    #[command(
        after_help = "Examples:\n  cocoon vm logs dev\n  cocoon vm logs -f dev\n  cocoon vm logs --vmm dev"
    )]
    Logs {
        /// Keep printing new output until interrupted or the VM stops
        #[arg(short = 'f', long)]
        follow: bool,
        /// Print the VMM process's own log instead of the guest's output
        #[arg(long)]
        vmm: bool,
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
    /// Restore a running VM in place from one of its snapshots
    Restore {
        /// Virtual CPUs (0 = as in the snapshot)
        #[arg(long, default_value = "0", value_parser = parse_cpu_or_inherit)]
        cpu: u32,
        /// Memory (as in the snapshot when omitted)
        #[arg(long, value_parser = parse_memory)]
        memory: Option<u64>,
        /// Root disk size (as in the snapshot when omitted)
        #[arg(long, value_parser = parse_storage)]
        storage: Option<u64>,
        /// How memory comes back (default: the backend's own; copy for Cloud Hypervisor, mmap for Firecracker)
        #[arg(long, value_enum, value_name = "MODE")]
        restore_mode: Option<RestoreModeArg>,
        /// Same as --restore-mode ondemand (older cocoon)
        #[arg(long, conflicts_with = "restore_mode")]
        on_demand: bool,
        #[command(flatten)]
        output: FormatArg,
        vm: String,
        snapshot: String,
    },
    /// Print the commands that would launch a VM, without running them
    Debug {
        #[command(flatten)]
        flags: VmFlags,
        /// Maximum vCPUs for hotplug
        #[arg(long, default_value_t = 8)]
        max_cpu: u32,
        /// Balloon size in MiB (0 = half the memory)
        #[arg(long, default_value_t = 0)]
        balloon: u64,
        /// Path of the COW disk to use
        #[arg(long, value_name = "PATH")]
        cow: Option<PathBuf>,
        /// Cloud Hypervisor binary to print
        #[arg(long = "ch", default_value = "cloud-hypervisor", value_name = "BINARY")]
        ch: String,
        image: String,
    },
    /// Watch VM status (refreshing table, or an event stream)
    #[command(after_help = "Examples:\n  cocoon vm status\n  cocoon vm status --event -o json dev")]
    Status {
        /// Seconds between liveness checks (<= 0 means 5)
        #[arg(short = 'n', long, default_value_t = 5, allow_negative_numbers = true)]
        interval: i64,
        /// Print ADDED/MODIFIED/DELETED events instead of a table
        #[arg(long)]
        event: bool,
        #[command(flatten)]
        output: FormatArg,
        /// Only these VMs (ID, name or ID prefix)
        #[arg(value_name = "VM")]
        vms: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a running VM
    #[command(
        after_help = "Examples:\n  cocoon snapshot save --name base dev\n  cocoon snapshot save --description \"before upgrade\" dev"
    )]
    Save {
        #[arg(long, value_parser = SnapshotName::from_str)]
        name: Option<SnapshotName>,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        output: FormatArg,
        vm: String,
    },
    /// List snapshots
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        output: FormatArg,
        /// Only snapshots of this VM
        #[arg(long)]
        vm: Option<String>,
    },
    /// Show a snapshot as JSON
    Inspect { snapshot: String },
    /// Remove snapshots
    Rm {
        #[arg(required = true, value_name = "SNAPSHOT")]
        snapshots: Vec<String>,
    },
    /// Export a snapshot as a tar archive
    #[command(
        after_help = "Examples:\n  cocoon snapshot export base                  # writes base.tar\n  cocoon snapshot export --gzip -o - base | ssh host cocoon snapshot import"
    )]
    Export {
        /// Output file, or - for stdout [default: <name-or-id>.tar]
        #[arg(short = 'o', long = "output", value_name = "PATH")]
        output: Option<PathBuf>,
        /// Compress with gzip (as cocoon did); same as --compression gzip
        #[arg(long, conflicts_with = "compression")]
        gzip: bool,
        /// Compression of the archive
        #[arg(long, value_enum, default_value_t = CompressionArg::Zstd)]
        compression: CompressionArg,
        snapshot: String,
    },
    /// Import a snapshot archive from a file or stdin
    Import {
        #[arg(long, value_parser = SnapshotName::from_str)]
        name: Option<SnapshotName>,
        #[arg(long, default_value = "")]
        description: String,
        /// Archive to import; stdin when omitted
        file: Option<PathBuf>,
    },
}

impl RestoreModeArg {
    /// The engine's mode for `--restore-mode` / `--on-demand`.
    pub fn engine(
        mode: Option<RestoreModeArg>,
        on_demand: bool,
    ) -> cocoon_engine::backend::RestoreMode {
        use cocoon_engine::backend::RestoreMode;
        match (mode, on_demand) {
            (Some(RestoreModeArg::Copy), _) => RestoreMode::Copy,
            (Some(RestoreModeArg::Ondemand), _) | (None, true) => RestoreMode::OnDemand,
            (Some(RestoreModeArg::Mmap), _) => RestoreMode::Mmap,
            (None, false) => RestoreMode::Default,
        }
    }
}
