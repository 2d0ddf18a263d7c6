//! Subcommand groups and argument sets that clap defines only when their
//! command is invoked.
//!
//! clap derive builds the whole command tree (every subcommand, every flag,
//! and the 8 global flags copied into each of them) before it parses
//! anything: about 0.5 ms of every command's start-up, paid again by each
//! `vm start` on the path to the VMM. `Command::defer` postpones a
//! subcommand's definition until clap builds that subcommand (to parse it,
//! or for its help). Completions, man pages and the tests walk the whole
//! tree: [`full_command`] defines it all at once, as clap derive would.

use std::sync::atomic::{AtomicBool, Ordering};

use clap::builder::{Resettable, StyledStr};
use clap::{ArgMatches, Args, Command, CommandFactory, FromArgMatches, Subcommand};

/// Set by [`full_command`]: no definition is deferred from then on.
static EAGER: AtomicBool = AtomicBool::new(false);

/// The whole command tree, every definition made now: what completions
/// and man pages are generated from (and what a `help` subcommand lists,
/// which clap derives from the subcommands defined when it is added).
pub fn full_command() -> Command {
    EAGER.store(true, Ordering::Relaxed);
    super::Cli::command()
}

fn eager() -> bool {
    EAGER.load(Ordering::Relaxed)
}

/// `T`'s subcommands (or arguments), defined when the command they belong
/// to is built.
#[derive(Debug)]
pub struct Lazy<T>(pub T);

impl<T: Args> Args for Lazy<T> {
    fn augment_args(cmd: Command) -> Command {
        if eager() {
            return T::augment_args(cmd);
        }
        cmd.defer(|cmd| keeping_about(cmd, T::augment_args))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        if eager() {
            return T::augment_args_for_update(cmd);
        }
        cmd.defer(|cmd| keeping_about(cmd, T::augment_args_for_update))
    }
}

/// Adds `T`'s arguments without the about text a struct flattened into it
/// sets: eagerly, the command's own (from its doc comment) comes after and
/// wins; deferred, the arguments come last.
fn keeping_about(cmd: Command, augment: fn(Command) -> Command) -> Command {
    let text = |t: Option<&StyledStr>| t.cloned().map_or(Resettable::Reset, Resettable::Value);
    let about = text(cmd.get_about());
    let long_about = text(cmd.get_long_about());
    augment(cmd).about(about).long_about(long_about)
}

impl<T: Subcommand> Subcommand for Lazy<T> {
    fn augment_subcommands(cmd: Command) -> Command {
        if eager() {
            return T::augment_subcommands(cmd);
        }
        cmd.defer(T::augment_subcommands)
    }

    fn augment_subcommands_for_update(cmd: Command) -> Command {
        if eager() {
            return T::augment_subcommands_for_update(cmd);
        }
        cmd.defer(T::augment_subcommands_for_update)
    }

    fn has_subcommand(name: &str) -> bool {
        T::has_subcommand(name)
    }
}

impl<T: FromArgMatches> FromArgMatches for Lazy<T> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(Lazy)
    }

    fn from_arg_matches_mut(matches: &mut ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches_mut(matches).map(Lazy)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }

    fn update_from_arg_matches_mut(&mut self, matches: &mut ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches_mut(matches)
    }
}
