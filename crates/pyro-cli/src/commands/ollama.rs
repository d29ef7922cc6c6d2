//! `pyro demo ollama`: the seed's LLM demo. A model behind an OpenAI-compatible chat API
//! (Ollama's `/v1/chat/completions` by default) is offered pyro's MCP `vm_run` tool, asks for a
//! command, and answers from the result.
//!
//! The tool is the MCP server's own: its description and schema come from `tools/list` of a
//! `pyro_mcp` server running in this process over an in-memory pipe, and each call the model
//! makes is a `tools/call` to it. So the demo runs exactly what an MCP client's `vm_run` runs;
//! only the isolation level is the demo's choice (`--isolation`, else the configured default),
//! never the model's.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use rmcp::ServiceExt;
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli_host::OllamaArgs;
use crate::output::{phase_line, print_json, Hinted};

const TAG: &str = "demo-ollama";
const TOOL: &str = "vm_run";
const SYSTEM_PROMPT: &str = "You can run shell commands in a fresh, isolated Linux sandbox with the vm_run tool. When the user asks about a command's output, call vm_run (environment \"debian:12\" unless told otherwise) and answer from its stdout; do not guess.";

/// One call the model made, and what pyro answered.
#[derive(Debug, serde::Serialize)]
struct ToolCall {
    round: u32,
    id: String,
    name: String,
    arguments: Value,
    is_error: bool,
    result: Value,
}

/// The whole exchange, for `--json`.
#[derive(Debug, serde::Serialize)]
struct Transcript {
    base_url: String,
    model: String,
    isolation: Option<String>,
    rounds: u32,
    tool_calls: Vec<ToolCall>,
    messages: Vec<Value>,
    final_answer: String,
}

