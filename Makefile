# tunnelwatch: setup / demo / test / bench / eval. `make help` lists targets.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORPUS ?= ../shared/corpus/ndpi
# System packages: build deps for netfilterqueue/systemd-python, and the real peers the tests drive.
APT_PKGS := python3-venv gcc pkg-config libnetfilter-queue-dev libsystemd-dev systemd iproute2 iptables ipset \
	conntrack nftables iperf3 nfdump tshark iputils-ping tcpdump openvpn wireguard-go wireguard-tools strongswan strongswan-swanctl libcharon-extra-plugins xl2tpd \
	pptpd pptp-linux baresip sip-tester openssl curl procps psmisc chromium \
	kamailio kamailio-tls-modules coturn tinc n2n fastd iodine ptunnel ocserv openconnect \
	shadowsocks-libev v2ray obfs4proxy openssh-server openssh-client faketime

.PHONY: help setup system-deps demo test unit integration lint bench eval fuzz clean
.PHONY: image image-deps image-rootfs image-lock image-test image-test-arm64

help:
	@echo "make setup   - system packages (when root) + $(VENV) with tunnelwatch and test tools"
	@echo "make demo    - classify the bundled sample captures and print the table"
	@echo "make test    - setup, then lint, type-check, unit and integration tests"
	@echo "make bench   - one table: classification vs nfstream (nDPI); router with/without daemon (root); flow-table memory/CPU at 10k-1M flows"
	@echo "make fuzz    - atheris on every parser and loader, FUZZ_SECONDS (default 600) each"
	@echo "make eval    - agreement with nDPI's labels on $(CORPUS)"
	@echo "make image ARCH=amd64|arm64 - appliance disk image in build/image/ARCH (root; image/README.md)"
	@echo "make image-rootfs ARCH=...  - only the root filesystem + manifest (arm64: the quick check)"
	@echo "make image-test             - build + boot the amd64 image under qemu (tests/image)"
	@echo "make image-test-arm64       - the arm64 rootfs under qemu-user (slow)"

system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "== apt-get install (system packages)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PKGS) \
			$(IMAGE_APT_PKGS) >/dev/null; \
	else echo "== not root or no apt-get: skipping system packages ($(APT_PKGS))"; fi

$(VENV)/.stamp: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,daemon]'
	touch $@

setup: system-deps $(VENV)/.stamp

# As root: the namespace lab (real OpenVPN, WireGuard, HTTPS, SIP through the daemon in enforce mode).
# Otherwise: the offline classifier over the sample captures shipped in the package.
demo: setup
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

test: setup lint
	$(BIN)/pytest -q -rs tests

eval: $(VENV)/.stamp
	$(BIN)/python -m tunnelwatch.evaluate --corpus $(CORPUS)

bench: $(VENV)/.stamp
	$(BIN)/pip install -q 'nfstream==6.6.0'
	$(BIN)/python bench/run_all.py --corpus $(CORPUS)

FUZZ_SECONDS ?= 600
fuzz: $(VENV)/.stamp
	$(BIN)/python tests/fuzz/run.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info daemon/*.egg-info

# --- appliance image (image/README.md) -----------------------------------------------------------------
ARCH ?= amd64
# Build tools for `make image` and tests/image (qemu-system-x86 + ovmf boot the amd64 image; qemu-user-static
# + binfmt-support run the arm64 rootfs).
IMAGE_APT_PKGS := mmdebstrap dosfstools mtools fdisk e2fsprogs zstd git qemu-system-x86 ovmf \
	qemu-user-static binfmt-support

image-deps:
	@missing=$$(for p in $(IMAGE_APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then echo "== image build tools present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "== apt-get install (image build tools):" $$missing; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
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
