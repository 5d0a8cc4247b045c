"""End-to-end tests of what the engine enforces (issue 19): it frames BDAT
and DATA as the smtpd does, or ends the session; a reply that answers no
command never reaches the client; the reply to the end of content is
waited for 10 minutes whatever -t says; every verb the smtpd offered
passes, XCLIENT and XFORWARD never, REQUIRETLS only over TLS; an HTTP
request ends the session. Through the test smtpd and exim -bs."""
import os
import shutil
import socket
import time

from bed import Bed, Client
from e2e import (EXIM_AUTH_OPTIONS, EXIM_AUTHENTICATORS, check, exim_bed, finished, mbox,
                 one_warning, test)

AUTH = b"AUTH PLAIN AGFAYg==\r\n"  # any password: exim's authenticator takes it
SYNTAX = b"501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n"
UNFRAMED = b"421 4.5.4 Cannot tell where that BDAT chunk ends, closing connection\r\n"
TOOBIG = b"552 5.3.4 BDAT chunk over 2147483647 octets: refused\r\n"
BROKEN = b"421 4.3.0 Mail server error, closing connection\r\n"
HTTP = b"421 4.7.0 HTTP request refused, closing connection\r\n"
TRUSTED = b"550 5.7.0 XCLIENT and XFORWARD are only for a trusted proxy\r\n"
NEEDTLS = b"530 5.7.10 REQUIRETLS needs TLS: issue STARTTLS first\r\n"
ENVELOPE = ["EHLO c.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@local.test>"]


def exim_chunking(flavour, opts=(), options=""):
    """exim -bs offering CHUNKING and AUTH PLAIN (any password)."""
    return exim_bed(flavour, opts, options=EXIM_AUTH_OPTIONS + options, authenticators=EXIM_AUTHENTICATORS)


def ehloed(bed, tls=False, again=True):
    """A client past EHLO, and after STARTTLS if tls (then EHLO again if
    again); and the last EHLO reply."""
    c = Client(bed.port, timeout=20)
    c.reply()
    c.send(b"EHLO c.test\r\n")
    ehlo = c.reply()
    if tls:
        c.send(b"STARTTLS\r\n")
        check(c.reply().startswith(b"220"), "no 220")
        c.starttls()
        if again:
            c.send(b"EHLO c.test\r\n")
            ehlo = c.reply()
    return c, ehlo


def to_rcpt(bed, tls=False):
    """A client past RCPT, after STARTTLS if tls; and the EHLO reply."""
    c, ehlo = ehloed(bed, tls)
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\n")
    r = c.replies(2)
    check(r[0].startswith(b"250") and r[1].startswith(b"250"), r)
    return c, ehlo


def rest(c):
    """All the client gets until the end, after its own EOF."""
    try:
        c.sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    out = c.rest()
    c.close()
    return out


def both(flavour, run):
    """run(bed, exim_dir or None) with the test smtpd (CHUNKING offered),
    then with exim -bs."""
    bed = Bed(flavour, smtpd_opts=("--ext", "CHUNKING"))
    try:
        run(bed, None)
    finally:
        bed.close()
    bed, d = exim_chunking(flavour)
    if d is None:
        return bed
    try:
        run(bed, d)
    finally:
        bed.close()
        shutil.rmtree(d, ignore_errors=True)
    return None


# --- BDAT: RFC 3030's grammar, and a bound on sizes ---

MALFORMED = (b"BDAT 33LAST", b"BDAT 1 LASTX", b"BDAT +5", b"BDAT 5  LAST", b"BDAT\t5")


