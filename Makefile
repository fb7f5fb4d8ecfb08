# tunnelwatch: setup / demo / test / bench / eval. `make help` lists targets.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORPUS ?= ../shared/corpus/ndpi
# System packages, in three sets so each command installs only what it needs (scripts/apt-install.sh installs
# them with apt's progress shown and leaves no system service enabled: the tests start their own peers).
# Base: what `pip install` compiles (netfilterqueue, systemd-python need the Python headers and these -dev
# packages) and the kernel tools the daemon drives.
BASE_PKGS := make python3 python3-venv python3-dev gcc pkg-config libnetfilter-queue-dev libsystemd-dev kmod \
	iproute2 iptables ipset conntrack nftables procps
# Demo: the peers of `tunnelwatch lab` (OpenVPN, WireGuard, HTTPS, SIP through the daemon).
DEMO_PKGS := openvpn wireguard-go wireguard-tools openssl curl iputils-ping sip-tester
# Tests: every real peer and collector the integration tests drive.
TEST_PKGS := systemd iperf3 nfdump tshark tcpdump strongswan strongswan-swanctl libcharon-extra-plugins xl2tpd \
	pptpd pptp-linux baresip psmisc chromium kamailio kamailio-tls-modules coturn tinc n2n fastd iodine \
	ptunnel ocserv openconnect shadowsocks-libev v2ray obfs4proxy openssh-server openssh-client faketime \
	prometheus mumble-server
# MQTT uplink tests: a real broker and its CLI clients
TEST_PKGS += mosquitto mosquitto-clients
# ingest tests: a private PostgreSQL 15 cluster (initdb in a temp dir; Debian's main cluster unused)
TEST_PKGS += postgresql
APT_PKGS := $(BASE_PKGS) $(DEMO_PKGS) $(TEST_PKGS)
# Kernel modules the rules need (a stock Debian kernel loads most on demand; a container may have them built
# in or not be allowed to load them: then the daemon's own start-up check says what is missing).
MODULES_FILE := image/overlay/common/etc/modules-load.d/tunnelwatch.conf
PYTEST_ARGS ?= tests

.PHONY: help setup setup-demo setup-test kernel-modules demo test unit integration lint bench eval fuzz clean
.PHONY: fresh-check image image-deps image-rootfs image-lock image-test image-test-arm64

help:
	@echo "make setup      - base system packages (when root) + $(VENV) with tunnelwatch and test tools"
	@echo "make demo       - set up for the demo, then (root) the enforcement lab in namespaces"
	@echo "make test       - set up for the tests, then lint, type-check, unit and integration tests"
	@echo "make fresh-check - the README's two commands in a fresh minimal Debian 12 root (mmdebstrap; root)"
	@echo "make bench      - one table: classification vs nfstream (nDPI); router with/without daemon (root); new flows/s, CPU, latency and bytes per flow + py-spy profile (root); flow-table memory/CPU at 10k-1M flows"
	@echo "make fuzz       - atheris on every parser and loader, FUZZ_SECONDS (default 600) each"
	@echo "make eval       - agreement with nDPI's labels on $(CORPUS)"
	@echo "make image ARCH=amd64|arm64 - appliance disk image in build/image/ARCH (root; image/README.md)"
	@echo "make image-rootfs ARCH=...  - only the root filesystem + manifest (arm64: the quick check)"
	@echo "make image-test             - build + boot the amd64 image under qemu (tests/image)"
	@echo "make image-test-arm64       - build the arm64 image, check it under qemu-user, boot it under qemu-system-aarch64 (slow)"

kernel-modules:
	@if [ "$$(id -u)" = 0 ] && command -v modprobe >/dev/null; then \
		mods=$$(grep -v '^#' $(MODULES_FILE) | sort -u); failed=""; \
		for m in $$mods; do [ -d /sys/module/$$m ] || modprobe -q $$m 2>/dev/null || failed="$$failed $$m"; done; \
		if [ -n "$$failed" ]; then echo "== kernel modules not loadable here (built in, or not allowed in a container):$$failed"; \
		else echo "== kernel modules loaded: $$(echo $$mods)"; fi; fi

$(VENV)/.stamp: pyproject.toml
	@echo "== $(VENV): pip install -e '.[test,daemon]' (compiles netfilterqueue and systemd-python)"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install --progress-bar off -e '.[test,daemon]'
	touch $@

