//! The command tree and flag set must be exactly cocoon's (docs/reference/cocoon-v0.3.8.md §1.3), as
//! written down in `cli-tree.txt`. A flag added, dropped or renamed fails here.
//! Regenerate with `UPDATE_CLI_TREE=1 cargo test --test cli_tree` and review the diff.

use cocoon::cli::full_command;

fn describe(cmd: &clap::Command, path: &str, out: &mut String) {
    if cmd.is_hide_set() {
        return;
    }
    let aliases: Vec<&str> = cmd.get_visible_aliases().collect();
    out.push_str(path);
    if !aliases.is_empty() {
        out.push_str(&format!(" (alias: {})", aliases.join(", ")));
    }
    out.push('\n');
    let shown = |a: &&clap::Arg| a.get_id() != "help" && (path == "cocoon" || !a.is_global_set());
    let mut flags: Vec<String> = cmd
        .get_opts()
        .chain(
            cmd.get_arguments()
                .filter(|a| !a.is_positional() && !a.get_action().takes_values()),
        )
        .filter(shown)
        .map(|a| {
            let mut s = String::new();
            if let Some(short) = a.get_short() {
                s.push_str(&format!("-{short}, "));
            }
            s.push_str(&format!("--{}", a.get_long().expect("long flag")));
            let defaults: Vec<String> = a
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() && !defaults.iter().all(|d| d == "false") {
                s.push_str(&format!(" = {:?}", defaults.join(",")));
            }
            s
        })
        .collect();
    flags.sort();
    flags.dedup();
    // Positionals keep their declared order: it is part of the interface.
    let positionals = cmd.get_positionals().filter(shown).map(|a| {
        let name = a
            .get_value_names()
            .map_or(a.get_id().to_string(), |n| n[0].to_string());
        let many = matches!(a.get_num_args(), Some(r) if r.max_values() > 1);
        match (a.is_required_set(), many) {
            (true, true) => format!("<{name}>..."),
            (true, false) => format!("<{name}>"),
            (false, true) => format!("[{name}]..."),
            (false, false) => format!("[{name}]"),
        }
    });
    for arg in flags.into_iter().chain(positionals) {
        out.push_str(&format!("  {arg}\n"));
    }
    let mut subs: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
        .collect();
    subs.sort_by_key(|s| s.get_name());
    for sub in subs {
        describe(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

#[test]
fn command_tree_matches_cocoon() {
    let mut actual = String::new();
    describe(&full_command(), "cocoon", &mut actual);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli-tree.txt");
    if std::env::var_os("UPDATE_CLI_TREE").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert_eq!(actual, expected, "the CLI drifted from tests/cli-tree.txt");
}

#[test]
fn clap_definition_is_consistent() {
    full_command().debug_assert();
}

/// Every command path below `cmd`, as arguments (`["vm", "disk", "attach"]`).
fn paths(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let mut path = prefix.to_vec();
        path.push(sub.get_name().to_string());
        out.push(path.clone());
        paths(sub, &path, out);
    }
}

/// The help `cocoon PATH --help` prints, from a command defined by `make`.
fn help_of(make: fn() -> clap::Command, path: &[String]) -> String {
    let argv = std::iter::once("cocoon".to_string())
        .chain(path.iter().cloned())
        .chain(["--help".to_string()]);
    match make().try_get_matches_from(argv) {
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => e.to_string(),
        other => panic!(
            "cocoon {} --help did not print help: {other:?}",
            path.join(" ")
        ),
    }
}

/// What the CLI parses with defines most subcommands only when they are
/// invoked (`cli::Lazy`): each command's help must be exactly what the
/// tree defined at once gives (a flattened struct's doc comment once
/// replaced `vm create`'s about text).
#[test]
fn deferred_definitions_give_the_same_help() {
    let mut all = vec![Vec::new()];
    paths(&full_command(), &[], &mut all);
    assert!(all.len() > 50, "only {} commands found", all.len());
    for path in &all {
        // Both from this process: `full_command` switches deferral off for
        // the whole process, so the lazy tree is made from a child.
        let eager = help_of(full_command, path);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cocoon"))
            .args(path)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "cocoon {} --help", path.join(" "));
        let lazy = String::from_utf8(out.stdout).unwrap();
        assert_eq!(lazy, eager, "cocoon {} --help", path.join(" "));
    }
}

#[test]
fn help_lists_every_subcommand() {
    let bin = env!("CARGO_BIN_EXE_cocoon");
    let expected: &[(&[&str], &[&str])] = &[
        (
            &[],
            // doctor: an addition beyond cocoon (its doctor/check.sh as a command);
            // kernel: the default kernels container images boot.
            &[
                "image",
                "vm",
                "snapshot",
                "kernel",
                "gc",
                "doctor",
                "version",
                "completion",
            ],
        ),
        (&["image"], &["pull", "import", "list", "rm", "inspect"]),
        (
            &["vm"],
            &[
                "create",
                "run",
                "clone",
                "start",
                "stop",
                "list",
                "inspect",
                "console",
                "exec",
                "reseed",
                "logs",
                "rm",
                "reconcile-stale-create",
                "restore",
                "hibernate",
                "resize",
                "debug",
                "status",
                "disk",
                "net",
                "fs",
                "device",
            ],
        ),
        (&["vm", "disk"], &["attach", "detach"]),
        (&["vm", "fs"], &["attach", "detach"]),
        (&["vm", "device"], &["attach", "detach"]),
        (
            &["snapshot"],
            &[
                "save", "list", "inspect", "rm", "export", "import", "push", "pull",
            ],
        ),
        (&["kernel"], &["install", "list", "rm"]),
    ];
    for (path, subcommands) in expected {
        let out = std::process::Command::new(bin)
            .args(*path)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        let listed: Vec<&str> = help
            .split("Commands:\n")
            .nth(1)
            .unwrap()
            .lines()
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help")
            .collect();
        assert_eq!(&listed, subcommands, "cocoon {} --help", path.join(" "));
    }
}
