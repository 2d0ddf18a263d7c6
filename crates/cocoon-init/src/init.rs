//! PID 1: boots the container image (see docs/reference/guest-contract.md).

pub fn run() -> i32 {
    unimplemented!("cocoon-init PID 1")
}
