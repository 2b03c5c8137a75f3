"""A stand-in for OpenXLab's web services, for tests of the openxlab SDK path.

It is an HTTPS proxy on 127.0.0.1: a process whose HTTPS_PROXY points here and whose
REQUESTS_CA_BUNDLE trusts the test CA made here sends its requests to the real host names
(openapi.openxlab.org.cn, the upload bucket on oss-cn-shanghai.aliyuncs.com) and they end here,
over TLS, with nothing in the SDK patched. Tunnels to any other host are refused and recorded.
It answers just enough of the API for the SDK to log in (nonce + HMAC of the secret key, checked),
create a model repo and upload files by OSS multipart upload, and records every request.
It stops by itself after `timeout` seconds or `max_requests` requests.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import socket
import socketserver
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

API_HOST = "openapi.openxlab.org.cn"
BUCKET = "xlab-model-center"
OSS_HOST = f"{BUCKET}.oss-cn-shanghai.aliyuncs.com"
SSO = "/api/v1/sso-be/api/v1/open/"
MODEL_CENTER = "/api/v1/model-center/api/v1/cli/repository/"
UPLOAD_SIGNATURE = "/api/v1/upload-service/api/v1/getUploadSignature"
USAGE_REPORT = "/api/v1/data-bury/api/v1/bury/collect"
SHANGHAI = timezone(timedelta(hours=8))  # the SDK reads token expiry times as Shanghai local time


@dataclass
class Recorded:
    host: str
    method: str
    path: str
    query: dict
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Repo:
    id: int
    created: dict
    models: dict = field(default_factory=dict)  # model name -> {"modelId", "weightName", "uploadStatus"}


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for the two hosts, with the openssl command."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key, cert, key, csr = (folder / n for n in ("ca.pem", "ca.key", "server.pem", "server.key", "server.csr"))
    extensions = folder / "server.ext"
    extensions.write_text(f"subjectAltName=DNS:{API_HOST},DNS:*.oss-cn-shanghai.aliyuncs.com\n"
                          "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
            ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=fake OpenXLab test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
            ["req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={API_HOST}"],
            ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial", "1", "-days", "1",
             "-out", cert, "-extfile", extensions]):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return ca, cert, key


def envelope(data=None, error: str | None = None) -> dict:
    """The platform's reply: an outer and an inner status, both "10000" for success."""
    inner = {"msgCode": "10000", "msg": "success", "traceId": "fake", "data": data}
    if error:
        inner = {"msgCode": "20001", "msg": error, "traceId": "fake"}
    return {"msgCode": "10000", "msg": "success", "traceId": "fake", "data": inner}


