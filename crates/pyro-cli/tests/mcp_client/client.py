"""Drives `pyro mcp serve` with the official MCP Python SDK (a client pyro did not write).

Run by crates/pyro-cli/tests/mcp.rs: `python client.py SCENARIO TRANSPORT --pyro BIN`. Each
scenario asserts as it goes and exits non-zero with a message on the first failure. The
server inherits this process's environment (PYRO_HOME, PYRO_CACHE_DIR, PYRO_AGENT) and working
directory, which is its allowed root.
"""

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys

import httpx2 as httpx
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

CORE = {
    "vm_run", "workspace_create", "workspace_list", "workspace_update", "workspace_status",
    "workspace_sync_push", "workspace_exec", "workspace_logs", "workspace_file_list",
    "workspace_file_read", "workspace_file_write", "workspace_patch_apply", "workspace_diff",
    "workspace_export", "workspace_reset", "workspace_delete",
}
FULL = CORE | {
    "vm_list_environments", "vm_create", "vm_start", "vm_exec", "vm_stop", "vm_delete",
    "vm_status", "vm_network_info", "vm_reap_expired", "workspace_stop", "workspace_start",
    "workspace_disk_export", "workspace_disk_list", "workspace_disk_read", "snapshot_create",
    "snapshot_list", "snapshot_delete",
    "shell_open", "shell_read", "shell_write", "shell_signal", "shell_close", "shell_list",
    "service_start", "service_list", "service_status", "service_logs", "service_stop",
}
EXPECTED = {"vm-run": {"vm_run"}, "workspace-core": CORE, "workspace-full": FULL}
ISO = {"isolation": "container"}


def check(cond, what, detail=None):
    if not cond:
        msg = f"FAILED: {what}"
        if detail is not None:
            msg += f"\n  got: {detail}"
        raise AssertionError(msg)


@contextlib.asynccontextmanager
async def stdio_session(pyro, profile):
    params = StdioServerParameters(
        command=pyro, args=["mcp", "serve", "--profile", profile], env=dict(os.environ)
    )
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            await s.initialize()
            yield s


@contextlib.asynccontextmanager
async def http_server(pyro, profile, token=None):
    """Starts `pyro mcp serve --http 127.0.0.1:0` and yields its URL."""
    args = [pyro, "mcp", "serve", "--profile", profile, "--http", "127.0.0.1:0"]
    env = dict(os.environ)
    if token:
        env["PYRO_MCP_TOKEN"] = token
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True)
    try:
        url = None
        for line in proc.stderr:
            sys.stderr.write(line)
            if "listening=" in line:
                url = line.strip().split("listening=", 1)[1]
                break
        check(url, "the HTTP server announces its address")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.asynccontextmanager
async def http_session(url, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(300.0)) as client:
        async with streamable_http_client(url, http_client=client) as (r, w, *_):
            async with ClientSession(r, w) as s:
                await s.initialize()
                yield s


@contextlib.asynccontextmanager
async def session(args, profile="workspace-full"):
    if args.transport == "stdio":
        async with stdio_session(args.pyro, profile) as s:
            yield s
    else:
        async with http_server(args.pyro, profile) as url:
            async with http_session(url) as s:
                yield s


async def call(s, tool, arguments, ok=True):
    r = await s.call_tool(tool, arguments)
    texts = [c.text for c in r.content if getattr(c, "type", "") == "text"]
    if ok:
        check(not r.is_error, f"{tool} succeeds", texts)
        check(isinstance(r.structured_content, dict), f"{tool} returns structured content", r)
        check(texts and len(texts[0]) < 2000, f"{tool} leads with a short summary", texts)
        check(json.loads(texts[-1]) == r.structured_content, f"{tool} also sends the object as JSON text")
        return r.structured_content
    check(r.is_error, f"{tool} fails as a tool error", texts)
    return r.structured_content, "\n".join(texts)


def error_kind(result):
    body, _ = result
    return (body or {}).get("error", {}).get("kind")


