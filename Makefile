# smtpd-starttls-proxy-io: POSIX make, no configure step.
PROG = smtpd-starttls-proxy-io
CC = cc
# -Os: a session's cost is process start-up, not this code, and the binary
# stays within its footprint (README, Performance)
CFLAGS = -Os -std=c99 -Wall -Wextra -pedantic
CPPFLAGS = -D_POSIX_C_SOURCE=200809L
LDFLAGS =
PREFIX = /usr/local
BINDIR = $(PREFIX)/bin
MANDIR = $(PREFIX)/share/man
PYTHON = python3

OBJS = proxy.o smtp.o ucspitls.o relay.o io.o smtpd.o end.o signals.o log.o fmt.o
TESTS = tests/test_smtp tests/test_ucspitls tests/test_relay tests/test_relay_copy

all: $(PROG)

$(PROG): $(OBJS)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(OBJS)

.c.o:
	$(CC) $(CFLAGS) $(CPPFLAGS) -c -o $@ $<

proxy.o: proxy.c end.h io.h log.h relay.h signals.h smtp.h smtpd.h ucspitls.h
smtp.o: smtp.c smtp.h
ucspitls.o: ucspitls.c io.h ucspitls.h
relay.o: relay.c fmt.h io.h relay.h
io.o: io.c io.h
smtpd.o: smtpd.c end.h io.h log.h signals.h smtp.h smtpd.h ucspitls.h
end.o: end.c end.h fmt.h io.h log.h relay.h signals.h smtp.h smtpd.h
signals.o: signals.c signals.h
log.o: log.c fmt.h io.h log.h
fmt.o: fmt.c fmt.h

tests/test_smtp: tests/test_smtp.c tests/check.h smtp.o
	$(CC) $(CFLAGS) $(CPPFLAGS) -I. -o $@ tests/test_smtp.c smtp.o

tests/test_ucspitls: tests/test_ucspitls.c tests/check.h ucspitls.o io.o
	$(CC) $(CFLAGS) $(CPPFLAGS) -I. -o $@ tests/test_ucspitls.c ucspitls.o io.o

tests/test_relay: tests/test_relay.c tests/check.h relay.o io.o fmt.o
	$(CC) $(CFLAGS) $(CPPFLAGS) -I. -o $@ tests/test_relay.c relay.o io.o fmt.o

# the same tests on the portable read/write path that Linux builds skip
tests/test_relay_copy: tests/test_relay.c tests/check.h relay.c relay.h io.o fmt.o
	$(CC) $(CFLAGS) $(CPPFLAGS) -DRELAY_NO_SPLICE -I. -o $@ tests/test_relay.c relay.c io.o fmt.o

check: $(PROG) $(TESTS)
	$(PYTHON) tests/run.py

# the end-to-end tests through the real super-servers, built by
# ../shared/anchors/build.sh into ANCHORS: every test that can run under a
# real server, under s6-networking on libtls, on BearSSL, and sslserver -n
ANCHORS =
check-real: $(PROG)
	@test -n "$(ANCHORS)" || { echo "check-real: ANCHORS=DIR, as built by ../shared/anchors/build.sh"; exit 100; }
	$(PYTHON) tests/run.py --real $(ANCHORS)

# the unit tests alone: what tcc and pcc are held to
unit: $(TESTS)
	$(PYTHON) tests/run.py --unit

# a static binary with musl, run through the end-to-end tests
static:
	$(MAKE) clean
	$(MAKE) CC=musl-gcc LDFLAGS=-static $(PROG)

# (make check and check-real run 200 sessions at once and 1000 final
# replies; 50 at once and 200 still overlap sessions and see -S's losses)
check-static: static
	LOSS_SESSIONS=200 LOAD_SESSIONS=50 $(PYTHON) tests/run.py --e2e

# the whole suite with AddressSanitizer and UndefinedBehaviorSanitizer
SANFLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
check-asan:
	$(MAKE) clean
	INSTRUMENTED=1 LOSS_SESSIONS=200 LOAD_SESSIONS=50 $(MAKE) CFLAGS="-std=c99 -Wall -Wextra -pedantic $(SANFLAGS)" \
	  LDFLAGS="$(SANFLAGS)" check

