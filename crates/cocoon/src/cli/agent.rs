//! `vm exec` and `vm reseed`: the commands served by the guest agent
//! (docs/agent.md). Flattened into `vm`'s subcommands; upstream's flags
//! (`-e/--env`, `-i/--interactive`, `--machine-id`) plus docker's `-t`,
//! `-w` and `-u`.

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Run a command inside a running VM through its guest agent (vsock)
    ///
    /// stdout and stderr stay apart (with -t both come from the terminal), and cocoon exits
    /// with the command's status (128 + n when signal n killed it). Ctrl-C is forwarded to the
    /// command. Needs the guest agent: VMs started with --no-agent have none.
    #[command(
        after_help = "Examples:\n  cocoon vm exec dev -- uname -a\n  cocoon vm exec -e DEBUG=1 -w /srv dev -- ./check.sh\n  tar c src | cocoon vm exec -i dev -- tar x -C /srv\n  cocoon vm exec -it dev -- bash"
    )]
    Exec(ExecArgs),
    /// Force a CRNG reseed inside the guest (fresh entropy over vsock)
    Reseed {
        /// Also regenerate /etc/machine-id (use after clone, not restore)
        #[arg(long)]
        machine_id: bool,
        vm: String,
    },
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Extra environment variable (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Attach the caller's stdin to the command (otherwise stdin closes immediately)
    #[arg(short, long)]
    pub interactive: bool,
    /// Run the command on a terminal in the guest (with -i on a terminal: raw mode here)
    #[arg(short, long)]
    pub tty: bool,
    /// Working directory inside the guest
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Guest user to run as: NAME, UID, NAME:GROUP or UID:GID [default: root]
    #[arg(short, long)]
    pub user: Option<String>,
    pub vm: String,
    /// The command and its arguments, after `--` (or after VM)
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

/// Upstream's check and message.
fn parse_env(pair: &str) -> Result<(String, String), String> {
    match pair.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("--env {pair:?} must be KEY=VALUE")),
    }
}
