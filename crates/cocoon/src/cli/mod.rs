//! The command line: cocoon's command tree, flags, defaults and validation
//! (docs/reference/cocoon-v0.3.8.md §1), as clap definitions. Per-value validation happens here, in
//! value parsers, so a bad flag is a usage error (exit 2) before anything runs. `--name` parses
//! into the engine's validated name types, so clap refuses a bad name with the engine's message.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

pub mod agent;
pub mod cgroup;
pub mod hotplug;
mod image_snapshot;
mod lazy;
mod parse;
pub mod switches;
mod vm;

pub use hotplug::{DeviceCommand, DiskCommand, FsCommand};
pub use image_snapshot::{ImageCommand, KernelCommand, SnapshotCommand};
pub use lazy::{Lazy, full_command};
pub use vm::{
    CloneArgs, CloneFlags, CreateArgs, DebugArgs, RestoreArgs, RunArgs, SnapshotShape, VmCommand,
    VmFlags,
};

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
    Image(Lazy<ImageCommand>),
    /// Manage virtual machines
    #[command(subcommand)]
    Vm(Lazy<Box<VmCommand>>),
    /// Manage snapshots of VMs
    #[command(subcommand)]
    Snapshot(Lazy<SnapshotCommand>),
    /// Manage the default kernels container images boot
    #[command(subcommand)]
    Kernel(Lazy<KernelCommand>),
    /// Remove unreferenced blobs, stale records and leaked VM resources
    ///
    /// With --snapshot, also evict snapshots, least recently used first (upstream #53).
    #[command(
        after_help = "Examples:\n  cocoon gc --dry-run\n  cocoon gc -o json\n  cocoon gc --snapshot --snapshot-keep 5 --snapshot-dry-run\n  cocoon gc --snapshot --snapshot-age 7d --snapshot-size 50G"
    )]
    Gc {
        /// List what would be removed without removing anything
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        snapshots: SnapshotGcArgs,
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

/// `gc --snapshot …` (upstream #53): evict snapshots, least recently used
/// first, until every given bound holds. A snapshot a VM still needs (its
/// hibernation or restore source) is never evicted.
#[derive(Debug, Args, Clone, Default)]
pub struct SnapshotGcArgs {
    /// Also evict snapshots: alone, every snapshot no VM needs (as upstream);
    /// --snapshot-keep/-age/-size bound what is kept
    #[arg(id = "snapshot", long = "snapshot")]
    pub enabled: bool,
    /// Keep at most N snapshots (the N most recently used)
    #[arg(
        id = "snapshot_keep",
        long = "snapshot-keep",
        value_name = "N",
        requires = "snapshot"
    )]
    pub keep: Option<u64>,
    /// Evict snapshots not used for longer than this, e.g. 36h, 7d, 2w
    #[arg(id = "snapshot_age", long = "snapshot-age", value_name = "DURATION", requires = "snapshot", value_parser = parse::parse_age)]
    pub age: Option<std::time::Duration>,
    /// Evict until the snapshots take at most this much disk, e.g. 50G
    #[arg(id = "snapshot_size", long = "snapshot-size", value_name = "SIZE", requires = "snapshot", value_parser = parse::parse_size)]
    pub size: Option<u64>,
    /// List the snapshots that would be evicted, evict nothing
    #[arg(
        id = "snapshot_dry_run",
        long = "snapshot-dry-run",
        requires = "snapshot"
    )]
    pub dry_run: bool,
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

/// `snapshot push --layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LayoutArg {
    /// 4 MiB blocks, each sent once: a later push sends only what changed (default)
    #[default]
    Chunked,
    /// One blob per file, as upstream's epoch pushes: what epoch and vk-cocoon pull
    Whole,
}

impl LayoutArg {
    pub fn engine(self) -> cocoon_engine::ops::snapshot_push::Layout {
        use cocoon_engine::ops::snapshot_push::Layout;
        match self {
            LayoutArg::Chunked => Layout::Chunked,
            LayoutArg::Whole => Layout::Whole,
        }
    }
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

/// `-o`: upstream spells it `--format` on listings and `--output` on the
/// commands that act (vk-cocoon runs `vm clone --output json`); both work everywhere.
#[derive(Debug, Args, Clone, Copy)]
pub struct FormatArg {
    /// Output format
    #[arg(short = 'o', long = "format", visible_alias = "output", value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `-o json` of the inspect commands, which only ever print JSON: accepted
/// so scripts that pass it to every command work (upstream's inspect takes none).
#[derive(Debug, Args, Clone, Copy)]
pub struct JsonOnlyArg {
    /// Output format (inspect always prints JSON)
    #[arg(short = 'o', long = "format", visible_alias = "output", value_enum, default_value_t = JsonOnly::Json)]
    pub format: JsonOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JsonOnly {
    Json,
}

impl FormatArg {
    pub fn json(self) -> bool {
        self.format == Format::Json
    }
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
