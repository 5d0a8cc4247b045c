"""End-to-end tests of how the program's processes start, end and are
waited for (issue 18): SIGTERMs while a session ends, fatal errors under
-e, children reaped as they end, every descriptor closed once."""
import os
import re
import shutil
import signal
import sys
import tempfile
import time

from bed import PROG, SMTPD, WORK, Bed, Client
from e2e import check, test


def script(d, name, text):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def app_pid(bed):
    for ev in bed.events():
        if ev[1] == "app-pid":
            return int(ev[2])
    raise AssertionError("no app-pid logged: %s" % bed.events())


def wait_for(cond, what, timeout=10):
    """Waits for cond() to hold; fails naming what did not happen."""
    end = time.time() + timeout
    while not cond():
        if time.time() > end:
            raise AssertionError(what)
        time.sleep(0.02)


def through_tls(bed, ehlo=b"EHLO x\r\n"):
    """A raw client past STARTTLS and its EHLO over TLS."""
    c = Client(bed.port)
    c.reply()
    c.send(b"EHLO c\r\nSTARTTLS\r\n")
    c.reply()
    check(c.reply().startswith(b"220 "), "no 220")
    c.starttls()
    c.send(ehlo)
    check(c.reply().startswith(b"250"), "EHLO over TLS")
    return c


# An smtpd that, after TLS (SSL_PROTOCOL set), keeps running once its
# input has ended, until a SIGTERM: it notes both in DIR, and exits 9 on
# the SIGTERM. Before TLS it ends at QUIT or EOF.
LINGERING = """#!/bin/sh
dir=$1
printf '220 hi\\r\\n'
while read l; do
  case "$l" in
    [Ee][Hh][Ll][Oo]*) printf '250-ok\\r\\n250 PIPELINING\\r\\n';;
    [Qq][Uu][Ii][Tt]*) printf '221 bye\\r\\n'; exit 0;;
    *) printf '250 ok\\r\\n';;
  esac
done
[ -z "$SSL_PROTOCOL" ] && exit 0
trap 'echo term > "$dir/term"; exit 9' TERM
echo eof > "$dir/eof"
while :; do sleep 0.05; done
"""


def second_sigterm(flavour, opts):
    d = tempfile.mkdtemp(prefix="life-", dir=WORK)
    bed = Bed(flavour, app=[PROG, "-e", "-v", "2"] + list(opts) + [script(d, "linger", LINGERING), d])
    try:
        c = through_tls(bed)
        pid = app_pid(bed)
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: os.path.exists(os.path.join(d, "eof")), "the smtpd never got EOF")
        check(bed.wait_exit(timeout=0.5) is None, "the proxy did not wait for the smtpd")
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: os.path.exists(os.path.join(d, "term")), "the second SIGTERM never reached the smtpd")
        # the smtpd is gone: so must the process be, with its status
        code = bed.wait_exit(timeout=3)
        check(code == "code=9", "exit %s, not the smtpd's 9" % code)
        # the test server's TLS engine goes with the client
        c.close()
        check(not bed.leftovers(), "leftovers")
        check(re.search(r"end: TLSv1\.[23] \S+, SIGTERM, .*, smtpd exit 9\n", bed.logtext()), bed.logtext())
    finally:
        bed.close()
        shutil.rmtree(d, ignore_errors=True)


@test()
def life_second_sigterm_relay(flavour, _):
    """-e, the relay running: a first SIGTERM ends the session and the
    smtpd gets EOF but stays; a second is passed on to it, and the process
    ends right after it, with its status."""
    second_sigterm(flavour, ())


@test()
def life_second_sigterm_engine(flavour, _):
    """The same with the engine in the middle after TLS (-L)."""
    second_sigterm(flavour, ("-L",))


# Runs the program after spoiling what it was given, as a super-server
# that is misconfigured might: HOW is unset, invalid, closed01 or nofile.
SPOIL = """import os, resource, sys
how, argv = sys.argv[1], sys.argv[2:]
if how == "unset":
    del os.environ["SSLCTLFD"]
elif how == "invalid":
    os.environ["SSLCTLFD"] = "abc"
elif how == "closed01":
    os.close(0)
    os.close(1)
elif how == "nofile":
    fds = [int(f) for f in os.listdir("/proc/self/fd")]
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(fds), max(fds)))
os.execv(argv[0], argv)
"""


@test()
def life_fatal_before_smtpd_exit_status(flavour, _):
    """Fatal errors before any smtpd has started exit as documented, with
    -e as without it: 100 for a bad environment, 111 for a system call
    (here pipe(2) with no descriptor left)."""
    d = tempfile.mkdtemp(prefix="life-", dir=WORK)
    spoil = script(d, "spoil.py", SPOIL)
    try:
        for how, want, words in (("unset", 100, "fatal: SSLCTLFD is not set"),
                                 ("invalid", 100, "fatal: SSLCTLFD=abc is not"),
                                 ("closed01", 100, "fatal: fds 0 and 1 must be the client connection"),
                                 ("nofile", 111, "fatal: pipe: ")):
            for opts in ((), ("-e",)):
                bed = Bed(flavour, app=[sys.executable, spoil, how, PROG] + list(opts) + SMTPD + [d])
                try:
                    c = Client(bed.port)
                    code = bed.wait_exit()
                    check(code == "code=%d" % want, "%s %s: exit %s, not %d" % (how, opts, code, want))
                    log = bed.logtext()
                    check(words in log and len(log.splitlines()) == 1, "%s %s: %r" % (how, opts, log))
                    check(not os.path.exists(os.path.join(d, "env")), "%s %s: an smtpd started" % (how, opts))
                    check(not bed.leftovers(), "leftovers")
                    c.close()
                finally:
                    bed.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def zombies(pid):
    """The pids of pid's children that are zombies."""
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % p) as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == pid:
            found.append(int(p))
    return found