setup:
	scripts/apt-install.sh $(BASE_PKGS)
	$(MAKE) --no-print-directory $(VENV)/.stamp

setup-demo:
	scripts/apt-install.sh $(BASE_PKGS) $(DEMO_PKGS)
	$(MAKE) --no-print-directory kernel-modules $(VENV)/.stamp

setup-test:
	scripts/apt-install.sh $(APT_PKGS) $(IMAGE_APT_PKGS)
	$(MAKE) --no-print-directory kernel-modules $(VENV)/.stamp

# As root: the namespace lab (real OpenVPN, WireGuard, HTTPS, SIP through the daemon in enforce mode).
# Otherwise: the offline classifier over the sample captures shipped in the package.
demo: setup-demo
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/tunnelwatch lab; else \
		echo "== not root: the enforcement lab needs root (network namespaces); classifying the golden captures"; \
		$(BIN)/tunnelwatch classify --format table tests/data/captures/*.pcap; fi

lint: $(VENV)/.stamp
	$(BIN)/ruff check daemon tests bench
	$(BIN)/mypy

unit: $(VENV)/.stamp
	$(BIN)/pytest -q tests/unit

integration: $(VENV)/.stamp
	$(BIN)/pytest -q tests/integration

test: setup-test
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest -q -rs $(PYTEST_ARGS)

# The README's two commands in a fresh minimal bookworm root (tests/fresh/README.md).
fresh-check:
	tests/fresh/run.sh

eval: $(VENV)/.stamp
	$(BIN)/python -m tunnelwatch.offline.evaluate --corpus $(CORPUS) --endpoints config/endpoints/vpn-apps.yaml --endpoints config/endpoints/voice-apps.yaml

bench: $(VENV)/.stamp
	$(BIN)/pip install -q 'nfstream==6.6.0' 'py-spy==0.4.3'
	$(BIN)/python bench/run_all.py --corpus $(CORPUS)

FUZZ_SECONDS ?= 600
fuzz: $(VENV)/.stamp
	$(BIN)/python tests/fuzz/run.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info daemon/*.egg-info

# --- appliance image (image/README.md) -----------------------------------------------------------------
ARCH ?= amd64
# Build tools for `make image` and tests/image (qemu-system-x86 + ovmf boot the amd64 image; qemu-user-static
# + binfmt-support run the arm64 rootfs; qemu-system-arm boots the arm64 image, -M virt).
IMAGE_APT_PKGS := mmdebstrap dosfstools mtools fdisk e2fsprogs zstd git qemu-system-x86 ovmf \
	qemu-user-static binfmt-support arch-test qemu-system-arm

image-deps:
	@missing=$$(for p in $(IMAGE_APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then echo "== image build tools present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then scripts/apt-install.sh $$missing; \
	else echo "image: error: missing packages:" $$missing "(as root: apt-get install" $$missing")" >&2; exit 2; fi

image: image-deps
	COMPRESS=$${COMPRESS:-zstd} image/build.sh $(ARCH)

image-rootfs: image-deps
	STAGE=rootfs image/build.sh $(ARCH)

# Record this build's package versions as the lock that later builds are compared with (IMAGE_LOCK=strict).
image-lock:
	@test -f build/image/$(ARCH)/tunnelwatch-*-$(ARCH).manifest || { echo "make image ARCH=$(ARCH) first" >&2; exit 1; }
	grep -h '^\(# \|deb \)' build/image/$(ARCH)/tunnelwatch-*-$(ARCH).manifest > image/lock/$(ARCH).lock
	@echo "== wrote image/lock/$(ARCH).lock ($$(grep -c '^deb ' image/lock/$(ARCH).lock) packages)"

image-test: image-deps $(VENV)/.stamp
	$(BIN)/pytest -q -rs tests/image

image-test-arm64: image-deps $(VENV)/.stamp
	TW_IMAGE_ARM64=1 $(BIN)/pytest -q -rs tests/image -k arm64

# The bench's userspace section as arm64 code under qemu-user (bench/arm64_userspace.sh; docs/performance.md).
.PHONY: bench-arm64
bench-arm64: image-deps $(VENV)/.stamp
	PYTHON=$(BIN)/python bench/arm64_userspace.sh
