"""image/wheelhashes.py: the hash pins pip checks while the image is built (no image, no network).

The rootfs install (hooks/customize.sh) uses `requirements` on the built wheels and pip --require-hashes;
the build chroot downloads with the hashes in image/python-requirements.txt. A wheel changed after it was
hashed must stop pip with its hash-mismatch error: checked here with real pip on small local wheels.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from imagebuild import REPO

REQS = REPO / "image/python-requirements.txt"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wheelhashes", REPO / "image/wheelhashes.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


wh = _load()


def make_wheel(d: Path, name: str, version: str, body: str) -> Path:
    """A minimal valid pure-Python wheel (one module) that pip installs."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": body.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=').decode()},{len(b)}\n"
        for p, b in files.items()) + f"{dist}/RECORD,,\n"
    path = d / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, b in files.items():
            z.writestr(p, b)
        z.writestr(f"{dist}/RECORD", record)
    return path


def pip_install(wheels: Path, reqs: Path, target: Path) -> subprocess.CompletedProcess[str]:
    """What customize.sh runs in the image: local wheels only, hash-checking mode."""
    return subprocess.run([sys.executable, "-m", "pip", "install", "--isolated", "--no-index", "--no-deps",
                           "--require-hashes", "--find-links", str(wheels), "-r", str(reqs),
                           "--target", str(target), "--disable-pip-version-check", "--no-cache-dir"],
                          capture_output=True, text=True, timeout=300, check=False)


def test_hashed_requirements_pin_each_wheel_by_its_sha256(tmp_path: Path) -> None:
    a = make_wheel(tmp_path, "tw_alpha", "1.0", "X = 1\n")
    make_wheel(tmp_path, "tw_beta", "2.3", "Y = 2\n")
    make_wheel(tmp_path, "pip", "23.0.1", "")
    text = wh.hashed_requirements(tmp_path, ("pip",))
    lines = text.splitlines()
    assert lines[0] == f"tw-alpha==1.0 --hash=sha256:{hashlib.sha256(a.read_bytes()).hexdigest()}"
    assert lines[1].startswith("tw-beta==2.3 --hash=sha256:") and len(lines) == 2
    # the same sha256 the manifest records (build.sh: sha256sum of each wheel)
    out = subprocess.run(["sha256sum", str(a)], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] in lines[0]


def test_pip_installs_the_hashed_wheels(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "tw_alpha", "1.0", "X = 1\n")
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(wh.hashed_requirements(wheels))
    res = pip_install(wheels, reqs, tmp_path / "site")
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "site/tw_alpha.py").read_text() == "X = 1\n"


def test_a_wheel_changed_after_hashing_stops_the_install(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    good = make_wheel(wheels, "tw_alpha", "1.0", "X = 1\n")
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(wh.hashed_requirements(wheels))
    expected = hashlib.sha256(good.read_bytes()).hexdigest()
    # same name and version, other contents: what a tampered or rebuilt wheel looks like
    make_wheel(wheels, "tw_alpha", "1.0", "import os; os.system('id')\n")
    res = pip_install(wheels, reqs, tmp_path / "site")
    assert res.returncode != 0
    assert "DO NOT MATCH THE HASHES" in res.stderr, res.stderr
    assert f"Expected sha256 {expected}" in res.stderr, res.stderr
    assert not (tmp_path / "site/tw_alpha.py").exists()


def test_an_unhashed_requirement_is_refused(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "tw_alpha", "1.0", "X = 1\n")
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("tw-alpha==1.0\n")
    res = pip_install(wheels, reqs, tmp_path / "site")
    assert res.returncode != 0 and "hash" in res.stderr.lower(), res.stderr


def test_wheel_dir_problems_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no wheels"):
        wh.hashed_requirements(tmp_path)
    make_wheel(tmp_path, "tw_alpha", "1.0", "")
    (tmp_path / "sub").mkdir()
    dup = make_wheel(tmp_path / "sub", "tw_alpha", "1.1", "")
    dup.rename(tmp_path / dup.name)
    with pytest.raises(ValueError, match="two wheels of tw-alpha"):
        wh.hashed_requirements(tmp_path)


def test_every_pin_of_the_image_has_a_pypi_hash() -> None:
    # the build chroot runs pip wheel --require-hashes on this file: a pin without a hash would fail there
    text = REQS.read_text()
    pins = wh.parse_pins(text)
    assert len(pins) >= 9 and ("cryptography", "50.0.2") in pins
    for logical in text.replace("\\\n", " ").splitlines():
        if logical.strip() and not logical.startswith("#"):
            assert "--hash=sha256:" in logical, logical
    build = (REPO / "image/build.sh").read_text()
    assert "--require-hashes --wheel-dir /wheels -r /src/requirements.txt" in build
    assert "--require-hashes" in (REPO / "image/hooks/customize.sh").read_text()


def test_parse_pins_refuses_loose_versions() -> None:
    with pytest.raises(ValueError, match="exact pin"):
        wh.parse_pins("PyYAML>=6\n")
    assert wh.parse_pins("# c\nA==1 \\\n    --hash=sha256:00\nb_c==2.0\n") == [("A", "1"), ("b_c", "2.0")]
