//! `cocoon image …`, `cocoon kernel …` and `cocoon snapshot …`.

use std::path::PathBuf;
use std::str::FromStr;

use clap::Subcommand;
use cocoon_engine::name::SnapshotName;

use super::*;

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
    Inspect {
        #[command(flatten)]
        output: JsonOnlyArg,
        image: String,
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
    Inspect {
        #[command(flatten)]
        output: JsonOnlyArg,
        snapshot: String,
    },
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
        /// Export into this directory (absent or empty) as plain files instead of an archive; pairs with `vm clone --from-dir`
        #[arg(long, value_name = "DIR", conflicts_with_all = ["output", "gzip", "compression"])]
        to_dir: Option<PathBuf>,
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
    /// Push a snapshot to an OCI registry (in chunks: only blocks the registry lacks are sent)
    #[command(
        after_help = "Examples:\n  cocoon snapshot push base registry.example.com/snaps/base:v1\n  cocoon snapshot push -o json base 127.0.0.1:5000/snaps/base:v2\n  cocoon snapshot push --layout whole base registry.example.com/snaps/base:epoch"
    )]
    Push {
        #[command(flatten)]
        output: FormatArg,
        /// How the snapshot is laid out in the registry
        #[arg(long, value_enum, default_value_t = LayoutArg::Chunked)]
        layout: LayoutArg,
        snapshot: String,
        /// Registry reference: host[:port]/repository[:tag]
        reference: String,
    },
    /// Pull a snapshot from an OCI registry (either layout of `snapshot push`, or epoch's)
    #[command(
        after_help = "Examples:\n  cocoon snapshot pull registry.example.com/snaps/base:v1\n  cocoon snapshot pull --name base2 127.0.0.1:5000/snaps/base:v2"
    )]
    Pull {
        #[arg(long, value_parser = SnapshotName::from_str)]
        name: Option<SnapshotName>,
        #[command(flatten)]
        output: FormatArg,
        /// Registry reference: host[:port]/repository[:tag|@digest]
        reference: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Install a kernel for container images (Debian's cloud kernel by default)
    ///
    /// The package is fetched with apt-get from the host's own sources and unpacked
    /// under root_dir/kernels, never installed on the host.
    #[command(
        after_help = "Examples:\n  cocoon kernel install\n  cocoon kernel install --deb linux-image-6.1.0-41-cloud-amd64_6.1.158-1_amd64.deb"
    )]
    Install {
        /// Debian package (a metapackage names the current kernel)
        #[arg(long, default_value = cocoon_engine::kernel::DEFAULT_PACKAGE, conflicts_with = "deb")]
        package: String,
        /// Install from this linux-image package file instead of downloading
        #[arg(long, value_name = "FILE")]
        deb: Option<PathBuf>,
    },
    /// List installed kernels
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        output: FormatArg,
    },
    /// Remove an installed kernel (refused while a VM uses it)
    Rm { release: String },
}
