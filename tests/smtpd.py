#!/usr/bin/env python3
"""A scriptable SMTP server on stdin/stdout for tests.

  smtpd.py DIR [options]

Records every command line in DIR/commands (one per line, as received
minus CRLF), each message body in DIR/msg-N, its environment in DIR/env and
its open fds in DIR/fds; the same for each smtpd started in DIR, numbered
from 1 in start order, in DIR/commands.N, env.N, fds.N, its pid in
DIR/pid.N, and how its input ended ("quit" or "eof") in DIR/end.N. Its input ending inside DATA discards the
message, as exim -bs does: what it got goes to DIR/discarded-N (not msg-N),
and it exits without a reply. Options:
  --single       one-line EHLO reply ("250 mx.test")
  --auth         advertise AUTH PLAIN LOGIN
  --starttls     advertise STARTTLS itself
  --greeting T   greeting line (default "220 mx.test ESMTP test")
  --exit-at VERB exit without a word when VERB arrives
  --slow MS      wait MS before every reply
  --help-lines N multi-line HELP reply of N lines
  --ehlo-pad N   make the EHLO reply's first line N octets longer
  --idle-421 MS  after MS without a command, say 421 unasked and exit
  --unique       name message files msg-PID-N (many smtpds share DIR)
  --ext KEYWORD  one more EHLO keyword (ETRN, CHUNKING: BDAT works then)
  --rset-421     answer RSET with 421 and exit
  --ehlo-cut     send the first two lines of the EHLO reply, then exit
  --after-rset T send the line T unasked right after the reply to RSET
  --write-timeout MS  exit when a reply could not be written for MS, as
                 qmail-smtpd does; the time of that exit goes in DIR/write-timeout
  --exit-code C  exit with C when the session ends (QUIT or EOF)
  --first-lingers MS  the first smtpd in DIR stays MS after its session
                 ends, then says 421 unasked and exits 3 (an idle timeout)
  --second-greeting T  the greeting of the second smtpd in DIR
  --cr-ends-line a bare CR ends a line too, as a bare LF does (in commands
                 and in DATA, where "." then "<CR>" is an end of data)
  --loose-end    DATA ends at a "." line whatever ends it ("<LF>.<LF>")
  --final-delay MS  wait MS before the reply to DATA's final dot and to
                 BDAT LAST
Every --ext keyword is a verb too, answered 250 (ETRN and BDAT aside).
BDAT is framed by RFC 3030's grammar: anything else gets 501 and no chunk.
A "|" in the greeting separates lines.
"""
import re
import os
import select
import signal
import sys
import time

args = sys.argv[1:]
out_dir = args.pop(0)
opt = {"single": False, "auth": False, "starttls": False, "greeting": "220 mx.test ESMTP test",
       "exit-at": None, "slow": 0, "help-lines": 3, "ehlo-pad": 0,
       "idle-421": 0, "unique": False, "ext": [], "rset-421": False, "ehlo-cut": False,
       "after-rset": None, "write-timeout": 0, "exit-code": 0,
       "first-lingers": 0, "second-greeting": None, "cr-ends-line": False, "loose-end": False,
       "final-delay": 0}
while args:
    a = args.pop(0)[2:]
    if a in ("single", "auth", "starttls", "unique", "rset-421", "ehlo-cut", "cr-ends-line", "loose-end"):
        opt[a] = True
    elif a == "ext":
        opt[a].append(args.pop(0))
    else:
        opt[a] = args.pop(0)

outp = sys.stdout.buffer


class Input:
    """stdin, by lines: up to LF, or with --cr-ends-line up to a bare CR
    too (which needs the next byte to be seen first)."""

    def __init__(self):
        self.f = sys.stdin.buffer
        self.ahead = b""

    def byte(self):
        if self.ahead:
            b, self.ahead = self.ahead, b""
            return b
        return self.f.read(1)

    def readline(self, limit=100000):
        if not opt["cr-ends-line"]:
            line = self.ahead + self.f.readline(limit)
            self.ahead = b""
            return line
        line = b""
        while len(line) < limit:
            b = self.byte()
            if not b:
                return line
            line += b
            if b == b"\n":
                return line
            if b == b"\r":
                n = self.byte()
                if n == b"\n":
                    return line + n
                self.ahead = n
                return line

    def read(self, n):
        out = self.ahead[:n]
        self.ahead = self.ahead[n:]
        while len(out) < n:
            data = self.f.read(n - len(out))
            if not data:
                break
            out += data
        return out


