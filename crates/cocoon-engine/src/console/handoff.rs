//! Ports handed to a relay that is already running: `vm start` starts the
//! relay beside the VMM, before the VMM has named its terminals, and passes
//! each port over a `SOCK_SEQPACKET` pair once it has it: one message per
//! port, its name as the payload and the descriptor as `SCM_RIGHTS`. The
//! CLI closing its end says "no more ports".
//!
//! Why: the relay's exec and set-up (~3-5 ms) then overlap the VMM's own
//! start instead of following the boot, and the guest's first output (the
//! ready line a sandbox waits for) reaches the log that much sooner.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::RelayPort;

/// A port name is short (`serial`, `console`, `monitor`).
const NAME_MAX: usize = 64;

/// The CLI's end and the relay's end, both close-on-exec (the relay's end
/// is passed on like a port fd).
pub(crate) fn channel() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Sends one port; the relay owns a duplicate of its descriptor from here.
pub(crate) fn send(channel: &OwnedFd, port: &RelayPort) -> io::Result<()> {
    if port.name.is_empty() || port.name.len() > NAME_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("console port name {:?} is empty or too long", port.name),
        ));
    }
    let fds = [port.fd.as_fd()];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    let sent = rustix::net::sendmsg(
        channel,
        &[IoSlice::new(port.name.as_bytes())],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != port.name.len() {
        return Err(io::Error::other("console port message cut short"));
    }
    Ok(())
}

/// What one read of the relay's end gave.
pub(crate) enum Received {
    Port(RelayPort),
    /// Nothing waiting (the end is non-blocking).
    Nothing,
    /// The CLI closed its end: no more ports will come.
    Closed,
}

/// Receives one port. A message without exactly one descriptor, or whose
/// name is not UTF-8, is an error (its descriptors are closed).
pub(crate) fn receive(channel: &OwnedFd) -> io::Result<Received> {
    let mut name = [0u8; NAME_MAX];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let message = match rustix::net::recvmsg(
        channel,
        &mut [IoSliceMut::new(&mut name)],
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    ) {
        Ok(message) => message,
        Err(rustix::io::Errno::AGAIN) => return Ok(Received::Nothing),
        Err(e) => return Err(e.into()),
    };
    let mut fds: Vec<OwnedFd> = Vec::new();
    for item in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = item {
            fds.extend(rights);
        }
    }
    if message.bytes == 0 && fds.is_empty() {
        return Ok(Received::Closed);
    }
    let name = std::str::from_utf8(&name[..message.bytes])
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "console port name not UTF-8"))?;
    if fds.len() != 1 || name.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "console port message {name:?} carried {} descriptors",
                fds.len()
            ),
        ));
    }
    Ok(Received::Port(RelayPort {
        name: name.to_string(),
        fd: fds.remove(0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_cross_with_their_names_and_the_close_ends_them() {
        let (cli, relay) = channel().unwrap();
        rustix::io::ioctl_fionbio(&relay, true).unwrap();
        assert!(matches!(receive(&relay).unwrap(), Received::Nothing));
        let (read, write) = rustix::pipe::pipe().unwrap();
        send(
            &cli,
            &RelayPort {
                name: "console".into(),
                fd: write,
            },
        )
        .unwrap();
        let Received::Port(port) = receive(&relay).unwrap() else {
            panic!("no port received");
        };
        assert_eq!(port.name, "console");
        // The received descriptor is the pipe's write end.
        rustix::io::write(&port.fd, b"hi").unwrap();
        let mut buf = [0u8; 2];
        rustix::io::read(&read, &mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        drop(cli);
        assert!(matches!(receive(&relay).unwrap(), Received::Closed));
    }

    #[test]
    fn a_message_without_a_descriptor_is_refused() {
        let (cli, relay) = channel().unwrap();
        rustix::net::send(&cli, b"serial", SendFlags::empty()).unwrap();
        let err = receive(&relay).err().expect("a bare name is not a port");
        assert_eq!(
            err.to_string(),
            "console port message \"serial\" carried 0 descriptors"
        );
        let long = RelayPort {
            name: "x".repeat(NAME_MAX + 1),
            fd: rustix::pipe::pipe().unwrap().0,
        };
        assert!(send(&cli, &long).is_err());
    }
}
