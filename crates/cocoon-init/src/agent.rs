//! The guest agent: upstream cocoon-agent's protocol on vsock port 1024.

pub fn run() -> i32 {
    unimplemented!("cocoon-init agent")
}
