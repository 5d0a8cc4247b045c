"""README's recipes run as written through the real super-servers (issue
21): the blocks marked <!-- run:NAME file:PATH --> are written to a fresh
folder with only paths, ports and addresses changed, and started as the
operator would start them. ANCHORS names the folder that
../shared/anchors/build.sh filled (s6/bin, s6-bearssl/bin,
ucspi-ssl/bin/sslserver); without it the tests that need them skip and
say why.

Clients connect from their own loopback address (127.0.0.0/8 is all
local), so that the rules, the balancer and the logs can tell them apart."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from bed import HERE, PROG, TOP, WORK, Client, certificate
from e2e import check

README = os.path.join(TOP, "README.md")


def anchors():
    """The folder build.sh filled: run.py --real sets ANCHORS after this
    module is imported, so it is read at each use."""
    return os.environ.get("ANCHORS", "")

# the real chains this project runs under: s6-networking on each TLS
# backend, and fehcom's sslserver
KINDS = ("s6-libtls", "s6-bearssl", "sslserver")


def missing(*tools):
    """Why the real servers (and tools) cannot run here, or None."""
    if not anchors():
        return "ANCHORS unset: no real super-servers to run README's recipes through"
    for k in KINDS:
        if not os.access(server_bin(k, "sslserver" if k == "sslserver" else "s6-tcpserver"), os.X_OK):
            return "ANCHORS=%s has no %s build" % (anchors(), k)
    for t in ("tcprules", "execlineb", "haproxy") + tools:
        if not shutil.which(t):
            return "%s not installed" % t
    return None


def server_bin(kind, name):
    if kind == "sslserver":
        sub = "ucspi-ssl" if name == "sslserver" else "s6"
    else:
        sub = "s6" if kind == "s6-libtls" else "s6-bearssl"
    return os.path.join(anchors(), sub, "bin", name)


def blocks(name):
    """{path: text} of README's blocks for recipe NAME."""
    with open(README) as f:
        text = f.read()
    out = {}
    for m in re.finditer(r"^<!-- run:(\S+) file:(\S+) -->\n```[a-z]*\n(.*?)^```", text, re.S | re.M):
        if m.group(1) == name:
            out[m.group(2)] = m.group(3)
    check(out, "README has no recipe %s" % name)
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def listening(port, timeout=15):
    """Waits until something listens on 127.0.0.1:port (read from the
    kernel's table: a test connection would be a session of its own)."""
    want = ":%04X" % port
    end = time.time() + timeout
    while time.time() < end:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                w = line.split()
                if w[1].endswith(want) and w[3] == "0A":   # LISTEN
                    return
        time.sleep(0.02)
    raise AssertionError("nothing listens on port %d" % port)


def connect(src, port, timeout=20):
    """A bed.Client from source address src."""
    c = Client.__new__(Client)
    c.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(src, 0))
    c.buf = b""
    return c