async def scenario_profiles(args):
    for profile, want in EXPECTED.items():
        async with contextlib.AsyncExitStack() as stack:
            if args.transport == "stdio":
                s = await stack.enter_async_context(stdio_session(args.pyro, profile))
            else:
                url = await stack.enter_async_context(http_server(args.pyro, profile))
                s = await stack.enter_async_context(http_session(url))
            tools = (await s.list_tools()).tools
            names = {t.name for t in tools}
            check(names == want, f"profile {profile} lists exactly its tools", sorted(names ^ want))
            for t in tools:
                check(t.description and len(t.description) >= 40, f"{t.name} has a usable description", t.description)
                check(t.input_schema.get("type") == "object", f"{t.name} has an object schema", t.input_schema)
            vm_run = next(t for t in tools if t.name == "vm_run").input_schema
            props = vm_run["properties"]
            check(set(vm_run["required"]) == {"environment", "command"}, "vm_run requires environment and command", vm_run["required"])
            for name, default in [("vcpu_count", 1), ("mem_mib", 1024), ("timeout_seconds", 30), ("max_output_bytes", 65536)]:
                check(props[name].get("default") == default, f"vm_run {name} defaults to {default}", props[name])
            check(props["max_output_bytes"].get("maximum") == 1048576, "vm_run caps max_output_bytes", props["max_output_bytes"])
    print("profiles ok")


async def scenario_errors(args):
    async with session(args) as s:
        r = await call(s, "workspace_status", {"workspace_id": "does-not-exist"}, ok=False)
        check(error_kind(r) == "workspace_not_found", "an unknown workspace is workspace_not_found", r)
        check("workspace_list" in r[1], "its hint names a tool", r[1])
        r = await call(s, "workspace_create", {"environment": "debian:12", "seed_path": "/etc", **ISO}, ok=False)
        check(error_kind(r) == "path_not_allowed", "a seed outside the allowed roots is refused", r)
        r = await call(s, "workspace_create", {"environment": "debian:12", "seed_path": "../../..", **ISO}, ok=False)
        check(error_kind(r) == "path_not_allowed", "a relative seed climbing out of the root is refused", r)
        r = await call(s, "workspace_sync_push", {"workspace_id": "x", "source_path": "/"}, ok=False)
        check(error_kind(r) == "path_not_allowed", "a sync source outside the roots is refused", r)
        r = await call(s, "workspace_export", {"workspace_id": "x", "path": "f", "output_path": "/etc/pyro-out"}, ok=False)
        check(error_kind(r) == "path_not_allowed", "an export outside the roots is refused", r)
        r = await call(s, "vm_run", {"environment": "debian:12", "command": "true", "max_output_bytes": 1 << 30, **ISO}, ok=False)
        check(error_kind(r) == "invalid_request", "an oversized output cap is refused", r)
        check("workspace_exec" in r[1], "with a hint on reading big output", r[1])
        r = await call(s, "workspace_file_read", {"workspace_id": "x", "path": "f", "max_bytes": 1 << 30}, ok=False)
        check(error_kind(r) == "invalid_request", "an oversized read is refused", r)
        r = await call(s, "vm_run", {"environment": "debian:12", "command": "true", "vcpu_count": 0, **ISO}, ok=False)
        check(error_kind(r) == "invalid_request", "zero vCPUs is refused", r)
        r = await call(s, "vm_run", {"environment": "no-such-env", "command": "true", **ISO}, ok=False)
        check(error_kind(r) in ("unknown_environment", "isolation_unavailable"), "an unknown environment is refused", r)
        r = await call(s, "vm_run", {"environment": "debian:12", "comand": "typo"}, ok=False)
        check(error_kind(r) == "invalid_request" and "comand" in r[1], "an unknown parameter is an invalid_request naming it", r)
        r = await call(s, "workspace_exec", {"workspace_id": "x", "command": "true", "timeout_seconds": "soon"}, ok=False)
        check(error_kind(r) == "invalid_request", "a mistyped parameter is an invalid_request", r)
        tools = (await s.list_tools()).tools
        check(len(tools) == len(FULL), "the server still answers after the errors")
    print("errors ok")


