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

from bedmon import WRAP

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
PROG = os.path.join(TOP, "smtpd-starttls-proxy-io")
SMTPD = [sys.executable, os.path.join(HERE, "smtpd.py")]


def workdir():
    """Where a run keeps its files: $TESTWORK, else a fresh folder under
    the system's temporary one that anybody may enter (mode 0755). Not
    under the checkout: exim -bs and the smtpds run by s6-applyuidgid give
    up root's privileges, and a checkout may sit in a folder only root can
    enter (Debian makes every home 0700), where they could not reach their
    files. Made once per run by the first import; run.py empties it."""
    global WORK_MADE
    if os.environ.get("TESTWORK"):
        return os.environ["TESTWORK"]
    d = tempfile.mkdtemp(prefix="smtpd-starttls-proxy-io-tests-")
    os.chmod(d, 0o755)
    os.environ["TESTWORK"] = d  # the same folder for every process of this run
    WORK_MADE = True
    return d


WORK_MADE = False  # whether this run made WORK (run.py removes it after a clean run)
WORK = workdir()

# The server kinds. "emulated": tests/ucspitlsd.py in the flavour a test
# names (s6 or sslserver). The real ones, built by ../shared/anchors/build.sh
# into ANCHORS: a test written for flavour s6 runs under s6-libtls or
# s6-bearssl, one written for sslserver under the real sslserver.
REAL_KINDS = {"s6-libtls": "s6", "s6-bearssl": "s6", "sslserver": "sslserver"}
KIND = "emulated"  # run.py sets it for each test
ANCHORS = os.environ.get("ANCHORS", "")
# the lines the real servers write to the stderr they share with the proxy
SERVER_LINE = re.compile(r"^(s6-tcpserverd|s6-tcpserver-access|s6-ucspitlsd|s6-tlsd-io|s6-tlsd|"
                         r"sslserver|proxy-server|s6-applyuidgid): .*\n?", re.M)


# what the real servers' log holds (bedmon.py); the emulator logs more
REAL_EVENTS = ("app-pid", "client-socket", "app-exit", "exec", "kid-exec", "engine-exec", "app-end")


class Unavailable(Exception):
    """A test asked the real server for what only the emulator offers: the
    test must declare itself emulated-only (test(emulated="why"))."""


def certificate():
    """A self-signed certificate for localhost, made once per run."""
    os.makedirs(WORK, exist_ok=True)
    cert, key = os.path.join(WORK, "cert.pem"), os.path.join(WORK, "key.pem")
    if not os.path.exists(cert):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def reachable(path):
    """A copy of path (the proxy, a script of the checkout) in WORK, that a
    process which gave up root can execute wherever the checkout sits."""
    d = os.path.join(WORK, "reachable")
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    dst = os.path.join(d, os.path.basename(path))
    if not os.path.exists(dst):
        shutil.copy(path, dst)
        os.chmod(dst, 0o755)
    return dst


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
# the emulator's own crashes, for run.py to fail the test with: a crashed
# emulator may end no session, or end it for the wrong reason, and a test
# that passes beside one proves nothing
CRASHED = []


