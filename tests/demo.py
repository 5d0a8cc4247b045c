#!/usr/bin/env python3
"""make demo: one real STARTTLS session on loopback. The test UCSPI-TLS
server (s6 flavour) runs smtpd-starttls-proxy-io in front of the test
smtpd; a real client (swaks, or Python's smtplib without it) sends a mail
over TLS. Prints the transcript, what the smtpd saw and the mail it got."""
import os
import shutil
import smtplib
import ssl
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bed import Bed  # noqa: E402


def main():
    bed = Bed("s6", ("-v", "2"))
    try:
        print("== test UCSPI-TLS server (s6 flavour) on 127.0.0.1:%d, running:" % bed.port)
        print("   smtpd-starttls-proxy-io -v 2 python3 tests/smtpd.py DIR\n")
        if shutil.which("swaks"):
            print("== client transcript (swaks --tls)")
            p = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % bed.port, "--tls",
                                "--from", "alice@example.org", "--to", "bob@example.net",
                                "--header", "Subject: make demo",
                                "--body", "Hello Bob,\nthis mail went through STARTTLS.\n"],
                               timeout=60)
            ok = p.returncode == 0
        else:
            print("== client transcript (Python smtplib; install swaks for a nicer one)")
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            with smtplib.SMTP("127.0.0.1", bed.port, timeout=20) as s:
                s.set_debuglevel(1)
                s.ehlo("demo.example.org")
                s.starttls(context=ctx)
                s.ehlo("demo.example.org")
                s.sendmail("alice@example.org", ["bob@example.net"],
                           b"Subject: make demo\r\n\r\nHello Bob,\r\nthis mail went through STARTTLS.\r\n")
            ok = True
        bed.wait_exit()
        print("\n== what the smtpd received (it never sees STARTTLS: the proxy answers it)")
        for c in bed.commands():
            print("   " + c)
        print("\n== the delivered message")
        sys.stdout.write((bed.file("msg-1") or b"(none)\n").decode(errors="replace"))
        print("\n== the UCSPI-TLS server's log")
        for ev in bed.events():
            print("   " + " ".join(ev))
        print("\n== the proxy's log (stderr, -v 2)")
        sys.stdout.write(bed.stderr_text())
        delivered = bed.file("msg-1") is not None
        print("\n%s" % ("demo: mail delivered over TLS" if ok and delivered else "demo: FAILED"))
        return 0 if ok and delivered else 1
    finally:
        bed.close()


if __name__ == "__main__":
    sys.exit(main())