async def scenario_story(args):
    os.makedirs("seed/src", exist_ok=True)
    with open("seed/README.md", "w") as f:
        f.write("hello from the seed\n")
    with open("seed/src/main.txt", "w") as f:
        f.write("one\ntwo\nthree\n")
    async with session(args) as s:
        r = await call(s, "vm_run", {"environment": "debian:12", "command": "echo hi; echo err >&2; exit 3", **ISO})
        check(r["exit_code"] == 3 and r["stdout"] == "hi\n" and r["stderr"] == "err\n", "vm_run returns output and exit code", r)
        check(r["cleanup"]["deleted"] is True, "vm_run deletes its sandbox", r["cleanup"])
        r2 = await s.call_tool("vm_run", {"environment": "debian:12", "command": "head -c 100000 /dev/zero | tr '\\0' a", "max_output_bytes": 1000, **ISO})
        big = r2.structured_content
        check(big["truncated"] and len(big["stdout"]) == 1000, "output is capped at max_output_bytes", big["stdout"][:50])
        check("max_output_bytes" in r2.content[0].text, "the summary says how to see the rest", r2.content[0].text)

        w = await call(s, "workspace_create", {"environment": "debian:12", "seed_path": "seed", "name": f"story-{args.transport}", "labels": {"suite": "mcp"}, **ISO})
        wid = w["workspace_id"]
        check(w["state"] == "running", "a new workspace runs", w)
        e = await call(s, "workspace_exec", {"workspace_id": wid, "command": "cat README.md && pwd"})
        check(e["stdout"] == "hello from the seed\n/workspace\n", "the seed is in /workspace", e)
        await call(s, "workspace_file_write", {"workspace_id": wid, "path": "notes.md", "text": "# notes\n"})
        f = await call(s, "workspace_file_read", {"workspace_id": wid, "path": "notes.md"})
        check(f["content"] == "# notes\n", "a written file reads back", f)
        f = await call(s, "workspace_file_read", {"workspace_id": wid, "path": "src/main.txt", "max_bytes": 4})
        check(f["truncated"] and f["content"] == "one\n", "reads are capped with truncated set", f)
        ls = await call(s, "workspace_file_list", {"workspace_id": wid, "recursive": True})
        paths = {e["path"] for e in ls["entries"]}
        check(any(p.endswith("notes.md") for p in paths), "file_list shows the new file", paths)
        patch = "--- a/src/main.txt\n+++ b/src/main.txt\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n"
        await call(s, "workspace_patch_apply", {"workspace_id": wid, "patch": patch})
        bad = await call(s, "workspace_patch_apply", {"workspace_id": wid, "patch": patch}, ok=False)
        check(error_kind(bad) == "patch_failed", "a patch that no longer applies is patch_failed", bad)
        d = await call(s, "workspace_diff", {"workspace_id": wid})
        check(d["summary"]["added"] == 1 and d["summary"]["modified"] == 1, "diff sees one added and one modified file", d["summary"])
        check("+TWO" in d["patch"], "diff carries the patch", d["patch"])
        lst = await call(s, "workspace_list", {"labels": {"suite": "mcp"}})
        check(any(x["workspace_id"] == wid for x in lst["workspaces"]), "workspace_list finds it by label", lst)
        # Two files: the library exports a directory holding a single file as that file.
        await call(s, "workspace_file_write", {"workspace_id": wid, "path": "src/b.txt", "text": "b\n"})
        out = await call(s, "workspace_export", {"workspace_id": wid, "path": "src", "output_path": "exported"})
        check(out["artifact_type"] == "directory", "a directory exports as a directory", out)
        with open("exported/main.txt") as fh:
            check(fh.read() == "one\nTWO\nthree\n", "export writes the files under the root")
        await call(s, "workspace_update", {"workspace_id": wid, "idle_ttl_seconds": 3600})
        logs = await call(s, "workspace_logs", {"workspace_id": wid})
        check(logs["count"] == 1, "the exec is in the history", logs)
        snap = await call(s, "snapshot_create", {"workspace_id": wid, "snapshot_name": "patched"})
        check(snap["snapshot"]["name"] == "patched", "a snapshot is taken", snap)
        r = await call(s, "workspace_reset", {"workspace_id": wid})
        e = await call(s, "workspace_exec", {"workspace_id": wid, "command": "ls; cat src/main.txt"})
        check("notes.md" not in e["stdout"] and "two" in e["stdout"], "reset restores the baseline", e)
        await call(s, "workspace_reset", {"workspace_id": wid, "snapshot": "patched"})
        e = await call(s, "workspace_exec", {"workspace_id": wid, "command": "cat src/main.txt"})
        check("TWO" in e["stdout"], "reset to a snapshot restores it", e)
        r = await call(s, "workspace_disk_list", {"workspace_id": wid}, ok=False)
        check(error_kind(r) == "workspace_not_stopped", "a running workspace's disk is not read", r)
        await call(s, "workspace_stop", {"workspace_id": wid})
        r = await call(s, "workspace_exec", {"workspace_id": wid, "command": "true"}, ok=False)
        check(error_kind(r) == "workspace_not_running", "a stopped workspace refuses exec", r)
        ls = await call(s, "workspace_disk_list", {"workspace_id": wid, "path": "src"})
        check("main.txt" in [e["path"] for e in ls["entries"]], "the stopped disk lists src", ls)
        f = await call(s, "workspace_disk_read", {"workspace_id": wid, "path": "src/main.txt"})
        check(f["content"] == "one\nTWO\nthree\n", "the stopped disk reads a file", f)
        img = await call(s, "workspace_disk_export", {"workspace_id": wid, "output_path": "disk.ext4"})
        check(img["disk_format"] == "ext4" and os.path.getsize("disk.ext4") == img["bytes_written"],
              "the disk exports under the root", img)
        await call(s, "workspace_start", {"workspace_id": wid})
        d = await call(s, "workspace_delete", {"workspace_id": wid})
        check(d["deleted"] is True, "delete removes it", d)
        r = await call(s, "workspace_status", {"workspace_id": wid}, ok=False)
        check(error_kind(r) == "workspace_not_found", "a deleted workspace is gone", r)
    print("story ok")


