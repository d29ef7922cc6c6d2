//! Turning facade results and errors into MCP tool results.
//!
//! A success carries the facade's result object as structured content (the same object the
//! CLI prints with `--json`) and two text blocks: a one-line summary, then the object as JSON
//! for clients that show only text. A failure is a tool error (`isError: true`) carrying
//! `{"error": {kind, message, hint}}` the same way, so a model can read what went wrong and
//! what to do next; the server itself never fails a call at the protocol level for these.

use rmcp::model::{CallToolResult, ContentBlock};
use serde::Serialize;
use serde_json::{json, Value};

use crate::roots::RootError;

/// A failed tool call, as the client will see it.
#[derive(Debug)]
pub struct ToolError {
    /// Stable machine-readable kind (the library's kinds, plus `path_not_allowed`).
    pub kind: String,
    /// What went wrong.
    pub message: String,
    /// What to do next, where something helps.
    pub hint: Option<String>,
}

impl ToolError {
    /// A malformed request.
    pub fn invalid(message: impl Into<String>, hint: Option<&str>) -> ToolError {
        ToolError {
            kind: "invalid_request".into(),
            message: message.into(),
            hint: hint.map(str::to_string),
        }
    }

    /// The tool result for this error.
    pub fn into_result(self) -> CallToolResult {
        let mut text = format!("error ({}): {}", self.kind, self.message);
        if let Some(h) = &self.hint {
            text.push_str("\nhint: ");
            text.push_str(h);
        }
        let body =
            json!({"error": {"kind": self.kind, "message": self.message, "hint": self.hint}});
        let mut r = CallToolResult::structured_error(body);
        r.content = vec![ContentBlock::text(text)];
        r
    }
}

impl From<pyro::Error> for ToolError {
    fn from(e: pyro::Error) -> ToolError {
        // Over MCP the next step is a tool: the library words its hints for this front door.
        let hint = e.hint_for(pyro::error::Surface::Mcp);
        ToolError {
            kind: e.kind().into(),
            message: e.to_string(),
            hint,
        }
    }
}

impl From<RootError> for ToolError {
    fn from(e: RootError) -> ToolError {
        let (kind, hint) = match e {
            RootError::Outside { .. } => (
                "path_not_allowed",
                "host paths must lie under the server's allowed roots (its working directory, or \
                 directories given with `pyro mcp serve --allow-root DIR`)",
            ),
            // Not about the roots at all: the path is wrong, so say that.
            RootError::Unresolvable { .. } => (
                "invalid_path",
                "check that the host path exists (for an output path, its parent directory)",
            ),
            RootError::Invalid(_) => ("invalid_path", "name a file or directory, not `/` or `..`"),
        };
        ToolError {
            kind: kind.into(),
            message: e.to_string(),
            hint: Some(hint.into()),
        }
    }
}

/// Most bytes of a result's JSON text block. Output fields are capped at 1 MiB each, so only a
/// result with several full fields reaches it.
pub const MAX_TEXT_BYTES: usize = 2 << 20;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A successful tool result: structured content plus a summary and the JSON as text.
pub fn success<T: Serialize>(value: &T, summary: String) -> CallToolResult {
    let value = match serde_json::to_value(value) {
        Ok(v) => v,
        Err(e) => {
            return ToolError {
                kind: "internal".into(),
                message: format!("cannot encode the result: {e}"),
                hint: None,
            }
            .into_result()
        }
    };
    let mut text = value.to_string();
    if text.len() > MAX_TEXT_BYTES {
        // Clients that show only text still get the summary and a readable head.
        text = format!(
            "{}\n[text cut at {MAX_TEXT_BYTES} bytes; the complete object is in structuredContent]",
            cut(&text, MAX_TEXT_BYTES)
        );
    }
    let mut r = CallToolResult::structured(value);
    r.content = vec![ContentBlock::text(summary), ContentBlock::text(text)];
    r
}

/// Renders a facade call's outcome.
pub fn outcome<T: Serialize>(
    r: Result<T, ToolError>,
    summary: impl FnOnce(&T) -> String,
) -> CallToolResult {
    match r {
        Ok(v) => {
            let s = summary(&v);
            success(&v, s)
        }
        Err(e) => e.into_result(),
    }
}

/// A summary line for command output: exit code, and what to do when output was capped.
pub fn exec_summary(
    what: &str,
    exit_code: i32,
    timed_out: bool,
    truncated: bool,
    cap: u64,
) -> String {
    let mut s = format!("{what} exited with code {exit_code}");
    if timed_out {
        s.push_str(" (timed out; raise timeout_seconds to allow longer)");
    }
    if truncated {
        s.push_str(&format!(
            "; output was capped at {cap} bytes per stream: call again with a larger \
             max_output_bytes (at most {}), or redirect output to a file in /workspace and read \
             it with workspace_file_read or `sed -n`/`tail -c` in workspace_exec",
            crate::params::MAX_OUTPUT_BYTES
        ));
    }
    s
}

