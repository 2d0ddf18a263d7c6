use std::path::Path;
use std::time::Duration;

use cocoon_engine::backend::{self, LaunchOptions};
use cocoon_engine::engine::BatchOutcome;
use cocoon_engine::model::{Hypervisor, ImageType, Vm, VmConfig, VmListing, VmView};
use cocoon_engine::ops::vm_clone::CloneRequest;
use cocoon_engine::ops::vm_create::CreateVm;
use cocoon_engine::ops::vm_debug::DebugPlan;
use cocoon_engine::ops::vm_resize::VmResize;
use cocoon_engine::ops::vm_stop::StopOptions;
use cocoon_engine::spec::{self, DataDiskSpec};
use cocoon_engine::units::BinarySize;
use cocoon_engine::vm::default_vm_name;
use cocoon_engine::{Config, Engine, Error, Result};

use super::vm_lifecycle::{hibernate, resize, restore_command};
use super::{Outcome, io, vm_reads, vm_run};
use crate::cli::{
    CloneArgs, CloneFlags, CreateArgs, DebugArgs, FormatArg, Lazy, RestoreModeArg, RunArgs,
    VmCommand, VmFlags,
};
use crate::output::{local_time, print_json, print_line, print_table};

pub fn run(command: VmCommand, config: Config) -> Result<Outcome> {
    validate_before_open(&command)?;
    let mut engine = super::open(config)?;
    let engine = &mut engine;
    match command {
        VmCommand::Run(Lazy(RunArgs {
            flags,
            output,
            rm,
            interactive,
            tty,
            image,
            command,
        })) => {
            let attach = vm_run::Attach {
                rm,
                interactive,
                tty,
            };
            vm_run::run(engine, &flags, output, &image, command, attach)
        }
        other => run_other(engine, other).map(|()| Outcome::Success),
    }
}

fn run_other(engine: &mut Engine, command: VmCommand) -> Result<()> {
    match command {
        VmCommand::Run(_) => unreachable!("vm run is handled by vm_run"),
        VmCommand::Create(Lazy(CreateArgs {
            flags,
            output,
            image,
            command,
        })) => create(engine, &flags, output, &image, command),
        VmCommand::Debug(Lazy(DebugArgs {
            flags,
            max_cpu,
            balloon,
            cow,
            ch,
            image,
        })) => {
            let request = create_request(engine, &flags, &image, Vec::new())?;
            debug(engine, request, ch, max_cpu, balloon, cow.as_deref())
        }
        cmd @ (VmCommand::Logs { .. }
        | VmCommand::Status { .. }
        | VmCommand::ReconcileStaleCreate { .. }) => vm_reads::run(engine, cmd),
        VmCommand::Clone(Lazy(CloneArgs {
            flags,
            output,
            from_dir,
            snapshot,
        })) => clone(
            engine,
            &flags,
            output,
            from_dir.as_deref(),
            snapshot.as_deref(),
        ),
        VmCommand::Start { output, vms } => {
            let outcomes = engine.for_each_vm(&vms, |e, id| e.start_vm(id))?;
            report_batch("started", outcomes, output.json())
        }
        VmCommand::Stop {
            force,
            timeout,
            output,
            vms,
        } => stop(engine, force, timeout, output, &vms),
        VmCommand::Rm { force, output, vms } => {
            let outcomes = engine.for_each_vm(&vms, |e, id| e.remove_vm(id, force))?;
            report_batch("removed", outcomes, output.json())
        }
        VmCommand::Console { escape_char, vm } => super::console::attach(engine, &vm, escape_char),
        command @ VmCommand::Restore(_) => restore_command(engine, command),
        VmCommand::Hibernate {
            name,
            description,
            output,
            vm,
        } => hibernate(engine, &vm, name, &description, output),
        VmCommand::Resize {
            cpu,
            memory,
            output,
            vm,
        } => resize(engine, &vm, VmResize { cpu, memory }, output),
        VmCommand::Net { nics, output, vm } => super::hotplug::net(engine, &vm, nics, output),
        VmCommand::List { output } => list(engine, output),
        VmCommand::Inspect { vm, .. } => print_json(&engine.inspect_vm(&vm)?).map_err(io),
        VmCommand::Agent(_) | VmCommand::Disk(_) | VmCommand::Fs(_) | VmCommand::Device(_) => {
            unreachable!("commands::run hands vm exec/reseed/disk/fs/device to their modules")
        }
    }
}

