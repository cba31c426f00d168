"""A Hugging Face Hub stand-in served on 127.0.0.1, for tests that use the real ``huggingface_hub`` client.

Only what the client calls to push and fetch a model repository: create a repository or a branch, the card's
metadata check (accepted as is), the pre-upload check (every file goes as "regular", inside the commit), the commit
(NDJSON, base64 contents), and the file
resolve/download (HEAD for metadata, GET for bytes) by branch or commit hash. Repositories live in memory: each
commit is a full snapshot, so a pinned revision keeps its files. Point a client at it with ``HF_ENDPOINT`` (set
before ``huggingface_hub`` is imported, e.g. in a subprocess) or with ``endpoint=`` arguments.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

from huggingface_hub import ModelCard

from peft_continual.card_metadata import metadata_problems


@dataclass
class Repository:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit sha -> path -> content
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    messages: dict[str, str] = field(default_factory=dict)  # commit sha -> commit message

    def resolve(self, revision: str) -> str | None:
        revision = unquote(revision)
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class HubStandIn:
    """``with HubStandIn() as hub:`` serves on ``hub.endpoint``; ``hub.repos`` holds what was pushed."""

    def __init__(self) -> None:
        self.repos: dict[str, Repository] = {}
        self.requests: list[str] = []
        handler = type("Handler", (_Handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)]


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn

    def log_message(self, *args: object) -> None:  # quiet
        pass

    # ------------------------------------------------------------------ routing
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        path = urlparse(self.path).path
        self.hub.requests.append(f"POST {path}")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path == "/api/repos/create":
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
            exists = repo_id in self.hub.repos
            if not exists:
                self.hub.repos[repo_id] = self._new_repository()
            return self._json(409 if exists else 200, {"url": f"{self.hub.endpoint}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":  # the README's metadata, by the Hub's documented rules (card_metadata)
            problems = metadata_problems(ModelCard(json.loads(body)["content"]).data.to_dict())
            errors = [{"message": problem} for problem in problems]
            return self._json(400 if problems else 200, {"errors": errors, "warnings": []})
        parts = path.split("/")  # /api/models/{org}/{name}/{action}/{revision}
        if len(parts) >= 6 and parts[1:3] == ["api", "models"]:
            repo_id, action, revision = f"{parts[3]}/{parts[4]}", parts[5], "/".join(parts[6:])
            repo = self.hub.repos.get(repo_id)
            if repo is None:
                return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            if action == "preupload":
                files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                         for f in json.loads(body)["files"]]  # fmt: skip
                return self._json(200, {"files": files})
            if action == "commit":
                return self._commit(repo_id, repo, unquote(revision), body)
            if action == "branch":
                branch = unquote(revision)
                if branch in repo.branches:
                    return self._json(409, {"error": "Reference already exists"})
                repo.branches[branch] = repo.branches["main"]
                return self._json(200, {})
        self._json(404, {"error": f"not served by the stand-in: POST {path}"})

    def do_HEAD(self) -> None:  # noqa: N802
        self._resolve(send_body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._resolve(send_body=True)

    # ------------------------------------------------------------------ endpoints
    def _new_repository(self) -> Repository:
        repo = Repository()
        empty = hashlib.sha1(b"initial").hexdigest()
        repo.commits[empty] = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
        repo.branches["main"] = empty
        return repo

    def _commit(self, repo_id: str, repo: Repository, revision: str, body: bytes) -> None:
        parent = repo.resolve(revision)
        if parent is None:
            return self._json(404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"})
        files, message = dict(repo.commits[parent]), ""
        for line in body.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                message = item["value"].get("summary", "")
            elif item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                files.pop(item["value"]["path"], None)
        sha = hashlib.sha1(json.dumps([parent, message, sorted(files)]).encode() + b"".join(files.values())).hexdigest()
        repo.commits[sha], repo.messages[sha] = files, message
        repo.branches[revision if revision in repo.branches else "main"] = sha
        self._json(200, {"commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha,
                         "pullRequestUrl": None})  # fmt: skip

    def _resolve(self, send_body: bool) -> None:
        path = urlparse(self.path).path
        self.hub.requests.append(f"{self.command} {path}")
        parts = path.split("/")  # /{org}/{name}/resolve/{revision}/{file path}
        if len(parts) < 6 or parts[3] != "resolve":
            return self._json(404, {"error": f"not served by the stand-in: {self.command} {path}"})
        repo = self.hub.repos.get(f"{parts[1]}/{parts[2]}")
        if repo is None:
            return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        sha = repo.resolve(parts[4])
        if sha is None:
            return self._json(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
        name = unquote("/".join(parts[5:]))
        content = repo.commits[sha].get(name)
        if content is None:
            return self._json(
                404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}
            )
        self.send_response(200)
        self.send_header("X-Repo-Commit", sha)
        self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if send_body:
            self.wfile.write(content)

    def _json(self, status: int, data: dict, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