@test(flavours=("s6",))
def bdat_malformed_ends_session(flavour, _):
    """A BDAT that is not `BDAT SP 1*DIGIT [SP LAST]`: where its chunk ends
    cannot be known, so one 501, one 421, and nothing more reaches the
    smtpd; an AUTH behind it never runs."""
    skipped = None
    for form in MALFORMED:
        def one(bed, d, form=form):
            c, _ = to_rcpt(bed)
            c.send(form + b"\r\n" + AUTH + b"QUIT\r\n")
            out = rest(c)
            check(out == SYNTAX + UNFRAMED, "%r: the client got %r" % (form, out))
            if d is None:
                finished(bed, False)
                check(bed.commands() == ENVELOPE, "%r: the smtpd got %s" % (form, bed.commands()))
            else:
                check(bed.wait_exit() is not None and mbox(d) == b"", "%r: exim delivered" % form)
        skipped = both(flavour, one)
    return skipped


@test(flavours=("s6",))
def bdat_size_bound(flavour, _):
    """Sizes from 2^31 on are refused, their chunk consumed: exim reads
    sizes modulo 2^32, so 2^32 would be an empty chunk to it and the AUTH
    behind it a command (235 in clear)."""
    skipped = None
    for size in (2 ** 31, 2 ** 32, 2 ** 64 - 1, 2 ** 64):
        def one(bed, d, size=size):
            c, _ = to_rcpt(bed)
            c.send(b"BDAT %d LAST\r\n" % size + AUTH + b"QUIT\r\n")
            first = c.reply()
            out = first + rest(c)
            check(first == TOOBIG and b"235" not in out, "%d: the client got %r" % (size, out))
            if d is None:
                bed.wait_exit()
                check(bed.commands() == ENVELOPE, "%d: the smtpd got %s" % (size, bed.commands()))
            else:
                check(bed.wait_exit() is not None and mbox(d) == b"", "%d: exim delivered" % size)
        skipped = both(flavour, one)
    return skipped


# --- -L: a CR that ends a read ---