pub async fn ollama(pyro: pyro::Pyro, a: OllamaArgs) -> anyhow::Result<ExitCode> {
    let isolation = a
        .isolation
        .as_deref()
        .map(str::parse::<pyro::Isolation>)
        .transpose()?
        .map(|l| l.as_str().to_owned());
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let outcome = tokio::select! {
        r = converse(pyro.clone(), &a, isolation) => Ok(r),
        _ = sigint.recv() => Err(130u8),
        _ = sigterm.recv() => Err(143u8),
    };
    let transcript = match outcome {
        Ok(t) => t?,
        Err(code) => {
            // The conversation was dropped mid-call: remove any sandbox it started.
            let report = pyro.cleanup_owned().await?;
            phase_line(
                TAG,
                &[
                    ("step", "interrupted".into()),
                    ("removed", report.removed.join(",")),
                ],
            );
            return Ok(ExitCode::from(code));
        }
    };
    if a.json {
        print_json(&transcript)?;
    } else {
        println!("assistant: {}", transcript.final_answer.trim());
        let last = transcript.tool_calls.last();
        phase_line(
            TAG,
            &[
                ("step", "done".into()),
                ("rounds", transcript.rounds.to_string()),
                ("tool_calls", transcript.tool_calls.len().to_string()),
                (
                    "exit_code",
                    last.map(|c| c.result["exit_code"].to_string())
                        .unwrap_or_default(),
                ),
                (
                    "isolation",
                    last.and_then(|c| c.result["isolation"].as_str())
                        .unwrap_or_default()
                        .to_owned(),
                ),
            ],
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The MCP server in this process, and a client session to it.
struct InProcessMcp {
    client: rmcp::service::RunningService<rmcp::RoleClient, ()>,
    server: tokio::task::JoinHandle<()>,
}

impl InProcessMcp {
    async fn start(pyro: pyro::Pyro) -> anyhow::Result<InProcessMcp> {
        let cwd = std::env::current_dir().context("read the working directory")?;
        let roots = pyro_mcp::AllowedRoots::new(&[cwd])?;
        let tools = pyro_mcp::PyroTools::new(pyro, pyro_mcp::Profile::VmRun, roots);
        let (server_end, client_end) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            match tools.serve(server_end).await {
                Ok(running) => {
                    let _ = running.waiting().await;
                }
                Err(e) => tracing::warn!("in-process MCP server: {e}"),
            }
        });
        let client = ()
            .serve(client_end)
            .await
            .context("start an MCP session with the in-process server")?;
        Ok(InProcessMcp { client, server })
    }

    async fn stop(self) {
        let _ = self.client.cancel().await;
        let _ = self.server.await;
    }
}

async fn converse(
    pyro: pyro::Pyro,
    a: &OllamaArgs,
    isolation: Option<String>,
) -> anyhow::Result<Transcript> {
    let mcp = InProcessMcp::start(pyro).await?;
    let result = talk(&mcp, a, isolation).await;
    mcp.stop().await;
    result
}

async fn talk(
    mcp: &InProcessMcp,
    a: &OllamaArgs,
    isolation: Option<String>,
) -> anyhow::Result<Transcript> {
    let tools = mcp
        .client
        .list_all_tools()
        .await
        .context("list the MCP server's tools")?;
    let tool = tools
        .iter()
        .find(|t| t.name == TOOL)
        .context("the MCP server offers no vm_run tool")?;
    let spec = json!([{
        "type": "function",
        "function": {
            "name": TOOL,
            "description": tool.description.as_deref().unwrap_or_default(),
            "parameters": model_schema(&tool.input_schema),
        }
    }]);

    // The built-in provider for any https base URL, as the registry client does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(a.request_timeout))
        .build()
        .context("build the HTTP client")?;
    let url = format!("{}/chat/completions", a.base_url.trim_end_matches('/'));

    let mut messages = vec![
        json!({"role": "system", "content": SYSTEM_PROMPT}),
        json!({"role": "user", "content": a.prompt}),
    ];
    if !a.json {
        println!("user: {}", a.prompt);
    }
    let mut calls: Vec<ToolCall> = Vec::new();
    for round in 1..=a.max_rounds {
        phase_line(
            TAG,
            &[
                ("step", "request".into()),
                ("round", round.to_string()),
                ("model", a.model.clone()),
                ("url", url.clone()),
            ],
        );
        let body = json!({
            "model": a.model,
            "messages": messages,
            "tools": spec,
            "tool_choice": "auto",
            "stream": false,
        });
        let reply = post(&http, &url, &a.model, &body).await?;
        let message = reply
            .pointer("/choices/0/message")
            .filter(|m| m.is_object())
            .cloned()
            .ok_or_else(|| {
                Hinted::new(
                    "model_reply_invalid",
                    format!(
                        "the reply from {url} has no choices[0].message: {}",
                        excerpt(&reply.to_string())
                    ),
                    "point --base-url at an OpenAI-compatible chat API (Ollama's ends in /v1)",
                )
            })?;
        if a.verbose {
            eprintln!("[{TAG}] reply: {message}");
        }
        let requested: Vec<Value> = message
            .get("tool_calls")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        messages.push(message.clone());
        if requested.is_empty() {
            let answer = content_text(&message);
            if calls.is_empty() {
                return Err(Hinted::new(
                    "model_no_tool_call",
                    format!(
                        "the model answered without running a command: {}",
                        excerpt(&answer)
                    ),
                    "run it again, or try a model that handles tool calls well (llama3.2:3b, qwen2.5)",
                )
                .into());
            }
            return Ok(Transcript {
                base_url: a.base_url.clone(),
                model: a.model.clone(),
                isolation,
                rounds: round,
                tool_calls: calls,
                messages,
                final_answer: answer,
            });
        }
        for (n, call) in requested.iter().enumerate() {
            let id = call["id"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("call_{round}_{n}"));
            let name = call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            // The sandbox's level is the user's choice, never the model's.
            let arguments = arguments_of(call).map(|mut args| {
                // Nor may it accept a weaker level than the one configured.
                args.remove("allow_host_compat");
                match &isolation {
                    Some(l) => args.insert("isolation".into(), json!(l)),
                    None => args.remove("isolation"),
                };
                args
            });
            let (is_error, result) = match (&name[..], &arguments) {
                (TOOL, Some(args)) => run_tool(mcp, args.clone()).await?,
                (TOOL, None) => (
                    true,
                    json!({"error": {"kind": "invalid_request", "message": "the arguments are not a JSON object"}}),
                ),
                (other, _) => (
                    true,
                    json!({"error": {"kind": "invalid_request", "message": format!("there is no tool {other:?}; the only tool is vm_run")}}),
                ),
            };
            let shown_args = arguments.clone().map(Value::Object).unwrap_or(Value::Null);
            phase_line(
                TAG,
                &[
                    ("step", "tool_call".into()),
                    ("round", round.to_string()),
                    ("tool", name.clone()),
                    ("arguments", shown_args.to_string()),
                ],
            );
            report_result(&name, is_error, &result, a);
            messages.push(json!({
                "role": "tool",
                "tool_call_id": id,
                "content": result.to_string(),
            }));
            calls.push(ToolCall {
                round,
                id,
                name,
                arguments: shown_args,
                is_error,
                result,
            });
        }
    }
    Err(Hinted::new(
        "model_no_answer",
        format!(
            "the model gave no final answer within {} requests",
            a.max_rounds
        ),
        "raise --max-rounds, or try another model",
    )
    .into())
}

/// The MCP tool's input schema as the model is shown it: without `isolation` and
/// `allow_host_compat` (the demo sets the level, never the model), without `$schema`, and with `["T", "null"]` types as plain `T`, which chat
/// servers that read only one type accept (Ollama 0.6 refused the array: ollama/ollama#10328).
fn model_schema(schema: &serde_json::Map<String, Value>) -> Value {
    let mut schema = schema.clone();
    schema.remove("$schema");
    if let Some(Value::Object(props)) = schema.get_mut("properties") {
        props.remove("isolation");
        props.remove("allow_host_compat");
        for prop in props.values_mut() {
            if let Some(Value::Array(types)) = prop.get("type") {
                let plain: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                if let [only] = plain[..] {
                    let only = only.clone();
                    prop["type"] = only;
                }
            }
        }
    }
    if let Some(Value::Array(required)) = schema.get_mut("required") {
        required.retain(|r| r != "isolation");
    }
    Value::Object(schema)
}

/// A tool call's arguments: OpenAI sends a JSON string, some servers an object.
fn arguments_of(call: &Value) -> Option<serde_json::Map<String, Value>> {
    match call.pointer("/function/arguments")? {
        Value::String(s) if s.trim().is_empty() => Some(serde_json::Map::new()),
        Value::String(s) => match serde_json::from_str(s) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        },
        Value::Object(m) => Some(m.clone()),
        _ => None,
    }
}