class Site:
    """One folder standing for /etc/smtpd (and /etc/ssl, /etc/haproxy): the
    test smtpd behind a wrapper named in place of qmail-smtpd, which gives
    each session its own folder named by the client's address and port as
    the chain told it; this program behind one that adds -v 2, so that the
    end line is written (the recipes' own options are kept)."""

    def __init__(self, kind):
        cert, key = certificate()
        self.kind = kind
        self.dir = tempfile.mkdtemp(prefix="site-", dir=WORK)
        self.sessions = os.path.join(self.dir, "sessions")
        self.bin = os.path.join(self.dir, "bin")
        os.makedirs(self.sessions)
        os.makedirs(self.bin)
        self.cert, self.key = cert, key
        self.smtpd = os.path.join(self.bin, "smtpd")
        with open(self.smtpd, "w") as f:
            f.write('#!/bin/sh\nd="%s/${TCPREMOTEIP:-$SSLREMOTEIP}-${TCPREMOTEPORT:-$SSLREMOTEPORT}"\n'
                    'mkdir -p "$d" && exec %s %s "$d" "$@"\n'
                    % (self.sessions, sys.executable, os.path.join(HERE, "smtpd.py")))
        with open(os.path.join(self.bin, "smtpd-starttls-proxy-io"), "w") as f:
            f.write('#!/bin/sh\nexec %s -v 2 "$@"\n' % PROG)
        for p in os.listdir(self.bin):
            os.chmod(os.path.join(self.bin, p), 0o755)
        env = os.path.join(self.dir, "env")
        os.makedirs(env)
        # the s6 recipes' envdir: what "Deployment with s6-networking" lists
        for k, v in (("CERTFILE", cert), ("KEYFILE", key), ("TLS_UID", "0"), ("TLS_GID", "0"),
                     ("UID", "0"), ("GID", "0"), ("GIDLIST", "0")):
            with open(os.path.join(env, k), "w") as f:
                f.write(v + "\n")
        self.procs = []
        self.log = os.path.join(self.dir, "log")
        self.logf = open(self.log, "ab")

    def subs(self, port, extra=()):
        """The paths, the port, the account of every recipe, each for
        whichever recipe has it (a leading "?"), then extra, which must
        each be in the recipe's text."""
        return [("?/etc/smtpd", self.dir), ("?/etc/ssl/mx.pem", self.cert), ("?/etc/ssl/mx.key", self.key),
                ("?#!/bin/execlineb", "#!" + shutil.which("execlineb")), ("?qmaild", "root"),
                ("?s6-tcpserver 0.0.0.0 25", "s6-tcpserver 127.0.0.1 %d" % port),
                ("? 0 25 ", " 127.0.0.1 %d " % port),
                ("?qmail-smtpd", self.smtpd)] + list(extra)

    def install(self, name, subs):
        """README's recipe NAME written here, each (old, new) of subs
        applied; returns {README path: installed path}."""
        files = blocks(name)
        used = "".join(files.values())
        for old, _ in subs:
            check(old.startswith("?") or old in used, "recipe %s: %r is not in README's text" % (name, old))
        where = {}
        for path, body in files.items():
            for old, new in subs:
                body = body.replace(old[1:] if old.startswith("?") else old, new)
            dest = os.path.join(self.dir, os.path.basename(path))
            with open(dest, "w") as f:
                f.write(body)
            os.chmod(dest, 0o755)
            where[path] = dest
        return where

    def path(self):
        """PATH: this site's wrappers, the real servers of this kind."""
        if self.kind == "sslserver":
            dirs = [os.path.dirname(server_bin("sslserver", "sslserver")), server_bin("sslserver", "")]
        else:
            dirs = [server_bin(self.kind, "")]
        return os.pathsep.join([self.bin] + [d.rstrip("/") for d in dirs] + [os.environ["PATH"]])

    def start(self, argv, port=None):
        """Runs argv (a recipe's run script, or haproxy) in its own process
        group, its output in the site's log; waits for port to listen."""
        env = dict(os.environ)
        env["PATH"] = self.path()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf,
                             env=env, cwd=self.dir, start_new_session=True)
        self.procs.append(p)
        if port:
            listening(port)
        return p

    def run(self, argv):
        """Runs a setup script of the recipe to its end."""
        env = dict(os.environ)
        env["PATH"] = self.path()
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=self.dir)
        check(r.returncode == 0, "%s: %s" % (argv, r.stdout))

    def logtext(self):
        self.logf.flush()
        with open(self.log, errors="replace") as f:
            return f.read()

    def session_dir(self, ip, port, timeout=10):
        d = os.path.join(self.sessions, "%s-%d" % (ip, port))
        end = time.time() + timeout
        while not os.path.isdir(d) and time.time() < end:
            time.sleep(0.02)
        return d

    def file(self, d, name):
        try:
            with open(os.path.join(d, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def env(self, d, n=1):
        raw = self.file(d, "env.%d" % n) or b""
        return dict(e.split(b"=", 1) for e in raw.split(b"\0") if b"=" in e)

    def mark(self):
        """Where the log is now: sessions run one at a time."""
        return len(self.logtext())

    def proxy_lines(self, mark, timeout=10):
        """This program's lines since mark, once its end line is there."""
        end = time.time() + timeout
        while True:
            lines = [l for l in self.logtext()[mark:].splitlines() if l.startswith("smtpd-starttls-proxy-io: ")]
            if any(": end: " in l for l in lines) or time.time() > end:
                return lines
            time.sleep(0.05)

    def close(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.logf.close()
