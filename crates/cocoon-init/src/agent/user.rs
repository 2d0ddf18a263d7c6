//! `exec --user`: `uid[:gid]`, or names from the guest's passwd and group
//! files, as docker and OCI spell it.

use std::io;

use super::Root;

/// The passwd and group files a guest may have; more is refused.
const MAX_DB_BYTES: u64 = 4 << 20;

#[derive(Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub home: Option<String>,
}

/// `None` for an empty spec: the agent's own user.
pub fn resolve(spec: &str, root: &Root) -> io::Result<Option<User>> {
    if spec.is_empty() {
        return Ok(None);
    }
    let (name, group) = match spec.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (spec, None),
    };
    let passwd = read_db(root, "/etc/passwd")?;
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| {
            f.len() >= 7
                && (f[0] == name || name.parse::<u32>().is_ok_and(|uid| f[2] == uid.to_string()))
        });
    let uid = match (name.parse::<u32>(), &entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(f)) => f[2]
            .parse()
            .map_err(|_| bad(format!("bad passwd entry for {name}")))?,
        (Err(_), None) => return Err(bad(format!("unknown user {name:?}"))),
    };
    let primary = entry.as_ref().and_then(|f| f[3].parse::<u32>().ok());
    let gid = match group {
        None => primary.unwrap_or(0),
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_id(&read_db(root, "/etc/group")?, group)?,
        },
    };
    let home = entry.map(|f| f[5].to_owned()).filter(|h| !h.is_empty());
    Ok(Some(User { uid, gid, home }))
}

fn group_id(groups: &str, name: &str) -> io::Result<u32> {
    groups
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[0] == name)
        .and_then(|f| f[2].parse().ok())
        .ok_or_else(|| bad(format!("unknown group {name:?}")))
}

/// The file, or nothing if the guest has none.
fn read_db(root: &Root, path: &str) -> io::Result<String> {
    use std::io::Read;
    let file = match std::fs::File::open(root.path(path)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    file.take(MAX_DB_BYTES).read_to_string(&mut text)?;
    Ok(text)
}

fn bad(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_by_number_and_name() {
        let dir = tempfile_dir();
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
        let alice = Some(User {
            uid: 1000,
            gid: 1001,
            home: Some("/home/alice".into()),
        });
        assert_eq!(user("alice"), Ok(alice));
        assert_eq!(user("1000").unwrap().unwrap().gid, 1001);
        assert_eq!(user("alice:staff").unwrap().unwrap().gid, 50);
        assert_eq!(
            user("4242:7"),
            Ok(Some(User {
                uid: 4242,
                gid: 7,
                home: None
            }))
        );
        assert_eq!(user("4242").unwrap().unwrap().gid, 0);
        assert!(user("bob").unwrap_err().contains("unknown user"));
        assert!(user("alice:nogroup").unwrap_err().contains("unknown group"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cocoon-init-user-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