fn content_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        // Content parts: [{type: "text", text}, …].
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn excerpt(s: &str) -> String {
    const MAX: usize = 300;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Calls `vm_run` on the in-process MCP server: the structured result (or the error object)
/// and whether it is an error.
async fn run_tool(
    mcp: &InProcessMcp,
    args: serde_json::Map<String, Value>,
) -> anyhow::Result<(bool, Value)> {
    let params = rmcp::model::CallToolRequestParams::new(TOOL).with_arguments(args);
    let r = mcp
        .client
        .call_tool(params)
        .await
        .context("call vm_run on the in-process MCP server")?;
    let is_error = r.is_error.unwrap_or(false);
    let value = match r.structured_content {
        Some(v) => v,
        None => {
            let text: Vec<&str> = r
                .content
                .iter()
                .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
                .collect();
            let text = text.join("\n");
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        }
    };
    Ok((is_error, value))
}

fn report_result(name: &str, is_error: bool, result: &Value, a: &OllamaArgs) {
    if is_error {
        let message = result
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        phase_line(
            TAG,
            &[
                ("step", "tool_error".into()),
                ("tool", name.to_owned()),
                ("message", message.clone()),
            ],
        );
        if !a.json {
            println!("{name} → error: {message}");
        }
    } else {
        let field = |k: &str| match &result[k] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        };
        phase_line(
            TAG,
            &[
                ("step", "tool_result".into()),
                ("tool", name.to_owned()),
                ("exit_code", field("exit_code")),
                ("isolation", field("isolation")),
                ("backend", field("backend")),
                ("environment", field("environment")),
            ],
        );
        if !a.json {
            println!(
                "{name} → {} (exit {}, {} level):",
                field("command"),
                field("exit_code"),
                field("isolation")
            );
            for line in field("stdout").lines().chain(field("stderr").lines()) {
                println!("  {line}");
            }
        }
    }
    if a.verbose {
        eprintln!("[{TAG}] result: {result}");
    }
}