@test(relays=True)
def life_no_zombie_in_tls_session(flavour, ropts):
    """-e: the smtpd that greeted, told QUIT at STARTTLS, is reaped as it
    ends, while the TLS session is still open; the session then goes on."""
    for opts in (ropts, tuple(ropts) + ("-L",)):
        bed = Bed(flavour, ("-e",) + tuple(opts))
        try:
            c = through_tls(bed, b"EHLO client.test\r\n")
            pid = app_pid(bed)
            wait_for(lambda: bed.file("end.1") == b"quit", "the first smtpd never saw QUIT")
            first = int(bed.file("pid.1"))
            # it exits right after QUIT: its parent must reap it, not keep it a zombie
            wait_for(lambda: not os.path.exists("/proc/%d" % first),
                     "%s: the first smtpd (pid %d) is left a zombie of %d" % (opts, first, pid), timeout=5)
            c.send(b"NOOP\r\nQUIT\r\n")
            check(c.replies(2) == [b"250 2.0.0 ok\r\n", b"221 2.0.0 bye\r\n"], "%s: the session" % (opts,))
            c.close()
            check(bed.wait_exit() == "code=0", "%s: exit" % (opts,))
        finally:
            bed.close()


def closes(trace):
    """The close(2) calls of the program's processes in an strace -f log,
    those that exec'd something else left out."""
    other, lines = set(), []
    with open(trace) as f:
        for l in f:
            m = re.match(r"(\d+) +(.*)", l)
            if not m:
                continue
            pid, call = int(m.group(1)), m.group(2)
            if call.startswith("execve(") and "= 0" in call:
                other.add(pid)
            elif pid not in other and call.startswith("close("):
                lines.append("%d %s" % (pid, call))
    return lines


def ours(pid):
    """pid and its descendants that run the program, not something it exec'd."""
    found, todo = [], [pid]
    kids = {}
    for p in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % p) as f:
                kids.setdefault(int(f.read().rsplit(") ", 1)[1].split()[1]), []).append(int(p))
        except (OSError, ValueError, IndexError):
            pass
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            if os.path.realpath("/proc/%d/exe" % p) == os.path.realpath(PROG):
                found.append(p)
        except OSError:
            pass
    return found


def traced(pid):
    with open("/proc/%d/status" % pid) as f:
        return not re.search(r"^TracerPid:\s+0$", f.read(), re.M)


@test(relays=True, emulated="under a real server the bed's monitor traces the program already, "
                            "and a process has one tracer: strace cannot attach")
def life_no_descriptor_closed_twice(flavour, ropts):
    """Under strace, attached once the session is under way, no process of
    the program closes a descriptor that is not open: sessions in plaintext
    and over TLS, with and without -e, the relay or the engine (-L) at the
    end."""
    if not shutil.which("strace"):
        return "strace not installed"
    import subprocess
    for opts in ((), ("-e",), ("-L",), ("-e", "-L")):
        for tls in (False, True):
            d = tempfile.mkdtemp(prefix="life-", dir=WORK)
            trace = os.path.join(d, "trace")
            bed = Bed(flavour, tuple(opts) + tuple(ropts))
            st = None
            try:
                c = Client(bed.port)
                c.reply()
                pids = ours(app_pid(bed))
                st = subprocess.Popen(["strace", "-f", "-qq", "-o", trace, "-e", "trace=close,execve"]
                                      + [a for p in pids for a in ("-p", str(p))])
                wait_for(lambda: all(traced(p) for p in pids), "strace never attached")
                c.send(b"EHLO client.test\r\n")
                c.reply()
                if tls:
                    c.send(b"STARTTLS\r\n")
                    check(c.reply().startswith(b"220 "), "no 220")
                    c.starttls()
                    c.send(b"EHLO client.test\r\n")
                    c.reply()
                c.send(b"QUIT\r\n")
                check(c.reply().startswith(b"221"), "no 221")
                c.rest()
                c.close()
                bed.wait_exit()
                st.wait(timeout=20)
                calls = closes(trace)
                check(calls, "%s tls=%s: no close traced" % (opts, tls))
                bad = [l for l in calls if "EBADF" in l]
                check(not bad, "%s tls=%s: %s" % (opts, tls, bad))
            finally:
                if st and st.poll() is None:
                    st.kill()
                    st.wait()
                bed.close()
                shutil.rmtree(d, ignore_errors=True)
