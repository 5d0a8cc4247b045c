"""End-to-end tests of -L (issue 14): SMTP smuggling and bare line endings
in message content, through exim -bs and the test smtpd, in plaintext and
over TLS. Each end-of-data variant of the public smuggling tools is sent
after a first message's content and before a second, spoofed message; with
-L no message may be delivered, the client gets the 550 and the 421, the
smtpd's input ends without the final dot, and one warning names the bytes.
Without -L the tests record what each smtpd did."""
import hashlib
import os
import re
import shutil
import socket

from bed import Bed, Client, sha256
from e2e import (EXIM_AUTH_OPTIONS, EXIM_AUTHENTICATORS, LOOKALIKE, Passed, check, exim_bed,
                 finished, mbox, one_warning, test)

LF = b"550 5.5.2 Message refused: LF without CR in its content (RFC 5321 2.3.8)\r\n"
CR = b"550 5.5.2 Message refused: CR without LF in its content (RFC 5321 2.3.8)\r\n"
NUL = b"550 5.5.2 Message refused: NUL at the start of a line of its content\r\n"
CLOSING = b"421 4.5.2 Closing connection after a refused message\r\n"

# the sequence, how the log names it, the 550 it gets
VARIANTS = (
    (b"\n.\n", "<LF>.<LF>", LF),
    (b"\n.\r\n", "<LF>.<CR><LF>", LF),
    (b"\r\n.\n", "<CR><LF>.<LF>", LF),
    (b"\r.\r", "<CR>.<CR>", CR),
    (b"\r\n.\r", "<CR><LF>.<CR>", CR),
    (b"\n.\r", "<LF>.<CR>", LF),
    (b"\r.\n", "<CR>.<LF>", CR),
    (b"\r.\r\n", "<CR>.<CR><LF>", CR),
    (b"\n\n.\r\n", "<LF><LF>.<CR>", LF),
    # the same with a NUL, which an smtpd that drops NULs does not see
    (b"\r\n\x00.\r\n", "<CR><LF><NUL>.<CR><LF>", NUL),
    (b"\r\n.\x00\r\n", "<CR><LF>.<NUL><CR><LF>", NUL),
    (b"\r\n\x00.\r", "<CR><LF><NUL>.<CR>", NUL),
    (b"\r\n\x00.\n", "<CR><LF><NUL>.<LF>", NUL),
    (b"\n\x00.\n", "<LF><NUL>.<LF>", LF),
    (b"\n.\x00\n", "<LF>.<NUL><LF>", LF),
    (b"\r.\x00\r", "<CR>.<NUL><CR>", CR),
)

FIRST = b"From: a@x.test\r\nTo: b@local.test\r\nSubject: first\r\n\r\nfirst message"
SECOND = (b"MAIL FROM:<spoof@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n"
          b"From: spoof@x.test\r\nTo: b@local.test\r\nSubject: smuggled\r\n\r\nsmuggled message\r\n.\r\n")


def into_data(bed, tls):
    """A client at DATA's 354, after STARTTLS if tls."""
    c = Client(bed.port)
    c.reply()
    c.send(b"EHLO c.test\r\n")
    c.reply()
    if tls:
        c.send(b"STARTTLS\r\n")
        check(c.reply().startswith(b"220"), "no 220")
        c.starttls()
        c.send(b"EHLO c.test\r\n")
        c.reply()
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
    r = c.replies(3)
    check(r[0].startswith(b"250") and r[1].startswith(b"250") and r[2].startswith(b"354"), r)
    return c


def smuggle(bed, seq, tls, tail=b""):
    """Sends the first message, seq, the second one (and tail) in one
    write; returns all the client got until the end, or None if it hung."""
    c = into_data(bed, tls)
    c.send(FIRST + seq + SECOND + tail)
    try:
        out = c.rest()
    except (socket.timeout, OSError):
        out = None
    c.close()
    return out


