"""Real tunnel peers for the capture tests: strongSwan (IKEv2, PSK), xl2tpd (LAC/LNS) and pptpd/pptp.

Every config, pid file, control pipe and socket lives under the test's tmp dir. This kernel has no ESP,
L2TP or PPP support (DESIGN.md), so mostly the control planes run: the IKE SA is established while a
kernel CHILD_SA install fails (strongSwan's kernel-libipsec plugin, ESP in userspace over TUN, makes
the tunnel carry data); the L2TP tunnel and call come up and are cleared when pppd cannot open
/dev/ppp; PPTP's control connection and outgoing call are answered and then closed.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from support.netns import CLIENT_IP, SERVER_IP, Lab

CHARON = "/usr/lib/ipsec/charon"
# kernel-libipsec (Debian: libcharon-extra-plugins) does ESP in userspace over a TUN device, so a
# CHILD_SA works on a kernel without ESP; it only speaks UDP-encapsulated ESP.
LIBIPSEC_PLUGIN = "/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so"
# Only plugins this strongSwan build ships (no openssl here: gmp does the MODP group).
CHARON_PLUGINS = ("random nonce aes sha1 sha2 hmac gmp pem pkcs1 x509 pubkey kdf kernel-netlink "
                  "socket-default vici")
IKE_PROPOSAL = "aes128-sha256-modp2048"
IKE_LOG = "charon-ike"
# Inner addresses for the userspace-ESP tunnel: libipsec refuses traffic selectors that cover the
# IKE endpoints themselves (its route would swallow the IKE packets).
INNER = {"client": "10.92.0.1", "server": "10.91.0.1"}
TUNNEL_TOOLS = (CHARON, "swanctl", "unshare", "xl2tpd", "pppd", "pptpd", "pptp", "tcpdump", "ss")


@dataclass
class Charon:
    """One charon instance: its strongswan.conf, swanctl.conf and vici socket."""

    name: str
    conf: Path
    swanctl_conf: Path
    uri: str

    def swanctl(self, lb: Lab, ns: str, *args: str, check: bool = True,
                timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run swanctl against this charon's vici socket."""
        return lb.run(ns, "env", f"STRONGSWAN_CONF={self.conf}", "swanctl", *args, "--uri", self.uri,
                      check=check, timeout=timeout)


def _charon_files(d: Path, name: str, me: str, peer: str, log: Path, userspace_esp: bool,
                  vendor_id: bool = False) -> Charon:
    d.mkdir(parents=True, exist_ok=True)
    (d / "run").mkdir(exist_ok=True)
    uri = f"unix://{d}/run/charon.vici"
    plugins = CHARON_PLUGINS.replace("kernel-netlink", "kernel-libipsec kernel-netlink") \
        if userspace_esp else CHARON_PLUGINS
    other = "server" if name == "client" else "client"
    ts = (f"{INNER[name]}/32", f"{INNER[other]}/32") if userspace_esp else (me, peer)
    conf = d / "strongswan.conf"
    conf.write_text(f"""charon {{
  load_modular = no
  load = {plugins}
  install_routes = {"yes" if userspace_esp else "no"}
  send_vendor_id = {"yes" if vendor_id else "no"}
  filelog {{
    tw {{
      path = {log}
      default = 1
      ike = 2
      flush_line = yes
    }}
  }}
  plugins {{
    vici {{
      socket = {uri}
    }}
  }}
}}
swanctl {{
  load = pem pkcs1 x509 pubkey random
}}
""")
    sw = d / "swanctl.conf"
    sw.write_text(f"""connections {{
  tw {{
    version = 2
    local_addrs = {me}
    remote_addrs = {peer}
    proposals = {IKE_PROPOSAL}
    encap = {"yes" if userspace_esp else "no"}
    local {{
      auth = psk
      id = tw-{name}
    }}
    remote {{
      auth = psk
      id = tw-{other}
    }}
    children {{
      net {{
        local_ts = {ts[0]}
        remote_ts = {ts[1]}
        esp_proposals = aes128-sha256
      }}
    }}
  }}
}}
secrets {{
  ike-tw {{
    secret = "tunnelwatch-lab-only-psk"
  }}
}}
""")
    return Charon(name, conf, sw, uri)


def start_charon(lb: Lab, ns: str, d: Path, name: str, me: str, peer: str, *,
                 userspace_esp: bool = False, vendor_id: bool = False) -> Charon:
    """Start charon in `ns` with its configuration loaded; returns once vici answered."""
    # charon buffers a stdout log until exit; a file log with flush_line is readable as it happens.
    ch = _charon_files(d, name, me, peer, lb.workdir / f"{IKE_LOG}-{name}.log", userspace_esp, vendor_id)
    # charon's pid file path is compiled in (/var/run/charon.pid): give each instance a private /run
    # in its own mount namespace so two of them (and the host's) never collide.
    lb.spawn(ns, ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                  f'mount --bind "{d}/run" /run && exec {CHARON}'],
             f"charon-{name}", env={"STRONGSWAN_CONF": str(ch.conf)})
    lb.wait_until(ns, ["env", f"STRONGSWAN_CONF={ch.conf}", "swanctl", "--stats", "--uri", ch.uri])
    r = ch.swanctl(lb, ns, "--load-all", "--file", str(ch.swanctl_conf))
    assert "loaded connection 'tw'" in r.stdout, r.stdout + r.stderr
    return ch