FIRST = b"From: a@x.test\r\nTo: b@local.test\r\nSubject: first\r\n\r\nfirst message"
SECOND = (b"MAIL FROM:<spoof@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n"
          b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n")


@test()
def guard_trailing_cr_every_split(flavour, _):
    """-L with an smtpd that takes a bare CR for a line's end: `<CR><LF>.<CR>`
    then a smuggled transaction, cut in two writes at every place in and
    around the sequence. The CR that ends a read must wait for the next
    byte, so the smtpd never sees `.` then CR: no message is stored."""
    body = FIRST + b"\r\n.\r" + SECOND
    for cut in range(len(FIRST) - 1, len(FIRST) + 6):
        bed = Bed(flavour, ("-L",), smtpd_opts=("--cr-ends-line",))
        try:
            c, _ = to_rcpt(bed)
            c.send(b"DATA\r\n")
            check(c.reply().startswith(b"354"), "no 354")
            c.send(body[:cut])
            time.sleep(0.3)  # two reads, not one: the proxy has taken the first
            c.send(body[cut:])
            out = rest(c)
            check(out.startswith(b"550 5.5.2 Message refused: CR without LF")
                  and out.endswith(b"421 4.5.2 Closing connection after a refused message\r\n"),
                  "cut %d: the client got %r" % (cut, out))
            bed.wait_exit()
            files = sorted(os.listdir(bed.dir))
            check(not [f for f in files if f.startswith("msg-")], "cut %d: stored: %s" % (cut, files))
        finally:
            bed.close()


# --- the wait for the reply to the end of content ---

def slow_final_replies(bed, queued):
    """A message by DATA, then one by BDAT LAST, with -t 1000 and an smtpd
    3 s slow to answer their ends: each end gets the smtpd's reply, which
    begins with queued (DATA) and with queued for BDAT."""
    c, _ = to_rcpt(bed)
    c.send(b"DATA\r\n")
    check(c.reply().startswith(b"354"), "no 354")
    c.send(b"Subject: slow\r\n\r\nslow\r\n.\r\n")
    r = c.reply()
    check(r.startswith(queued[0]), "the final dot got %r" % r)
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nBDAT 5 LAST\r\nhello")
    r = c.replies(3)
    check(r[2].startswith(queued[1]), "BDAT LAST got %r" % r)
    c.send(b"QUIT\r\n")
    check(c.reply().startswith(b"221"), "no 221")
    c.close()


@test(flavours=("s6",))
def final_reply_waits_past_t(flavour, _):
    """With -t 1000, an smtpd that answers the final dot and a BDAT LAST
    after 3 s: the client gets those replies, not a 421 (RFC 5321
    4.5.3.2.6: 10 minutes for that reply)."""
    bed = Bed(flavour, ("-t", "1000"), smtpd_opts=("--ext", "CHUNKING", "--final-delay", "3000"))
    try:
        slow_final_replies(bed, (b"250 2.0.0 queued", b"250 2.0.0 5 octets queued"))
        finished(bed)
    finally:
        bed.close()
    # exim, its DATA ACL (run for BDAT LAST too) made to wait 3 s
    bed, d = exim_chunking(flavour, ("-t", "1000"), options="acl_smtp_data = acl_slow\n")
    if d is None:
        return bed
    try:
        conf = os.path.join(d, "exim.conf")
        with open(conf) as f:
            text = f.read()
        with open(conf, "w") as f:
            f.write(text.replace("begin acl\n", "begin acl\nacl_slow:\n  accept delay = 3s\n"))
        slow_final_replies(bed, (b"250", b"250"))
        check(bed.wait_exit() is not None, "exim never exited")
        check(mbox(d).count(b"\nslow\n") == 1 and b"hello" in mbox(d), "exim delivered %r" % mbox(d))
    finally:
        bed.close()
        shutil.rmtree(d, ignore_errors=True)
    return None


# --- a reply that answers no command ---

@test(flavours=("s6",))
def stray_reply_ends_session(flavour, _):
    """Without -L, an smtpd that ends DATA at `<LF>.<LF>` answers the
    smuggled MAIL, RCPT, DATA and end too: the client gets one reply to its
    end of data at most, then one 421; the warning names the smtpd's line."""
    bed = Bed(flavour, smtpd_opts=("--loose-end",))
    try:
        c, _ = to_rcpt(bed)
        c.send(b"DATA\r\n")
        check(c.reply().startswith(b"354"), "no 354")
        c.send(FIRST + b"\n.\n" + SECOND)
        out = rest(c)
        check(out in (b"250 2.0.0 queued as 1\r\n" + BROKEN, BROKEN), "the client got %r" % out)
        bed.wait_exit()
        one_warning(bed, "a reply that answers no command")
    finally:
        bed.close()


# --- verbs the smtpd offered, and those it must not get ---

@test(flavours=("s6",))
def extension_verbs_20(flavour, _):
    """Twenty extension verbs offered: each reaches the smtpd."""
    verbs = ["XVERB%02d" % i for i in range(1, 21)]
    opts = []
    for v in verbs:
        opts += ["--ext", v]
    bed = Bed(flavour, smtpd_opts=tuple(opts))
    try:
        c, _ = ehloed(bed)
        c.send(b"".join(b"%s arg\r\n" % v.encode() for v in verbs))
        r = c.replies(20)
        check(r == [b"250 2.0.0 %s ok\r\n" % v.encode() for v in verbs], r)
        c.send(b"QUIT\r\n")
        c.reply()
        c.close()
        finished(bed)
        check(bed.commands() == ["EHLO c.test"] + ["%s arg" % v for v in verbs] + ["QUIT"], bed.commands())
    finally:
        bed.close()


TRUSTED_OPTS = ("--ext", "XCLIENT NAME ADDR", "--ext", "XFORWARD NAME ADDR", "--ext", "REQUIRETLS")


@test()
def xclient_xforward_requiretls(flavour, _):
    """XCLIENT and XFORWARD never offered nor forwarded; REQUIRETLS offered
    and taken only over TLS: in plaintext, over TLS (relayed) and over TLS
    under -L (the engine stays)."""
    for tls, opts in ((False, ()), (True, ()), (True, ("-L",))):
        bed = Bed(flavour, opts, smtpd_opts=TRUSTED_OPTS)
        try:
            c, ehlo = ehloed(bed, tls)
            check(b"XCLIENT" not in ehlo and b"XFORWARD" not in ehlo, ehlo)
            check((b"REQUIRETLS" in ehlo) == tls, ehlo)
            if tls and not opts:
                # the relay has the session: the EHLO reply was the engine's last word
                c.send(b"QUIT\r\n")
                c.reply()
                c.close()
                finished(bed, flavour == "s6")
                continue
            c.send(b"XCLIENT ADDR=10.0.0.1\r\nXFORWARD NAME=spoofed\r\nMAIL FROM:<a@x.test> REQUIRETLS\r\n")
            r = c.replies(3)
            check(r[:2] == [TRUSTED, TRUSTED], r)
            check((r[2] == NEEDTLS) != tls and (r[2].startswith(b"250")) == tls, r)
            c.send(b"QUIT\r\n")
            c.reply()
            c.close()
            finished(bed, not tls or flavour == "s6")
            got = bed.commands()
            check(not [l for l in got if l.upper().startswith(("XCLIENT", "XFORWARD"))], got)
            check(("MAIL FROM:<a@x.test> REQUIRETLS" in got) == tls, got)
        finally:
            bed.close()


# --- what is no SMTP at all ---

POST = (b"POST /form HTTP/1.1\r\nHost: mx.test\r\nContent-Type: text/plain\r\nContent-Length: 160\r\n\r\n"
        b"HELO x.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n"
        b"Subject: from a browser\r\n\r\nposted\r\n.\r\nQUIT\r\n")


@test(flavours=("s6",))
def http_post_ends_session(flavour, _):
    """A browser's POST to port 25 whose body is an SMTP transaction:
    nothing reaches the smtpd, the client gets one 421."""
    def one(bed, d):
        c = Client(bed.port)
        c.send(POST)
        out = rest(c)
        check(out.endswith(HTTP) and out.count(b"\r\n") <= 2 and out.count(b"421") == 1,
              "the client got %r" % out)
        bed.wait_exit()
        if d is None:
            check(bed.commands() == [], bed.commands())
        else:
            check(mbox(d) == b"", "exim delivered %r" % mbox(d))
    return both(flavour, one)


@test(flavours=("s6",))
def unknown_verbs_counted(flavour, _):
    """Unknown verbs count toward the error limit (10): then 421."""
    bed = Bed(flavour)
    try:
        c = Client(bed.port)
        c.reply()
        c.send(b"FROB\r\n" * 10 + b"NOOP\r\n")
        out = rest(c)
        check(out == b"500 5.5.1 Command unrecognized\r\n" * 10
              + b"421 4.7.0 Too many errors, closing connection\r\n", "the client got %r" % out)
        bed.wait_exit()
        check(bed.commands() == [], bed.commands())
    finally:
        bed.close()


@test()
def gate_after_tls_anytime_verbs(flavour, _):
    """After TLS and before EHLO: NOOP, RSET, HELP, VRFY, EXPN reach the
    smtpd (RFC 5321 4.1.4: no EHLO needed); MAIL gets 503."""
    bed = Bed(flavour)
    try:
        c, _ = ehloed(bed, True, again=False)
        c.send(b"NOOP\r\nRSET\r\nHELP\r\nVRFY a\r\nEXPN b\r\nMAIL FROM:<a@x.test>\r\n")
        r = c.replies(6)
        check([x[:3] for x in r] == [b"250", b"250", b"214", b"252", b"252", b"503"], r)
        c.send(b"QUIT\r\n")
        c.reply()
        c.close()
        finished(bed, flavour == "s6")
        check(bed.commands() == ["EHLO c.test", "RSET", "NOOP", "RSET", "HELP", "VRFY a", "EXPN b", "QUIT"],
              bed.commands())
    finally:
        bed.close()
