# tunnelwatch: setup / demo / test / bench / eval. `make help` lists targets.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORPUS ?= ../shared/corpus/ndpi
# System packages: build deps for netfilterqueue/systemd-python, and the real peers the tests drive.
APT_PKGS := python3-venv gcc pkg-config libnetfilter-queue-dev libsystemd-dev systemd iproute2 iptables ipset \
	conntrack nftables iperf3 nfdump tshark iputils-ping tcpdump openvpn wireguard-go wireguard-tools strongswan strongswan-swanctl libcharon-extra-plugins xl2tpd \
	pptpd pptp-linux baresip sip-tester openssl curl procps psmisc chromium

.PHONY: help setup system-deps demo test unit integration lint bench eval clean

help:
	@echo "make setup   - system packages (when root) + $(VENV) with tunnelwatch and test tools"
	@echo "make demo    - classify the bundled sample captures and print the table"
	@echo "make test    - setup, then lint, type-check, unit and integration tests"
	@echo "make bench   - classification vs nfstream (nDPI) on the corpus x20; router with/without daemon (root)"
	@echo "make eval    - agreement with nDPI's labels on $(CORPUS)"

system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "== apt-get install (system packages)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PKGS) >/dev/null; \
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
	$(BIN)/python bench/classify_bench.py --corpus $(CORPUS) --repeat 20
	$(BIN)/python bench/net_bench.py --rounds 3

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info daemon/*.egg-info
