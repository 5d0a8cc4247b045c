"""End-to-end tests of -e: after TLS a new smtpd, started with the UCSPI-TLS
block's variables, serves the session; the process the super-server knows
waits for it and ends as it ended."""
import hashlib
import os
import re
import shutil
import signal
import smtplib
import ssl
import tempfile
import time

import peers
from bed import PROG, WORK, Bed, Client, certificate
from e2e import SECRETS, check, exim_bed, finished, message, quiet, test, tls_context, tls_goodbye


def environ(bed, n):
    """The environment smtpd number n in bed's DIR started with."""
    raw = bed.file("env.%d" % n)
    check(raw is not None, "no smtpd %d was started" % n)
    return dict(e.split(b"=", 1) for e in raw.split(b"\0") if e)


def handshake(bed, client):
    """(protocol, cipher) as the test server's TLS engine logged them; a
    real server logs nothing: then as the client saw them (starttls_mail's
    return)."""
    if bed.real:
        return client
    for ev in bed.events():
        if ev[1] == "handshake-ok":
            return ev[2].encode(), ev[3].encode()
    raise AssertionError("no handshake logged: %s" % bed.events())


def no_secrets(env, which):
    for name in env:
        n = name.decode()
        check(not any(n == s or (s.endswith(":") and n.startswith(s)) for s in SECRETS),
              "smtpd %s's environment holds %s" % (which, n))


def fds_clean(bed, n):
    fds = [int(l.split()[0]) for l in (bed.file("fds.%d" % n) or b"").decode().splitlines()
           if "valgrind." not in l]
    check(fds[:3] == [0, 1, 2] and all(fd <= 3 for fd in fds), "smtpd %d fds: %s" % (n, fds))


def starttls_mail(port, msg, helo="client.test", rcpt="b@y.test"):
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo(helo)
        check(s.has_extn("starttls"), "no STARTTLS before TLS")
        s.starttls(context=tls_context())
        code, text = s.ehlo(helo)
        check(code == 250, "EHLO over TLS: %d %r" % (code, text))
        check(not s.has_extn("starttls"), "STARTTLS advertised after TLS")
        s.sendmail("a@x.test", [rcpt], msg)
        seen = s.sock.version().encode(), s.sock.cipher()[0].encode()
        code, text = tls_goodbye(s)
        check(code == 221, "QUIT: %d %r" % (code, text))
    return seen


def through_tls(bed):
    """A raw client past the greeting, EHLO and STARTTLS, speaking TLS."""
    c = Client(bed.port)
    c.reply()
    c.send(b"EHLO c\r\nSTARTTLS\r\n")
    c.reply()
    check(c.reply().startswith(b"220 "), "no 220")
    c.starttls()
    return c