async def scenario_interactive(args):
    """Shells, services and secrets through MCP; no result may carry a secret value."""
    secret = "mcp-secret-5e1f9"
    seen = []

    async def c(s, tool, arguments, ok=True):
        r = await s.call_tool(tool, arguments)
        seen.extend(getattr(x, "text", "") for x in r.content)
        seen.append(json.dumps(r.structured_content))
        if ok:
            check(not r.is_error, f"{tool} succeeds", [getattr(x, "text", "") for x in r.content])
        return r.structured_content

    async with session(args) as s:
        w = await c(s, "workspace_create", {"environment": "debian:12", "secrets": {"API_KEY": secret}, **ISO})
        wid = w["workspace_id"]
        check(w["secrets"] == ["API_KEY"], "only secret names are shown", w)
        e = await c(s, "workspace_exec", {"workspace_id": wid, "command": "echo key=$API_KEY; cat /run/pyro-secrets/API_KEY", "secret_env": ["API_KEY"]})
        check(e["stdout"] == "key=[REDACTED]\n[REDACTED]", "exec output is redacted", e)
        sh = await c(s, "shell_open", {"workspace_id": wid, "secret_env": ["API_KEY"]})
        sid = sh["shell_id"]
        await c(s, "shell_write", {"workspace_id": wid, "shell_id": sid, "input": "cd /tmp; X=kept; echo shell:$API_KEY"})
        r = await c(s, "shell_read", {"workspace_id": wid, "shell_id": sid, "wait_for_idle_ms": 500})
        check("shell:[REDACTED]" in r["output"], "shell output is redacted", r["output"])
        await c(s, "shell_write", {"workspace_id": wid, "shell_id": sid, "input": "echo $PWD-$X"})
        r = await c(s, "shell_read", {"workspace_id": wid, "shell_id": sid, "cursor": r["next_cursor"], "wait_for_idle_ms": 500})
        check("/tmp-kept" in r["output"], "the shell keeps its state between calls", r["output"])
        await c(s, "shell_write", {"workspace_id": wid, "shell_id": sid, "input": "sleep 300"})
        await asyncio.sleep(0.5)
        await c(s, "shell_signal", {"workspace_id": wid, "shell_id": sid, "signal": "INT"})
        await c(s, "shell_write", {"workspace_id": wid, "shell_id": sid, "input": "echo rc=$?"})
        r = await c(s, "shell_read", {"workspace_id": wid, "shell_id": sid, "cursor": r["next_cursor"], "wait_for_idle_ms": 500})
        check("rc=130" in r["output"], "INT interrupts the foreground job", r["output"])
        lst = await c(s, "shell_list", {"workspace_id": wid})
        check(lst["count"] == 1, "shell_list lists it", lst)
        await c(s, "shell_close", {"workspace_id": wid, "shell_id": sid})
        svc = await c(s, "service_start", {"workspace_id": wid, "service_name": "web", "command": "echo svc:$API_KEY; touch /workspace/up; exec sleep 600", "ready_file": "/workspace/up", "secret_env": ["API_KEY"]})
        check(svc["state"] == "ready", "the service becomes ready", svc)
        logs = await c(s, "service_logs", {"workspace_id": wid, "service_name": "web"})
        check(logs["stdout"] == "svc:[REDACTED]\n", "service logs are redacted", logs)
        bad = await c(s, "service_start", {"workspace_id": wid, "service_name": "never", "command": "echo $API_KEY; sleep 600", "ready_file": "nope", "ready_timeout_seconds": 1, "secret_env": ["API_KEY"]}, ok=False)
        check(bad["error"]["kind"] == "agent_refused", "a service that is never ready fails", bad)
        st = await c(s, "service_list", {"workspace_id": wid})
        check(st["count"] == 2, "service_list lists both", st)
        stop = await c(s, "service_stop", {"workspace_id": wid, "service_name": "web"})
        check(stop["state"] == "stopped", "service_stop stops it", stop)
        await c(s, "service_status", {"workspace_id": wid, "service_name": "web"})
        await c(s, "workspace_file_read", {"workspace_id": wid, "path": "/run/../workspace/up"}, ok=False)
        await c(s, "workspace_logs", {"workspace_id": wid})
        await c(s, "workspace_delete", {"workspace_id": wid})
    leaked = [t for t in seen if secret in t]
    check(not leaked, "no MCP result carries the secret value", leaked[:2])
    print("interactive ok")


