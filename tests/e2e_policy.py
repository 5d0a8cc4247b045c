"""End-to-end tests of the per-client TLS policy the access rules give in
UCSPITLS (issue 21), through the test server of both flavours: every value
with every combination of -r and -a; and which address the log lines name
when the super-server sets both TCPREMOTEIP and SSLREMOTEIP."""
import re

from bed import PROG, SMTPD, WORK, Bed, Client
from e2e import check, finished, test

OPTS = ((), ("-r",), ("-a",), ("-r", "-a"))
STARTTLS_LINE = b"250 STARTTLS\r\n"
NOT_OFFERED = b"502 5.5.1 STARTTLS not offered to this client\r\n"
TLSFIRST = b"530 5.7.0 Must issue a STARTTLS command first\r\n"


def expected(value, opts):
    """(STARTTLS offered, TLS required, AUTH shown before TLS) for a value
    of UCSPITLS (None: unset) under opts."""
    if value is None:
        required = "-r" in opts
        return True, required, "-a" in opts and not required
    if value == "-":
        return False, False, "-a" in opts
    if value == "":
        return True, False, "-a" in opts
    # "!" and every value the program does not know: TLS required, and
    # with it AUTH is never shown in plaintext
    return True, True, False


def session(flavour, value, opts):
    env = {} if value is None else {"UCSPITLS": value}
    bed = Bed(flavour, ("-v", "2") + opts, smtpd_opts=("--auth", "--starttls"), env=env)
    offered, required, auth = expected(value, opts)
    what = "UCSPITLS=%r %s" % (value, " ".join(opts))
    try:
        c = Client(bed.port)
        c.reply()
        c.send(b"EHLO client.test\r\n")
        ehlo = c.reply()
        check(ehlo.startswith(b"250-mx.test"), "%s: %r" % (what, ehlo))
        check((ehlo.endswith(STARTTLS_LINE)) == offered, "%s: STARTTLS offered: %r" % (what, ehlo))
        check(ehlo.upper().count(b"STARTTLS") == (1 if offered else 0), "%s: %r" % (what, ehlo))
        check((b"AUTH" in ehlo) == auth, "%s: AUTH shown: %r" % (what, ehlo))
        c.send(b"MAIL FROM:<a@x.test>\r\n")
        mail = c.reply()
        check(mail == (TLSFIRST if required else b"250 2.1.0 sender ok\r\n"), "%s: MAIL: %r" % (what, mail))
        if offered:
            c.send(b"RSET\r\n")
            c.reply()
            c.send(b"STARTTLS\r\n")
            r = c.reply()
            if not required and "-a" in opts:
                # MAIL declined TLS, and with -a handed the session to the
                # relay: the smtpd answers (454 here)
                check(r.startswith(b"454 "), "%s: STARTTLS after MAIL: %r" % (what, r))
            elif not required:
                # MAIL declined TLS for this session
                check(r.startswith(b"503 "), "%s: STARTTLS after MAIL: %r" % (what, r))
            else:
                check(r == b"220 2.0.0 Ready to start TLS\r\n", "%s: STARTTLS: %r" % (what, r))
                c.starttls()
                c.send(b"EHLO client.test\r\n")
                ehlo2 = c.reply()
                check(b"AUTH" in ehlo2 and b"STARTTLS" not in ehlo2, "%s: over TLS: %r" % (what, ehlo2))
                c.send(b"MAIL FROM:<a@x.test>\r\n")
                check(c.reply() == b"250 2.1.0 sender ok\r\n", what)
        else:
            c.send(b"STARTTLS\r\n")
            r = c.reply()
            check(r == NOT_OFFERED, "%s: STARTTLS: %r" % (what, r))
            c.send(b"AUTH PLAIN AGFAYg==\r\n")
            r = c.reply()
            check(r.startswith(b"235 ") if auth else r == TLSFIRST, "%s: AUTH: %r" % (what, r))
        c.send(b"QUIT\r\n")
        check(c.reply().startswith(b"221 "), what)
        c.close()
        # the smtpd's exit status is the session's; under sslserver a
        # decline's SIGTERM may reach it after its QUIT
        finished(bed, flavour == "s6")
        code = bed.wait_exit()
        check(code == "code=0" or (flavour == "sslserver" and code == "signal=15"), "%s: exit %s" % (what, code))
        cmds = bed.commands()
        check(cmds[0] == "EHLO client.test", "%s: %s" % (what, cmds))
        relayed = offered and not required and "-a" in opts
        check(any(x.upper().startswith("STARTTLS") for x in cmds) == relayed,
              "%s: STARTTLS reached the smtpd: %s" % (what, cmds))
        check("MAIL FROM:<a@x.test>" in cmds, "%s: %s" % (what, cmds))
        if required:
            check(cmds.count("MAIL FROM:<a@x.test>") == 1, "%s: MAIL before TLS reached it: %s" % (what, cmds))
        check((("AUTH PLAIN AGFAYg==" in cmds) == (not offered and auth)), "%s: %s" % (what, cmds))
        env = bed.file("env.1") or b""
        check(not any(e.startswith(b"UCSPITLS=") for e in env.split(b"\0")),
              "%s: the smtpd got UCSPITLS" % what)
        # the control socket: a command only when STARTTLS ran; otherwise
        # it closed at the session's end without one, as for a decline
        events = [ev[1:] for ev in bed.events()]
        commands = [ev for ev in events if ev[0] == "command"]
        if offered and required:
            check(commands == [["command", "Y"]], "%s: %s" % (what, events))
            check(["handshake-ok"] == [ev[0] for ev in events if ev[0] == "handshake-ok"], "%s: %s" % (what, events))
        else:
            check(not commands and ["declined"] in events, "%s: control socket: %s" % (what, events))
        log = bed.logtext()
        warnings = [l for l in log.splitlines() if ": warning: " in l]
        if value not in (None, "-", "", "!"):
            check(len(warnings) == 1 and ("UCSPITLS=%s" % value) in warnings[0]
                  and "TLS required" in warnings[0], "%s: %r" % (what, log))
        else:
            check(not warnings, "%s: %r" % (what, log))
        end = [l for l in log.splitlines() if ": info: end: " in l]
        check(len(end) == 1 and ("TLSv1" in end[0]) == (offered and required), "%s: %r" % (what, log))
    finally:
        bed.close()