def named(bed, name):
    """One warning line, naming the bytes: all of them, or the first ones
    when a read ended inside the sequence."""
    one_warning(bed, "warning: message refused for <")
    line = [l for l in bed.stderr_text().splitlines() if l.startswith("smtpd-starttls-proxy-io")][0]
    got = re.search(r"refused for (\S+) in its content", line)
    check(got and name.startswith(got.group(1)), "%s: %s" % (name, line))


def guarded_test_smtpd(flavour, tls):
    for seq, name, reply in VARIANTS:
        bed = Bed(flavour, ("-L",))
        try:
            out = smuggle(bed, seq, tls)
            check(out == reply + CLOSING, "%s: the client got %r" % (name, out))
            finished(bed, not tls or flavour == "s6")
            files = sorted(os.listdir(bed.dir))
            check(not [f for f in files if f.startswith("msg-")], "%s: delivered: %s" % (name, files))
            # the smtpd got DATA, then its input ended before any end of data
            got = bed.file("discarded-1")
            check(got is not None and (FIRST + seq).startswith(got), "%s: the smtpd got %r" % (name, got))
            want = ["EHLO c.test"] + (["RSET", "EHLO c.test"] if tls else []) + [
                "MAIL FROM:<a@x.test>", "RCPT TO:<b@local.test>", "DATA"]
            check(bed.commands() == want, "%s: %s" % (name, bed.commands()))
            named(bed, name)
        finally:
            bed.close()


@test()
def smuggling_refused_test_smtpd_plain(flavour, _):
    guarded_test_smtpd(flavour, False)


@test()
def smuggling_refused_test_smtpd_tls(flavour, _):
    guarded_test_smtpd(flavour, True)


def guarded_exim(flavour, tls):
    for seq, name, reply in VARIANTS:
        bed, d = exim_bed(flavour, ("-L",))
        if d is None:
            return bed
        try:
            out = smuggle(bed, seq, tls)
            check(out == reply + CLOSING, "%s: the client got %r" % (name, out))
            check(bed.wait_exit() is not None, "%s: exim never exited" % name)
            check(not bed.leftovers(), "leftovers")
            check(mbox(d) == b"", "%s: exim delivered %r" % (name, mbox(d)[-400:]))
            named(bed, name)
        finally:
            bed.close()
            shutil.rmtree(d, ignore_errors=True)
    return None


@test()
def smuggling_refused_exim_plain(flavour, _):
    return guarded_exim(flavour, False)


@test()
def smuggling_refused_exim_tls(flavour, _):
    return guarded_exim(flavour, True)


def messages(box):
    """The envelope senders of the messages in an mbox, in order."""
    return [m.decode() for m in re.findall(rb"^From (\S+) ", box, re.M)]


@test(flavours=("s6",))
def smuggling_without_guard(flavour, _):
    """What each smtpd does with each variant when the proxy does not
    guard: recorded on the PASS line, not judged."""
    seen = {"test smtpd": {}, "exim": {}}
    for tls in (False, True):
        for seq, name, _ in VARIANTS:
            bed = Bed(flavour)
            try:
                out = smuggle(bed, seq, tls, b"QUIT\r\n")
                check(out is not None, "%s: the session hung" % name)
                finished(bed, not tls or flavour == "s6")
                lines = re.findall(rb"[^\n]*\n", FIRST + seq + SECOND[:-3])  # as it reads them
                kept = b"".join(l[1:] if l.startswith(b".") else l for l in lines)
                what = ("smuggled" if bed.file("msg-2") is not None else "one message"
                        if bed.file("msg-1") == kept else "other")
                seen["test smtpd"].setdefault(name, set()).add(what)
            finally:
                bed.close()
            bed, d = exim_bed(flavour)
            if d is None:
                continue
            try:
                out = smuggle(bed, seq, tls, b"QUIT\r\n")
                bed.wait_exit()
                senders = messages(mbox(d))
                what = ("hung" if out is None else "smuggled" if "spoof@x.test" in senders
                        else "one message" if senders else "refused")
                seen["exim"].setdefault(name, set()).add(what)
            finally:
                bed.close()
                shutil.rmtree(d, ignore_errors=True)
    return Passed("without -L: " + "; ".join(summary(who, seen[who]) for who in seen))


