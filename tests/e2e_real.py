"""End-to-end tests that only the real super-servers can answer (make
check-real): how many sessions keep their final reply, large transfers,
what the smtpd and the proxy are given, O_NONBLOCK on the shared socket at
each hand-over, the operator's own command line with s6-applyuidgid."""
import hashlib
import os
import shutil
import smtplib
import tempfile

from bed import PROG, SMTPD, WORK, Bed, Client, reachable, sha256
from e2e import Passed, big_body, check, final_reply_losses, finished, message, test, tls_context
from e2e_fresh import starttls_mail

S6 = ("s6-libtls", "s6-bearssl")
REAL = S6 + ("sslserver",)


@test(flavours=("s6",), kinds=("s6-libtls",))
def final_reply_count(flavour, _):
    """1000 STARTTLS sessions ending in QUIT (LOSS_SESSIONS) on s6-tlsd-io
    with libtls, the engine that drops what it holds when SSLREADFD's
    reader goes away early: the default relay reads the client to its EOF,
    so none loses the final 221; -S (s6-ioconnect closes SSLREADFD when the
    smtpd is done) is counted and reported, not held to a number. The other
    engines keep what they hold (load_200_sessions, 200 at once)."""
    n = int(os.environ.get("LOSS_SESSIONS", "1000"))
    lost = final_reply_losses(flavour, (), n)
    check(lost == 0, "default relay: %d of %d sessions lost the final 221" % (lost, n))
    lostS = final_reply_losses(flavour, ("-S",), n)
    print("  final replies lost: default relay 0 of %d; -S %d of %d" % (n, lostS, n))
    return Passed("default relay: 0 of %d lost; -S: %d of %d lost" % (n, lostS, n))


def transfer(bed, body, piece=None, stall=60):
    """One message over STARTTLS: True if its 250 came back, False if the
    session stalled: the whole body sent, then no reply within stall
    seconds. Anything else (a refusal, a failed handshake, a reset) fails
    the test. The body goes in one write (Python's ssl cuts it into
    records of 16 KiB), or in writes of piece octets, a record each."""
    with smtplib.SMTP("127.0.0.1", bed.port, timeout=120) as s:  # a slow send is no stall
        s.ehlo("client.test")
        s.starttls(context=tls_context())
        s.ehlo("client.test")
        check(s.mail("a@x.test")[0] == 250 and s.rcpt("b@y.test")[0] == 250, "MAIL or RCPT refused")
        s.putcmd("data")
        check(s.getreply()[0] == 354, "no 354")
        data = body + b".\r\n"
        if piece is None:
            s.sock.sendall(data)
        else:
            for i in range(0, len(data), piece):
                s.sock.sendall(data[i:i + piece])
        s.sock.settimeout(stall)
        try:
            code = s.getreply()[0]
        except (TimeoutError, smtplib.SMTPServerDisconnected) as e:
            # smtplib turns a timed-out read into SMTPServerDisconnected
            if isinstance(e, TimeoutError) or "timed out" in str(e):
                return False
            raise
        check(code == 250, "the end of data answered %d" % code)
        return True


@test(kinds=("s6-bearssl", "sslserver"))
def large_transfer_default_relay(flavour, _):
    """A 200 MB body (REAL_BIG_MB) over STARTTLS through the default relay,
    BIG_RUNS times: every one delivered whole, none stalled."""
    mb = int(os.environ.get("REAL_BIG_MB", "200"))
    runs = int(os.environ.get("BIG_RUNS", "2"))
    body = big_body(mb)
    want = hashlib.sha256(body).hexdigest()
    for i in range(runs):
        bed = Bed(flavour)
        try:
            check(transfer(bed, body, stall=int(os.environ.get("BIG_STALL", "60"))),
                  "run %d: %d MB stalled" % (i + 1, mb))
            finished(bed, flavour == "s6")
            check(sha256(os.path.join(bed.dir, "msg-1")) == want, "%d MB body differs" % mb)
        finally:
            bed.close()
    return Passed("%d of %d transfers of %d MB, none stalled" % (runs, runs, mb))