inp = Input()
try:
    fds = sorted(int(x) for x in os.listdir("/proc/self/fd"))
    fdlines = []
    for fd in fds:
        try:
            fdlines.append("%d %s\n" % (fd, os.readlink("/proc/self/fd/%d" % fd)))
        except OSError:
            pass
except OSError:
    fdlines = []

def claim():
    """This smtpd's number in DIR: the first env.N free."""
    n = 1
    while True:
        try:
            os.close(os.open(os.path.join(out_dir, "env.%d" % n), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return n
        except FileExistsError:
            n += 1


instance = claim()
with open(os.path.join(out_dir, "pid.%d" % instance), "w") as f:
    f.write("%d\n" % os.getpid())
for name in ("fds", "fds.%d" % instance):
    with open(os.path.join(out_dir, name), "w") as f:
        f.write("".join(l for l in fdlines if "/proc/" not in l))
log = open(os.path.join(out_dir, "commands"), "ab", buffering=0)
mylog = open(os.path.join(out_dir, "commands.%d" % instance), "ab", buffering=0)
for name in ("env", "env.%d" % instance):
    with open(os.path.join(out_dir, name), "wb") as f:
        for k, v in sorted(os.environb.items()):
            f.write(k + b"=" + v + b"\0")


def ended(how):
    with open(os.path.join(out_dir, "end.%d" % instance), "w") as f:
        f.write(how)


def reply(s):
    if int(opt["slow"]):
        time.sleep(int(opt["slow"]) / 1000)
    data = s.encode() if isinstance(s, str) else s
    if not int(opt["write-timeout"]):
        outp.write(data)
        outp.flush()
        return
    os.set_blocking(1, False)
    while data:
        if not select.select([], [1], [], int(opt["write-timeout"]) / 1000)[1]:
            with open(os.path.join(out_dir, "write-timeout"), "w") as f:
                f.write("%f\n" % time.time())
            os._exit(1)
        try:
            data = data[os.write(1, data):]
        except BlockingIOError:
            pass


def idle(*_):
    reply("421 4.4.2 mx.test idle timeout\r\n")
    os._exit(0)


if int(opt["idle-421"]):
    signal.signal(signal.SIGALRM, idle)
    signal.setitimer(signal.ITIMER_REAL, int(opt["idle-421"]) / 1000)

if instance == 2 and opt["second-greeting"]:
    opt["greeting"] = opt["second-greeting"]
reply(opt["greeting"].replace("|", "\r\n") + "\r\n")
mail = False
rcpts = 0
inbdat = False  # a BDAT message has begun
nmsg = len([n for n in os.listdir(out_dir) if n.startswith("msg-")])
while True:
    line = inp.readline(100000)
    if not line:
        ended("eof")
        break
    if int(opt["idle-421"]):
        signal.setitimer(signal.ITIMER_REAL, int(opt["idle-421"]) / 1000)
    log.write(line.rstrip(b"\r\n") + b"\n")
    mylog.write(line.rstrip(b"\r\n") + b"\n")
    text = line.rstrip(b"\r\n").decode("latin-1")
    verb = text.split(" ", 1)[0].upper()
    arg = text[len(verb) + 1:]
    if opt["exit-at"] and verb == opt["exit-at"].upper():
        sys.exit(0)
    if verb == "EHLO":
        mail = False
        if opt["single"]:
            reply("250 mx.test\r\n")
        else:
            ext = ["PIPELINING", "8BITMIME", "SIZE 100000000"]
            if opt["auth"]:
                ext.append("AUTH PLAIN LOGIN")
            if opt["starttls"]:
                ext.append("STARTTLS")
            ext += opt["ext"]
            lines = ["mx.test hello " + arg + "x" * int(opt["ehlo-pad"])] + ext
            text = "".join("250%s%s\r\n" % ("-" if i < len(lines) - 1 else " ", l)
                           for i, l in enumerate(lines))
            if opt["ehlo-cut"]:
                reply("".join(text.splitlines(True)[:2]))
                sys.exit(0)
            reply(text)
    elif verb == "HELO":
        mail = False
        reply("250 mx.test\r\n")
    elif verb == "MAIL":
        mail, rcpts = True, 0
        reply("250 2.1.0 sender ok\r\n")
    elif verb == "RCPT":
        if not mail:
            reply("503 5.5.1 MAIL first\r\n")
        else:
            rcpts += 1
            reply("250 2.1.5 recipient ok\r\n")
    elif verb == "DATA":
        if not rcpts:
            reply("503 5.5.1 RCPT first\r\n")
            continue
        reply("354 go ahead\r\n")
        nmsg += 1
        # concurrent smtpds in one directory each name their own files
        name = "msg-%d" % nmsg if not opt["unique"] else "msg-%d-%d" % (os.getpid(), nmsg)
        with open(os.path.join(out_dir, name), "wb") as body:
            while True:
                l = inp.readline()
                if not l or l == b".\r\n":
                    break
                # a "." line ended by LF or CR alone (not by the end of input)
                if (opt["loose-end"] or opt["cr-ends-line"]) and l in (b".\n", b".\r"):
                    break
                if l.startswith(b"."):
                    l = l[1:]
                body.write(l)
        if not l:  # no final dot: no message
            os.rename(os.path.join(out_dir, name), os.path.join(out_dir, "discarded" + name[3:]))
            sys.exit(0)
        mail = False
        time.sleep(int(opt["final-delay"]) / 1000)
        reply("250 2.0.0 queued as %d\r\n" % nmsg)
    elif verb == "RSET":
        mail = False
        if opt["rset-421"]:
            reply("421 4.3.2 mx.test shutting down\r\n")
            sys.exit(0)
        reply("250 2.0.0 flushed\r\n")
        if opt["after-rset"]:
            reply(opt["after-rset"] + "\r\n")
    elif verb == "NOOP":
        reply("250 2.0.0 ok\r\n")
    elif verb == "HELP":
        n = int(opt["help-lines"])
        reply("".join("214%shelp line %d\r\n" % ("-" if i < n - 1 else " ", i) for i in range(n)))
    elif verb == "AUTH":
        reply("235 2.7.0 authenticated\r\n")
    elif verb == "STARTTLS":
        reply("454 4.7.0 no TLS here\r\n")
    elif verb == "QUIT":
        reply("221 2.0.0 bye\r\n")
        ended("quit")
        break
    elif verb == "BDAT" and "CHUNKING" in opt["ext"]:
        m = re.fullmatch(r"BDAT ([0-9]+)( [Ll][Aa][Ss][Tt])?", text, re.I)
        if not m:
            reply("501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n")
            continue
        size, last = m.group(1), m.group(2) is not None
        chunk = inp.read(int(size))
        nmsg += 0 if inbdat else 1
        inbdat = not last
        with open(os.path.join(out_dir, "msg-%d" % nmsg), "ab") as body:
            body.write(chunk)
        if last:
            time.sleep(int(opt["final-delay"]) / 1000)
        reply("250 2.0.0 %d octets%s\r\n" % (len(chunk), " queued" if last else ""))
    elif verb == "ETRN" and "ETRN" in opt["ext"]:
        reply("250 2.0.0 queuing for %s started\r\n" % arg)
    elif verb in ("VRFY", "EXPN"):
        reply("252 2.1.5 cannot verify\r\n")
    elif verb in [x.split(" ")[0].upper() for x in opt["ext"]]:
        reply("250 2.0.0 %s ok\r\n" % verb)
    else:
        reply("502 5.5.1 unknown command\r\n")
if instance == 1 and int(opt["first-lingers"]):
    time.sleep(int(opt["first-lingers"]) / 1000)
    try:
        reply("421 4.4.2 mx.test idle timeout\r\n")
    except OSError:
        pass
    sys.exit(3)
sys.exit(int(opt["exit-code"]))