class FakeOpenXLab:
    def __init__(self, folder: Path, access_key: str, secret_key: str, timeout: float = 120,
                 max_requests: int = 1000, on_request=None):
        self.folder, self.access_key, self.secret_key = Path(folder), access_key, secret_key
        self.timeout, self.max_requests, self.on_request = timeout, max_requests, on_request
        self.requests: list[Recorded] = []
        self.refused: list[str] = []  # CONNECT targets and plain requests that were turned away
        self.repos: dict[str, Repo] = {}
        self.objects: dict[str, bytes] = {}  # OSS object key -> bytes, once its upload completed
        self.signed: dict[str, tuple[str, str]] = {}  # OSS object key -> (repo, weight name)
        self.jwt = "fake-jwt-" + secrets.token_hex(8)
        self.nonces: dict[str, str] = {}
        self.parts: dict[str, dict[int, bytes]] = {}
        self.lock = threading.Lock()

    # ---- what a test reads ----
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def client_environment(self) -> dict:
        """Environment variables that send a requests-based client here and make it trust the test CA."""
        return {"HTTPS_PROXY": self.url, "https_proxy": self.url, "HTTP_PROXY": self.url, "http_proxy": self.url,
                "NO_PROXY": "", "no_proxy": "", "REQUESTS_CA_BUNDLE": str(self.ca)}

    def uploaded(self, repo: str) -> dict[str, bytes]:
        """weight name -> bytes of each completed upload to `repo`."""
        return {weight: self.objects[key] for key, (name, weight) in self.signed.items()
                if name == repo and key in self.objects}

    def calls(self, path_end: str) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith(path_end)]

    # ---- life cycle ----
    def __enter__(self):
        self.ca, cert, key = make_certificates(self.folder / "tls")
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler_class())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.deadline = threading.Timer(self.timeout, self.stop)
        self.deadline.daemon = True
        self.deadline.start()
        return self

    def __exit__(self, *exc):
        self.deadline.cancel()
        self.stop()

    def stop(self):
        if not getattr(self, "stopped", False):
            self.stopped = True
            threading.Thread(target=self.server.shutdown, daemon=True).start()

    # ---- the API ----
    def answer(self, request: Recorded) -> tuple[int, dict, bytes]:
        if request.host == OSS_HOST:
            return self.oss(request)
        body = request.json() if request.body else {}
        if request.path.startswith(SSO):
            return self.json(self.sso(request.path[len(SSO):], body))
        if request.path.startswith(MODEL_CENTER) or request.path == UPLOAD_SIGNATURE:
            if request.headers.get("authorization") != self.jwt:
                return self.json(envelope(error="not logged in"))
            return self.json(self.model_center(request.path.rsplit("/", 1)[1], body))
        if request.path == USAGE_REPORT:
            return self.json(envelope({}))
        return 404, {"Content-Type": "text/plain"}, b"not part of the fake API"

    def sso(self, action: str, body: dict) -> dict:
        if body.get("ak") != self.access_key:
            return envelope(error="unknown access key")
        if action == "auth":
            self.nonces[body["ak"]] = nonce = secrets.token_hex(16)
            return envelope({"nonce": nonce, "algorithm": "HmacSHA256"})
        if action == "getJwt":
            nonce = self.nonces.pop(body["ak"], "")
            expected = base64.b64encode(hmac.new(self.secret_key.encode(), nonce.encode(), "sha256").digest()).decode()
            if not nonce or not hmac.compare_digest(body.get("d", ""), expected):
                return envelope(error="signature does not match the secret key")
            now = datetime.now(SHANGHAI)
            return envelope({"jwt": self.jwt, "sso_uid": "fake-uid", "refresh_token": "fake-refresh",
                             "expiration": (now + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S"),
                             "refresh_expiration": (now + timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")})
        return envelope(error=f"no such action {action}")

    def model_center(self, action: str, body: dict) -> dict:
        if action == "createModelRepository":
            if body["name"] in self.repos:
                return envelope(error="repository already exists")
            repo = self.repos[body["name"]] = Repo(id=len(self.repos) + 1, created=body)
            for model in body["models"]:
                self.add_model(repo, model)
            return envelope({"repositoryId": repo.id})
        if action == "getUploadSignature":
            data = body["data"]
            repo = next(name for name, r in self.repos.items() if r.id == data["repositoryId"])
            key = f"model-center/{data['repositoryId']}/{data['modelId']}/{body['fileName']}"
            self.signed[key] = (repo, data["weightName"])
            callback = base64.b64encode(json.dumps({"callbackUrl": "https://example.invalid/cb"}).encode()).decode()
            return envelope({"accessKeyId": "STS.fake-id", "accessKeySecret": "fake-sts-secret",
                             "stsToken": "fake-sts-token", "bucket": BUCKET, "object": key,
                             "callback": callback, "callbackVar": base64.b64encode(b"{}").decode()})
        repo = self.repos.get(body.get("repoName"))
        if repo is None:
            return envelope(error="repository not found")
        if action == "getRepositoryModelList":
            return envelope({"models": [{"name": n, "weightName": m["weightName"]} for n, m in repo.models.items()]})
        if action == "updateFileUploadStatus":
            for model in body.get("models") or []:
                self.add_model(repo, model)
            touched = [m["name"] for m in (body.get("models") or []) + (body.get("updateModels") or [])]
            for name, model in repo.models.items():
                if model["weightName"] in body["fileNames"]:
                    model["uploadStatus"] = body["uploadStatus"]
            objects = [{"modelName": name, "modelId": repo.models[name]["modelId"],
                        "weightName": repo.models[name]["weightName"], "objectName": repo.models[name]["weightName"]}
                       for name in dict.fromkeys(touched)]
            return envelope({"repositoryId": repo.id, "uid": "fake-uid", "objects": objects})
        return envelope(error=f"no such action {action}")

    @staticmethod
    def add_model(repo: Repo, model: dict) -> None:
        repo.models.setdefault(model["name"], {"modelId": 100 * repo.id + len(repo.models) + 1,
                                               "weightName": model["weightName"], "uploadStatus": 0})

    def oss(self, request: Recorded) -> tuple[int, dict, bytes]:
        key = unquote(request.path.lstrip("/"))
        xml = {"Content-Type": "application/xml", "x-oss-request-id": "fake"}
        if request.method == "POST" and "uploads" in request.query:
            upload_id = secrets.token_hex(8)
            self.parts[upload_id] = {}
            return 200, xml, (f"<InitiateMultipartUploadResult><Bucket>{BUCKET}</Bucket><Key>{key}</Key>"
                              f"<UploadId>{upload_id}</UploadId></InitiateMultipartUploadResult>").encode()
        upload_id = request.query.get("uploadId", [""])[0]
        if upload_id not in self.parts:
            return 404, xml, b"<Error><Code>NoSuchUpload</Code></Error>"
        if request.method == "PUT":
            self.parts[upload_id][int(request.query["partNumber"][0])] = request.body
            return 200, {**xml, "ETag": f'"{hashlib.md5(request.body).hexdigest().upper()}"'}, b""
        if request.method == "POST":
            numbers = [int(n) for n in re.findall(rb"<PartNumber>(\d+)</PartNumber>", request.body)]
            parts = self.parts.pop(upload_id)
            if sorted(numbers) != sorted(parts):
                return 400, xml, b"<Error><Code>InvalidPart</Code></Error>"
            self.objects[key] = b"".join(parts[n] for n in sorted(numbers))
            return 200, {"Content-Type": "application/json", "x-oss-request-id": "fake",
                         "ETag": '"fake-etag"'}, b'{"Status": "OK"}'
        return 405, xml, b"<Error><Code>MethodNotAllowed</Code></Error>"

    @staticmethod
    def json(data: dict) -> tuple[int, dict, bytes]:
        return 200, {"Content-Type": "application/json"}, json.dumps(data).encode()

    # ---- the wire ----
    def handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30
            tunnel_host = None

            disable_nagle_algorithm = True  # small replies right away, not after the client's delayed ACK

            def log_message(self, *args):
                pass

            def do_CONNECT(self):
                host, _, port = self.path.rpartition(":")
                if host not in (API_HOST, OSS_HOST) or port != "443":
                    fake.refused.append(self.path)
                    self.send_error(403, "the test proxy reaches only the fake OpenXLab hosts")
                    return
                self.send_response(200, "Connection Established")
                self.end_headers()
                self.connection = fake.tls.wrap_socket(self.connection, server_side=True)
                self.rfile = self.connection.makefile("rb")
                self.wfile = socketserver._SocketWriter(self.connection)
                self.tunnel_host = host
                self.close_connection = False

            def any_method(self):
                if self.tunnel_host is None:  # a plain-HTTP request, not through a tunnel
                    fake.refused.append(f"{self.command} {self.path}")
                    self.send_error(403, "the test proxy takes HTTPS only")
                    return
                with fake.lock:
                    if len(fake.requests) >= fake.max_requests:
                        fake.stop()
                        self.send_error(503, "request limit reached")
                        self.close_connection = True
                        return
                    parts = urlsplit(self.path)
                    request = Recorded(self.tunnel_host, self.command, parts.path,
                                       parse_qs(parts.query, keep_blank_values=True),
                                       {k.lower(): v for k, v in self.headers.items()}, self.read_body())
                    fake.requests.append(request)
                    if fake.on_request:
                        fake.on_request(request)
                    status, headers, body = fake.answer(request)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def read_body(self) -> bytes:
                # A client that sends headers and a large body separately, without TCP_NODELAY, otherwise
                # waits for this side's delayed ACK (40 ms a request).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = any_method

        return Handler