def stalls(flavour, ropts, mb, runs, stall, piece=None):
    """How many of runs transfers of mb MB stalled (no reply stall seconds
    after the whole body); every one that did not delivered the body whole."""
    body = big_body(mb)
    want = hashlib.sha256(body).hexdigest()
    stalled = 0
    for _ in range(runs):
        bed = Bed(flavour, ropts)
        try:
            if transfer(bed, body, piece, stall):
                check(sha256(os.path.join(bed.dir, "msg-1")) == want, "%d MB body differs" % mb)
            else:
                stalled += 1
        finally:
            bed.close()
    return stalled


@test(flavours=("s6",), kinds=("s6-libtls",))
def large_transfer_libtls_measured(flavour, _):
    """s6-tlsd-io on libtls reads TLS into a buffer of its own and, once
    that is full, waits for the socket again: what libtls decrypted past
    the buffer's room stays inside libtls until more bytes arrive. At the
    end of a message nothing more arrives, so the end of the last record
    stays there while the smtpd, the relay and the client wait: a stall
    (the whole body sent, no reply within BIG_STALL seconds, 15 by
    default; a whole transfer takes a few). How often follows the
    client's records: measured with the body in one write (Python's ssl:
    records of 16 KiB) under both relays, and in writes of 1000 octets
    under the default one. Measured, not held: the counts go on the PASS
    line and into the man page's -S paragraph. What did arrive must be
    whole, and anything but a stall fails."""
    mb = int(os.environ.get("REAL_BIG_MB", "200"))
    runs = int(os.environ.get("BIG_RUNS", "2"))
    stall = int(os.environ.get("BIG_STALL", "15"))
    small = min(mb, 20)  # a write per 1000 octets is slow in Python
    d = stalls(flavour, (), mb, runs, stall)
    s = stalls(flavour, ("-S",), mb, runs, stall)
    p = stalls(flavour, (), small, runs, stall, piece=1000)
    said = ("16 KiB records, %d MB: default relay %d of %d stalled, -S %d of %d; "
            "1000-octet records, %d MB, default relay: %d of %d stalled" % (mb, d, runs, s, runs, small, p, runs))
    print("  libtls: " + said)
    return Passed(said)


@test(flavours=("s6",), kinds=S6)
def seed_command_line_applyuidgid(flavour, _):
    """README's s6 command line: s6-ucspitlsd, s6-applyuidgid -Uz, the
    proxy, the smtpd; CERTFILE, KEYFILE, UID, GID, GIDLIST set. The smtpd
    runs as the account given, without any of those variables."""
    d = tempfile.mkdtemp(prefix="bed-", dir=WORK)
    os.chmod(d, 0o777)
    prog, smtpd = reachable(PROG), reachable(SMTPD[1])
    # the system's python: the one running the tests may sit under /root
    python = shutil.which("python3", path="/usr/bin:/bin") or SMTPD[0]
    bed = Bed(flavour, folder=d, app=["s6-applyuidgid", "-Uz", prog, python, smtpd, d],
              env={"UID": "65534", "GID": "65534", "GIDLIST": "65534"})
    try:
        msg = message()
        starttls_mail(bed.port, msg)
        finished(bed)
        check(os.stat(os.path.join(d, "msg-1")).st_uid == 65534, "the smtpd did not run as 65534")
        env = (bed.file("env") or b"").decode()
        names = [e.split("=", 1)[0] for e in env.split("\0")]
        for n in ("UID", "GID", "GIDLIST", "CERTFILE", "KEYFILE"):
            check(n not in names, "the smtpd's environment holds %s" % n)
    finally:
        bed.close()


# what the application (the proxy) is given, as the shell before it sees
# it; through a pipeline, which the shell redirects nothing of its own for
# (dash keeps a copy of fd 1 at fd 10 around "ls >file")
DUMP = 'env -0 | cat >"$0/app-env"; ls -l /proc/$$/fd | cat >"$0/app-fds"; exec "$@"'


def given(bed):
    env = dict(e.split("=", 1) for e in (bed.file("app-env") or b"").decode().split("\0") if "=" in e)
    fds = {}
    for l in (bed.file("app-fds") or b"").decode().splitlines():
        if " -> " in l:
            left, what = l.split(" -> ", 1)
            fds[left.split()[-1]] = what
    return env, fds