def ikev2_exchange(lb: Lab, d: Path, client_ip: str, server_ip: str, *, userspace_esp: bool = False,
                   vendor_id: bool = False) -> None:
    """Client initiates IKEv2 to the server (and with userspace_esp pings through the tunnel), then
    deletes the SA; returns once both daemons logged each step. vendor_id: both send strongSwan's VID."""
    if userspace_esp:
        for ns, name in ((lb.client, "client"), (lb.server, "server")):
            lb.run(ns, "ip", "addr", "add", f"{INNER[name]}/32", "dev", "lo")
    esp = userspace_esp
    srv = start_charon(lb, lb.server, d / "server", "server", server_ip, client_ip, userspace_esp=esp,
                       vendor_id=vendor_id)
    cli = start_charon(lb, lb.client, d / "client", "client", client_ip, server_ip, userspace_esp=esp,
                       vendor_id=vendor_id)
    # Without userspace ESP the CHILD_SA cannot be installed (no kernel ESP) and --initiate reports
    # failure; the IKE SA is still established, and both daemons say so.
    r = cli.swanctl(lb, lb.client, "--initiate", "--child", "net", "--timeout", "15", check=userspace_esp)
    for ch in (cli, srv):
        lb.wait_for_log(f"{IKE_LOG}-{ch.name}", "IKE_SA tw[1] established between", timeout=15)
    if userspace_esp:
        assert "initiate completed successfully" in r.stdout, r.stdout
        ping = lb.run(lb.client, "ping", "-c3", "-i0.2", "-W2", "-I", INNER["client"], INNER["server"],
                      check=False)
        assert ping.returncode == 0, f"no traffic through the ESP tunnel:\n{ping.stdout}{ping.stderr}"
    cli.swanctl(lb, lb.client, "--terminate", "--ike", "tw", "--timeout", "15")
    lb.wait_for_log(f"{IKE_LOG}-server", "IKE_SA deleted", timeout=15)


def _write_fifo(path: Path, text: str, timeout: float = 10.0) -> None:
    """Write to a control FIFO once its reader has it open (non-blocking, bounded retries)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENXIO) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        return


def l2tp_call(lb: Lab, d: Path) -> None:
    """xl2tpd LNS on the server, xl2tpd LAC on the client; dial once over the control pipe.

    Returns once both ends have the call up. pppd then exits at once (no /dev/ppp) and whichever end
    notices first clears the call with a CDN, so which side logs what afterwards is a race.
    """
    d.mkdir(parents=True, exist_ok=True)
    ppp = d / "ppp-options"
    ppp.write_text("noauth\nnodetach\n")
    (d / "lns.conf").write_text(f"[global]\nlisten-addr = {SERVER_IP}\nport = 1701\n"
                                "[lns default]\nip range = 10.98.0.2-10.98.0.20\nlocal ip = 10.98.0.1\n"
                                f"require authentication = no\npppoptfile = {ppp}\nlength bit = yes\n")
    (d / "lac.conf").write_text(f"[global]\nlisten-addr = {CLIENT_IP}\nport = 1701\n"
                                f"[lac tw]\nlns = {SERVER_IP}\npppoptfile = {ppp}\nlength bit = yes\n"
                                "redial = no\nautodial = no\n")
    for role, ns in (("lns", lb.server), ("lac", lb.client)):
        lb.spawn(ns, ["xl2tpd", "-D", "-c", str(d / f"{role}.conf"), "-p", str(d / f"{role}.pid"),
                      "-C", str(d / f"{role}.ctl")], f"xl2tpd-{role}")
        lb.wait_for_log(f"xl2tpd-{role}", "Listening on IP address")
    _write_fifo(d / "lac.ctl", "c tw\n")
    lb.wait_for_log("xl2tpd-lac", f"Call established with {SERVER_IP}")
    lb.wait_for_log("xl2tpd-lns", f"Call established with {CLIENT_IP}")


def start_pptpd(lb: Lab, d: Path) -> None:
    """pptpd listening on the server's TCP 1723."""
    d.mkdir(parents=True, exist_ok=True)
    ppp = d / "ppp-options"
    ppp.write_text("noauth\nnodetach\n")
    conf = d / "pptpd.conf"
    conf.write_text(f"option {ppp}\nlocalip 10.97.0.1\nremoteip 10.97.0.2-20\n")
    lb.spawn(lb.server, ["pptpd", "--fg", "-c", str(conf), "-o", str(ppp), "-p", str(d / "pptpd.pid"),
                         "-l", SERVER_IP], "pptpd")
    lb.wait_until(lb.server, ["sh", "-c", "ss -ltn | grep -q ':1723 '"])


def start_pptp_client(lb: Lab) -> subprocess.Popen[bytes]:
    """pptp-linux as a pppd pty (--nolaunchpppd): it runs the control connection and places one call."""
    # Its stdin is the would-be PPP stream; a pipe that stays open keeps it from hanging up early.
    return lb.spawn(lb.client, ["pptp", SERVER_IP, "--nolaunchpppd", "--loglevel", "2"], "pptp",
                    stdin=subprocess.PIPE)