async def scenario_vm(args):
    """The low-level lifecycle: create, start, stop, start, exec (which deletes), and delete."""
    async with session(args) as s:
        envs = await call(s, "vm_list_environments", {})
        check(any(e.get("name") == "debian:12" for e in envs["environments"]), "debian:12 is listed", envs)
        v = await call(s, "vm_create", {"environment": "debian:12", "ttl_seconds": 600, **ISO})
        vid = v["vm_id"]
        check(v["state"] == "created", "a new VM is created, not started", v)
        r = await call(s, "vm_exec", {"vm_id": vid, "command": "true"}, ok=False)
        check(error_kind(r) == "vm_not_started", "exec before start is refused", r)
        check((await call(s, "vm_start", {"vm_id": vid}))["state"] == "started", "vm_start starts it")
        check((await call(s, "vm_stop", {"vm_id": vid}))["state"] == "stopped", "vm_stop stops it")
        await call(s, "vm_start", {"vm_id": vid})
        check((await call(s, "vm_status", {"vm_id": vid}))["state"] == "started", "vm_status tells")
        r = await call(s, "vm_exec", {"vm_id": vid, "command": "echo vm; exit 4"})
        check(r["stdout"] == "vm\n" and r["exit_code"] == 4 and r["cleanup"]["deleted"], "vm_exec runs and deletes", r)
        r = await call(s, "vm_status", {"vm_id": vid}, ok=False)
        check(error_kind(r) == "vm_not_found", "the VM is gone after exec", r)
        v = await call(s, "vm_create", {"environment": "debian:12", **ISO})
        await call(s, "vm_start", {"vm_id": v["vm_id"]})
        d = await call(s, "vm_delete", {"vm_id": v["vm_id"]})
        check(d["deleted"], "vm_delete deletes a started VM", d)
        reap = await call(s, "vm_reap_expired", {})
        check(reap["count"] == 0, "nothing is expired", reap)
        # Networking through MCP: a VM asks for egress; its network shows once it is started.
        v = await call(s, "vm_create", {"environment": "debian:12", "network": True, **ISO})
        n = await call(s, "vm_network_info", {"vm_id": v["vm_id"]})
        check(n["policy"] == "egress" and n["guest_ip"] is None, "a created VM has a policy, no address yet", n)
        await call(s, "vm_start", {"vm_id": v["vm_id"]})
        n = await call(s, "vm_network_info", {"vm_id": v["vm_id"]})
        check(n["guest_ip"] and n["gateway"], "a started VM has an address and a gateway", n)
        r = await call(s, "vm_exec", {"vm_id": v["vm_id"], "command": "cat /proc/net/route"})
        check("eth0" in r["stdout"] and r["network"]["guest_ip"] == n["guest_ip"], "the guest has eth0", r)
        r = await call(s, "vm_run", {"environment": "debian:12", "command": "true", "allow_hosts": ["::1"], **ISO}, ok=False)
        check(error_kind(r) == "invalid_request", "an IPv6 allow-list entry is refused", r)
        r = await call(s, "workspace_create", {"environment": "debian:12", "network_policy": "on", **ISO}, ok=False)
        check(error_kind(r) == "invalid_request", "an unknown network policy is refused", r)
        r = await call(s, "vm_create", {"environment": "debian:12", "ttl_seconds": 5, **ISO}, ok=False)
        check(error_kind(r) == "invalid_request", "a ttl below the minimum is refused", r)
        # Left started on purpose: the server removes it when the client goes away.
        v = await call(s, "vm_create", {"environment": "debian:12", **ISO})
        await call(s, "vm_start", {"vm_id": v["vm_id"]})
    print("vm ok")


