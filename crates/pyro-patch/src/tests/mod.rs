//! Unit tests: parsing, application, planning, diff round trips and real git fixtures.

mod apply;
mod git;
mod parse;
mod roundtrip;

use std::collections::BTreeMap;

use crate::{Action, Change, MODE_FILE};

/// An in-memory tree: path -> (content, git mode).
pub(crate) type Tree = BTreeMap<String, (Vec<u8>, u32)>;

/// Applies planned changes to an in-memory tree, in order.
pub(crate) fn apply_changes(tree: &mut Tree, changes: &[Change]) {
    for c in changes {
        match &c.action {
            Action::Write { content, mode } => {
                let old_mode = tree.get(&c.path).map(|(_, m)| *m);
                let mode = mode.or(old_mode).unwrap_or(MODE_FILE);
                tree.insert(c.path.clone(), (content.clone(), mode));
            }
            Action::Delete => {
                assert!(
                    tree.remove(&c.path).is_some(),
                    "deleting missing {}",
                    c.path
                );
            }
            Action::Rename {
                from,
                content,
                mode,
            } => {
                let (_, old_mode) = tree.remove(from).expect("rename source exists");
                tree.insert(c.path.clone(), (content.clone(), mode.unwrap_or(old_mode)));
            }
        }
    }
}

/// Parses and plans `patch` against `tree`, then applies the changes.
pub(crate) fn patch_tree(tree: &Tree, patch: &str) -> Result<Tree, crate::PatchError> {
    let fps = crate::parse(patch)?;
    let mut read = |p: &str| tree.get(p).map(|(c, _)| c.clone());
    let changes = crate::plan(&fps, &mut read)?;
    let mut out = tree.clone();
    apply_changes(&mut out, &changes);
    Ok(out)
}
