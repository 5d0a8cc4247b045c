#!/usr/bin/env python3
"""Runs every test: the C unit tests, then the end-to-end ones through the
test UCSPI-TLS server with real clients. Ends with "N passed, N failed,
N skipped". Arguments, if any, are substrings selecting tests by name;
one that starts with ~ leaves out the tests whose names hold the rest.

  --unit, --e2e   only those
  --real DIR      instead: every end-to-end test that can run under a real
                  server, under each real kind (s6-libtls, s6-bearssl,
                  sslserver) built into DIR by ../shared/anchors/build.sh;
                  --kinds=a,b picks some of them"""
import glob
import importlib
import os
import shutil
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bed  # noqa: E402
from bed import TOP, WORK, certificate  # noqa: E402
import e2e  # noqa: E402
import peers  # noqa: E402

# more end-to-end tests, one file per subject, each adding to e2e.TESTS
for _f in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e_*.py"))):
    importlib.import_module(os.path.basename(_f)[:-3])

results = {"passed": 0, "failed": 0, "skipped": 0}


def record(name, status, detail=""):
    results[status] += 1
    print("%s %s%s" % ({"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[status], name,
                       (": " + detail) if detail else ""), flush=True)


def unit(binary, selected):
    path = os.path.join(TOP, "tests", binary)
    p = subprocess.run([path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    out = p.stdout.decode(errors="replace").splitlines()
    seen = 0
    detail = []
    for line in out:
        if line.startswith("  "):
            detail.append(line.strip())
            continue
        word, _, name = line.partition(" ")
        name = binary.replace("test_", "") + "." + name
        if not selected(name):
            detail = []
            continue
        seen += 1
        record(name, "passed" if word == "PASS" else "failed", "; ".join(detail))
        detail = []
    if p.returncode and not any(l.startswith("FAIL") for l in out):
        record(binary, "failed", "exit %d: %s" % (p.returncode, out[-3:]))
    return seen


def valgrind_logs():
    """Every memcheck log must be empty of errors, and every descriptor
    open at exit must be one the proxy was given."""
    bad = []
    logs = [f for f in os.listdir(WORK) if f.startswith("valgrind.")]
    for name in logs:
        with open(os.path.join(WORK, name)) as f:
            blocks = f.read().split("==\n")
        for b in blocks:
            lines = [l.split("== ", 1)[-1].strip() for l in b.splitlines()]
            lines = [l for l in lines if l and not l.startswith("FILE DESCRIPTORS")]
            if not lines:
                continue
            if lines[0].startswith("Open ") and "<inherited from parent>" in lines:
                continue
            bad.append("%s: %s" % (name, " | ".join(lines[:4])))
    record("valgrind_logs_clean", "failed" if bad or not logs else "passed",
           "; ".join(bad[:5]) if bad else "%d logs" % len(logs))


def runs(real, kinds):
    """(name, function, arguments, server kind) of every test to run: each
    once, emulated; or with --real, each test that may run under a real
    server, under each real kind standing for its flavour."""
    for name, fn, args in e2e.TESTS:
        allowed = e2e.KINDS.get(fn.__name__, ["emulated"] + list(bed.REAL_KINDS))
        if not real:
            if "emulated" in allowed:
                yield name, fn, args, "emulated"
            continue
        if fn.__name__ in e2e.EMULATED or args[0] not in ("s6", "sslserver"):
            continue
        for kind in kinds:
            if bed.REAL_KINDS[kind] == args[0] and kind in allowed:
                yield name.replace("[" + args[0], "[" + kind, 1), fn, args, kind


def peers_note():
    """Said once, so that a newcomer is not left to guess from the skips."""
    why = peers.why_not("qpsmtpd")
    if why and "not set up" in why:
        print("NOTE the recipes' third-party smtpds are not set up (%s): their tests skip; "
              "run sh tests/peers.sh once to set them up" % why, flush=True)


def main():
    args = sys.argv[1:]
    real = None
    kinds = list(bed.REAL_KINDS)
    if "--real" in args:
        i = args.index("--real")
        real = os.path.abspath(args[i + 1])
        del args[i:i + 2]
        bed.ANCHORS = real
        os.environ["ANCHORS"] = real
    for a in args:
        if a.startswith("--kinds="):
            kinds = a.split("=", 1)[1].split(",")
    do_unit = "--e2e" not in args and not real
    do_e2e = "--unit" not in args
    wanted = [a for a in args if not a.startswith("--") and not a.startswith("~")]
    unwanted = [a[1:] for a in args if a.startswith("~")]

    def selected(name):
        return (not wanted or any(w in name for w in wanted)) and not any(u in name for u in unwanted)

    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    os.chmod(WORK, 0o755)  # whatever the umask: exim -bs must reach its files (bed.workdir)
    if do_unit:
        unit("test_smtp", selected)
        unit("test_ucspitls", selected)
        unit("test_relay", selected)
        unit("test_relay_copy", selected)
    certificate()
    peers_note()
    for name, fn, args, kind in runs(real, kinds):
        if not do_e2e or not selected(name):
            continue
        bed.KIND = kind
        t0 = time.time()
        del bed.CLOSED[:]
        del bed.CRASHED[:]
        try:
            ret = fn(*args)
            if bed.CRASHED:
                raise AssertionError("the emulator crashed: %s" % bed.CRASHED[0])
            took = "%.1fs" % (time.time() - t0) if time.time() - t0 > 5 else ""
            if isinstance(ret, e2e.Passed):
                record(name, "passed", "; ".join(x for x in (ret, took) if x))
            elif ret:
                record(name, "skipped", ret)
            else:
                record(name, "passed", took)
        except Exception as ex:  # one broken test must not stop the others
            tb = traceback.format_exc().strip().splitlines()
            record(name, "failed", "%s: %s | %s" % (type(ex).__name__, ex, " / ".join(tb[-4:-1])))
            for summary in bed.CLOSED[-3:]:
                print("  bed %s" % summary)
    if os.environ.get("VALGRIND"):
        valgrind_logs()
    print("%d passed, %d failed, %d skipped" % (results["passed"], results["failed"],
                                               results["skipped"]))
    if bed.WORK_MADE and not results["failed"]:
        shutil.rmtree(WORK, ignore_errors=True)
    elif results["failed"]:
        print("the run's files are in %s" % WORK)
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
