#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/corpus/<target>/): one small valid input per shape, taken from
the wire contract snapshots and hand-made archives, patches, OCI documents and tool
parameters. Re-run it when a format grows; libFuzzer grows its corpus from these."""

import io
import json
import re
import struct
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SNAP = ROOT.parent / "crates/pyro-protocol/tests/snapshots"


def write(target: str, name: str, data: bytes) -> None:
    d = ROOT / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def frame(tag: int, payload: bytes) -> bytes:
    return struct.pack(">BI", tag, len(payload)) + payload


# protocol: every request and response of the contract, each as a JSON frame, plus a stream.
for snap in ["wire_contract__requests.snap", "wire_contract__responses.snap"]:
    lines = (SNAP / snap).read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("  {"):
            name = re.sub(r"[^a-z0-9]+", "-", lines[i - 1].strip().lower()).strip("-")
            write("protocol", f"{snap.split('__')[1][:-5]}-{name}", frame(0, line.strip().encode()))
write(
    "protocol",
    "stream",
    frame(0, b'{"type":"ping"}') + frame(1, b"out\n") + frame(2, b"err\n") + frame(3, b""),
)

# archive: a file, a directory, a symlink, a hard link, and one escaping with "..".
def tar(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for info, data in entries:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def info(name: str, kind=tarfile.REGTYPE, size=0, link="", mode=0o644) -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type, i.size, i.linkname, i.mode = kind, size, link, mode
    return i


write(
    "archive",
    "tree",
    tar(
        [
            (info("dir", tarfile.DIRTYPE, mode=0o755), None),
            (info("dir/file", size=5), b"hello"),
            (info("dir/link", tarfile.SYMTYPE, link="file"), None),
            (info("dir/hard", tarfile.LNKTYPE, link="dir/file"), None),
            (info("dir/suid", size=1, mode=0o4755), b"x"),
        ]
    ),
)
write("archive", "escape", tar([(info("../outside", size=1), b"x")]))
write("archive", "whiteout", tar([(info("dir/.wh.gone", size=0), b"")]))

# patch: old content, NUL, then a unified diff.
write(
    "patch",
    "modify",
    b"one\ntwo\nthree\n\0"
    b"--- a/f.txt\n+++ b/f.txt\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n",
)
write("patch", "create", b"\0--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+new\n")
write("patch", "delete", b"gone\n\0--- a/old.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-gone\n")

# oci: an index, a manifest, an image config, a reference.
desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + "a" * 64, "size": 512}
write("oci", "index", json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode())
write("oci", "manifest", json.dumps({
    "schemaVersion": 2,
    "config": {**desc, "mediaType": "application/vnd.oci.image.config.v1+json"},
    "layers": [{**desc, "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}],
}).encode())
write("oci", "config", json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {"Env": ["PATH=/usr/bin:/bin"], "WorkingDir": "/srv", "User": "1000:1000"},
}).encode())
write("oci", "reference", b"registry.example:5000/team/app:1.2@sha256:" + b"b" * 64)

# mcp_params: a few tool calls' arguments.
for name, args in {
    "vm_run": {"environment": "debian:12", "command": "git --version", "timeout_seconds": 30,
               "network": False, "env": {"A": "1"}, "allow_hosts": ["deb.debian.org"]},
    "workspace_create": {"environment": "debian:12", "secrets": [{"name": "T", "value": "v"}],
                         "network_policy": "egress", "labels": {"k": "v"}},
    "service_start": {"workspace_id": "w", "service_name": "web", "command": "serve",
                      "readiness": {"type": "http", "url": "http://127.0.0.1:8000"},
                      "published_ports": [{"guest_port": 8000}], "secret_env": {"T": "TOKEN"}},
}.items():
    write("mcp_params", name, json.dumps(args).encode())
