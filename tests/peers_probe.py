#!/usr/bin/env python3
"""Drive each stdio smtpd of tests/peers.py over pipes and print what it
says: a mail, then RSET and a second EHLO; RSET right after EHLO; EOF
right after EHLO. Run tests/peers.sh first.

  python3 tests/peers_probe.py [NAME...]
"""
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402

MSG = (b"From: a@x.test\r\nTo: b@local.test\r\nSubject: probe\r\n\r\n"
       b"line one\r\n.leading dot\r\n\r\nlast\r\n")


class Session:
    def __init__(self, argv, env):
        self.p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.buf = b""

    def reply(self, timeout=20):
        """One whole reply, or what came before EOF/timeout."""
        lines = []
        end = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                lines.append(line.rstrip(b"\r"))
                if len(line.rstrip(b"\r")) == 3 or line[3:4] == b" ":
                    return lines
            left = end - time.monotonic()
            r = select.select([self.p.stdout], [], [], max(0, left))[0]
            if not r:
                return lines + [b"<no reply in %ds>" % timeout]
            d = os.read(self.p.stdout.fileno(), 65536)
            if not d:
                return lines + [b"<EOF>"]
            self.buf += d

    def send(self, data):
        try:
            self.p.stdin.write(data)
            self.p.stdin.flush()
            return True
        except BrokenPipeError:
            return False

    def close(self):
        try:
            self.p.stdin.close()
        except BrokenPipeError:
            pass
        try:
            rc = self.p.wait(20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = "killed after 20 s"
        rest = self.p.stdout.read()
        err = self.p.stderr.read()
        return rc, rest, err


def show(who, lines):
    for ln in lines:
        print("  %s %s" % (who, ln.decode("latin-1")))


def converse(s, commands):
    show("S:", s.reply())
    for c in commands:
        show("C:", [c.rstrip(b"\r\n")] if len(c) < 80 else [b"<message>"])
        if not s.send(c):
            print("  (write: EPIPE, the smtpd is gone)")
            break
        r = s.reply()
        show("S:", r)
        if r and r[-1] == b"<EOF>":
            break


def probe(name):
    print("== %s" % name)
    why = peers.why_not(name)
    if why:
        print("  not available: %s" % why)
        return False
    ok = True
    scenarios = [
        ("mail, RSET, second EHLO, QUIT",
         [b"EHLO client.test\r\n", b"MAIL FROM:<a@x.test>\r\n",
          b"RCPT TO:<b@local.test>\r\n", b"DATA\r\n",
          MSG.replace(b"\r\n.", b"\r\n..") + b".\r\n",
          b"RSET\r\n", b"EHLO client.test\r\n", b"QUIT\r\n"]),
        ("RSET right after EHLO",
         [b"EHLO client.test\r\n", b"RSET\r\n", b"QUIT\r\n"]),
        ("EOF right after EHLO", [b"EHLO client.test\r\n"]),
    ]
    for title, cmds in scenarios:
        out = tempfile.mkdtemp(prefix="probe-%s-" % name)
        argv, env = peers.smtpd(name, out)
        print("-- %s" % title)
        s = Session(argv, env)
        converse(s, cmds)
        t = time.monotonic()
        rc, rest, err = s.close()
        print("  after EOF: exit %s in %.1f s%s" % (
            rc, time.monotonic() - t,
            ", then sent %r" % rest if rest else ""))
        if err.strip():
            print("  stderr: %s" % err.decode("latin-1").strip()[-300:])
        if title.startswith("mail"):
            msgs = peers.messages(name, out)
            good = len(msgs) == 1 and peers.content(name, msgs[0]) == MSG
            print("  stored %d message(s); content matches what was sent: %s"
                  % (len(msgs), good))
            ok = ok and good
        shutil.rmtree(out, ignore_errors=True)
    return ok


def main():
    names = sys.argv[1:] or list(peers.SMTPDS)
    bad = [n for n in names if not probe(n)]
    print("probe: %d ok, %d failed%s" % (len(names) - len(bad), len(bad),
                                          (": " + " ".join(bad)) if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