# the proxy's sessions under memcheck with descriptor tracking (default relay)
VGTESTS = smtplib ,default] ref requiretls auth_ plainauth verbose starttls_injection \
	session_timeout handshake_failure
# (strace cannot watch a program that runs under valgrind: the descriptor
# test runs in every other target)
check-valgrind: $(PROG)
	VALGRIND=1 INSTRUMENTED=1 BIG_MB=2 LOSS_SESSIONS=20 LOAD_SESSIONS=20 $(PYTHON) tests/run.py --e2e $(VGTESTS) \
	  '~life_no_descriptor_closed_twice'

# the built-in relay's portable read/write path, which Linux builds replace
# by splice(2): built without it, checked for it, run through the relay tests
# (200 final replies each way: 1000 run in make check, on splice)
check-copy:
	$(MAKE) clean
	$(MAKE) CPPFLAGS="$(CPPFLAGS) -DRELAY_NO_SPLICE" $(PROG)
	if nm $(PROG) | grep splice; then echo "check-copy: splice is linked in"; exit 1; fi
	LOSS_SESSIONS=200 $(PYTHON) tests/run.py --e2e ,default] ref11
	$(MAKE) clean

# libFuzzer on the SMTP engine (clang, libclang-rt-14-dev); FUZZTIME seconds
FUZZTIME = 60
FUZZCC = clang
tests/fuzz_smtp: tests/fuzz_smtp.c smtp.c smtp.h
	$(FUZZCC) -g -O1 -fsanitize=fuzzer,address,undefined $(CPPFLAGS) -I. -o $@ tests/fuzz_smtp.c smtp.c

fuzz: tests/fuzz_smtp
	mkdir -p tests/work/corpus
	tests/fuzz_smtp -max_total_time=$(FUZZTIME) -print_final_stats=1 tests/work/corpus tests/corpus

# static analysis of the program's files, with the checks we hold to
CPPCHECK = cppcheck --std=c99 --enable=warning,style,performance,portability \
	--library=posix --error-exitcode=1 -q --suppress=missingIncludeSystem
TIDYCHECKS = -*,bugprone-*,cert-*,clang-analyzer-*,portability-*,\
	-bugprone-easily-swappable-parameters,-cert-err33-c
lint:
	$(CPPCHECK) $(CPPFLAGS) proxy.c smtp.c ucspitls.c relay.c io.c smtpd.c end.c signals.c log.c fmt.c
	clang-tidy --quiet --warnings-as-errors='*' --checks='$(TIDYCHECKS)' \
	  proxy.c smtp.c ucspitls.c relay.c io.c smtpd.c end.c signals.c log.c fmt.c -- -std=c99 $(CPPFLAGS)

# the cost per session, the relay's throughput and the footprint (tests/bench.sh)
tests/bench: tests/bench.c
	$(CC) $(CFLAGS) $(CPPFLAGS) -o $@ tests/bench.c
tests/bench_smtpd: tests/bench_smtpd.c
	$(CC) $(CFLAGS) $(CPPFLAGS) -o $@ tests/bench_smtpd.c

bench: $(PROG) tests/bench tests/bench_smtpd
	CC="$(CC)" ANCHORS="$(ANCHORS)" sh tests/bench.sh

demo: $(PROG)
	$(PYTHON) tests/demo.py

install: $(PROG)
	mkdir -p $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man8
	cp $(PROG) $(DESTDIR)$(BINDIR)/$(PROG)
	chmod 755 $(DESTDIR)$(BINDIR)/$(PROG)
	cp $(PROG).8 $(DESTDIR)$(MANDIR)/man8/$(PROG).8
	chmod 644 $(DESTDIR)$(MANDIR)/man8/$(PROG).8

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/$(PROG) $(DESTDIR)$(MANDIR)/man8/$(PROG).8

clean:
	rm -f $(PROG) $(OBJS) $(TESTS) tests/fuzz_smtp tests/bench tests/bench_smtpd

.PHONY: all bench check check-real check-asan check-copy check-valgrind unit fuzz static check-static lint demo install uninstall clean
