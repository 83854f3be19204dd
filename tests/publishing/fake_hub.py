"""A minimal Hugging Face Hub on loopback, enough for `HfApi.create_repo` / `upload_folder` and for
`from_pretrained` to download a model repo back (the endpoints PLATFORM.md lists). Test-only."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo id -> {"files": {path: bytes}, "sha": str}
        self.unknown: list[str] = []  # requests no route answered (to debug a failing test)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", headers=None, head=False):
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                    headers = {"Content-Type": "application/json", **(headers or {})}
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _missing(self, head=False):
                hub.unknown.append(f"{self.command} {self.path}")
                self._send(404, {"error": "not found"}, {"X-Error-Code": "RepoNotFound"}, head)

            def do_POST(self):
                path = urlparse(self.path).path
                if path == "/api/validate-yaml":  # a README's metadata block must be a YAML mapping
                    import yaml

                    content = json.loads(self._body()).get("content", "")
                    block = re.match(r"---\n(.*?)\n---\n", content, re.S)
                    try:
                        valid = block is not None and isinstance(yaml.safe_load(block.group(1)), dict)
                    except yaml.YAMLError:
                        valid = False
                    errors = [] if valid else [{"message": "metadata is not a YAML mapping"}]
                    return self._send(200 if valid else 400, {"errors": errors, "warnings": []})
                if path == "/api/repos/create":
                    request = json.loads(self._body())
                    name = (
                        request["name"]
                        if "/" in request["name"]
                        else f"{request.get('organization')}/{request['name']}"
                    )
                    hub.repos.setdefault(name, {"files": {}, "sha": "0" * 40})
                    return self._send(200, {"url": f"{hub.endpoint}/{name}", "name": name})
                match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
                if not match or match.group(1) not in hub.repos:
                    return self._missing()
                repo = hub.repos[match.group(1)]
                if match.group(2) == "preupload":
                    files = json.loads(self._body())["files"]
                    answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    return self._send(200, {"files": answer, "commitOid": repo["sha"]})
                for line in self._body().decode().splitlines():
                    entry = json.loads(line)
                    if entry["key"] == "file":
                        repo["files"][entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
                    elif entry["key"] == "deletedFile":
                        repo["files"].pop(entry["value"]["path"], None)
                digest = hashlib.sha1()
                for name in sorted(repo["files"]):
                    digest.update(name.encode() + repo["files"][name])
                repo["sha"] = digest.hexdigest()
                url = f"{hub.endpoint}/{match.group(1)}/commit/{repo['sha']}"
                return self._send(200, {"commitUrl": url, "commitOid": repo["sha"], "success": True})

            def _serve(self, head: bool):
                path = unquote(urlparse(self.path).path)
                info = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path)
                if info and info.group(1) in hub.repos:
                    repo = hub.repos[info.group(1)]
                    siblings = [{"rfilename": name} for name in sorted(repo["files"])]
                    body = {"id": info.group(1), "modelId": info.group(1), "sha": repo["sha"], "siblings": siblings,
                            "private": False, "tags": []}  # fmt: skip
                    return self._send(200, body, head=head)
                tree = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/[^/]+(?:/(.*))?", path)
                if tree and tree.group(1) in hub.repos:
                    files = hub.repos[tree.group(1)]["files"]
                    prefix = tree.group(2) or ""
                    listing = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                               for name, data in sorted(files.items()) if name.startswith(prefix)]  # fmt: skip
                    return self._send(200, listing, head=head)
                resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if resolve and resolve.group(1) in hub.repos:
                    repo = hub.repos[resolve.group(1)]
                    data = repo["files"].get(resolve.group(3))
                    if data is None:
                        headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo["sha"]}
                        return self._send(404, {"error": "entry not found"}, headers, head)
                    headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": repo["sha"],
                               "Content-Type": "application/octet-stream"}  # fmt: skip
                    return self._send(200, data, headers, head)
                return self._missing(head)

            def do_GET(self):
                self._serve(head=False)

            def do_HEAD(self):
                self._serve(head=True)

        return Handler