async def scenario_config_default(args):
    """No isolation anywhere in the calls, no PYRO_ISOLATION: the config file's level is used."""
    async with session(args) as s:
        r = await call(s, "vm_run", {"environment": "debian:12", "command": "echo from-config"})
        check(r["isolation"] == "container" and r["stdout"] == "from-config\n", "vm_run uses the configured level", r)
        w = await call(s, "workspace_create", {"environment": "debian:12"})
        check(w["isolation"] == "container", "workspace_create uses the configured level", w)
        await call(s, "workspace_delete", {"workspace_id": w["workspace_id"]})
    print("config_default ok")


async def scenario_killed(args):
    """A server killed with SIGKILL leaves a started VM; the next pyro's gc removes it."""
    env = dict(os.environ)
    proc = subprocess.Popen([args.pyro, "mcp", "serve", "--profile", "workspace-full", "--http", "127.0.0.1:0"],
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True)
    try:
        url = None
        for line in proc.stderr:
            if "listening=" in line:
                url = line.strip().split("listening=", 1)[1]
                break
        check(url, "the HTTP server announces its address")
        async with http_session(url) as s:
            v = await call(s, "vm_create", {"environment": "debian:12", **ISO})
            await call(s, "vm_start", {"vm_id": v["vm_id"]})
            proc.kill()
            proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    home = os.environ["PYRO_HOME"]
    record = os.path.join(home, "vms", v["vm_id"] + ".json")
    state = os.path.join(home, "sandboxes", v["vm_id"])
    check(os.path.exists(record) and os.path.exists(state), "the killed server left its VM behind")
    # Any pyro start sweeps (gc runs in Pyro::open).
    subprocess.run([args.pyro, "gc", "--json"], capture_output=True, check=True)
    check(not os.path.exists(record), "the VM's record is gone")
    check(not os.path.exists(state), "the VM's sandbox is gone")
    print("killed ok")


async def scenario_disconnect(args):
    """Starts a long vm_run and goes away in the middle of it; the test checks the sandbox is
    gone afterwards (and, over HTTP, that the server still serves a new client)."""
    async def long_run(s):
        await s.call_tool("vm_run", {"environment": "debian:12", "command": "sleep 120", "timeout_seconds": 300, **ISO})

    async def sandbox_running():
        # Another pyro process sees the run's sandbox as in use by the live server.
        for _ in range(300):
            gc = json.loads(subprocess.run([args.pyro, "gc", "--json"], capture_output=True, check=True).stdout)
            if gc["in_use"]:
                return
            await asyncio.sleep(0.1)
        check(False, "the long run's sandbox appears", gc)

    if args.transport == "stdio":
        async with stdio_session(args.pyro, "vm-run") as s:
            task = asyncio.create_task(long_run(s))
            await sandbox_running()
            task.cancel()
        # Leaving the session closed the server's stdin; it has cleaned up and exited.
    else:
        async with http_server(args.pyro, "vm-run") as url:
            async with http_session(url) as s:
                task = asyncio.create_task(long_run(s))
                await sandbox_running()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            async with http_session(url) as s:
                r = await call(s, "vm_run", {"environment": "debian:12", "command": "echo still here", **ISO})
                check(r["stdout"] == "still here\n", "the server serves a new client after a disconnect", r)
            # While the server still runs: the abandoned run's sandbox is already gone (another
            # pyro would see it as in use by the server otherwise).
            for _ in range(50):
                gc = json.loads(subprocess.run([args.pyro, "gc", "--json"], capture_output=True, check=True).stdout)
                if not gc["in_use"]:
                    break
                await asyncio.sleep(0.2)
            check(not gc["in_use"], "the interrupted run's sandbox is removed while the server runs", gc)
    print("disconnect ok")


