#!/usr/bin/env python3
"""Writes the fuzzer's seed corpus (tests/corpus/) from real sessions, in
tests/fuzz_smtp.c's record format."""
import os

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def rec(op, data=b"", n=None):
    out = b""
    while True:
        chunk, data = data[:255], data[255:]
        out += bytes([op, len(chunk) if n is None else n]) + chunk
        if not data:
            return out


def C(b): return rec(0, b)
def S(b): return rec(1, b)
def T(n=0): return bytes([2, n])
def EV(k): return bytes([3, k])


G = S(b"220 mx ESMTP\r\n")
EHLO = S(b"250-mx hello\r\n250-PIPELINING\r\n250-AUTH PLAIN\r\n250 SIZE 10\r\n")
SEEDS = {
    "plain_mail": G + C(b"EHLO x\r\n") + T() + EHLO + T() + C(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n") + T(),
    "helo": G + C(b"HELO x\r\n") + T() + S(b"250 mx\r\n") + T(),
    "starttls": G + C(b"EHLO x\r\n") + T() + EHLO + C(b"STARTTLS\r\n") + T() + S(b"250 ok\r\n") + T()
    + EV(3) + C(b"MAIL FROM:<a@b>\r\nEHLO y\r\n") + T() + S(b"250-mx\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n") + T(),
    "pipelined": G + C(b"EHLO x\r\nNOOP\r\nRCPT TO:<a>\r\nRSET\r\nFROB\r\n") + T() + EHLO
    + S(b"250 ok\r\n250 ok\r\n") + T(),
    "injection": G + C(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n") + T() + C(b"STARTTLS\r\n") + T()
    + C(b"RCPT TO:<x>\r\n") + S(b"250 ok\r\n") + T(),
    "auth": b"\x02" + G + C(b"EHLO x\r\nAUTH PLAIN AGFAYg==\r\n") + T() + EHLO + T(),
    "requiretls": b"\x01" + G + C(b"HELO x\r\nMAIL FROM:<a>\r\nVRFY x\r\nQUIT\r\n") + S(b"250 mx\r\n") + T(),
    "overlong": G + C(b"NOOP " + b"a" * 700 + b"\r\nNOOP\r\n") + T() + S(b"250 ok\r\n") + T(),
    "nul_cr_lf": G + C(b"EHLO x\x00yy\r\nNOOP\rEHLO x\r\nNOOP\nQUIT\r\n") + T() + S(b"221 bye\r\n") + EV(1) + T(),
    "eightbit": G + C(b"NOOP \xc3\xa9\xff\xfe\r\nHELP \x80\r\n") + S(b"250 \xe9t\xe9\r\n214-\xff\r\n214 x\r\n") + T(),
    "multiline": S(b"220-a\r\n220-b\r\n220 c\r\n") + C(b"HELP\r\n") + T() + S(b"214-1\r\n214 2\r\n250\r\n") + T(),
    "unsolicited": G + T() + S(b"421 4.4.2 idle\r\n") + EV(1) + T(),
    "garbage_server": G + C(b"NOOP\r\n") + S(b"hello\r\n") + T(),
    "timeout": G + C(b"EHLO x\r\n") + S(b"250-mx\r\n") + EV(2) + T(),
    "halfclose": G + C(b"EHLO x\r\n") + EV(0) + T() + EHLO + EV(1) + T(),
    "single_ehlo": G + C(b"EHLO x\r\n") + T() + S(b"250 mx\r\n") + T() + C(b"EHLO y\r\n") + S(b"250\r\n") + T(),
    "many_noop": G + C(b"NOOP\r\n" * 100) + T() + S(b"250 ok\r\n" * 100) + T(),
}

# with the model smtpd (flag 4): op 1's length says how it answers (1: 354
# to DATA, an EHLO reply with CHUNKING), so S() here is A()
def A(n=1): return bytes([1, n])


MODEL = {
    "model_data": C(b"EHLO x\r\n") + A() + T() + C(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
    + A() + A() + A() + T() + C(b"AUTH PLAIN x\r\nSTARTTLS\r\nQUIT\r\n..\r\n" + b"q" * 300 + b"\r\n.\r\nNOOP\r\n")
    + A() + A() + T(),
    "model_bdat": C(b"EHLO x\r\n") + A() + T() + C(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 6\r\nNOOP\r\nBDAT 5 LAST\r\nQUIT\r\n")
    + A() + A() + A() + A() + T() + C(b"BDAT 3\r\nabcRSET\r\n") + A() + A() + T(),
    "model_helo_auth": C(b"HELO x\r\n") + A() + T() + C(b"EHLO x\r\nAUTH PLAIN AGFAYg==\r\nSTARTTLS\r\n") + A() + T(),
    "model_starttls": C(b"EHLO x\r\n") + A() + T() + C(b"STARTTLS\r\n") + A() + T() + EV(3)
    + C(b"MAIL FROM:<a@b>\r\nEHLO y\r\n") + A() + T(),
    "model_injection": C(b"STARTTLS\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n") + T() + C(b"STARTTLS\r\n")
    + C(b"NOOP\r\n") + A() + T(),
}
for name, data in MODEL.items():
    SEEDS[name] = b"\x04" + data

# with -L too (flag 8): the smuggling tools' end-of-data variants, and a
# TLS session that stays under the engine, with AUTH (-a, flag 2)
DATA = C(b"EHLO x\r\n") + A() + T() + C(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n") + A() + A() + A() + T()
SECOND = b"MAIL FROM:<e@f>\r\nRCPT TO:<c@d>\r\nDATA\r\nspoofed\r\n.\r\n"
for i, seq in enumerate((b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r", b"\n.\r", b"\r.\n",
                         b"\r\n\x00.\r\n", b"\r\n.\x00\r\n")):
    SEEDS["guard_%d" % i] = b"\x0c" + DATA + C(b"first" + seq[:2]) + C(seq[2:] + SECOND) + A() + T()
# with -e (flag 16): no RSET at STARTTLS, a new smtpd's greeting after it
SEEDS["fresh_starttls"] = (b"\x14" + C(b"EHLO x\r\n") + A() + T() + C(b"NOOP\r\nSTARTTLS\r\n") + A() + T()
                           + EV(3) + C(b"EHLO y\r\nMAIL FROM:<a@b>\r\n") + A() + A() + T())
SEEDS["fresh_guard"] = (b"\x1c" + C(b"EHLO x\r\n") + A() + T() + C(b"STARTTLS\r\n") + T() + EV(3)
                        + C(b"EHLO y\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n") + A(1) + A() + A() + A()
                        + T() + C(b"x\r\n.\r\n") + A() + T())
SEEDS["guard_good"] = b"\x0c" + DATA + C(b"..\r\n.x\r\n\r\n.\r\nNOOP\r\n") + A() + A() + T()
SEEDS["guard_tls_auth"] = (b"\x0e" + C(b"EHLO x\r\n") + A() + T() + C(b"STARTTLS\r\n") + A() + T() + EV(3)
                           + C(b"EHLO y\r\nAUTH PLAIN AGFAYg==\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
                           + A(1) + A() + A() + A() + A() + T() + C(b"x\r\n.\n") + T())

# BDAT framed as the smtpd frames it: a size just under 2^32 with a model
# reading sizes modulo 2^32 (flag 32, exim), AUTH behind it
SEEDS["model_bdat_wrap"] = (b"\x24" + C(b"EHLO x\r\n") + A() + T() + C(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
                            + A() + A() + T() + C(b"BDAT 4294967295 LAST\r\nAUTH PLAIN AGFAYg==\r\nQUIT\r\n")
                            + A() + A() + T())
# -L: a good message whose reads end after a CR
SEEDS["guard_split_cr"] = b"\x0c" + DATA + C(b"x\r") + C(b"\n.\r") + C(b"\nNOOP\r\n") + A() + A() + T()

FLAGGED = ("auth", "requiretls") + tuple(MODEL) + ("model_bdat_wrap", "guard_split_cr") + tuple(n for n in SEEDS if n.startswith("guard_"))  # these begin with their own flags byte
os.makedirs(OUT, exist_ok=True)
for name, data in SEEDS.items():
    if name not in FLAGGED:
        data = b"\x00" + data
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print("%d seeds in %s" % (len(SEEDS), OUT))