def policy_test(value, name):
    def run(flavour, _):
        for opts in OPTS:
            session(flavour, value, opts)
    run.__name__ = "policy_" + name
    # the control socket's fate is seen only in the emulator's log; the real
    # servers run README's policy recipes instead (real_policy_recipe)
    test(emulated="the control socket's events are the emulator's log")(run)


policy_test("-", "dash_not_offered")
policy_test("", "empty_default")
policy_test("!", "bang_required")
policy_test("?", "unknown_question_fails_closed")
policy_test("@", "unknown_at_fails_closed")
policy_test("yes", "unknown_word_fails_closed")
policy_test(None, "unset_options_alone")


@test()
def policy_dash_with_L_and_e(flavour, _):
    """UCSPITLS=- with -L (the engine stays for the content) and with -e (no
    second smtpd ever starts): STARTTLS refused, a mail goes through, one
    smtpd saw it all."""
    for opts in (("-L",), ("-e",), ("-e", "-a")):
        bed = Bed(flavour, opts, smtpd_opts=("--starttls",), env={"UCSPITLS": "-"})
        try:
            c = Client(bed.port)
            c.reply()
            c.send(b"EHLO c\r\n")
            ehlo = c.reply()
            check(b"STARTTLS" not in ehlo, "%s: %r" % (opts, ehlo))
            c.send(b"STARTTLS\r\n")
            check(c.reply() == NOT_OFFERED, opts)
            c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
            c.replies(3)
            c.send(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
            check(c.reply().startswith(b"250 "), opts)
            check(c.reply().startswith(b"221 "), opts)
            c.close()
            finished(bed, flavour == "s6" or "-e" in opts)
            check(bed.file("env.2") is None, "%s: a second smtpd started" % (opts,))
            check(bed.file("msg-1") == b"Subject: x\r\n\r\nbody\r\n", "%s: %r" % (opts, bed.file("msg-1")))
        finally:
            bed.close()


ADDR = re.compile(r"^smtpd-starttls-proxy-io: info: pid \d+ ip ([0-9a-fA-F.:]+): ", re.M)


@test()
def log_address_tcpremoteip_wins(flavour, _):
    """proxy-server sets TCPREMOTEIP to the client behind a balancer, while
    sslserver's SSLREMOTEIP stays the balancer's: the log lines, end line
    included, name TCPREMOTEIP's address; SSLREMOTEIP only when alone."""
    for env, want in ((("TCPREMOTEIP=192.0.2.7", "SSLREMOTEIP=198.51.100.9"), "192.0.2.7"),
                      (("-u", "TCPREMOTEIP", "SSLREMOTEIP=198.51.100.9"), "198.51.100.9")):
        # the test server sets both itself: env overrides them, and the
        # smtpd's directory is the bed's, named by the marker it exports
        app = ["sh", "-c", 'exec env %s "$@" "%s/$TESTBED"' % (" ".join(env), WORK), "sh",
               PROG, "-v", "2"] + SMTPD
        bed = Bed(flavour, app=app)
        try:
            c = Client(bed.port)
            c.reply()
            c.send(b"EHLO c\r\nQUIT\r\n")
            c.replies(2)
            c.close()
            finished(bed, flavour == "s6")
            text = bed.stderr_text()
            addrs = ADDR.findall(text)
            end = [l for l in text.splitlines() if ": end: " in l]
            check(len(end) == 1 and ADDR.match(end[0]) and set(addrs) == {want}, "%s: %r" % (env, text))
        finally:
            bed.close()
