#!/usr/bin/env python3
"""sha256 pins for the image's Python packages, so that pip installs nothing it was not told to expect.

Two places check them, both with `pip --require-hashes` (a mismatch stops the build with pip's
"THESE PACKAGES DO NOT MATCH THE HASHES" and the expected and actual sha256):

* the build chroot downloads from PyPI with the hashes recorded in image/python-requirements.txt
  (written by `pin`: every file pip could pick for CPython 3.11 on amd64 and arm64, and the sdist of the
  two packages compiled here);
* the root filesystem installs the built wheels with a requirements file written by `requirements`
  from those wheels, the same sha256 the manifest records (so the image holds exactly the wheels the
  manifest names).

    image/wheelhashes.py requirements WHEELDIR [--exclude NAME]...  > hashed-requirements.txt
    image/wheelhashes.py pin image/python-requirements.txt            (maintainer: after changing a pin)

Standard library only: it runs on the build host (Debian's python3), not in the image.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# the platforms the image is built for: Debian 12 (glibc 2.36, CPython 3.11), amd64 and arm64; every
# manylinux tag glibc 2.36 accepts, best first (pip download takes them literally, it does not expand them)
ARCHES = ("x86_64", "aarch64")


def platform_args(arch: str) -> list[str]:
    """pip download's --platform options for one architecture, in pip's own order of preference."""
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 16, -1)] + [f"manylinux2014_{arch}"]
    return [arg for tag in tags for arg in ("--platform", tag)]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name_version(wheel: Path) -> tuple[str, str]:
    """(project, version) from a wheel file name (PEP 427: name-version(-build)?-python-abi-platform.whl)."""
    parts = wheel.name[: -len(".whl")].split("-")
    if not wheel.name.endswith(".whl") or len(parts) not in (5, 6):
        raise ValueError(f"not a wheel file name: {wheel.name}")
    return parts[0], parts[1]


def hashed_requirements(wheel_dir: Path, exclude: tuple[str, ...] = ()) -> str:
    """A `pip install --require-hashes` requirements file for every wheel in wheel_dir.

    One `name==version --hash=sha256:...` line per wheel, sorted; the hash is the file's own, i.e. the
    one the manifest records. Two wheels of one project are refused (pip would install only one).
    """
    skip = {canonical(n) for n in exclude}
    lines: dict[str, str] = {}
    for wheel in sorted(wheel_dir.glob("*.whl")):
        name, version = wheel_name_version(wheel)
        key = canonical(name)
        if key in skip:
            continue
        if key in lines:
            raise ValueError(f"two wheels of {key} in {wheel_dir}")
        lines[key] = f"{key}=={version} --hash=sha256:{sha256(wheel)}"
    if not lines:
        raise ValueError(f"no wheels in {wheel_dir}")
    return "".join(line + "\n" for _, line in sorted(lines.items()))


def parse_pins(text: str) -> list[tuple[str, str]]:
    """The `name==version` pins of a requirements file (comments, hashes and continuations dropped)."""
    pins = []
    for logical in text.replace("\\\n", " ").splitlines():
        req = logical.split("#", 1)[0].split("--hash", 1)[0].strip()
        if not req:
            continue
        m = PIN.match(req)
        if not m:
            raise ValueError(f"not an exact pin (name==version): {req!r}")
        pins.append((m.group(1), m.group(2)))
    return pins


def pin(req_file: Path, pip: list[str]) -> None:
    """Rewrite req_file with the sha256 of every file pip would take for the image's platforms."""
    text = req_file.read_text()
    header = [ln for ln in text.splitlines() if ln.startswith("#")]
    out = [*header]
    # PyPI itself, as the build chroot sees it: no local indexes or find-links of this machine's pip config
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env["PIP_CONFIG_FILE"] = os.devnull
    for name, version in parse_pins(text):
        hashes: set[str] = set()
        for arch in ARCHES:
            with tempfile.TemporaryDirectory() as d:
                res = subprocess.run([*pip, "download", "-q", "--no-deps", "--dest", d, *platform_args(arch),
                                      "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                                      "--abi", "abi3", "--abi", "none", "--only-binary=:all:",
                                      f"{name}=={version}"],
                                     capture_output=True, text=True, env=env, check=False)
                if res.returncode != 0:  # no wheel for this platform: the sdist, compiled in the build chroot
                    if "No matching distribution" not in res.stderr:
                        raise ValueError(f"pip download {name}=={version} ({arch}): {res.stderr.strip()}")
                    subprocess.run([*pip, "download", "-q", "--no-deps", "--dest", d, "--no-binary=:all:",
                                    f"{name}=={version}"], env=env, check=True)
                hashes |= {sha256(f) for f in Path(d).iterdir()}
        out.append(f"{name}=={version} \\")
        out.extend(f"    --hash=sha256:{h}" + (" \\" if i < len(hashes) - 1 else "")
                   for i, h in enumerate(sorted(hashes)))
    req_file.write_text("\n".join(out) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("requirements", help="hashed requirements for the wheels in a directory (stdout)")
    r.add_argument("wheel_dir", type=Path)
    r.add_argument("--exclude", action="append", default=[], help="project to leave out (e.g. pip)")
    p = sub.add_parser("pin", help="record PyPI sha256 for every pin of a requirements file")
    p.add_argument("req_file", type=Path)
    p.add_argument("--pip", default=f"{sys.executable} -m pip", help="pip command (default: this python's)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "requirements":
            sys.stdout.write(hashed_requirements(args.wheel_dir, tuple(args.exclude)))
        else:
            pin(args.req_file, args.pip.split())
    except (ValueError, OSError, subprocess.CalledProcessError) as e:
        print(f"wheelhashes: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
