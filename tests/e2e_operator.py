"""End-to-end tests of what an operator relies on: no copy of the client
connection where it does not belong, the smtpd's environment, log lines
that name the session, exit statuses."""
import os
import re
import time

from bed import Bed, Client
from e2e import SECRETS, check, finished, test


def client_socket(bed):
    for ev in bed.events():
        if ev[1] == "client-socket":
            return "socket:[%s]" % ev[2]
    raise AssertionError("no client socket logged")


def holders(bed, link):
    """{pid: [fds]} of the bed's processes, the test server's own aside,
    holding a descriptor that links to link."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % p, "rb") as f:
                if ("TESTBED=" + bed.marker).encode() not in f.read().split(b"\0"):
                    continue
            if bed.engine(int(p)):
                continue
            fds = [int(fd) for fd in os.listdir("/proc/%s/fd" % p)
                   if os.readlink("/proc/%s/fd/%s" % (p, fd)) == link]
        except OSError:
            continue
        if fds:
            out[int(p)] = fds
    return out


@test(relays=True)
def client_connection_only_where_it_belongs(flavour, ropts):
    """sslserver leaves a stray copy of the client socket: the smtpd never
    gets it (it holds no copy at all, plaintext or TLS), the proxy keeps
    only fds 0/1 until TLS, and after TLS no process of ours holds any."""
    for opts in ((), ("-e",)):
        bed = Bed(flavour, opts + ropts)
        try:
            c = Client(bed.port)
            c.reply()
            sock = client_socket(bed)
            c.send(b"EHLO c\r\n")
            c.reply()
            held = holders(bed, sock)
            check(len(held) == 1 and list(held.values())[0] == [0, 1],
                  "%s: before TLS, copies of the client socket: %s" % (opts, held))
            c.send(b"STARTTLS\r\n")
            c.reply()
            c.starttls()
            c.send(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\n")
            c.replies(2)  # the relay has the session now
            time.sleep(0.2)
            held = holders(bed, sock)
            check(not held, "%s: after TLS, copies of the client socket: %s" % (opts, held))
            c.send(b"QUIT\r\n")
            c.reply()
            c.close()
            finished(bed, flavour == "s6" or bool(opts))
            for n in (1, 2):
                links = (bed.file("fds.%d" % n) or b"").decode()
                check(sock not in links, "%s: smtpd %d had the client socket: %s" % (opts, n, links))
        finally:
            bed.close()


KEEP = {"TCPREMOTEIP": "127.0.0.1", "RELAYCLIENT": "", "TCPREMOTEHOST": "c.example",
        "SSLREMOTEIP": "127.0.0.1", "SSL_SHOULD_STAY": "x=y", "CIPHERSUITE_NOTE": "kept"}


@test()
def environment_both_ways(flavour, _):
    """Every variable the TLS side reads for itself is gone from the smtpd's
    environment (set here, whatever the flavour leaks by itself); every
    other one arrives intact, value and all."""
    env = dict(KEEP)
    for name in SECRETS:
        if name not in ("SSLCTLFD", "SSLREADFD", "SSLWRITEFD"):
            env[name + ("mx.example" if name.endswith(":") else "")] = "/secret/" + name
    bed = Bed(flavour, smtpd_opts=(), env=env)
    try:
        c = Client(bed.port)
        c.reply()
        c.send(b"QUIT\r\n")
        c.reply()
        c.close()
        finished(bed, flavour == "s6")
        got = dict(e.split(b"=", 1) for e in bed.file("env.1").split(b"\0") if e)
        for name in SECRETS:
            check(not any(k.decode() == name or (name.endswith(":") and k.decode().startswith(name))
                          for k in got), "%s reached the smtpd" % name)
        for name, value in KEEP.items():
            check(got.get(name.encode()) == value.encode(), "%s: %r" % (name, got.get(name.encode())))
    finally:
        bed.close()


def end_line(bed):
    """The session's one end line, once written (after the app's exit)."""
    deadline = time.time() + 5
    while ": info: end: " not in bed.logtext() and time.time() < deadline:
        time.sleep(0.05)
    lines = [l for l in bed.logtext().splitlines() if ": info: end: " in l]
    check(len(lines) == 1, "end lines: %s" % bed.stderr_text())
    return lines[0].split(": info: end: ", 1)[1]


@test(relays=True)
def exit_status_every_way_a_client_goes(flavour, ropts):
    """The end line (-v 2) gives the proxy's exit status, which the
    super-server never sees without -e: 1 for a client gone without QUIT
    while the engine was in the middle, 0 after QUIT, 0 once the relay had
    the session (it cannot see commands)."""
    ways = (
        ("after the greeting", b"", "client closed without QUIT", 1),
        ("after EHLO", b"EHLO c\r\n", "client closed without QUIT", 1),
        ("after a half-close", b"EHLO c\r\nNOOP\r\n", "client closed without QUIT", 1),
        ("after QUIT", b"EHLO c\r\nQUIT\r\n", "quit", 0),
        ("mid-line", b"EHLO c\r\nNOO", "client closed without QUIT", 1),
        ("after MAIL", b"HELO c\r\nMAIL FROM:<a@x.test>\r\n", "client closed without QUIT", 1),
    )
    for name, send, why, code in ways:
        bed = Bed(flavour, ("-v", "2") + ropts)
        try:
            c = Client(bed.port)
            c.reply()
            if send:
                c.send(send)
            if name == "after a half-close":
                c.sock.shutdown(1)
                c.replies(2)
            elif send.endswith(b"\r\n"):
                c.replies(send.count(b"\r\n"))
            c.close()
            bed.wait_exit()
            check(not bed.leftovers(), "%s: leftovers" % name)
            line = end_line(bed)
            check(re.match(r"plaintext, %s, \d+\.\d{3} s, %d bytes in, \d+ out, exit %d$"
                           % (why, len(send), code), line), "%s: %s" % (name, line))
        finally:
            bed.close()
    # in the relay (after TLS), the client's going is the end of the relay
    bed = Bed(flavour, ("-v", "2") + ropts)
    try:
        c = Client(bed.port)
        c.reply()
        c.send(b"STARTTLS\r\n")
        c.reply()
        c.starttls()
        c.send(b"EHLO c\r\n")
        c.reply()
        c.close()
        bed.wait_exit()
        # TLSv1.2: s6-tlsd-io on BearSSL 0.6, which has no TLS 1.3
        line = end_line(bed)
        if ropts:
            check(re.match(r"TLSv1\.[23] \S+, s6-ioconnect relays the rest, .*, exit s6-ioconnect's$", line), line)
        else:
            check(re.match(r"TLSv1\.[23] \S+, relayed to the end, \d+\.\d{3} s, 18 bytes in, \d+ out, exit 0$",
                           line), line)
    finally:
        bed.close()


@test()
def scanner_is_no_warning(flavour, _):
    """A handshake that fails (a scanner's) gets no line at -v 1 and one
    info line plus the end line at -v 2, both tagged."""
    for v in ("1", "2"):
        bed = Bed(flavour, ("-v", v))
        try:
            c = Client(bed.port)
            c.reply()
            c.send(b"STARTTLS\r\n")
            c.reply()
            c.send(b"\x16\x03\x01\x00\x05hello" * 4)
            try:
                c.rest()
            except OSError:
                pass
            c.close()
            bed.wait_exit()
            check(not bed.leftovers(), "leftovers")
            time.sleep(0.2)
            err = bed.stderr_text()
            if v == "1":
                check(err == "", err)
            elif flavour == "s6":
                pid = [e[2] for e in bed.events() if e[1] == "app-pid"][0]
                lines = err.splitlines()
                check(len(lines) == 2 and all(l.startswith("smtpd-starttls-proxy-io: info: pid %s ip 127.0.0.1: "
                                                           % pid) for l in lines), lines)
                check(lines[0].endswith(": TLS handshake failed"), lines)
                check(re.search(r": end: plaintext, TLS handshake failed, .*, exit 1$", lines[1]), lines)
        finally:
            bed.close()