/// POSTs one chat request, with errors that say what to do.
async fn post(
    http: &reqwest::Client,
    url: &str,
    model: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let response = http.post(url).json(body).send().await.map_err(|e| {
        if e.is_timeout() {
            Hinted::new(
                "model_timeout",
                format!("no answer from {url} in time: {e}"),
                "a model on CPU can be slow: raise --request-timeout",
            )
        } else {
            Hinted::new(
                "model_unreachable",
                format!("cannot reach the chat API at {url}: {e}"),
                format!("start Ollama (`ollama serve`, then `ollama pull {model}`), or point --base-url at a server speaking the OpenAI chat API"),
            )
        }
    })?;
    let status = response.status();
    let text = response
        .text()
        .await
        .with_context(|| format!("read the answer from {url}"))?;
    if !status.is_success() {
        let hint = if status == reqwest::StatusCode::NOT_FOUND && text.contains("model") {
            format!("pull the model first: `ollama pull {model}`, or choose another with --model")
        } else {
            "check --base-url (Ollama's is http://localhost:11434/v1) and --model".to_owned()
        };
        return Err(Hinted::new(
            "model_error",
            format!(
                "the chat API at {url} answered {status}: {}",
                excerpt(text.trim())
            ),
            hint,
        )
        .into());
    }
    serde_json::from_str(&text).map_err(|e| {
        Hinted::new(
            "model_reply_invalid",
            format!(
                "the answer from {url} is not JSON ({e}): {}",
                excerpt(&text)
            ),
            "point --base-url at an OpenAI-compatible chat API (Ollama's ends in /v1)",
        )
        .into()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn arguments_come_as_a_string_or_an_object() {
        let s = json!({"function": {"name": "vm_run", "arguments": "{\"command\": \"true\"}"}});
        assert_eq!(arguments_of(&s).unwrap()["command"], "true");
        let o = json!({"function": {"name": "vm_run", "arguments": {"command": "true"}}});
        assert_eq!(arguments_of(&o).unwrap()["command"], "true");
        let bad = json!({"function": {"name": "vm_run", "arguments": "[1]"}});
        assert!(arguments_of(&bad).is_none());
    }

    #[test]
    fn the_model_sees_a_plain_schema_without_isolation() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "command": {"type": "string"},
                "isolation": {"type": ["string", "null"]},
                "allow_host_compat": {"type": "boolean", "default": false},
                "stdin": {"type": ["string", "null"], "default": null},
            },
            "required": ["command"],
        });
        let Value::Object(schema) = schema else {
            unreachable!()
        };
        let s = model_schema(&schema);
        assert!(s.get("$schema").is_none(), "{s}");
        assert!(s["properties"].get("isolation").is_none(), "{s}");
        assert!(s["properties"].get("allow_host_compat").is_none(), "{s}");
        assert_eq!(s["properties"]["stdin"]["type"], "string", "{s}");
        assert_eq!(s["required"], json!(["command"]));
    }

    #[test]
    fn content_may_be_parts() {
        let m = json!({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]});
        assert_eq!(content_text(&m), "ab");
        assert_eq!(content_text(&json!({"content": null})), "");
    }
}