/// Input is validated before the engine opens, so a refused command leaves no trace.
fn validate_before_open(command: &VmCommand) -> Result<()> {
    match command {
        VmCommand::Create(Lazy(CreateArgs { flags, .. }))
        | VmCommand::Run(Lazy(RunArgs { flags, .. })) => {
            validate_vm_flags(flags)?;
        }
        VmCommand::Debug(Lazy(DebugArgs { flags, .. })) if !flags.data_disks.is_empty() => {
            tracing::warn!("--data-disk is ignored by vm debug");
        }
        _ => {}
    }
    Ok(())
}

/// `vm create`.
fn create(
    engine: &mut Engine,
    flags: &VmFlags,
    output: FormatArg,
    image: &str,
    command: Vec<String>,
) -> Result<()> {
    let request = create_request(engine, flags, image, command)?;
    let vm = engine.create_vm(request)?;
    if output.json() {
        return print_json(&VmView::reconcile(vm)).map_err(io);
    }
    eprintln!(
        "VM created: {} (name: {}, state: {})",
        vm.id, vm.config.name, vm.state
    );
    eprintln!("start with: cocoon vm start {}", vm.config.name);
    print_line(&vm.id).map_err(io)
}

/// `vm debug`: prints the script that would launch the VM.
fn debug(
    engine: &mut Engine,
    mut request: CreateVm,
    ch: String,
    max_cpu: u32,
    balloon: u64,
    cow: Option<&Path>,
) -> Result<()> {
    request.data_disks.clear();
    if request.nics > 0 {
        tracing::warn!("vm debug prints no network: NICs are created by vm create");
        request.nics = 0;
    }
    // `--ch` names Cloud Hypervisor's binary for the script; the
    // other VMMs' come from the configuration.
    let binary = if request.hypervisor == Hypervisor::CloudHypervisor {
        ch.into()
    } else {
        backend::of(request.hypervisor).binary(engine.config())
    };
    let mut opts = LaunchOptions::configured(binary, engine.config());
    opts.max_cpus = max_cpu.max(request.config.cpu);
    opts.balloon_bytes = (balloon > 0).then_some(balloon << 20);
    let plan = engine.debug_vm(&request, &opts, cow)?;
    print!("{}", debug_script(&plan, &request.config.name));
    Ok(())
}

