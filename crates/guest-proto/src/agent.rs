//! The guest agent's wire protocol (docs/agent.md).
