"""A throw-away PKI for TLS tests, made with the openssl CLI (EC P-256 keys): a CA, a server certificate
for 127.0.0.1, a client certificate, and a second, unrelated CA with its own client certificate."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    """Paths of the generated PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path            # a CA nobody trusts
    rogue_cert: Path          # client certificate signed by rogue_ca
    rogue_key: Path
    rogue_server_cert: Path   # server certificate for 127.0.0.1 signed by rogue_ca
    rogue_server_key: Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _ca(d: Path, name: str) -> None:
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         cwd=d)


def leaf(d: Path, ca: str, name: str, ext: str) -> tuple[Path, Path]:
    """A certificate `name`.pem (and its key) signed by CA `ca` in d, with openssl extension lines `ext`."""
    _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
         "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    (d / f"{name}.ext").write_text(ext)
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
         "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    return d / f"{name}.pem", d / f"{name}.key"


def make_pki(d: Path) -> Pki:
    """Generate everything under d (which must exist)."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is needed for the TLS tests (apt-get install openssl)")
    server_ext = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
    client_ext = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    leaf(d, "ca", "server", server_ext)
    leaf(d, "ca", "client", client_ext)
    leaf(d, "rogue-ca", "rogue-client", client_ext)
    leaf(d, "rogue-ca", "rogue-server", server_ext)
    return Pki(ca=d / "ca.pem", server_cert=d / "server.pem", server_key=d / "server.key",
               client_cert=d / "client.pem", client_key=d / "client.key", rogue_ca=d / "rogue-ca.pem",
               rogue_cert=d / "rogue-client.pem", rogue_key=d / "rogue-client.key",
               rogue_server_cert=d / "rogue-server.pem", rogue_server_key=d / "rogue-server.key")
