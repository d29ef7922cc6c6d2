//! Presentation: JSON on stdout, `[phase] key=value` lines and errors with hints on stderr.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Mutex;

use serde::Serialize;

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// One `[tag] k=v k=v` line on stderr. Values with spaces are quoted so lines stay parseable.
pub fn phase_line(tag: &str, fields: &[(&str, String)]) {
    eprintln!("{}", format_phase_line(tag, fields));
}

fn format_phase_line(tag: &str, fields: &[(&str, String)]) -> String {
    let mut line = format!("[{tag}]");
    for (k, v) in fields {
        if v.is_empty() || v.contains(char::is_whitespace) || v.contains('"') {
            line.push_str(&format!(" {k}={v:?}"));
        } else {
            line.push_str(&format!(" {k}={v}"));
        }
    }
    line
}

/// Reports an error (JSON envelope on stdout with `--json`, else `error:` and `hint:` on
/// stderr) and returns exit code 2 for usage errors, else 1.
pub fn fail(json: bool, err: &anyhow::Error) -> ExitCode {
    let (kind, hint) = match (
        err.downcast_ref::<pyro::Error>(),
        err.downcast_ref::<Hinted>(),
    ) {
        (Some(e), _) => (e.kind(), e.hint()),
        (None, Some(h)) => (h.kind, h.hint.clone()),
        (None, None) => ("error", None),
    };
    // A request pyro refused before doing anything (a value out of range, a bad setting) is a
    // usage error, like one clap refuses.
    let code = if matches!(kind, "invalid_request" | "invalid_config") {
        2
    } else {
        1
    };
    let message = chain_message(err);
    if json {
        let v = serde_json::json!({"error": {"kind": kind, "message": message, "hint": hint}});
        let _ = print_json(&v);
    } else {
        eprintln!("error: {message}");
        if let Some(h) = hint {
            eprintln!("hint: {h}");
        }
    }
    ExitCode::from(code)
}

/// A usage error clap rendered, as an error with kind `invalid_request`: its first paragraph
/// is the message, its `tip:` and `Usage:` lines the hint.
pub fn usage_error(rendered: &str) -> anyhow::Error {
    let mut paragraphs = rendered.split("\n\n");
    let message = paragraphs
        .next()
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.trim_start_matches("error: ").to_string();
    let hint: Vec<&str> = paragraphs
        .flat_map(str::lines)
        .map(str::trim)
        .filter(|l| l.starts_with("tip:") || l.starts_with("Usage:"))
        .collect();
    anyhow::Error::new(Hinted {
        kind: "invalid_request",
        message,
        hint: (!hint.is_empty()).then(|| hint.join("; ")),
    })
}

/// An error of the CLI's own (not the library's), with a stable kind and a hint for the user.
#[derive(Debug)]
pub struct Hinted {
    /// The `kind` in the JSON envelope, e.g. `client_config_invalid`.
    pub kind: &'static str,
    /// What went wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Hinted {
    /// An error of `kind` with a message and a hint.
    pub fn new(kind: &'static str, message: impl Into<String>, hint: impl Into<String>) -> Hinted {
        Hinted {
            kind,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

impl std::fmt::Display for Hinted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Hinted {}

/// The error with its causes, each said once: a library error already shows its cause (an OS
/// error) in its own text, and `{:#}` would repeat it.
fn chain_message(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

/// Shows environment build progress: a spinner on a terminal, plain lines otherwise.
pub struct BuildProgress {
    bar: Option<indicatif::ProgressBar>,
    last: Mutex<String>,
}

impl BuildProgress {
    /// A progress display for stderr.
    pub fn new() -> BuildProgress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        });
        BuildProgress {
            bar,
            last: Mutex::new(String::new()),
        }
    }

    /// One build step.
    pub fn step(&self, env: &str, message: &str) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if *last == message {
            return;
        }
        *last = message.to_string();
        match &self.bar {
            Some(b) => b.set_message(format!("building {env}: {message}")),
            None => phase_line(
                "env-build",
                &[
                    ("environment", env.to_string()),
                    ("step", message.to_string()),
                ],
            ),
        }
    }

    /// Ends the display.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Shows pull and push progress: a byte progress bar on a terminal, plain phase lines
/// otherwise (no byte counts, so logs stay short).
pub struct TransferProgress {
    tag: &'static str,
    key: &'static str,
    bar: Option<indicatif::ProgressBar>,
}

impl TransferProgress {
    /// A progress display on stderr; `tag` is `env-pull` or `env-push`.
    pub fn new(tag: &'static str) -> TransferProgress {
        TransferProgress::keyed(tag, "environment")
    }

    /// Like [`TransferProgress::new`], naming what moves with `key` in phase lines
    /// (`[kernel-pull] reference=… step=…`).
    pub fn keyed(tag: &'static str, key: &'static str) -> TransferProgress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b
        });
        TransferProgress { tag, key, bar }
    }

    /// One event.
    pub fn event(&self, env: &str, event: &pyro::env::Transfer) {
        match (event, &self.bar) {
            (pyro::env::Transfer::Phase(m), Some(b)) => b.set_message(m.clone()),
            (pyro::env::Transfer::Phase(m), None) => phase_line(
                self.tag,
                &[(self.key, env.to_string()), ("step", m.clone())],
            ),
            (pyro::env::Transfer::Bytes { done, total }, Some(b)) => {
                b.set_length(*total);
                b.set_position(*done);
            }
            (pyro::env::Transfer::Bytes { .. }, None) => {}
        }
    }

    /// Ends the display.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_lines_quote_only_values_that_need_it() {
        let line = format_phase_line(
            "run",
            &[
                ("phase", "exec".into()),
                ("step", "two words".into()),
                ("empty", String::new()),
            ],
        );
        assert_eq!(line, r#"[run] phase=exec step="two words" empty="""#);
    }

    #[test]
    fn an_os_error_is_said_once() {
        // pyro's I/O errors show their cause in their own text, and also expose it as source.
        #[derive(Debug)]
        struct WithCause(std::io::Error);
        impl std::fmt::Display for WithCause {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "seed path /nope: {}", self.0)
            }
        }
        impl std::error::Error for WithCause {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let err = anyhow::Error::new(WithCause(io()));
        assert_eq!(chain_message(&err), "seed path /nope: entity not found");
        let wrapped = anyhow::Error::new(io()).context("open seed");
        assert_eq!(chain_message(&wrapped), "open seed: entity not found");
    }
}
