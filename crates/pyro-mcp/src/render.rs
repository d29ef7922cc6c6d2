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
        let kind = match e {
            RootError::Outside { .. } => "path_not_allowed",
            RootError::Unresolvable { .. } | RootError::Invalid(_) => "invalid_path",
        };
        ToolError {
            kind: kind.into(),
            message: e.to_string(),
            hint: Some(
                "host paths must lie under the server's allowed roots (its working directory, or \
                 directories given with `pyro mcp serve --allow-root DIR`)"
                    .into(),
            ),
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
    fn successes_carry_the_object_and_a_summary() {
        let r = success(&json!({"a": 1}), "done".into());
        assert_eq!(r.is_error, Some(false));
        assert_eq!(r.structured_content, Some(json!({"a": 1})));
        assert_eq!(r.content.len(), 2);
        let summary = exec_summary("cmd", 0, false, true, 10);
        assert!(summary.contains("max_output_bytes"));
    }
}