async def scenario_cancel(args):
    """Cancels a running workspace_exec (the SDK sends notifications/cancelled when the caller's
    task is cancelled): the command stops, and the history records it as interrupted."""
    async with session(args) as s:
        w = await call(s, "workspace_create", {"environment": "debian:12", **ISO})
        wid = w["workspace_id"]
        # stdin and a single shell command line come through first.
        e = await call(s, "workspace_exec", {"workspace_id": wid, "command": "cat; echo $((6*7))", "stdin": "in\n"})
        check(e["stdout"] == "in\n42\n", "stdin and the command line reach the command", e)
        e = await call(s, "workspace_exec", {"workspace_id": wid, "command": "od -An -tx1", "stdin_base64": "/wA="})
        check(e["stdout"].split() == ["ff", "00"], "stdin_base64 carries bytes", e)
        slow = "sleep 300 & echo $! > pid; wait"
        task = asyncio.create_task(s.call_tool("workspace_exec", {"workspace_id": wid, "command": slow, "timeout_seconds": 600}))
        for _ in range(300):
            r = await s.call_tool("workspace_file_read", {"workspace_id": wid, "path": "pid"})
            if not r.is_error and r.structured_content["content"].strip():
                break
            await asyncio.sleep(0.1)
        pid = r.structured_content["content"].strip()
        check(pid, "the slow command started")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        entry = None
        for _ in range(100):
            logs = await call(s, "workspace_logs", {"workspace_id": wid})
            entry = next((x for x in logs["entries"] if x["command"] == slow), None)
            if entry:
                break
            await asyncio.sleep(0.1)
        check(entry and entry["interrupted"] is True and entry["exit_code"] == 143, "the cancelled exec is logged as interrupted", logs)
        for _ in range(50):
            e = await call(s, "workspace_exec", {"workspace_id": wid, "command": f"kill -0 {pid} 2>/dev/null && echo alive || echo gone"})
            if e["stdout"] == "gone\n":
                break
            await asyncio.sleep(0.2)
        check(e["stdout"] == "gone\n", "the cancelled command is stopped", e)
        await call(s, "workspace_delete", {"workspace_id": wid})
    print("cancel ok")


async def scenario_auth(args):
    async with http_server(args.pyro, "vm-run", token="s3cret-token") as url:
        async with httpx.AsyncClient() as c:
            resp = await c.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                                headers={"Accept": "application/json, text/event-stream"})
            check(resp.status_code == 401, "a request without the token is refused", resp.status_code)
            resp = await c.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                                headers={"Accept": "application/json, text/event-stream", "Authorization": "Bearer wrong"})
            check(resp.status_code == 401, "a wrong token is refused", resp.status_code)
        async with http_session(url, token="s3cret-token") as s:
            names = {t.name for t in (await s.list_tools()).tools}
            check(names == {"vm_run"}, "the right token gets in", names)
    print("auth ok")


