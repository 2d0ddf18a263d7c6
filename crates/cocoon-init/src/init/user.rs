//! The OCI `User` forms (`user`, `uid`, `user:group`, `uid:gid`,
//! `uid:group`, `user:gid`) resolved against the image's `/etc/passwd` and
//! `/etc/group`, with runc's rules: a numeric uid needs no passwd entry
//! (gid 0 then), a name must have one; supplementary groups come from
//! `/etc/group` only when no group was given; HOME is the passwd entry's.

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The image's account files are untrusted: read at most this much of each.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;
/// `NGROUPS_MAX` on Linux.
const MAX_GROUPS: usize = 65536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// From the passwd entry, if there is one.
    pub home: Option<String>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `user` (empty: root) with the account files under `etc`.
pub fn resolve(user: &str, etc: &Path) -> Result<Credentials, String> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let passwd = read_entries(&etc.join("passwd"), parse_passwd);
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|e| e.uid == uid),
        Err(_) => Some(passwd.iter().find(|e| e.name == user_part).ok_or_else(|| {
            format!(
                "unable to find user {user_part}: no matching entries in the image's /etc/passwd"
            )
        })?),
    };
    let uid = entry.map_or_else(|| user_part.parse().unwrap_or(0), |e| e.uid);
    let groups = read_entries(&etc.join("group"), parse_group);
    let (gid, supplementary) = match group_part {
        Some(group) => (group_gid(group, &groups)?, Vec::new()),
        None => {
            let gid = entry.map_or(0, |e| e.gid);
            let extra = entry.map_or_else(Vec::new, |e| member_of(&e.name, &groups));
            (gid, extra)
        }
    };
    let mut all = vec![gid];
    for g in supplementary {
        if !all.contains(&g) && all.len() < MAX_GROUPS {
            all.push(g);
        }
    }
    Ok(Credentials {
        uid,
        gid,
        groups: all,
        home: entry.map(|e| e.home.clone()).filter(|h| !h.is_empty()),
    })
}

fn group_gid(group: &str, groups: &[GroupEntry]) -> Result<u32, String> {
    if group.is_empty() {
        return Err("empty group in the user spec".into());
    }
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    groups
        .iter()
        .find(|g| g.name == group)
        .map(|g| g.gid)
        .ok_or_else(|| {
            format!("unable to find group {group}: no matching entries in the image's /etc/group")
        })
}

fn member_of(user: &str, groups: &[GroupEntry]) -> Vec<u32> {
    groups
        .iter()
        .filter(|g| g.members.iter().any(|m| m == user))
        .map(|g| g.gid)
        .collect()
}

/// The entries of an account file; a missing or unreadable file has none
/// (then only numeric ids resolve), a malformed line is skipped as libc does.
fn read_entries<T>(path: &Path, parse: fn(&str) -> Option<T>) -> Vec<T> {
    let mut text = Vec::new();
    if let Ok(file) = File::open(path) {
        let _ = file.take(MAX_ACCOUNT_FILE).read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(parse)
        .collect()
}

fn parse_passwd(line: &str) -> Option<PasswdEntry> {
    if line.starts_with('#') {
        return None;
    }
    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() < 7 || fields[0].is_empty() {
        return None;
    }
    Some(PasswdEntry {
        name: fields[0].into(),
        uid: fields[2].parse().ok()?,
        gid: fields[3].parse().ok()?,
        home: fields[5].into(),
    })
}

fn parse_group(line: &str) -> Option<GroupEntry> {
    if line.starts_with('#') {
        return None;
    }
    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() < 4 || fields[0].is_empty() {
        return None;
    }
    Some(GroupEntry {
        name: fields[0].into(),
        gid: fields[2].parse().ok()?,
        members: fields[3]
            .split(',')
            .filter(|m| !m.is_empty())
            .map(String::from)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\napp:x:1000:1001:App:/home/app:/bin/sh\nnohome:x:1002:1002:::/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nwheel:x:10:root,app\napp:x:1001:\nstaff:x:50:app,other\nbad:x:notanumber:app\n";

    fn etc() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("group"), GROUP).unwrap();
        dir
    }

    fn creds(uid: u32, gid: u32, groups: &[u32], home: Option<&str>) -> Credentials {
        Credentials {
            uid,
            gid,
            groups: groups.to_vec(),
            home: home.map(String::from),
        }
    }

    #[test]
    fn every_oci_form_resolves() {
        let etc = etc();
        let r = |spec: &str| resolve(spec, etc.path());
        assert_eq!(r("").unwrap(), creds(0, 0, &[0, 10], Some("/root")));
        assert_eq!(
            r("app").unwrap(),
            creds(1000, 1001, &[1001, 10, 50], Some("/home/app"))
        );
        assert_eq!(
            r("1000").unwrap(),
            creds(1000, 1001, &[1001, 10, 50], Some("/home/app"))
        );
        assert_eq!(
            r("app:staff").unwrap(),
            creds(1000, 50, &[50], Some("/home/app"))
        );
        assert_eq!(r("app:7").unwrap(), creds(1000, 7, &[7], Some("/home/app")));
        assert_eq!(
            r("1000:1000").unwrap(),
            creds(1000, 1000, &[1000], Some("/home/app"))
        );
        assert_eq!(r("4242").unwrap(), creds(4242, 0, &[0], None));
        assert_eq!(r("4242:wheel").unwrap(), creds(4242, 10, &[10], None));
        assert_eq!(r("nohome").unwrap(), creds(1002, 1002, &[1002], None));
    }

    #[test]
    fn unknown_names_are_errors() {
        let etc = etc();
        assert!(
            resolve("nobody", etc.path())
                .unwrap_err()
                .contains("unable to find user nobody")
        );
        assert!(
            resolve("app:nogroup", etc.path())
                .unwrap_err()
                .contains("unable to find group nogroup")
        );
        assert!(resolve("app:", etc.path()).is_err());
    }

    #[test]
    fn without_account_files_only_numbers_resolve() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(resolve("", empty.path()).unwrap(), creds(0, 0, &[0], None));
        assert_eq!(
            resolve("5:6", empty.path()).unwrap(),
            creds(5, 6, &[6], None)
        );
        assert!(resolve("root", empty.path()).is_err());
    }
}
