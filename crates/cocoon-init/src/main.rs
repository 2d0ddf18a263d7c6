//! cocoon-init: PID 1 of a VM booted from a container image (it mounts the
//! image's layers as the root, configures the network and runs the image's
//! entrypoint), and the guest agent (`cocoon-init agent`) that serves
//! `vm exec` over vsock. One static binary, so the initramfs needs no libc.
//! In images built for cocoon the engine's agent layer installs it as
//! `/usr/local/bin/cocoon-agent`, started by systemd as upstream's
//! `cocoon-agent serve` is.

mod agent;
mod init;
mod netlink;

fn main() {
    let code = if std::process::id() == 1 {
        init::run()
    } else {
        match std::env::args().nth(1).as_deref() {
            Some("agent" | "serve") => agent::run(),
            _ => {
                eprintln!("usage: cocoon-init agent (as PID 1 it boots the VM)");
                2
            }
        }
    };
    std::process::exit(code);
}
