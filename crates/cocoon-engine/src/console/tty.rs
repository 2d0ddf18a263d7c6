//! Terminal settings of the console ports.

use std::io;
use std::os::fd::AsFd;

use rustix::termios::{self, OptionalActions, Winsize};

/// Raw mode, so the line discipline neither echoes nor rewrites bytes: a
/// Cloud Hypervisor PTY slave left canonical echoes the guest's output back
/// to the guest as input. On a master this sets the pair's (slave's) mode.
///
/// Every output flag is cleared, not only `OPOST`: QEMU's stdio chardev
/// turns `OPOST` back on when it starts, and with `ONLCR` still set the
/// guest's `\n` would reach the log as `\r\n`.
pub(crate) fn make_raw(fd: impl AsFd) -> io::Result<()> {
    let mut settings = termios::tcgetattr(&fd)?;
    settings.make_raw();
    settings.output_modes = termios::OutputModes::empty();
    termios::tcsetattr(&fd, OptionalActions::Now, &settings)?;
    Ok(())
}

/// Works on either end of a PTY: the size belongs to the pair.
pub(super) fn set_window_size(fd: impl AsFd, rows: u16, cols: u16) -> io::Result<()> {
    termios::tcsetwinsize(
        fd,
        Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

pub(super) fn window_size(fd: impl AsFd) -> io::Result<(u16, u16)> {
    let size = termios::tcgetwinsize(fd)?;
    Ok((size.ws_row, size.ws_col))
}

pub(super) fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    rustix::io::ioctl_fionbio(fd, true)?;
    Ok(())
}