/// `{"count": n, key: items}`, the CLI's shape for lists.
pub fn counted<T: Serialize>(key: &str, items: &[T]) -> Value {
    json!({"count": items.len(), key: items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_kind_and_hint() {
        let r = ToolError::from(pyro::Error::WorkspaceNotFound("nope".into())).into_result();
        assert_eq!(r.is_error, Some(true));
        let body = r.structured_content.unwrap_or_default();
        assert_eq!(body["error"]["kind"], "workspace_not_found");
        assert!(body["error"]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("workspace_list")));
    }

    #[test]
    fn cuts_keep_characters_whole() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
        let big = json!({"s": "x".repeat(MAX_TEXT_BYTES + 10)});
        let r = success(&big, "big".into());
        assert_eq!(r.structured_content, Some(big));
        let text = r.content[1].as_text().map(|t| t.text.len()).unwrap_or(0);
        assert!(text < MAX_TEXT_BYTES + 200, "{text}");
    }

    #[test]
    fn library_errors_keep_their_kind_and_get_tool_hints() {
        #[track_caller]
        fn check(e: pyro::Error, kind: &str, hint: Option<&str>) {
            let message = e.to_string();
            let t = ToolError::from(e);
            assert_eq!(t.kind, kind, "{message}");
            assert_eq!(t.message, message);
            match (hint, t.hint.as_deref()) {
                (None, got) => assert_eq!(got, None, "{message}"),
                (Some(want), Some(got)) => assert!(got.contains(want), "{got:?} lacks {want:?}"),
                (Some(want), None) => panic!("{message}: no hint, wanted {want:?}"),
            }
        }
        use pyro::Error as E;
        check(
            E::WorkspaceNotFound("w".into()),
            "workspace_not_found",
            Some("call workspace_list"),
        );
        check(
            E::WorkspaceNotRunning {
                id: "w".into(),
                state: "broken".into(),
            },
            "workspace_not_running",
            Some("call workspace_reset"),
        );
        check(
            E::WorkspaceNotRunning {
                id: "w".into(),
                state: "stopped".into(),
            },
            "workspace_not_running",
            Some("call workspace_start (in the workspace-full profile) or workspace_reset"),
        );
        check(
            E::PatchFailed("hunk 1 failed".into()),
            "patch_failed",
            Some("workspace_diff, workspace_file_read"),
        );
        check(
            E::AlreadyExists("a workspace named x".into()),
            "already_exists",
            Some("(workspace_delete)"),
        );
        check(
            E::AlreadyExists("out.tar".into()),
            "already_exists",
            Some("pass overwrite: true"),
        );
        check(
            E::WorkspaceExpired("w".into()),
            "workspace_expired",
            Some("workspace_update (ttl_seconds, or clear_ttl: true), then call workspace_start"),
        );
        check(
            E::IsolationUnavailable {
                requested: "microvm".into(),
                reason: "no kvm".into(),
                available: vec!["container".into(), "vm-emulated".into()],
            },
            "isolation_unavailable",
            Some("this host can give: container, vm-emulated; pass isolation: \"container\""),
        );
        // With nothing available there is no level to suggest: the library's hint stands.
        check(
            E::IsolationUnavailable {
                requested: "microvm".into(),
                reason: "no kvm".into(),
                available: vec![],
            },
            "isolation_unavailable",
            Some("pyro doctor"),
        );
        check(
            E::VmNotStarted {
                id: "v".into(),
                state: "created".into(),
            },
            "vm_not_started",
            Some("call vm_start first"),
        );
        check(
            E::VmNotFound("v".into()),
            "vm_not_found",
            Some("create another"),
        );
        check(E::InvalidRequest("bad".into()), "invalid_request", None);
        check(E::Interrupted, "interrupted", None);
    }

    #[test]
    fn tool_hints_name_tools_not_cli_flags() {
        for e in [
            pyro::Error::WorkspaceNotFound("w".into()),
            pyro::Error::WorkspaceNotRunning {
                id: "w".into(),
                state: "stopped".into(),
            },
            pyro::Error::WorkspaceExpired("w".into()),
            pyro::Error::AlreadyExists("a workspace named x".into()),
            pyro::Error::AlreadyExists("out".into()),
            pyro::Error::PatchFailed("p".into()),
        ] {
            let hint = ToolError::from(e).hint.unwrap_or_default();
            assert!(
                !hint.contains("`pyro ") && !hint.contains(" --"),
                "a CLI hint over MCP: {hint:?}"
            );
        }
    }

    #[test]
    fn root_errors_are_path_kinds_with_a_hint_for_their_cause() {
        #[track_caller]
        fn check(e: RootError, kind: &str, hint: &str) {
            let message = e.to_string();
            let t = ToolError::from(e);
            assert_eq!((t.kind.as_str(), t.message), (kind, message));
            assert!(
                t.hint.as_ref().is_some_and(|h| h.contains(hint)),
                "{:?}",
                t.hint
            );
        }
        check(
            RootError::Outside {
                path: "/etc".into(),
                roots: "/srv".into(),
            },
            "path_not_allowed",
            "--allow-root",
        );
        check(
            RootError::Unresolvable {
                path: "x".into(),
                source: std::io::ErrorKind::NotFound.into(),
            },
            "invalid_path",
            "exists",
        );
        check(
            RootError::Invalid("/".into()),
            "invalid_path",
            "name a file",
        );
    }

    #[test]
    fn an_error_result_has_text_and_the_error_object() {
        #[track_caller]
        fn check(e: ToolError, text: &str, body: Value) {
            let r = e.into_result();
            assert_eq!(r.is_error, Some(true));
            assert_eq!(r.structured_content, Some(body));
            assert_eq!(r.content.len(), 1);
            assert_eq!(r.content[0].as_text().map(|t| t.text.as_str()), Some(text));
        }
        check(
            ToolError::invalid("command is empty", None),
            "error (invalid_request): command is empty",
            json!({"error": {"kind": "invalid_request", "message": "command is empty", "hint": null}}),
        );
        check(
            ToolError::invalid("too big", Some("make it smaller")),
            "error (invalid_request): too big\nhint: make it smaller",
            json!({"error": {"kind": "invalid_request", "message": "too big", "hint": "make it smaller"}}),
        );
    }

    #[test]
    fn outcomes_render_either_way() {
        let ok = outcome(Ok::<_, ToolError>(json!({"n": 2})), |v| {
            format!("n is {}", v["n"])
        });
        assert_eq!(ok.is_error, Some(false));
        assert_eq!(
            ok.content[0].as_text().map(|t| t.text.as_str()),
            Some("n is 2")
        );
        assert_eq!(
            ok.content[1].as_text().map(|t| t.text.as_str()),
            Some(r#"{"n":2}"#)
        );
        let err = outcome(Err::<Value, _>(ToolError::invalid("no", None)), |_| {
            unreachable!("no summary for an error")
        });
        assert_eq!(err.is_error, Some(true));
        assert_eq!(err.structured_content.unwrap()["error"]["message"], "no");
    }

    #[test]
    fn a_result_that_cannot_be_encoded_is_an_internal_error() {
        // JSON object keys must be strings.
        let bad: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into_iter().collect();
        let r = success(&bad, "never shown".into());
        assert_eq!(r.is_error, Some(true));
        let body = r.structured_content.unwrap();
        assert_eq!(body["error"]["kind"], "internal");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("cannot encode the result: ")));
    }

    #[test]
    fn exec_summaries_say_what_to_do_next() {
        #[track_caller]
        fn check(code: i32, timed_out: bool, truncated: bool, want: &[&str], not: &[&str]) {
            let s = exec_summary("vm_run", code, timed_out, truncated, 100);
            for w in want {
                assert!(s.contains(w), "{s:?} lacks {w:?}");
            }
            for n in not {
                assert!(!s.contains(n), "{s:?} has {n:?}");
            }
        }
        check(
            0,
            false,
            false,
            &["vm_run exited with code 0"],
            &["timed out", "capped"],
        );
        check(
            124,
            true,
            false,
            &["code 124 (timed out; raise timeout_seconds"],
            &["capped"],
        );
        check(
            1,
            false,
            true,
            &[
                "output was capped at 100 bytes per stream",
                &format!("(at most {})", crate::params::MAX_OUTPUT_BYTES),
            ],
            &["timed out"],
        );
    }

    #[test]
    fn lists_are_counted() {
        assert_eq!(
            counted("items", &[1, 2]),
            json!({"count": 2, "items": [1, 2]})
        );
        assert_eq!(
            counted::<u8>("workspaces", &[]),
            json!({"count": 0, "workspaces": []})
        );
    }

    #[test]
    fn successes_carry_the_object_and_a_summary() {
        let r = success(&json!({"a": 1}), "done".into());
        assert_eq!(r.is_error, Some(false));
        assert_eq!(r.structured_content, Some(json!({"a": 1})));
        assert_eq!(r.content.len(), 2);
        let summary = exec_summary("cmd", 0, false, true, 10);
        assert!(summary.contains("max_output_bytes"));
    }
}