@test(kinds=REAL)
def what_the_servers_give(flavour, _):
    """The environment and descriptors the real servers give the proxy, and
    what the smtpd keeps of them. s6-ucspitlsd 2.8.0.1 leaves CERTFILE and
    KEYFILE to the application unless -Z (its documentation says the
    opposite); sslserver leaves its own variables and a stray copy of the
    client socket. The smtpd gets none of it either way."""
    seen = []
    for uopts in ((), ("-Z",)) if flavour == "s6" else ((),):
        d = tempfile.mkdtemp(prefix="given-", dir=WORK)
        bed = Bed(flavour, ucspitlsd_opts=uopts, folder=d,
                  app=["sh", "-c", DUMP, d, PROG] + SMTPD + [d])
        try:
            starttls_mail(bed.port, message())
            finished(bed, flavour == "s6")
            env, fds = given(bed)
            check(env.get("SSLCTLFD") and env.get("TCPREMOTEIP") == "127.0.0.1", env)
            sock = fds.get("0")
            strays = sorted(int(fd) for fd, what in fds.items() if what == sock and int(fd) > 1)
            if flavour == "s6":
                leaked = "CERTFILE" in env and "KEYFILE" in env
                check(leaked == (uopts == ()), "-Z %s, CERTFILE/KEYFILE given: %s" % (uopts, leaked))
                check(not strays, "s6-ucspitlsd gave a copy of the socket: %s" % strays)
                seen.append("%s: CERTFILE %s" % (" ".join(uopts) or "no -Z", "kept" if leaked else "removed"))
            else:
                for n in ("CERTFILE", "KEYFILE", "CERTCHAINFILE", "KEYPASS", "SSLREMOTEIP"):
                    check(n in env, "sslserver did not leave %s" % n)
                check(strays, "no stray copy of the client socket: %s" % fds)
                seen.append("stray socket copy at fd %s" % strays)
        finally:
            bed.close()
    return Passed("; ".join(seen))


def blocking_everywhere(bed):
    """Every look bedmon.py took at the client socket (fds 0/1 at the
    application's start and execs, at the exec of each process it forked,
    at the TLS engine's exec right after the command, at the application's
    end) found it blocking."""
    looks = [e for e in bed.events() if e[1] in ("exec", "kid-exec", "engine-exec", "app-end")]
    bad = [" ".join(e) for e in looks if any(w.endswith("=socket:nonblocking") for w in e[2:])]
    check(not bad, "O_NONBLOCK left on the shared socket: %s" % bad)
    return len([w for e in looks for w in e[2:] if "=socket:" in w])


@test(relays=True, kinds=REAL)
def nonblocking_never_left_on_the_socket(flavour, ropts):
    """O_NONBLOCK is the open file description's, shared with the TLS
    engine: at Y (s6: the engine's exec), at -S's exec of s6-ioconnect
    (after TLS, and in plaintext once -a's AUTH hands the socket itself
    over), at the end, in STARTTLS and plaintext sessions, the socket is
    blocking."""
    looked = 0
    for how in ("tls", "plain", "auth"):
        bed = Bed(flavour, ropts + (("-a",) if how == "auth" else ()),
                  smtpd_opts=("--auth",) if how == "auth" else ())
        try:
            c = Client(bed.port)
            c.reply()
            if how == "tls":
                c.send(b"STARTTLS\r\n")
                c.reply()
                c.starttls()
            c.send(b"EHLO x\r\n")
            c.reply()
            if how == "auth":
                c.send(b"AUTH PLAIN AGEAYg==\r\n")
                check(c.reply().startswith(b"235"), "no 235")
            c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
            c.replies(3)
            c.send(b"Subject: nb\r\n\r\nbody\r\n.\r\nQUIT\r\n")
            check(c.replies(2)[1].startswith(b"221"), "no 221")
            c.close()
            finished(bed, how != "tls" or flavour == "s6")
            looked += blocking_everywhere(bed)
            if how == "tls" and flavour == "s6":
                check(any(e[1] == "engine-exec" for e in bed.events()), bed.events())
            if how != "plain" and ropts == ("-S",) and (flavour == "s6" or shutil.which("s6-ioconnect")):
                # s6-ioconnect's exec was seen, with the socket (auth) or the TLS
                # pipes on fds 0/1 (sslserver's chain finds it on PATH or not at all)
                execs = [e for e in bed.events() if e[1] == "kid-exec" and e[2] == "s6-ioconnect"]
                check(execs, "%s: no exec of s6-ioconnect seen: %s" % (how, bed.events()))
                check(how != "auth" or "fd0=socket:blocking" in execs[0], execs)
        finally:
            bed.close()
    return Passed("%d looks at the socket, all blocking" % looked)