/// `vm clone`: optionally pulls the snapshot's base image first.
fn clone(
    engine: &mut Engine,
    flags: &CloneFlags,
    output: FormatArg,
    from_dir: Option<&Path>,
    snapshot: Option<&str>,
) -> Result<()> {
    let request = CloneRequest {
        name: flags.name.clone(),
        cpu: flags.shape.cpu,
        memory: flags.shape.memory,
        storage: flags.shape.storage,
        nics: flags.nics,
        network: flags.network.clone(),
        bridge: flags.bridge.clone(),
        queue_size: flags.queue_size,
        disk_queue_size: flags.disk_queue_size,
        no_direct_io: flags.no_direct_io,
        restore_mode: RestoreModeArg::engine(flags.restore_mode, flags.on_demand),
        resources: flags
            .cpu_control
            .given()
            .then(|| flags.cpu_control.limits(|| engine.auto_cpus()))
            .transpose()?,
        devices: flags.switches.switches(),
        data_disks: spec::normalize_data_disks(flags.data_disks.clone())?,
    };
    let vm = match (from_dir, snapshot) {
        (Some(dir), _) => engine.clone_vm_from_dir(dir, request)?,
        (None, Some(reference))
            if flags.pull && super::snapshot_registry::is_reference(reference) =>
        {
            super::snapshot_registry::with_pulled(engine, reference, |engine, pulled| {
                pull_snapshot_base(engine, &pulled.snapshot.id, &request)?;
                engine.clone_vm(&pulled.snapshot.id, request)
            })?
        }
        (None, Some(snapshot)) => {
            if flags.pull {
                pull_snapshot_base(engine, snapshot, &request)?;
            }
            engine.clone_vm(snapshot, request)?
        }
        (None, None) => unreachable!("clap requires SNAPSHOT or --from-dir"),
    };
    let refreshed = engine.refresh_guest(&vm.id, true);
    if output.json() {
        return print_json(&VmView::reconcile(vm)).map_err(io);
    }
    eprintln!("cloned: {} (name: {})", vm.id, vm.config.name);
    match refreshed {
        Ok(true) => eprintln!(
            "{} took its own identity through its guest agent: hostname, machine-id, addresses, a reseeded CRNG",
            vm.config.name
        ),
        Ok(false) => print_clone_hints(&vm),
        Err(e) => {
            tracing::warn!(
                "{}: the guest agent did not take the new identity: {e}",
                vm.config.name
            );
            print_clone_hints(&vm);
        }
    }
    print_line(&vm.id).map_err(io)
}

/// `vm clone --pull`: fetches the snapshot's base image, with progress.
fn pull_snapshot_base(engine: &mut Engine, snapshot: &str, request: &CloneRequest) -> Result<()> {
    let oci = super::image::PullReporter::new();
    let cloud = super::image::CloudReporter::new();
    let pulled = engine.pull_snapshot_base(snapshot, request, &oci, &cloud);
    oci.finish();
    cloud.finish();
    if let Some(reference) = pulled? {
        tracing::info!("pulled the snapshot's base image {reference}");
    }
    Ok(())
}

/// `vm stop`.
fn stop(
    engine: &mut Engine,
    force: bool,
    timeout: u64,
    output: FormatArg,
    vms: &[String],
) -> Result<()> {
    let options = StopOptions {
        force,
        timeout: (timeout > 0).then(|| Duration::from_secs(timeout)),
    };
    let outcomes = engine.for_each_vm(vms, |e, id| e.stop_vm(id, options))?;
    report_batch("stopped", outcomes, output.json())
}

/// `vm list`.
fn list(engine: &mut Engine, output: FormatArg) -> Result<()> {
    if output.json() {
        return print_json(&engine.list_vms()?).map_err(io);
    }
    // The table's fields only, not whole records.
    let vms = engine.list_vm_listings()?;
    if vms.is_empty() {
        return print_line("No VMs found.").map_err(io);
    }
    print_table(LIST_HEADERS, vms.iter().map(listing_row).collect()).map_err(io)
}

/// The create request of `vm create`, `vm run` and `vm debug`.
pub(super) fn create_request(
    engine: &mut Engine,
    flags: &VmFlags,
    image: &str,
    command: Vec<String>,
) -> Result<CreateVm> {
    let data_disks = validate_vm_flags(flags)?;
    let name = match &flags.name {
        Some(name) => name.clone(),
        None => default_vm_name(image).parse().map_err(|e| {
            Error::Invalid(format!(
                "cannot derive a VM name from {image:?} ({e}); pass --name"
            ))
        })?,
    };
    let mut config = VmConfig::new(name, image, ImageType::Oci);
    config.cpu = flags.cpu;
    config.memory = flags.memory;
    config.storage = flags.storage;
    config.queue_size = flags.queue_size;
    config.disk_queue_size = flags.disk_queue_size;
    config.network = flags.network.clone();
    config.no_direct_io = flags.no_direct_io;
    config.windows = flags.windows;
    config.no_agent = flags.no_agent;
    config.resources = flags.cpu_control.limits(|| engine.auto_cpus())?;
    config.devices = flags.switches.switches();
    Ok(CreateVm {
        config,
        hypervisor: match flags.hypervisor {
            Some(chosen) => chosen,
            None if flags.fc => Hypervisor::Firecracker,
            None if flags.qemu => Hypervisor::Qemu,
            // The PATH lookup of every VMM binary, only when no flag chose.
            None => backend::configured(engine.config()),
        },
        nics: flags.nics,
        data_disks,
        bridge: flags.bridge.clone(),
        user: flags.user.clone(),
        password: flags.password.clone(),
        command,
        env: flags.env.clone(),
    })
}