@test(relays=True)
def fresh_smtpd_after_tls(flavour, ropts):
    """-e: the first smtpd hears EHLO and QUIT, no RSET; the second starts
    with the block's variables applied (sets and unsets), none of the
    proxy's, no descriptor of ours; its first command is the client's
    EHLO; the super-server's process ends with the second smtpd's status."""
    bed = Bed(flavour, ("-e",) + ropts, ("--exit-code", "7"),
              env={"SSL_TLS_SNI_SERVERNAME": "stale.example", "RELAYCLIENT": ""})
    try:
        msg = message(200)
        client = starttls_mail(bed.port, msg)
        code = bed.wait_exit()
        check(code == "code=7", "exit %s, not the second smtpd's" % code)
        finished(bed, False)
        quiet(bed)
        check(hashlib.sha256(bed.file("msg-1")).digest() == hashlib.sha256(msg).digest(),
              "body differs")
        check(bed.file("commands.1").upper() == b"EHLO CLIENT.TEST\nQUIT\n", bed.file("commands.1"))
        check(bed.file("end.1") == b"quit", bed.file("end.1"))
        cmds = [c.split()[0].upper() for c in bed.file("commands.2").decode().splitlines()]
        check(cmds == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"], cmds)
        check(bed.file("env.3") is None, "a third smtpd")
        first, second = environ(bed, 1), environ(bed, 2)
        proto, cipher = handshake(bed, client)
        check(b"SSL_PROTOCOL" not in first and b"SSL_CIPHER" not in first, "first smtpd knew of TLS")
        check(second.get(b"SSL_PROTOCOL") == proto and second.get(b"SSL_CIPHER") == cipher,
              "second smtpd: %r %r, block: %r %r" % (second.get(b"SSL_PROTOCOL"),
                                                    second.get(b"SSL_CIPHER"), proto, cipher))
        for env, which in ((first, "1"), (second, "2")):
            no_secrets(env, which)
            check(env.get(b"TCPREMOTEIP") == b"127.0.0.1" and env.get(b"RELAYCLIENT") == b"",
                  "smtpd %s lost TCPREMOTEIP or RELAYCLIENT" % which)
        if flavour == "s6":
            # the block says "SSL_TLS_SNI_SERVERNAME" alone: unset
            check(first.get(b"SSL_TLS_SNI_SERVERNAME") == b"stale.example", "first smtpd's SNI")
            check(b"SSL_TLS_SNI_SERVERNAME" not in second, "an unset entry was not applied")
        else:
            # sslserver's block carries the certificate, newlines and all
            with open(certificate()[0], "rb") as f:
                check(second.get(b"SSL_SERVER_CERT") == f.read(), "SSL_SERVER_CERT differs")
            check(second.get(b"SSL_VERSION_INTERFACE") == b"ucspi-ssl", "SSL_VERSION_INTERFACE")
        fds_clean(bed, 1)
        fds_clean(bed, 2)
    finally:
        bed.close()


@test()
def fresh_plaintext_unchanged(flavour, _):
    """A plaintext session under -e is the one without it: one smtpd, the
    same commands, its exit status."""
    for opts in ((), ("-e",)):
        bed = Bed(flavour, opts, ("--exit-code", "5"))
        try:
            msg = message()
            with smtplib.SMTP("127.0.0.1", bed.port, timeout=20) as s:
                s.ehlo("client.test")
                s.sendmail("a@x.test", ["b@y.test"], msg)
            code = bed.wait_exit()
            if flavour == "s6" or opts:
                check(code == "code=5", "%s: exit %s" % (opts, code))
            finished(bed, False)
            quiet(bed)
            check(bed.file("msg-1") == msg, "body differs")
            cmds = [c.split()[0].upper() for c in bed.file("commands.1").decode().splitlines()]
            check(cmds == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"], cmds)
            check(bed.file("env.2") is None, "%s: a second smtpd in a plaintext session" % (opts,))
        finally:
            bed.close()


@test(relays=True)
def fresh_client_drops_in_tls(flavour, ropts):
    """The client closes TLS without QUIT: the smtpd gets EOF, and the exit
    status is the smtpd's. sslserver's SIGTERM at the session's end may
    come before the smtpd's exit or after it (a race, with the real one
    too): fresh_sigterm_leaves_the_smtpd_its_last_words holds the status
    when it comes first."""
    bed = Bed(flavour, ("-e",) + ropts, ("--exit-code", "6"))
    try:
        c = Client(bed.port)
        c.reply()
        c.send(b"EHLO c\r\n")
        c.reply()
        c.send(b"STARTTLS\r\n")
        check(c.reply().startswith(b"220 "), "no 220")
        c.starttls()
        c.send(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\n")
        check(c.reply().startswith(b"250-"), "EHLO over TLS")
        check(c.reply().startswith(b"250 "), "MAIL over TLS")
        c.close()
        code = bed.wait_exit()
        check(code == "code=6", "exit %s" % code)
        finished(bed, False)
        check(bed.file("end.2") == b"eof", "second smtpd: %r" % bed.file("end.2"))
    finally:
        bed.close()


@test()
def fresh_first_smtpd_idle_is_harmless(flavour, _):
    """The smtpd that greeted stays alive a while after QUIT and then times
    out: its 421 never reaches the client, the TLS session outlives it."""
    bed = Bed(flavour, ("-e",), ("--first-lingers", "500", "--exit-code", "4"))
    try:
        c = through_tls(bed)
        c.send(b"EHLO c\r\n")
        c.reply()
        time.sleep(1.2)
        c.send(b"NOOP\r\nQUIT\r\n")
        check(c.replies(2) == [b"250 2.0.0 ok\r\n", b"221 2.0.0 bye\r\n"], "after the first smtpd's end")
        check(c.rest() == b"", "more after 221")
        c.close()  # a real sslserver keeps the session until the client's EOF
        code = bed.wait_exit()
        check(code == "code=4", "exit %s" % code)
        finished(bed, False)
    finally:
        bed.close()


@test()
def fresh_greeting_refused(flavour, _):
    """A second smtpd that greets with 554: the client's EHLO over TLS
    gets one 421, and the session ends."""
    bed = Bed(flavour, ("-e",), ("--second-greeting", "554 5.3.2 mx.test not now", "--exit-code", "2"))
    try:
        c = through_tls(bed)
        c.send(b"EHLO c\r\n")
        check(c.reply() == b"421 4.3.0 Mail server unavailable, closing connection\r\n", "not one 421")
        check(c.rest() == b"", "more after 421")
        c.close()  # a real sslserver keeps the session until the client's EOF
        code = bed.wait_exit()
        check(code == "code=2", "exit %s" % code)
        finished(bed, False)
        check(bed.file("commands.2") == b"", "the refusing smtpd got %r" % bed.file("commands.2"))
        err = bed.logtext()
        check("warning: the smtpd after TLS refused the session" in err, err)
    finally:
        bed.close()


@test(flavours=("sslserver",), emulated="a block over the cap is the emulator's --block-pad")
def fresh_block_over_cap(flavour, _):
    """A block over the 64 KiB that -e keeps: one warning, and the session
    goes on with a smtpd that got none of the block's variables."""
    bed = Bed(flavour, ("-e",), server_opts=("--block-pad", str(70 * 1024)))
    try:
        msg = message()
        starttls_mail(bed.port, msg)
        finished(bed)
        check(bed.file("msg-1") == msg, "body differs")
        second = environ(bed, 2)
        check(b"SSL_PROTOCOL" not in second and b"SSL_PAD" not in second, "variables kept")
        err = bed.logtext()
        check(err.count("warning: the UCSPI-TLS information block is over 65536 bytes") == 1, err)
    finally:
        bed.close()


# --- real smtpds that need -e ---

def peer_starttls(name, flavour, ropts, fresh):
    """A STARTTLS mail to peer NAME behind the proxy, with -e or without."""
    if peers.why_not(name):
        return peers.why_not(name)
    out = tempfile.mkdtemp(prefix=name + "-", dir=WORK)
    argv, env = peers.smtpd(name, out)
    opts = (("-e",) if fresh else ()) + tuple(ropts)
    bed = Bed(flavour, app=[PROG] + list(opts) + argv, env=env)
    try:
        msg = message(100)
        s = smtplib.SMTP("127.0.0.1", bed.port, timeout=30)
        s.ehlo("client.test")
        check(s.has_extn("starttls"), "no STARTTLS offered")
        code, text = s.starttls(context=tls_context()) if fresh else s.docmd("STARTTLS")
        if name == "msmtpd" and not fresh:
            # msmtpd takes only MAIL or QUIT after EHLO: our RSET ends it
            check(code == 454, "STARTTLS: %d %r" % (code, text))
            code, text = s.docmd("NOOP")
            check(code == 421, "after msmtpd's end: %d %r" % (code, text))
            s.close()
            return
        check(code == 220, "STARTTLS: %d %r" % (code, text))
        if not fresh:
            s.sock = tls_context().wrap_socket(s.sock, server_hostname="localhost")
            s.file = None
            code, text = s.ehlo("client.test")
            # qpsmtpd refuses a second EHLO: the reason -e exists
            check(code == 503 and b"already said HELO" in text, "EHLO over TLS: %d %r" % (code, text))
            s.close()
            return
        code, text = s.ehlo("client.test")
        check(code == 250, "EHLO over TLS: %d %r" % (code, text))
        s.sendmail("a@x.test", ["b@local.test"], msg)
        tls_goodbye(s)
        code = bed.wait_exit()
        check(code == "code=0", "exit %s" % code)
        check(not bed.leftovers(), "leftovers")
        msgs = peers.messages(name, out)
        check(len(msgs) == 1, "%d messages stored" % len(msgs))
        check(hashlib.sha256(peers.content(name, msgs[0])).digest() == hashlib.sha256(msg).digest(),
              "message differs")
        quiet(bed)
    finally:
        bed.close()
        shutil.rmtree(out, ignore_errors=True)


@test(relays=True)
def qpsmtpd_starttls_fresh(flavour, ropts):
    return peer_starttls("qpsmtpd", flavour, ropts, True)


@test(relays=True)
def qpsmtpd_starttls_without_e(flavour, ropts):
    return peer_starttls("qpsmtpd", flavour, ropts, False)


@test(relays=True)
def msmtpd_starttls_fresh(flavour, ropts):
    return peer_starttls("msmtpd", flavour, ropts, True)


@test(relays=True)
def msmtpd_starttls_without_e(flavour, ropts):
    return peer_starttls("msmtpd", flavour, ropts, False)


EXIM_RECEIVED = """keep_environment = SSL_CIPHER : SSL_PROTOCOL
received_header_text = Received: by $primary_hostname with \\
  ${env{SSL_PROTOCOL}{$value}{plain}} cipher ${env{SSL_CIPHER}{$value}{none}}\\n\\tid $message_exim_id
"""


@test()
def exim_received_names_cipher(flavour, _):
    """exim -bs after TLS under -e learns the cipher from its environment
    and writes it into the message's Received: header."""
    bed, d = exim_bed(flavour, ("-e",), options=EXIM_RECEIVED)
    if d is None:
        return bed
    try:
        msg = message()
        client = starttls_mail(bed.port, msg, rcpt="b@local.test")
        bed.wait_exit()
        check(not bed.leftovers(), "leftovers")
        proto, cipher = handshake(bed, client)
        with open(os.path.join(d, "mbox"), "rb") as f:
            mbox = f.read()
        check(b"with " + proto + b" cipher " + cipher in mbox, mbox[:600])
        body = msg.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
        check(body in mbox, "body not delivered intact")
    finally:
        bed.close()
        shutil.rmtree(d, ignore_errors=True)


# --- -e's process under signals and failures ---

LAUNCH = """import os, signal, sys
for name in sys.argv[1].split(","):
    if name:
        signal.signal(getattr(signal, name.split("=")[0]),
                      signal.SIG_IGN if name.endswith("=ign") else signal.SIG_DFL)
os.execv(sys.argv[2], sys.argv[2:])
"""

# an smtpd that still talks when its input ends, then exits 5
EOFWRITE = """#!/bin/sh
printf '220 hi\\r\\n'
while read l; do
  case "$l" in
    [Ee][Hh][Ll][Oo]*) printf '250-ok\\r\\n250 PIPELINING\\r\\n';;
    [Qq][Uu][Ii][Tt]*) printf '221 bye\\r\\n'; exit 0;;
    *) printf '250 ok\\r\\n';;
  esac
done
sleep 0.3
printf '421 lost input\\r\\n'
exit 5
"""

# says something that is no reply to the second command, exits 7 a little later
GARBAGE = """#!/bin/sh
printf '220 hi\\r\\n'
read l; printf '250 ok\\r\\n'
read l; printf 'garbage\\r\\n'
sleep 0.5
exit 7
"""

# before TLS (no SSL_PROTOCOL): deaf to QUIT and SIGTERM, gone only after 30 s
STUBBORN = """#!/bin/sh
[ -z "$SSL_PROTOCOL" ] && trap '' TERM
printf '220 hi\\r\\n'
while read l; do
  case "$l" in
    [Ee][Hh][Ll][Oo]*) printf '250-ok\\r\\n250 PIPELINING\\r\\n';;
    [Qq][Uu][Ii][Tt]*) [ -n "$SSL_PROTOCOL" ] && { printf '221 bye\\r\\n'; exit 0; }; break;;
    *) printf '250 ok\\r\\n';;
  esac
done
[ -z "$SSL_PROTOCOL" ] && exec sleep 30
exit 3
"""


def script(d, name, text):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def launched(flavour, d, signals, opts, smtpd, **kw):
    """A bed whose app is the proxy started with the given signal
    dispositions (as a super-server might leave them)."""
    import sys
    app = [sys.executable, script(d, "launch.py", LAUNCH), signals, PROG] + list(opts) + [smtpd]
    return Bed(flavour, app=app, **kw)


def tls_ehlo(bed):
    c = through_tls(bed)
    c.send(b"EHLO x\r\n")
    check(c.reply().startswith(b"250-ok"), "EHLO over TLS")
    return c


@test()
def fresh_sigterm_leaves_the_smtpd_its_last_words(flavour, _):
    """A SIGTERM while the engine is in the middle after TLS (-L keeps it
    there): the smtpd, which writes when its input ends, is read to its
    end, not killed by a closed pipe (SIGPIPE left at its default, as real
    super-servers leave it); the exit status is its own."""
    d = tempfile.mkdtemp(prefix="sig-", dir=WORK)
    bed = launched(flavour, d, "SIGPIPE", ("-e", "-L", "-v", "2"), script(d, "eofwrite", EOFWRITE))
    try:
        c = tls_ehlo(bed)
        time.sleep(0.2)
        pid = int([e[2] for e in bed.events() if e[1] == "app-pid"][0])
        os.kill(pid, signal.SIGTERM)
        code = bed.wait_exit()
        c.close()
        check(code == "code=5", "exit %s, not the smtpd's 5" % code)
        check(not bed.leftovers(), "leftovers")
        check(re.search(r"end: TLSv1\.[23] \S+, SIGTERM, .*, smtpd exit 5\n", bed.logtext()), bed.logtext())
    finally:
        bed.close()
        shutil.rmtree(d, ignore_errors=True)


@test()
def fresh_fatal_still_waits_for_the_smtpd(flavour, _):
    """A fatal error under -e (the smtpd speaks no SMTP) still waits for the
    smtpd and ends with its status, as the super-server sees it without -e."""
    d = tempfile.mkdtemp(prefix="sig-", dir=WORK)
    bed = Bed(flavour, app=[PROG, "-e", script(d, "garbage", GARBAGE)])
    try:
        c = Client(bed.port)
        c.reply()
        c.send(b"NOOP\r\n")
        c.reply()
        c.send(b"NOOP\r\n")
        check(c.reply() == b"421 4.3.0 Mail server error, closing connection\r\n", "no 421")
        c.close()
        code = bed.wait_exit()
        check(code == "code=7", "exit %s, not the smtpd's 7" % code)
        check(not bed.leftovers(), "leftovers")
        check("fatal: the smtpd sent a line that is not an SMTP reply" in bed.logtext(), bed.logtext())
    finally:
        bed.close()
        shutil.rmtree(d, ignore_errors=True)


@test()
def fresh_sigchld_ignored(flavour, _):
    """Given SIGCHLD ignored, -e still waits for its smtpds and passes the
    status on."""
    d = tempfile.mkdtemp(prefix="sig-", dir=WORK)
    bed = launched(flavour, d, "SIGCHLD=ign", ("-e",), script(d, "eofwrite", EOFWRITE))
    try:
        c = tls_ehlo(bed)
        c.close()
        code = bed.wait_exit()
        check(code == "code=5", "exit %s" % code)
        check(not bed.leftovers(), "leftovers")
        check("fatal" not in bed.logtext(), bed.logtext())
    finally:
        bed.close()
        shutil.rmtree(d, ignore_errors=True)


@test(flavours=("sslserver",))
def fresh_failed_handshake_is_told(flavour, _):
    """sslserver SIGTERMs the application when a handshake fails: under -e
    that is the proxy, which still says so, ends the first smtpd and exits
    with its status."""
    d = tempfile.mkdtemp(prefix="sig-", dir=WORK)
    bed = Bed(flavour, app=[PROG, "-e", "-v", "2", script(d, "eofwrite", EOFWRITE)])
    try:
        c = Client(bed.port)
        c.reply()
        c.send(b"STARTTLS\r\n")
        c.reply()
        c.send(b"GET / HTTP/1.0\r\n\r\n" * 20)
        time.sleep(0.3)
        c.close()
        code = bed.wait_exit()
        check(code == "code=5", "exit %s" % code)
        check(not bed.leftovers(), "leftovers")
        log = bed.logtext()
        check("info: TLS handshake failed\n" in log and
              re.search(r"end: plaintext, TLS handshake failed, .*, smtpd exit 5\n", log), log)
    finally:
        bed.close()
        shutil.rmtree(d, ignore_errors=True)


@test()
def fresh_first_smtpd_deaf_is_ended(flavour, _):
    """A first smtpd deaf to QUIT, EOF and SIGTERM is killed at the
    session's end: nothing outlives the session."""
    d = tempfile.mkdtemp(prefix="sig-", dir=WORK)
    bed = Bed(flavour, app=[PROG, "-e", script(d, "stubborn", STUBBORN)])
    try:
        c = tls_ehlo(bed)
        c.send(b"QUIT\r\n")
        check(c.reply() == b"221 bye\r\n", "no 221")
        c.close()
        t0 = time.time()
        code = bed.wait_exit()
        check(code == "code=0", "exit %s" % code)
        check(time.time() - t0 < 5, "took %.1f s" % (time.time() - t0))
        check(not bed.leftovers(timeout=3), "leftovers")
    finally:
        bed.close()
        shutil.rmtree(d, ignore_errors=True)