class Bed:
    """One UCSPI-TLS server running PROG [opts] smtpd.py DIR [smtpd_opts],
    or any app given: the emulator in flavour s6 or sslserver, or, when
    KIND names a real kind, the real chain standing for that flavour.

    A real chain is built as  listener + front + server + WRAP + app:
    listener and server are the super-server's own programs (s6-tcpserverd
    on a socket bound here, s6-tcpserver-access, s6-ucspitlsd; or
    sslserver -n), front is any list of programs the caller puts before
    the UCSPI-TLS server (issue 21: proxy-server, s6-tcpserver-access with
    a rules folder; each must exec the rest of its command line), and a
    second listener can sit in front of self.server_port (self.port is
    what clients connect to: set it to the front listener's port)."""

    def __init__(self, flavour, opts=(), smtpd_opts=(), app=None, env=None, server_opts=(),
                 front=(), ucspitlsd_opts=(), folder=None):
        cert, key = certificate()
        # folder: the bed's folder made by the caller, whose app must name it
        self.dir = folder or tempfile.mkdtemp(prefix="bed-", dir=WORK)
        self.log = os.path.join(self.dir, "ucspitlsd.log")
        self.stderr_path = os.path.join(self.dir, "stderr")
        self.marker = os.path.basename(self.dir)
        self.flavour = flavour
        self.kind = KIND if KIND in REAL_KINDS else "emulated"
        self.real = self.kind != "emulated"
        if app is None:
            app = [PROG] + list(opts) + SMTPD + [self.dir] + list(smtpd_opts)
        if os.environ.get("VALGRIND") and app[0] == PROG:
            # the proxy child stays under memcheck; the smtpd it execs does not
            app = ["valgrind", "-q", "--track-fds=yes", "--trace-children=no",
                   "--log-file=" + os.path.join(WORK, "valgrind.%p")] + app
        e = dict(os.environ)
        e["TESTBED"] = self.marker
        self.stderr = open(self.stderr_path, "wb")
        self.monitor = None
        if not self.real:
            if front or ucspitlsd_opts:
                raise Unavailable("front and ucspitlsd_opts are for the real servers")
            if env:
                e.update(env)
            self.server = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "ucspitlsd.py"), "-f", flavour, "-c", cert,
                 "-k", key, "-l", self.log] + list(server_opts) + ["--"] + app,
                stdout=subprocess.PIPE, stderr=self.stderr, env=e)
            self.port = int(self.server.stdout.readline())
        else:
            if server_opts:
                raise Unavailable("server_opts %s: the emulator's fault injection" % (server_opts,))
            if REAL_KINDS[self.kind] != flavour:
                raise Unavailable("kind %s stands for flavour %s, not %s"
                                  % (self.kind, REAL_KINDS[self.kind], flavour))
            self._start_real(e, cert, key, app, env, front, ucspitlsd_opts)
        self.server_port = self.port

    def _start_real(self, e, cert, key, app, env, front, ucspitlsd_opts):
        # the application's own variables reach it alone, through env(1):
        # the chain keeps the super-server's own (CERTFILE, KEYFILE) intact
        if env:
            app = ["env"] + ["%s=%s" % kv for kv in env.items()] + list(app)
        fifo = os.path.join(self.dir, "pids")
        os.mkfifo(fifo)
        mon_env = dict(os.environ)
        self.monitor = subprocess.Popen([sys.executable, os.path.join(HERE, "bedmon.py"), fifo, self.log],
                                        env=mon_env, stderr=self.stderr)
        wrapped = WRAP + [fifo] + list(app)
        e["CERTFILE"], e["KEYFILE"] = cert, key
        if self.kind.startswith("s6-"):
            bindir = os.path.join(ANCHORS, "s6" if self.kind == "s6-libtls" else "s6-bearssl", "bin")
            e["PATH"] = bindir + os.pathsep + e.get("PATH", "")
            lsock = socket.socket()
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(1024)
            self.port = lsock.getsockname()[1]
            argv = ([os.path.join(bindir, "s6-tcpserverd"), "-c", "1000", "-C", "1000"] + list(front) +
                    [os.path.join(bindir, "s6-tcpserver-access"), "-v0",
                     os.path.join(bindir, "s6-ucspitlsd")] + list(ucspitlsd_opts) + ["--"] + wrapped)
            self.server = subprocess.Popen(argv, stdin=lsock, stdout=subprocess.DEVNULL,
                                           stderr=self.stderr, env=e)
            lsock.close()
        else:
            sslserver = os.path.join(ANCHORS, "ucspi-ssl", "bin", "sslserver")
            # what an operator sets for sslserver; it leaves them to the application
            e.update(CERTCHAINFILE=cert, KEYPASS="secret")
            # sslserver -1 prints the port it was given, 0 included: ask the
            # system for a free one and hand it over
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
            probe.close()
            argv = ([sslserver, "-n", "-1", "-b", "1024", "-c", "1000", "127.0.0.1", str(self.port)] +
                    list(front) + wrapped)
            self.server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.stderr, env=e)
            self.server.stdout.readline()  # listening once it says so

    def events(self):
        try:
            with open(self.log) as f:
                return [l.split() for l in f]
        except FileNotFoundError:
            return []

    def real_events(self, *names):
        """events(), when a test asks for what only the emulator logs: under
        a real server, Unavailable (the test must say emulated-only)."""
        if self.real and any(n not in REAL_EVENTS for n in names):
            raise Unavailable("events %s exist only in the emulator" % (names,))
        return self.events()

    def app_pid(self, conn="c1", timeout=20):
        end = time.time() + timeout
        while time.time() < end:
            for ev in self.events():
                if ev[0] == conn and ev[1] == "app-pid":
                    return int(ev[2])
            time.sleep(0.02)
        return None

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

    def engine(self, pid):
        """Whether pid is the server's own TLS engine for a session (which
        may outlive the proxy while the client holds the connection)."""
        try:
            if not self.real:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    return b"ucspitlsd.py" in f.read()
            # s6-ucspitlsd's child holds the socket while it waits for the command
            return os.path.basename(os.readlink("/proc/%d/exe" % pid)) in (
                "s6-ucspitlsd", "s6-tlsd-io", "sslserver")
        except OSError:
            return False

    def raw_stderr(self):
        """The stderr the server and the proxy share, as it is."""
        self.stderr.flush()
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def stderr_text(self):
        """The stderr of the proxy and what it runs, without the real
        servers' own lines (the emulator writes none)."""
        return SERVER_LINE.sub("", self.raw_stderr())

    def server_text(self):
        return "".join(m.group(0) for m in SERVER_LINE.finditer(self.raw_stderr()))

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
        err = self.raw_stderr()
        CLOSED.append("%s %s: events %s; stderr %r" % (
            self.kind, self.marker, [" ".join(e) for e in self.events()][-15:], err[-600:]))
        crash = err.find('ucspitlsd.py", line')
        if not self.real and crash >= 0:
            # from its Traceback line; a SyntaxError at start-up has none
            start = err.rfind("Traceback", 0, crash)
            tb = err[start if start >= 0 else err.rfind("\n", 0, crash) + 1:].strip().splitlines()[:40]
            CRASHED.append("%s: %s" % (self.marker, " / ".join(l.strip() for l in tb)[-500:]))
        for p in (self.server, self.monitor):
            if p is None:
                continue
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
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
