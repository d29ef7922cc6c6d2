//! `pyro demo ollama` against a scripted chat server on loopback: the only test double. It
//! speaks the OpenAI-compatible API Ollama serves (`POST /v1/chat/completions` with `tools`;
//! `tool_calls` in the reply), asks for `git --version` in debian:12, then answers with the
//! tool output it was sent. The command itself runs for real, in a container sandbox.

#![allow(clippy::unwrap_used, missing_docs)]

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use util::{container_tests_enabled, stderr, stdout, TestPyro};

/// What the scripted server answers: a status and a JSON body, from the request's body.
type Script = dyn Fn(&Value) -> (u16, Value) + Send + Sync;

/// A chat server on a free loopback port; every request it got is kept.
struct ScriptedServer {
    base_url: String,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
}

impl ScriptedServer {
    fn start(script: Box<Script>) -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                let (status, reply) = script(&body);
                seen.lock().unwrap().push((path, body));
                let reply = reply.to_string();
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
        ScriptedServer { base_url, requests }
    }
}

fn completion(message: Value) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "llama3.2:3b",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    })
}

/// The model: first a `vm_run` call for `git --version` in debian:12, then an answer quoting
/// the stdout pyro sent back.
fn git_version_model(body: &Value) -> (u16, Value) {
    let messages = body["messages"].as_array().unwrap();
    let tool_reply = messages.iter().find(|m| m["role"] == "tool");
    match tool_reply {
        None => (
            200,
            completion(json!({
                "role": "assistant",
                "content": "",
                "tool_calls": [{
                    "id": "call_git",
                    "type": "function",
                    "function": {
                        "name": "vm_run",
                        "arguments": "{\"environment\": \"debian:12\", \"command\": \"git --version\"}",
                    },
                }],
            })),
        ),
        Some(t) => {
            assert_eq!(t["tool_call_id"], "call_git");
            let result: Value = serde_json::from_str(t["content"].as_str().unwrap()).unwrap();
            let out = result["stdout"]
                .as_str()
                .unwrap_or("nothing")
                .trim()
                .to_owned();
            (
                200,
                completion(
                    json!({"role": "assistant", "content": format!("The sandbox says: {out}")}),
                ),
            )
        }
    }
}

#[test]
fn the_models_tool_call_runs_in_a_real_sandbox() {
    if !container_tests_enabled("the_models_tool_call_runs_in_a_real_sandbox") {
        return;
    }
    let t = TestPyro::new();
    // vm_run, like the MCP tool, runs only environments already built.
    let built = t.run(&["env", "build", "debian:12"]);
    assert!(built.status.success(), "{}", stderr(&built));
    let server = ScriptedServer::start(Box::new(git_version_model));
    let base = server.base_url.as_str();

    let out = t.run(&[
        "demo",
        "ollama",
        "--base-url",
        base,
        "--isolation",
        "container",
    ]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("vm_run → git --version (exit 0, container level):"),
        "{text}"
    );
    assert!(text.contains("  git version 2."), "{text}");
    assert!(
        text.contains("assistant: The sandbox says: git version 2."),
        "{text}"
    );
    let err = stderr(&out);
    assert!(
        err.contains("[demo-ollama] step=tool_call round=1 tool=vm_run"),
        "{err}"
    );
    assert!(
        err.contains(
            "[demo-ollama] step=done rounds=2 tool_calls=1 exit_code=0 isolation=container"
        ),
        "{err}"
    );

    let (out, v) = t.json(&[
        "demo",
        "ollama",
        "--base-url",
        base,
        "--isolation",
        "container",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(v["model"], "llama3.2:3b", "{v}");
    assert_eq!(v["rounds"], 2, "{v}");
    let call = &v["tool_calls"][0];
    assert_eq!(call["name"], "vm_run", "{v}");
    assert_eq!(call["is_error"], false, "{v}");
    assert_eq!(call["arguments"]["command"], "git --version", "{v}");
    // The demo, not the model, chose the level.
    assert_eq!(call["arguments"]["isolation"], "container", "{v}");
    let result = &call["result"];
    assert_eq!(result["isolation"], "container", "{v}");
    assert_eq!(result["exit_code"], 0, "{v}");
    let git = result["stdout"].as_str().unwrap().trim().to_owned();
    assert!(git.starts_with("git version 2."), "{v}");
    assert_eq!(v["final_answer"], format!("The sandbox says: {git}"), "{v}");

    // What the model was sent: the MCP tool's own schema, then the real result.
    let requests = server.requests.lock().unwrap();
    assert_eq!(requests.len(), 4);
    for (path, body) in requests.iter() {
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(body["model"], "llama3.2:3b");
        let tool = &body["tools"][0];
        assert_eq!(tool["type"], "function");
        assert_eq!(tool["function"]["name"], "vm_run");
        let params = &tool["function"]["parameters"];
        assert!(params["properties"]["command"].is_object(), "{params}");
        assert!(params["properties"]["environment"].is_object(), "{params}");
        // The level is the demo's to choose, so the model is not offered it.
        assert!(params["properties"].get("isolation").is_none(), "{params}");
    }
    let second = &requests[1].1["messages"];
    assert_eq!(second[2]["tool_calls"][0]["id"], "call_git", "{second}");
    assert!(
        second[3]["content"].as_str().unwrap().contains(&git),
        "{second}"
    );
    assert!(t.leftovers().is_empty(), "{:?}", t.leftovers());
}

#[test]
fn errors_say_what_to_do() {
    let t = TestPyro::new();
    // Nothing listens on port 1.
    let out = t.run(&["demo", "ollama", "--base-url", "http://127.0.0.1:1/v1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach the chat API at http://127.0.0.1:1/v1/chat/completions"),
        "{err}"
    );
    assert!(
        err.contains("hint: start Ollama (`ollama serve`, then `ollama pull llama3.2:3b`)"),
        "{err}"
    );

    let missing = ScriptedServer::start(Box::new(|_| {
        (
            404,
            json!({"error": {"message": "model \"llama3.2:3b\" not found, try pulling it first"}}),
        )
    }));
    let out = t.run(&["demo", "ollama", "--base-url", &missing.base_url]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("hint: pull the model first: `ollama pull llama3.2:3b`"),
        "{}",
        stderr(&out)
    );

    let chatty = ScriptedServer::start(Box::new(|_| {
        (
            200,
            completion(json!({"role": "assistant", "content": "git is probably 2.39"})),
        )
    }));
    let (out, v) = t.json(&["demo", "ollama", "--base-url", &chatty.base_url]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(v["error"]["kind"], "model_no_tool_call", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("probably 2.39"),
        "{v}"
    );

    let out = t.run(&["demo", "ollama", "--isolation", "docker"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // The plain demo keeps its flags.
    let out = t.run(&["demo", "--help"]);
    assert!(stdout(&out).contains("--network"), "{}", stdout(&out));
    assert!(stdout(&out).contains("ollama"), "{}", stdout(&out));
}
