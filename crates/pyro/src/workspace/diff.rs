//! `diff` (what changed since the baseline) and `patch apply` (all or nothing), both through
//! the agent so they work on every backend.
//!
//! Diff hashes only files whose stat identity (size, mtime, ctime, inode) changed since the last
//! diff or snapshot: ctime cannot be set by programs, so a rewrite that keeps size and mtime is
//! still caught. A 10,000-file workspace with a few changes costs one listing, a few hashes and
//! a few reads.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use pyro_patch::{Action, PatchKind};

use crate::engine::Pyro;
use crate::error::{Error, Result};
use crate::sandbox::Sandbox;
use crate::workspace::snapshot::{
    DiffEntry, DiffResult, DiffSummary, PatchResult, StatCache, TreeEntry, BASELINE,
};

/// Largest file content put into a diff's patch text.
const MAX_PATCH_FILE: u64 = 1 << 20;
/// Largest patch text a diff returns.
const MAX_PATCH_TEXT: usize = 4 << 20;
/// Largest file a patch may touch.
const MAX_PATCHED_FILE: u64 = 64 << 20;

fn git_mode(perm: u32) -> u32 {
    if perm & 0o111 != 0 {
        pyro_patch::MODE_EXECUTABLE
    } else {
        pyro_patch::MODE_FILE
    }
}

fn summarize(entries: &[DiffEntry]) -> DiffSummary {
    let count = |s: &str| entries.iter().filter(|e| e.status == s).count() as u64;
    DiffSummary {
        total: entries.len() as u64,
        added: count("added"),
        modified: count("modified"),
        deleted: count("deleted"),
    }
}

