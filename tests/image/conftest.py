"""Session fixtures for the image tests: each image is built once per session (see imagebuild.py)."""

from __future__ import annotations

import os

import pytest
from imagebuild import Built, build


@pytest.fixture(scope="session")
def amd64() -> Built:
    """The amd64 rootfs and disk image."""
    return build("amd64", "all")


@pytest.fixture(scope="session")
def arm64() -> Built:
    """The arm64 rootfs (qemu-user); a full run only with TW_IMAGE_ARM64=1 (make image-test-arm64)."""
    if os.environ.get("TW_IMAGE_ARM64") != "1":
        pytest.skip("arm64 image: slow (qemu-user); run `make image-test-arm64` (TW_IMAGE_ARM64=1)")
    return build("arm64", os.environ.get("TW_IMAGE_ARM64_STAGE", "all"))