/// What to run in a clone's guest so it takes its new identity (cocoon prints
/// the same): drop the page cache, take the new MACs, rewrite networkd files.
fn print_clone_hints(vm: &Vm) {
    eprintln!(
        "In the guest of {}, to take its new identity:",
        vm.config.name
    );
    eprintln!("  echo 3 > /proc/sys/vm/drop_caches");
    print_mac_hints(vm);
    if vm.config.image_type == ImageType::Cloudimg && !vm.config.windows {
        // Its new cidata disk carries the new instance id, name and NICs.
        eprintln!("  rm -f /etc/systemd/network/10-*.network");
        eprintln!("  cloud-init clean --logs");
        eprintln!("  cloud-init init --local && cloud-init init");
        eprintln!("  cloud-init modules --mode=config && cloud-init modules --mode=final");
        return;
    }
    print_networkd_hints(vm);
}

/// On Firecracker, the guest takes the clone's new MACs by hand.
fn print_mac_hints(vm: &Vm) {
    if vm.hypervisor == Hypervisor::Firecracker {
        for (i, n) in vm.network_configs.iter().enumerate() {
            eprintln!("  ip link set dev eth{i} address {}", n.mac);
        }
    }
}

/// Rewrites the guest's networkd files for the clone's name and NICs.
fn print_networkd_hints(vm: &Vm) {
    if !vm.network_configs.is_empty() {
        eprintln!("  rm -f /etc/systemd/network/10-*.network");
        eprintln!("  hostnamectl set-hostname {}", vm.config.name);
        for (i, n) in vm.network_configs.iter().enumerate() {
            match &n.network {
                Some(ip) => eprintln!(
                    "  printf '[Match]\\nMACAddress={}\\n[Network]\\nAddress={}/{}\\nGateway={}\\n' > /etc/systemd/network/10-eth{i}.network",
                    n.mac, ip.ip, ip.prefix, ip.gateway
                ),
                None => eprintln!(
                    "  printf '[Match]\\nMACAddress={}\\n[Network]\\nDHCP=yes\\n' > /etc/systemd/network/10-eth{i}.network",
                    n.mac
                ),
            }
        }
        eprintln!("  systemctl restart systemd-networkd");
    }
}

/// Per-VM results of a batch: one line each (errors on stderr), or one JSON
/// object with both lists. Any failure makes the command fail.
fn report_batch(verb: &str, outcomes: Vec<BatchOutcome>, json: bool) -> Result<()> {
    let mut succeeded = Vec::new();
    let mut failed = Vec::new();
    for outcome in outcomes {
        match outcome.result {
            Ok(_) => {
                if !json {
                    print_line(&format!("{verb}: {} ({})", outcome.id, outcome.name))
                        .map_err(io)?;
                }
                succeeded.push(outcome.id);
            }
            Err(e) => {
                eprintln!("Error: {e}");
                failed.push(serde_json::json!({"id": outcome.id, "name": outcome.name, "error": e.to_string()}));
            }
        }
    }
    if json {
        print_json(&serde_json::json!({"succeeded": succeeded, "failed": failed})).map_err(io)?;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{} of {} VMs failed",
            failed.len(),
            failed.len() + succeeded.len()
        )))
    }
}

