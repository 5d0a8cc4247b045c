"""Third-party SMTP peers from Debian, as set up by tests/peers.sh.

Stdlib only. Every function returns None when its peer is not set up, so
a test can skip; why_not(name) says why.

    import peers
    run = peers.smtpd("qpsmtpd", outdir)      # (argv, env) or None
    if run is None: skip(peers.why_not("qpsmtpd"))
    argv, env = run                            # the smtpd, on stdin/stdout
    ...
    msgs = peers.messages("qpsmtpd", outdir)   # [bytes], oldest first
    peers.content("qpsmtpd", msgs[0])          # the DATA content as sent

Stdio smtpds (each writes what it accepts under outdir):
  qpsmtpd   qpsmtpd 0.94 through tests/peers/qpsmtpd-stdio
  msmtpd    msmtpd --inetd, messages piped to tests/peers/msmtpd-deliver
  courier   courieresmtpd in a private mount namespace (root, overlayfs)
  postfix   Postfix sendmail -bs (stand-alone smtpd -S: no relay control)
Clients: smtp_source(), posttls_finger() return an argv prefix.

The peers folder is $PEERS_DIR, else tests/work-peers beside this file (not under tests/work,
which tests/run.py empties at each run).
"""
import glob
import os
import re
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))

SMTPDS = ("qpsmtpd", "msmtpd", "courier", "postfix")

_WRAPPER = {
    "qpsmtpd": "qpsmtpd-stdio",
    "msmtpd": "msmtpd-stdio",
    "courier": "courieresmtpd-stdio",
    "postfix": "postfix-sendmail-bs",
}


def peers_dir():
    return os.environ.get("PEERS_DIR") or os.path.join(HERE, "work-peers")


def _available():
    try:
        with open(os.path.join(peers_dir(), "available")) as f:
            return set(f.read().split())
    except OSError:
        return set()


def why_not(name):
    """None when peer NAME can run, else the reason it cannot."""
    d = peers_dir()
    if not os.path.isdir(d):
        return "peers not set up: run tests/peers.sh %s" % d
    if name not in _available():
        return "%s not available: tests/peers.sh could not set it up" % name
    if name in _WRAPPER:
        w = os.path.join(d, "bin", _WRAPPER[name])
        if not os.access(w, os.X_OK):
            return "%s missing" % w
        if name == "courier" and os.geteuid() != 0:
            return "courieresmtpd needs root (unshare -m, overlayfs)"
    return None


def smtpd(name, outdir):
    """(argv, env) running peer NAME as a stdio smtpd that writes the
    messages it accepts under outdir (made if missing), or None."""
    if why_not(name) is not None:
        return None
    os.makedirs(outdir, exist_ok=True)
    argv = [os.path.join(peers_dir(), "bin", _WRAPPER[name]),
            os.path.abspath(outdir)]
    return argv, dict(os.environ)


def qpsmtpd(outdir):
    return smtpd("qpsmtpd", outdir)


def msmtpd(outdir):
    return smtpd("msmtpd", outdir)


def courier(outdir):
    return smtpd("courier", outdir)


def postfix(outdir):
    return smtpd("postfix", outdir)


def _files(name, outdir):
    if name in ("qpsmtpd", "msmtpd"):
        return glob.glob(os.path.join(outdir, "msg.*.eml"))
    if name == "courier":
        q = os.path.join(outdir, "var", "courier")
        return (glob.glob(os.path.join(q, "tmp", "*", "D*"))
                + glob.glob(os.path.join(q, "msgs", "*", "D*")))
    if name == "postfix":
        return glob.glob(os.path.join(outdir, "queue", "maildrop", "*"))
    raise ValueError(name)


def _read(name, outdir, path):
    if name != "postfix":
        with open(path, "rb") as f:
            return f.read()
    # a Postfix queue file: postcat prints its header and body
    env = dict(os.environ, MAIL_CONFIG=os.path.join(
        os.path.abspath(outdir), "conf"))
    r = subprocess.run([os.path.join(peers_dir(), "bin", "postfix-postcat"),
                        "-bh", path], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, timeout=30, check=True)
    return r.stdout


def messages(name, outdir):
    """The messages peer NAME stored under outdir, as bytes, oldest first
    (by modification time, then name), as the peer stored them: line ends
    LF, a trace header of the peer's own first except for qpsmtpd. None
    when the peer is not available."""
    if why_not(name) is not None:
        return None
    paths = _files(name, outdir)
    paths.sort(key=lambda p: (os.stat(p).st_mtime_ns, p))
    return [_read(name, outdir, p) for p in paths]


_LONE_LF = re.compile(rb"(?<!\r)\n")


def content(name, msg):
    """The DATA content a client sent, recovered from a stored message:
    the trace header the peer put first (msmtpd, courier, postfix) taken
    off, line ends back to CRLF. Dot-stuffing is already undone."""
    if name != "qpsmtpd" and msg.startswith(b"Received:"):
        lines = msg.split(b"\n")
        i = 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            i += 1
        msg = b"\n".join(lines[i:])
    return _LONE_LF.sub(b"\r\n", msg)


def envelopes(name, outdir):
    """For qpsmtpd and msmtpd: [(sender, [recipients])] per message, in
    the order of messages(); None for the others."""
    if name not in ("qpsmtpd", "msmtpd") or why_not(name) is not None:
        return None
    out = []
    paths = _files(name, outdir)
    paths.sort(key=lambda p: (os.stat(p).st_mtime_ns, p))
    for p in paths:
        with open(p[:-len(".eml")] + ".env", "rb") as f:
            lines = f.read().splitlines()
        out.append((lines[0], lines[1:]))
    return out


def _client(tool):
    if why_not("postfix") is not None:
        return None
    w = os.path.join(peers_dir(), "bin", "postfix-" + tool)
    return [w] if os.access(w, os.X_OK) else None


def smtp_source():
    """argv prefix of Postfix's smtp-source (HELO only, no TLS), e.g.
    + ["-s", "1", "-m", "1", "-f", "a@x.test", "-t", "b@local.test",
       "127.0.0.1:%d" % port]; or None."""
    return _client("smtp-source")


def posttls_finger():
    """argv prefix of Postfix's posttls-finger, e.g. + ["-c", "-l", "may",
    "[127.0.0.1]:%d" % port]; or None."""
    return _client("posttls-finger")