impl Pyro {
    fn load_statcache(&self, id: &str) -> StatCache {
        std::fs::read(self.ws_dir(id).join("statcache.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_statcache(&self, id: &str, cache: &StatCache) {
        if let Ok(bytes) = serde_json::to_vec(cache) {
            let p = self.ws_dir(id).join("statcache.json");
            let tmp = p.with_extension("tmp");
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(tmp, p);
            }
        }
    }

    /// What changed under `/workspace` since the create-time baseline.
    pub async fn workspace_diff(&self, id: &str) -> Result<DiffResult> {
        let t = Instant::now();
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, false).await?;
        let (w, sb) = self.ws_running(&w.id).await?;
        self.ws_touch(&w.id);
        let baseline: BTreeMap<String, TreeEntry> = self
            .load_tree(&w.id, BASELINE)?
            .into_iter()
            .filter(|e| e.kind != "dir")
            .map(|e| (e.path.clone(), e))
            .collect();
        let (listing, truncated_listing) = sb
            .client()
            .list(crate::workspace::WORKSPACE_PATH, true, 1_000_000)
            .await?;
        if truncated_listing {
            return Err(Error::InvalidRequest(
                "the workspace holds more than 1,000,000 entries; diff refuses to guess".into(),
            ));
        }
        let current: BTreeMap<String, pyro_protocol::Entry> = listing
            .into_iter()
            .filter(|e| e.kind != "dir")
            .map(|e| (e.path.clone(), e))
            .collect();

        // Content hashes of current files, from the stat cache where the identity is unchanged.
        let mut cache = self.load_statcache(&w.id);
        let mut hashes: HashMap<String, String> = HashMap::new();
        let mut to_hash = Vec::new();
        for (p, e) in current.iter().filter(|(_, e)| e.kind == "file") {
            match cache.get(p) {
                Some((size, mtime, ctime, ino, sha))
                    if (*size, *mtime, *ctime, *ino) == (e.size, e.mtime_ns, e.ctime_ns, e.ino) =>
                {
                    hashes.insert(p.clone(), sha.clone());
                }
                _ => to_hash.push(p.clone()),
            }
        }
        if !to_hash.is_empty() {
            let got = sb.client().hash(&to_hash).await?;
            for (p, h) in to_hash.into_iter().zip(got) {
                if let Some(h) = h {
                    hashes.insert(p, h);
                }
            }
        }
        cache.retain(|p, _| current.contains_key(p));
        for (p, e) in current.iter().filter(|(_, e)| e.kind == "file") {
            if let Some(h) = hashes.get(p) {
                cache.insert(
                    p.clone(),
                    (e.size, e.mtime_ns, e.ctime_ns, e.ino, h.clone()),
                );
            }
        }
        self.save_statcache(&w.id, &cache);

        let mut entries = Vec::new();
        let mut changed_files: Vec<(String, Option<&TreeEntry>, Option<&pyro_protocol::Entry>)> =
            Vec::new();
        for (p, old) in &baseline {
            match current.get(p) {
                None => {
                    entries.push(DiffEntry {
                        path: p.clone(),
                        status: "deleted".into(),
                        kind: old.kind.clone(),
                        binary: false,
                    });
                    changed_files.push((p.clone(), Some(old), None));
                }
                Some(new) => {
                    let differs = old.kind != new.kind
                        || (old.kind == "file"
                            && (old.sha256.as_deref() != hashes.get(p).map(String::as_str)
                                || git_mode(old.mode) != git_mode(new.mode)))
                        || (old.kind == "symlink" && old.link != new.link_target);
                    if differs {
                        entries.push(DiffEntry {
                            path: p.clone(),
                            status: "modified".into(),
                            kind: new.kind.clone(),
                            binary: false,
                        });
                        changed_files.push((p.clone(), Some(old), Some(new)));
                    }
                }
            }
        }
        for (p, new) in &current {
            if !baseline.contains_key(p) {
                entries.push(DiffEntry {
                    path: p.clone(),
                    status: "added".into(),
                    kind: new.kind.clone(),
                    binary: false,
                });
                changed_files.push((p.clone(), None, Some(new)));
            }
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        changed_files.sort_by(|a, b| a.0.cmp(&b.0));

        let mut patch = String::new();
        let mut truncated = false;
        let objects = self.objects_dir(&w.id);
        for (p, old, new) in changed_files {
            if patch.len() >= MAX_PATCH_TEXT {
                truncated = true;
                break;
            }
            let old_file = old.filter(|o| o.kind == "file");
            let new_file = new.filter(|n| n.kind == "file");
            if old_file.is_none() && new_file.is_none() {
                continue;
            }
            let old_bytes = match old_file {
                Some(o) if o.size <= MAX_PATCH_FILE => {
                    std::fs::read(objects.join(o.sha256.as_deref().unwrap_or_default())).ok()
                }
                _ => None,
            };
            let new_bytes = match new_file {
                Some(n) if n.size <= MAX_PATCH_FILE => {
                    Some(sb.client().read_file(&p, MAX_PATCH_FILE).await?.0)
                }
                _ => None,
            };
            let too_big = old_file.is_some_and(|o| o.size > MAX_PATCH_FILE)
                || new_file.is_some_and(|n| n.size > MAX_PATCH_FILE);
            let binary = too_big
                || old_bytes.as_deref().is_some_and(pyro_patch::is_binary)
                || new_bytes.as_deref().is_some_and(pyro_patch::is_binary);
            if let Some(e) = entries.iter_mut().find(|e| e.path == p) {
                e.binary = binary;
            }
            let text = if too_big {
                format!("diff --git a/{p} b/{p}\nFiles a/{p} and b/{p} differ (over {MAX_PATCH_FILE} bytes)\n")
            } else {
                pyro_patch::unified_diff(
                    &p,
                    old_bytes.as_deref(),
                    new_bytes.as_deref(),
                    old_file.map(|o| git_mode(o.mode)),
                    new_file.map(|n| git_mode(n.mode)),
                )
            };
            let room = MAX_PATCH_TEXT.saturating_sub(patch.len());
            if text.len() > room {
                truncated = true;
                break;
            }
            patch.push_str(&text);
        }
        let summary = summarize(&entries);
        let patch = self.redactor(&w.id)?.text(&patch);
        Ok(DiffResult {
            workspace_id: w.id,
            changed: !entries.is_empty(),
            summary,
            entries,
            patch,
            truncated,
            duration_ms: t.elapsed().as_millis() as u64,
        })
    }

    /// Applies a unified diff or `git diff` output to `/workspace`: every hunk of every file is
    /// checked first, and nothing is written unless all apply; if a write then fails, the
    /// files already changed are put back.
    pub async fn workspace_patch_apply(&self, id: &str, patch: &str) -> Result<PatchResult> {
        let patches = pyro_patch::parse(patch).map_err(|e| Error::PatchFailed(e.to_string()))?;
        let w = self.ws_row(id)?;
        let _lock = self.ws_lock(&w.id, false).await?;
        let (w, sb) = self.ws_running(&w.id).await?;
        self.ws_touch(&w.id);

        let mut originals: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        for fp in &patches {
            for p in [&fp.old_path, &fp.new_path].into_iter().flatten() {
                if !originals.contains_key(p) {
                    originals.insert(p.clone(), read_optional(&sb, p).await?);
                }
            }
        }
        let mut read = |p: &str| originals.get(p).cloned().flatten();
        let changes =
            pyro_patch::plan(&patches, &mut read).map_err(|e| Error::PatchFailed(e.to_string()))?;

        let mut done: Vec<String> = Vec::new();
        let applied: Result<()> = async {
            for c in &changes {
                match &c.action {
                    Action::Write { content, mode } => {
                        done.push(c.path.clone());
                        sb.client()
                            .write_file(
                                &c.path,
                                mode.map(|m| m & 0o777),
                                MAX_PATCHED_FILE,
                                &mut &content[..],
                            )
                            .await?;
                    }
                    Action::Delete => {
                        done.push(c.path.clone());
                        sb.client().remove(&c.path).await?;
                    }
                    Action::Rename {
                        from,
                        content,
                        mode,
                    } => {
                        done.push(c.path.clone());
                        done.push(from.clone());
                        sb.client()
                            .write_file(
                                &c.path,
                                mode.map(|m| m & 0o777),
                                MAX_PATCHED_FILE,
                                &mut &content[..],
                            )
                            .await?;
                        sb.client().remove(from).await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = applied {
            // Put back what was already changed, newest first.
            for p in done.iter().rev() {
                match originals.get(p).cloned().flatten() {
                    Some(bytes) => {
                        let _ = sb
                            .client()
                            .write_file(p, None, MAX_PATCHED_FILE, &mut &bytes[..])
                            .await;
                    }
                    None => {
                        let _ = sb.client().remove(p).await;
                    }
                }
            }
            return Err(Error::PatchFailed(format!(
                "applying the patch failed and was rolled back: {e}"
            )));
        }

        let mut entries = Vec::new();
        for fp in &patches {
            let mut push = |path: &str, status: &str| {
                entries.push(DiffEntry {
                    path: path.into(),
                    status: status.into(),
                    kind: "file".into(),
                    binary: false,
                })
            };
            match fp.kind {
                PatchKind::Add => push(fp.path(), "added"),
                PatchKind::Delete => push(fp.path(), "deleted"),
                PatchKind::Modify => push(fp.path(), "modified"),
                PatchKind::Rename => {
                    if let Some(old) = &fp.old_path {
                        push(old, "deleted");
                    }
                    push(fp.path(), "added");
                }
            }
        }
        let summary = summarize(&entries);
        Ok(PatchResult {
            workspace_id: w.id,
            changed: !changes.is_empty(),
            summary,
            entries,
        })
    }
}

/// A file's content, or `None` when nothing exists at the path. Directories and other
/// non-files are refused: a patch can only change regular files.
async fn read_optional(sb: &Sandbox, path: &str) -> Result<Option<Vec<u8>>> {
    match sb.client().read_file(path, MAX_PATCHED_FILE).await {
        Ok((bytes, _, false)) => Ok(Some(bytes)),
        Ok((_, size, true)) => Err(Error::PatchFailed(format!(
            "{path} is {size} bytes, over the {MAX_PATCHED_FILE}-byte limit for patching"
        ))),
        Err(Error::AgentRefused { kind, .. }) if kind == "not_found" => Ok(None),
        Err(Error::AgentRefused { kind, message }) if kind == "bad_path" => {
            Err(Error::PatchFailed(format!("{path}: {message}")))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_counts_follow_git() {
        assert_eq!(git_mode(0o755), pyro_patch::MODE_EXECUTABLE);
        assert_eq!(git_mode(0o744), pyro_patch::MODE_EXECUTABLE);
        assert_eq!(git_mode(0o644), pyro_patch::MODE_FILE);
        let e = |status: &str| DiffEntry {
            path: "p".into(),
            status: status.into(),
            kind: "file".into(),
            binary: false,
        };
        let s = summarize(&[e("added"), e("added"), e("deleted"), e("modified")]);
        assert_eq!((s.total, s.added, s.modified, s.deleted), (4, 2, 1, 1));
    }
}