async def scenario_seed(args):
    """pyro-mcp's tool calls exactly as its README writes them (no `isolation`: the level comes
    from PYRO_ISOLATION, as a user of the seed would set it once), with its 3.x shapes."""
    os.environ["PYRO_ISOLATION"] = "container"
    async with session(args) as s:
        r = await call(s, "vm_run", {"environment": "debian:12", "command": "git --version", "vcpu_count": 1, "mem_mib": 1024, "timeout_seconds": 30, "ttl_seconds": 600, "network": False, "allow_host_compat": False})
        check(r["exit_code"] == 0 and r["stdout"].startswith("git version"), "vm_run runs the seed's first call", r)
        check(r["vm_id"] == r["sandbox_id"] and r["execution_mode"] == "container", "vm_run carries vm_id and execution_mode", r)
        check(r["cleanup"]["reason"] == "post_exec_cleanup" and r["cleanup"]["vm_id"] == r["vm_id"], "cleanup carries the seed's reason", r["cleanup"])
        r = await call(s, "vm_run", {"environment": "debian:12", "command": "true", "bogus": 1}, ok=False)
        check(error_kind(r) == "invalid_request" and "bogus" in r[1] and "allow_host_compat" in r[1], "a truly unknown field is refused with the valid ones", r)
        v = await call(s, "vm_create", {"environment": "debian:12", "vcpu_count": 1, "mem_mib": 1024, "ttl_seconds": 600, "network": False, "allow_host_compat": True})
        check(v["execution_mode"] == "container" and v["allow_host_compat"] is True, "vm_create takes allow_host_compat", v)
        await call(s, "vm_delete", {"vm_id": v["vm_id"]})
        with open("token.txt", "w") as f:
            f.write("from-file")
        w = await call(s, "workspace_create", {"environment": "debian:12", "vcpu_count": 1, "mem_mib": 1024, "ttl_seconds": 600, "network": False, "allow_host_compat": False, "seed_path": None, "secrets": [{"name": "API_TOKEN", "value": "expected"}, {"name": "PIP_TOKEN", "file_path": "token.txt"}], "name": None, "labels": None})
        wid = w["workspace_id"]
        check(w["ttl_s"] == 600 and w["execution_mode"] == "container", "workspace_create takes the seed's parameters", w)
        check(sorted(w["secrets"]) == ["API_TOKEN", "PIP_TOKEN"], "both secret shapes are stored", w)
        e = await call(s, "workspace_exec", {"workspace_id": wid, "command": 'test "$API_TOKEN" = expected && test "$PIP" = from-file && echo ok', "timeout_seconds": 30, "secret_env": {"API_TOKEN": "API_TOKEN", "PIP_TOKEN": "PIP"}})
        check(e["stdout"] == "ok\n", "secret_env as {SECRET: ENV} maps the secrets", e)
        svc = await call(s, "service_start", {"workspace_id": wid, "service_name": "web", "command": "touch .web-ready && while true; do sleep 60; done", "cwd": "/workspace", "readiness": {"type": "file", "path": ".web-ready"}, "ready_timeout_seconds": 30, "ready_interval_ms": 500, "secret_env": None, "published_ports": None})
        check(svc["state"] == "ready", "service_start takes a readiness object", svc)
        await call(s, "service_logs", {"workspace_id": wid, "service_name": "web", "tail_lines": 50})
        await call(s, "service_stop", {"workspace_id": wid, "service_name": "web"})
        sh = await call(s, "shell_open", {"workspace_id": wid, "cwd": "/workspace", "cols": 120, "rows": 30, "secret_env": None})
        sid = sh["shell_id"]
        await call(s, "shell_read", {"workspace_id": wid, "shell_id": sid, "cursor": 0, "max_chars": 65536})
        await call(s, "shell_write", {"workspace_id": wid, "shell_id": sid, "input": "sleep 300", "append_newline": True})
        await call(s, "shell_signal", {"workspace_id": wid, "shell_id": sid, "signal_name": "INT"})
        await call(s, "shell_close", {"workspace_id": wid, "shell_id": sid})
        r = await call(s, "workspace_reset", {"workspace_id": wid, "snapshot": "baseline"})
        check(r.get("reset_count", 1) >= 1, "workspace_reset takes snapshot=baseline", r)
        await call(s, "workspace_delete", {"workspace_id": wid})
    print("seed ok")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["profiles", "errors", "story", "interactive", "vm", "killed", "disconnect", "cancel", "auth", "config_default", "seed"])
    p.add_argument("transport", choices=["stdio", "http"])
    p.add_argument("--pyro", required=True)
    args = p.parse_args()
    try:
        asyncio.run(globals()[f"scenario_{args.scenario}"](args))
    except AssertionError as e:
        print(e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
