"""The shipped ops/deploy/nginx.conf, run for real: its `# site:` lines rewritten for a
private prefix under a test's tmp_path, everything else as shipped."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from livefeed.core.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "ops" / "deploy" / "nginx.conf"
SITE_KEYS = {"user", "pid", "error_log", "access_log", "gateway", "listen_http",
             "listen_https", "certificate", "certificate_key"}
_SITE = re.compile(r"^(?P<indent>\s*)(?P<directive>.*?)\s*#\s*site:\s*(?P<key>\w+)\s*$")


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def site_lines(text: str) -> dict[str, list[str]]:
    """`# site:` key -> the directives carrying it, in file order."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = _SITE.match(line)
        if m:
            found.setdefault(m["key"], []).append(m["directive"])
    return found


def render(text: str, *, prefix: Path, gateways: Sequence[str], https_port: int,
           http_port: int, cert: Path, key: Path) -> str:
    """The config with only its `# site:` lines replaced (an unknown or missing key fails)."""
    keys = set(site_lines(text))
    assert keys == SITE_KEYS, f"site keys changed: {sorted(keys ^ SITE_KEYS)}"
    user = "user root;" if os.geteuid() == 0 else ""  # workers must reach tmp_path
    values = {
        "user": [user],
        "pid": [f"pid {prefix / 'nginx.pid'};"],
        "error_log": [f"error_log {prefix / 'error.log'} info;"],
        "access_log": [f"access_log {prefix / 'access.log'} upstreams;"],
        "listen_http": [f"listen 127.0.0.1:{http_port};"],
        "listen_https": [f"listen 127.0.0.1:{https_port} ssl http2;"],
        "certificate": [f"ssl_certificate {cert};"],
        "certificate_key": [f"ssl_certificate_key {key};"],
    }
    out: list[str] = []
    gateway_done = False
    for line in text.splitlines():
        m = _SITE.match(line)
        if not m:
            out.append(line)
            if line.strip() == "http {":  # keep nginx's temporary files private too
                out += [f"    {name}_temp_path {prefix / name};"
                        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")]
                # Which gateway(s) each request went to (access.log: `served_by`).
                out.append("    log_format upstreams '$request_uri $status $upstream_addr';")
            continue
        k = m["key"]
        if k == "gateway":
            if not gateway_done:  # the shipped list's first line, with its parameters
                params = m["directive"].split(None, 2)[2]
                out += [f"{m['indent']}server {addr} {params}" for addr in gateways]
                gateway_done = True
            continue
        out += [m["indent"] + v for v in values[k]]
    return "\n".join(out) + "\n"


def self_signed(dir: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1/localhost: cryptography if installed, else
    the openssl command."""
    cert, key = dir / "tls.crt", dir / "tls.key"
    try:
        import cryptography  # noqa: F401
    except ImportError:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True)
        return cert, key
    return _self_signed_cryptography(cert, key)


def _self_signed_cryptography(cert: Path, key: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pk = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    crt = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(pk.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - datetime.timedelta(minutes=5))
           .not_valid_after(now + datetime.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName(
               [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
               critical=False)
           .sign(pk, hashes.SHA256()))
    key.write_bytes(pk.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    cert.write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    return cert, key


class Nginx:
    """One nginx master in the foreground (`daemon off`), its files under `prefix`."""

    def __init__(self, prefix: Path, gateways: Sequence[str]) -> None:
        binary = nginx_binary()
        assert binary, "nginx is missing: apt-get install -y nginx (ops/test does)"
        self.binary = binary
        self.prefix = prefix
        prefix.mkdir(parents=True, exist_ok=True)
        cert, key = self_signed(prefix)
        self.port = free_port()
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(render(NGINX_CONF.read_text(), prefix=prefix, gateways=gateways,
                                    https_port=self.port, http_port=free_port(),
                                    cert=cert, key=key))
        self.url = f"https://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self, *extra: str) -> list[str]:
        return [self.binary, "-p", f"{self.prefix}/", "-c", str(self.conf),
                "-e", str(self.prefix / "error.log"), *extra]

    def check(self) -> None:
        """`nginx -t` on the rendered file."""
        done = subprocess.run(self.argv("-t"), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    def start(self, timeout: float = 20.0) -> Nginx:
        self.check()
        self.proc = subprocess.Popen(self.argv("-g", "daemon off;"),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"nginx exited early:\n{self.errors()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", verify=False, timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError(f"nginx not up after {timeout}s:\n{self.errors()}")

    def served_by(self, uri: str) -> list[list[str]]:
        """For each logged request to `uri` (logged when it ends), the gateway addresses
        nginx tried, in order."""
        path = self.prefix / "access.log"
        out = []
        for line in path.read_text().splitlines() if path.exists() else []:
            req_uri, _status, upstreams = line.split(" ", 2)
            if req_uri == uri:
                out.append([u.strip() for u in upstreams.split(",")])
        return out

    def errors(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text()[-5000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: nginx's fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def running_nginx(prefix: Path, gateways: Sequence[str]) -> Iterator[Nginx]:
    nginx = Nginx(prefix, gateways)
    try:
        yield nginx.start()
    finally:
        nginx.stop()
