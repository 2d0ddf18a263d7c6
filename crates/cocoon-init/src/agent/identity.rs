//! `identity`: stub.
use cocoon_guest_proto::agent::IdentityRequest;
use super::Root;
pub fn run(_request: &IdentityRequest, _root: &Root) -> Result<(), String> { Err("todo".into()) }