def summary(who, seen):
    smuggled = sorted(n for n, w in seen.items() if "smuggled" in w)
    other = sorted("%s %s" % (n, "/".join(sorted(w))) for n, w in seen.items()
                   if w != {"one message"} and "smuggled" not in w)
    return "%s takes a second message after %s of %d%s" % (
        who, " ".join(smuggled) or "none", len(seen), (" (else: %s)" % ", ".join(other)) if other else "")


# --- what -L lets through ---

@test()
def guard_passes_good_mail(flavour, _):
    """Under -L a standard message (lookalike lines, dot-stuffing) is
    delivered byte for byte, plaintext and over TLS, with the session going
    on after it; BDAT chunks with bare line endings pass unscanned."""
    for tls in (False, True):
        bed = Bed(flavour, ("-L",), smtpd_opts=("--ext", "CHUNKING"))
        try:
            c = into_data(bed, tls)
            chunk = b"bare\nLF\n.\nand\rCR\r.\r\n"
            c.send(LOOKALIKE + b".\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
                   + b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"QUIT\r\n")
            r = c.replies(5)
            check(r[0].startswith(b"250 2.0.0 queued") and r[3].endswith(b"queued\r\n")
                  and r[4].startswith(b"221"), r)
            c.close()
            finished(bed, not tls or flavour == "s6")
            want = LOOKALIKE.replace(b"\r\n..", b"\r\n.")
            check(sha256(os.path.join(bed.dir, "msg-1")) == hashlib.sha256(want).hexdigest(), "body differs")
            check(bed.file("msg-2") == chunk, bed.file("msg-2"))
            check(bed.stderr_text() == "" or "smtpd-starttls-proxy-io" not in bed.stderr_text(),
                  bed.stderr_text())
        finally:
            bed.close()


@test()
def guard_exim_auth_over_tls(flavour, _):
    """Under -L the engine stays after TLS: exim's AUTH exchange (334, the
    response, 235) goes through it, then a message is delivered."""
    bed, d = exim_bed(flavour, ("-L",), options=EXIM_AUTH_OPTIONS, authenticators=EXIM_AUTHENTICATORS)
    if d is None:
        return bed
    try:
        c = Client(bed.port)
        c.reply()
        c.send(b"EHLO c.test\r\nSTARTTLS\r\n")
        r = c.replies(2)
        check(b"AUTH" not in r[0] and r[1].startswith(b"220"), r)
        c.starttls()
        c.send(b"EHLO c.test\r\n")
        r = c.reply()
        check(b"AUTH PLAIN" in r and b"STARTTLS" not in r, r)
        c.send(b"AUTH PLAIN\r\n")
        check(c.reply().startswith(b"334"), "no 334")
        c.send(b"AGEAYg==\r\n")
        r = c.reply()
        check(r.startswith(b"235"), r)
        c.send(b"STARTTLS\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n")
        r = c.replies(4)
        check(r[0] == b"503 5.5.1 TLS is already active\r\n" and r[3].startswith(b"354"), r)
        c.send(LOOKALIKE + b".\r\nQUIT\r\n")
        r = c.replies(2)
        check(r[0].startswith(b"250") and r[1].startswith(b"221"), r)
        c.close()
        bed.wait_exit()
        body = LOOKALIKE.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n").replace(b"\n..", b"\n.")
        check(mbox(d).count(body) == 1, "body not delivered intact: %r" % mbox(d)[-300:])
        check(not bed.leftovers(), "leftovers")
    finally:
        bed.close()
        shutil.rmtree(d, ignore_errors=True)
    return None
