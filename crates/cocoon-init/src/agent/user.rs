//! `exec --user`: the OCI forms (`user`, `uid`, `user:group`, `uid:gid`, …),
//! resolved exactly as cocoon-init resolves an image's `User`
//! (`init/user.rs`: runc's rules, supplementary groups from `/etc/group`),
//! against the guest's own account files.

use std::io;

use super::Root;
pub use crate::init::user::Credentials;

/// `None` for an empty spec: the agent's own user (root).
pub fn resolve(spec: &str, root: &Root) -> io::Result<Option<Credentials>> {
    if spec.is_empty() {
        return Ok(None);
    }
    crate::init::user::resolve(spec, &root.path("/etc"))
        .map(Some)
        .map_err(|message| io::Error::new(io::ErrorKind::InvalidInput, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_with_their_groups() {
        let dir = std::env::temp_dir().join(format!("cocoon-init-user-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1001:A:/home/alice:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.join("etc/group"), "root:x:0:\nstaff:x:50:alice\n").unwrap();
        let root = Root(dir.clone());
        let user = |spec| resolve(spec, &root).map_err(|e| e.to_string());
        assert_eq!(user(""), Ok(None));
        let alice = user("alice").unwrap().unwrap();
        assert_eq!((alice.uid, alice.gid), (1000, 1001));
        assert_eq!(alice.home.as_deref(), Some("/home/alice"));
        assert!(alice.groups.contains(&50), "{:?}", alice.groups);
        assert_eq!(user("alice:staff").unwrap().unwrap().gid, 50);
        let numeric = user("4242:7").unwrap().unwrap();
        assert_eq!((numeric.uid, numeric.gid, numeric.home), (4242, 7, None));
        assert_eq!(user("4242").unwrap().unwrap().gid, 0);
        assert!(user("bob").unwrap_err().contains("unable to find user bob"));
        assert!(user("alice:nogroup").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
