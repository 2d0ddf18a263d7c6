//! The guest agent's wire protocol: upstream cocoon-agent's line-delimited
//! JSON on vsock port 1024 (see docs/agent.md).
