//! `vm debug`: what a create and a start would run, printed instead of run,
//! from the same planning and launch builders they use.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backend::{self, LaunchOptions};
use crate::context::Ctx;
use crate::error::Result;
use crate::layout::VmPaths;
use crate::model::Hypervisor;
use crate::vm::VmError;
use crate::vm::{disks, overlay};

use super::vm_create::CreateVm;
use super::vm_plan::{self, Plan};

/// The disk preparation and the launch of a VM, as commands and API calls.
#[derive(Debug, Clone, Serialize)]
pub struct DebugPlan {
    pub hypervisor: Hypervisor,
    pub prepare: Vec<Vec<String>>,
    /// Files the start writes before the launch: (path, content).
    pub files: Vec<(PathBuf, String)>,
    pub binary: String,
    pub args: Vec<String>,
    /// The VMM's API socket the calls below go to.
    pub api_socket: PathBuf,
    /// API calls made after the launch, before the guest runs: (method, path, body).
    pub api_calls: Vec<(String, String, serde_json::Value)>,
}

pub(crate) fn run(
    ctx: &mut Ctx,
    request: &CreateVm,
    opts: &LaunchOptions,
    cow: Option<&Path>,
) -> Result<DebugPlan> {
    let id = crate::id::generate_id();
    let Plan {
        vm, disks, overlay, ..
    } = vm_plan::plan(ctx, request, &id, cow)?;
    let mut commands = match &overlay {
        Some(overlay) => overlay::commands(overlay).map_err(VmError::from)?,
        None => vec![],
    };
    commands.extend(disks.iter().flat_map(disks::prep_commands));
    let backend = backend::of(vm.hypervisor);
    let paths = VmPaths::of(&vm);
    let mut prepare: Vec<Vec<String>> = commands
        .iter()
        .map(|argv| {
            argv.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        })
        .collect();
    prepare.extend(backend.debug_prepare(&vm, &paths, opts));
    Ok(DebugPlan {
        hypervisor: vm.hypervisor,
        prepare,
        files: backend.debug_files(&vm, &paths, opts),
        binary: opts.binary.display().to_string(),
        args: backend.debug_args(&vm, &paths, opts),
        api_socket: paths.api_socket(),
        api_calls: backend.boot_calls(&vm, opts),
    })
}
