"""The end-to-end test bed: a certificate, the test UCSPI-TLS server running
the program in front of the test smtpd, and SMTP clients that speak to it."""
import hashlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
PROG = os.path.join(TOP, "smtpd-starttls-proxy-io")
SMTPD = [sys.executable, os.path.join(HERE, "smtpd.py")]
WORK = os.environ.get("TESTWORK") or os.path.join(HERE, "work")


def certificate():
    """A self-signed certificate for localhost, made once per run."""
    os.makedirs(WORK, exist_ok=True)
    cert, key = os.path.join(WORK, "cert.pem"), os.path.join(WORK, "key.pem")
    if not os.path.exists(cert):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# every log line of the proxy carries "pid N ip A: " after its kind
TAG = re.compile(r"^(smtpd-starttls-proxy-io: (?:fatal|warning|info): )pid \d+(?: ip [0-9A-Fa-f.:]+)?: ",
                 re.M)


def untag(text):
    """Log lines without their pid and address, for comparing their words."""
    return TAG.sub(r"\1", text)


CLOSED = []  # what each closed bed logged, for run.py to show when a test fails


class Bed:
    """One test UCSPI-TLS server (flavour s6 or sslserver) running
    PROG [opts] smtpd.py DIR [smtpd_opts], or any app given."""

    def __init__(self, flavour, opts=(), smtpd_opts=(), app=None, env=None, server_opts=()):
        cert, key = certificate()
        self.dir = tempfile.mkdtemp(prefix="bed-", dir=WORK)
        self.log = os.path.join(self.dir, "ucspitlsd.log")
        self.stderr_path = os.path.join(self.dir, "stderr")
        self.marker = os.path.basename(self.dir)
        if app is None:
            app = [PROG] + list(opts) + SMTPD + [self.dir] + list(smtpd_opts)
        if os.environ.get("VALGRIND") and app[0] == PROG:
            # the proxy child stays under memcheck; the smtpd it execs does not
            app = ["valgrind", "-q", "--track-fds=yes", "--trace-children=no",
                   "--log-file=" + os.path.join(WORK, "valgrind.%p")] + app
        e = dict(os.environ)
        e["TESTBED"] = self.marker
        if env:
            e.update(env)
        self.stderr = open(self.stderr_path, "wb")
        self.server = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "ucspitlsd.py"), "-f", flavour, "-c", cert,
             "-k", key, "-l", self.log] + list(server_opts) + ["--"] + app,
            stdout=subprocess.PIPE, stderr=self.stderr, env=e)
        self.port = int(self.server.stdout.readline())
        self.flavour = flavour

    def events(self):
        try:
            with open(self.log) as f:
                return [l.split() for l in f]
        except FileNotFoundError:
            return []

    def wait_exit(self, conn="c1", timeout=20):
        """The application's exit, as logged: "code=N" or "signal=N"."""
        end = time.time() + timeout
        while time.time() < end:
            for ev in self.events():
                if ev[0] == conn and ev[1] == "app-exit":
                    return ev[2]
            time.sleep(0.02)
        return None

    def leftovers(self, timeout=10):
        """Pids of processes still carrying this bed's marker, once given time."""
        end = time.time() + timeout
        while True:
            pids = []
            for p in os.listdir("/proc"):
                if not p.isdigit() or int(p) == self.server.pid:
                    continue
                try:
                    with open("/proc/%s/environ" % p, "rb") as f:
                        if ("TESTBED=" + self.marker).encode() in f.read().split(b"\0"):
                            with open("/proc/%s/stat" % p) as st:
                                if st.read().split(") ")[1][0] != "Z":
                                    pids.append(int(p))
                except OSError:
                    pass
            if not pids or time.time() > end:
                return pids
            time.sleep(0.05)

    def stderr_text(self):
        self.stderr.flush()
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def logtext(self):
        """The proxy's log lines, untagged."""
        return untag(self.stderr_text())

    def file(self, name):
        try:
            with open(os.path.join(self.dir, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def commands(self):
        return (self.file("commands") or b"").decode("latin-1").splitlines()

    def close(self, keep=False):
        CLOSED.append("%s: events %s; stderr %r" % (
            self.marker, [" ".join(e) for e in self.events()][-15:], self.stderr_text()[-600:]))
        self.server.terminate()
        try:
            self.server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        self.stderr.close()
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


class Client:
    """A raw SMTP client: exact bytes out, whole replies in."""

    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        i = self.buf.index(b"\n") + 1
        l, self.buf = self.buf[:i], self.buf[i:]
        return l

    def reply(self):
        """One whole reply, all its lines, as bytes."""
        out = b""
        while True:
            l = self.line()
            out += l
            if len(l) < 4 or l[3:4] != b"-":
                return out

    def replies(self, n):
        return [self.reply() for _ in range(n)]

    def rest(self):
        """Everything until EOF."""
        out = self.buf
        self.buf = b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                return out
            out += data

    def starttls(self):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        assert not self.buf, self.buf
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")

    def close(self):
        self.sock.close()