/// `vm debug`'s shell script.
fn debug_script(plan: &DebugPlan, name: &str) -> String {
    let mut text = String::from("# Prepare disks\n");
    for argv in &plan.prepare {
        text.push_str(&shell_words(argv));
        text.push('\n');
    }
    for (path, content) in &plan.files {
        // JSON has no line `EOF` (its strings are quoted), so the quoted
        // here-document ends where the file does.
        text.push_str(&format!(
            "# Write {}\ncat > {} <<'EOF'\n{content}\nEOF\n",
            path.display(),
            shell_words(&[path.display().to_string()])
        ));
    }
    text.push_str(&format!("# Launch VM: {name} ({})\n", plan.hypervisor));
    let mut argv = vec![plan.binary.clone()];
    argv.extend(plan.args.iter().cloned());
    text.push_str(&shell_words(&argv));
    if plan.api_calls.is_empty() {
        text.push('\n');
        return text;
    }
    // The VMM waits in the background for its configuration calls.
    text.push_str(" &\n");
    let socket = plan.api_socket.display().to_string();
    let (qmp, http): (Vec<_>, Vec<_>) = plan.api_calls.iter().partition(|(m, ..)| m == "QMP");
    for (method, path, body) in http {
        text.push_str(&shell_words(&[
            "curl".into(),
            "--unix-socket".into(),
            socket.clone(),
            "-X".into(),
            method.clone(),
            "-H".into(),
            "Content-Type: application/json".into(),
            "-d".into(),
            body.to_string(),
            format!("http://localhost{path}"),
        ]));
        text.push('\n');
    }
    if !qmp.is_empty() {
        text.push_str(&qmp_line(&qmp, &socket));
    }
    text
}

/// QMP commands (after the capabilities handshake QEMU requires), one JSON
/// object a line, into the VMM's socket.
fn qmp_line(calls: &[&(String, String, serde_json::Value)], socket: &str) -> String {
    let mut argv = vec![
        "printf".into(),
        "%s\\n".into(),
        serde_json::json!({ "execute": "qmp_capabilities" }).to_string(),
    ];
    for (_, command, arguments) in calls {
        let execute = serde_json::Value::from(command.as_str());
        argv.push(if arguments.as_object().is_some_and(|a| a.is_empty()) {
            format!(r#"{{"execute":{execute}}}"#)
        } else {
            format!(r#"{{"execute":{execute},"arguments":{arguments}}}"#)
        });
    }
    format!(
        "{} | {}\n",
        shell_words(&argv),
        shell_words(&["socat".into(), "-".into(), format!("UNIX-CONNECT:{socket}")])
    )
}

/// Joins argv for a POSIX shell, quoting what needs it.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=,./:@%+[]".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Cross-flag checks clap cannot express; each value was validated when parsed.
fn validate_vm_flags(flags: &VmFlags) -> Result<Vec<DataDiskSpec>> {
    Ok(spec::normalize_data_disks(flags.data_disks.clone())?)
}

pub const LIST_HEADERS: &[&str] = &[
    "ID",
    "NAME",
    "STATE",
    "CPU",
    "MEMORY",
    "STORAGE",
    "THROTTLED",
    "IP",
    "IMAGE",
    "CREATED",
];

pub fn list_row(view: &VmView) -> Vec<String> {
    listing_row(&VmListing::from(view))
}

/// One row of `vm ls`.
pub fn listing_row(vm: &VmListing) -> Vec<String> {
    vec![
        vm.id.clone(),
        vm.name.to_string(),
        vm.state_label(),
        vm.cpu.to_string(),
        BinarySize(vm.memory).to_string(),
        BinarySize(vm.storage).to_string(),
        crate::output::throttled(vm.cpu_stat.as_ref()),
        if vm.ips.is_empty() {
            "-".into()
        } else {
            vm.ips.join(",")
        },
        vm.image.clone(),
        local_time(vm.created_at),
    ]
}
