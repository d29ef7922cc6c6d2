//! Who a command runs as: an OCI image config's `User` (`user`, `uid`, `user:group`,
//! `uid:gid`) resolved against the sandbox's own `/etc/passwd` and `/etc/group`, the way a
//! container runtime does it.
//!
//! A name must exist in those files; a numeric id need not (its group is then 0 and its home
//! `/`, as with Docker). The user's supplementary groups are the groups in `/etc/group` that
//! list its name. Root with no group asked for needs no switch at all, so the common case keeps
//! `posix_spawn`.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// `/etc/passwd` and `/etc/group` are read up to this many bytes each.
const MAX_DB_BYTES: u64 = 4 << 20;
/// At most this many supplementary groups are set (Linux allows 65536).
const MAX_GROUPS: usize = 64;

/// The identity a command runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (the primary one first).
    pub groups: Vec<u32>,
    /// The user's name, when `/etc/passwd` has one.
    pub name: Option<String>,
    /// Home directory (`/` when `/etc/passwd` has none).
    pub home: String,
}

impl Credentials {
    /// The variables a login would set for this user; the request's own variables override them.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("HOME", self.home.clone())];
        if let Some(name) = &self.name {
            env.push(("USER", name.clone()));
            env.push(("LOGNAME", name.clone()));
        }
        env
    }

    /// Makes `cmd` drop to these credentials in the child, just before it executes.
    pub fn apply(&self, cmd: &mut Command) {
        let groups: Vec<libc::gid_t> = self.groups.clone();
        let (uid, gid) = (self.uid, self.gid);
        // SAFETY: the closure only makes async-signal-safe system calls (sigprocmask, setgroups,
        // setgid, setuid) on memory it owns; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                // PID 1 blocks some signals for its signal thread, and a forked child keeps that
                // mask through exec unless it is cleared.
                nix::sys::signal::SigSet::empty()
                    .thread_set_mask()
                    .map_err(std::io::Error::from)?;
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Resolves `spec` against the files under `root` (`/` in a sandbox). `Ok(None)`: run as root
/// unchanged (no spec, an empty one, or plain root).
pub fn resolve(spec: Option<&str>, root: &Path) -> Result<Option<Credentials>, String> {
    let spec = spec.map(str::trim).unwrap_or("");
    if spec.is_empty() {
        return Ok(None);
    }
    let passwd = read_db(&root.join("etc/passwd"))?;
    let group = read_db(&root.join("etc/group"))?;
    resolve_in(spec, &passwd, &group)
}

fn read_db(path: &Path) -> Result<String, String> {
    match std::fs::File::open(path) {
        Ok(f) => {
            let mut bytes = Vec::new();
            f.take(MAX_DB_BYTES)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// One `/etc/passwd` entry: name, uid, gid, home.
fn passwd_entries(text: &str) -> impl Iterator<Item = (&str, u32, u32, &str)> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some((f[0], f[2].parse().ok()?, f[3].parse().ok()?, f[5]))
    })
}

/// One `/etc/group` entry: name, gid, members.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with('#') {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// [`resolve`] over the files' contents.
pub fn resolve_in(spec: &str, passwd: &str, group: &str) -> Result<Option<Credentials>, String> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
        return Err(format!("invalid user {spec:?}: expected user[:group]"));
    }
    let not_found = || format!("user {user_part:?} is not in the sandbox's /etc/passwd");
    let numeric = user_part.parse::<u32>().ok();
    let entry = match numeric {
        Some(uid) => passwd_entries(passwd).find(|e| e.1 == uid),
        None => Some(
            passwd_entries(passwd)
                .find(|e| e.0 == user_part)
                .ok_or_else(not_found)?,
        ),
    };
    let uid = numeric.or(entry.map(|e| e.1)).ok_or_else(not_found)?;
    let gid = match group_part {
        None => entry.map_or(0, |e| e.2),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|e| e.0 == g)
                .map(|e| e.1)
                .ok_or_else(|| format!("group {g:?} is not in the sandbox's /etc/group"))?,
        },
    };
    if uid == 0 && gid == 0 && group_part.is_none() {
        return Ok(None);
    }
    let name = entry.map(|e| e.0.to_owned());
    let mut groups = vec![gid];
    if let Some(name) = &name {
        for (_, g, members) in group_entries(group) {
            if members.contains(&name.as_str()) && !groups.contains(&g) && groups.len() < MAX_GROUPS
            {
                groups.push(g);
            }
        }
    }
    let home = entry
        .map(|e| e.3)
        .filter(|h| h.starts_with('/'))
        .unwrap_or("/")
        .to_owned();
    Ok(Some(Credentials {
        uid,
        gid,
        groups,
        name,
        home,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        broken line\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app,other\napp:x:1000:\ndocker:x:999:app\n";

    fn creds(spec: &str) -> Option<Credentials> {
        resolve_in(spec, PASSWD, GROUP).expect(spec)
    }

    #[test]
    fn names_and_ids_resolve_like_a_container_runtime() {
        assert_eq!(creds("root"), None);
        assert_eq!(creds("0"), None);
        let app = creds("app").expect("app");
        assert_eq!((app.uid, app.gid), (1000, 1000));
        assert_eq!(app.groups, [1000, 50, 999]);
        assert_eq!(app.home, "/home/app");
        assert_eq!(app.name.as_deref(), Some("app"));
        assert_eq!(creds("1000"), Some(app.clone()));
        let with_group = creds("app:staff").expect("app:staff");
        assert_eq!(
            (with_group.gid, &with_group.groups[..]),
            (50, &[50, 999][..])
        );
        let numeric = creds("4242:77").expect("numeric");
        assert_eq!((numeric.uid, numeric.gid, numeric.name), (4242, 77, None));
        assert_eq!(numeric.home, "/");
        let unknown_id = creds("4242").expect("no entry");
        assert_eq!((unknown_id.gid, unknown_id.groups), (0, vec![0]));
        let root_group = creds("root:staff").expect("root with a group");
        assert_eq!((root_group.uid, root_group.gid), (0, 50));
        assert_eq!(
            creds("nobody").map(|c| c.env()),
            Some(vec![
                ("HOME", "/nonexistent".to_owned()),
                ("USER", "nobody".to_owned()),
                ("LOGNAME", "nobody".to_owned()),
            ])
        );
    }

    #[test]
    fn unknown_names_and_malformed_specs_are_refused() {
        for bad in ["ghost", "app:nogroup", ":1", "1:", "ghost:0"] {
            let e = resolve_in(bad, PASSWD, GROUP).expect_err(bad);
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(resolve_in("ghost", PASSWD, GROUP)
            .expect_err("ghost")
            .contains("/etc/passwd"));
        assert_eq!(resolve(None, Path::new("/nonexistent")), Ok(None));
        assert_eq!(resolve(Some("  "), Path::new("/nonexistent")), Ok(None));
        // Without the files, only numeric ids work.
        let c = resolve(Some("12:34"), Path::new("/nonexistent")).expect("numeric");
        assert_eq!(c.map(|c| (c.uid, c.gid)), Some((12, 34)));
        assert!(resolve(Some("app"), Path::new("/nonexistent")).is_err());
    }
}
