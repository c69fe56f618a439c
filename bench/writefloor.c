/* carpool-writefloor: what delivering one small SSE event to N loopback clients costs the writer.
 *
 * A streaming proxy cannot do less than one write() per client per token. This measures that floor on
 * this machine with nothing else in the way (no parsing, no JSON, no event loop), under the
 * conditions of bench/run-bench.sh's paced regime: a forked reader process holds N loopback TCP
 * connections and drains them through epoll, as carpool-loadgen does, and the writer sends one
 * HTTP-chunked SSE event ("c8\r\n" "data: {...}\n\n" "\r\n") to each of the N sockets every
 * --step-ms, with one write() per socket per step. Each process measures its own CPU (getrusage,
 * RUSAGE_SELF) over the writing window only: connection setup is left out.
 *
 * On loopback the writer's write() also runs the receiving half of TCP (softirq, in the writer's
 * context) and wakes the reader, so the writer's CPU per write is the whole kernel delivery cost:
 * the number to hold a proxy's "CPU per token" against. --events-per-write E puts E events in each
 * write (still one write per socket per step) to show what coalescing tokens would save.
 *
 * Writer sockets are blocking, with TCP_NODELAY as carpool sets on client sockets: when the reader
 * falls behind (flood), the writer sleeps in write() instead of buffering. Only 127.0.0.1.
 *
 * --io uring sends the same events through io_uring instead: each step queues one send (MSG_DONTWAIT)
 * per socket and submits them all with one io_uring_enter, then reaps the completions. A send that
 * the socket refused for room (-EAGAIN) or took in part is queued again without MSG_DONTWAIT (io_uring
 * then waits for room itself) and submitted with the others left over, until every byte has gone:
 * still a blocking writer as far as the reader is concerned, so the two modes measure the same load.
 * The kernel's work per event (TCP output, loopback input, waking the reader) stays; what goes is
 * the system call per socket.
 * Bounded: the writing stops after --steps or --duration-s, whichever comes first, and an alarm
 * kills either process if the setup or the drain hangs.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static struct {
	long conns;
	long step_ms; /* 0: flood, steps back to back */
	long steps;   /* 0: until --duration-s */
	double duration_s;
	long bytes;            /* SSE event size, framing excluded */
	long events_per_write; /* events concatenated into each write */
	bool uring;            /* --io uring: the sends of a step through io_uring, one submit */
} opt = {
	.conns = 256,
	.step_ms = 20,
	.duration_s = 5,
	.bytes = 200,
	.events_per_write = 1,
};

#define SETUP_GRACE_S 30 /* connecting before, draining after the writing */
#define READ_BUF 16384   /* one read per readiness, like a bufferevent's default read size */

/* What the reader sends back up the pipe once it has read everything. */
struct reader_report {
	uint64_t bytes;
	uint64_t reads;
	uint64_t wakeups; /* epoll_wait returns with at least one event */
	double cpu_s;
	double wall_s;
};

static void die(const char *what)
{
	fprintf(stderr, "carpool-writefloor: %s: %s\n", what, strerror(errno));
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* user + system CPU of this process, in seconds (scheduler-accurate, not clock ticks) */
static double cpu_self_s(struct rusage *ru)
{
	struct rusage r;
	if (!ru)
		ru = &r;
	getrusage(RUSAGE_SELF, ru);
	return (double)ru->ru_utime.tv_sec + (double)ru->ru_utime.tv_usec / 1e6 + (double)ru->ru_stime.tv_sec +
	       (double)ru->ru_stime.tv_usec / 1e6;
}

/* read or write all of buf on a pipe (messages here are far below PIPE_BUF); false on EOF / error */
static bool pipe_io(int fd, void *buf, size_t n, bool wr)
{
	ssize_t r;
	do
		r = wr ? write(fd, buf, n) : read(fd, buf, n);
	while (r < 0 && errno == EINTR);
	return r == (ssize_t)n;
}

/* ---------------------------------------------------------------- the message */

/* One event as carpool sends a token to a client: a chunk of HTTP/1.1 chunked framing around an SSE
 * event of exactly `bytes` bytes shaped like an OpenAI completion chunk. Writes into out (at least
 * bytes + 16) and returns the length on the wire. */
static size_t build_event(char *out, size_t bytes)
{
	static const char head[] = "data: {\"id\":\"chatcmpl-writefloor\",\"object\":\"chat.completion.chunk\","
				   "\"created\":0,\"model\":\"sim-model\",\"choices\":[{\"index\":0,"
				   "\"delta\":{\"content\":\"";
	static const char tail[] = "\"},\"finish_reason\":null}]}\n\n";
	const char *h = head, *t = tail;
	if (bytes < sizeof head + sizeof tail) { /* too small for the JSON: a bare data line */
		h = "data: ";
		t = "\n\n";
	}
	size_t hl = strlen(h), tl = strlen(t);
	size_t n = (size_t)sprintf(out, "%zx\r\n", bytes);
	memcpy(out + n, h, hl);
	memset(out + n + hl, 'x', bytes - hl - tl);
	memcpy(out + n + bytes - tl, t, tl);
	n += bytes;
	memcpy(out + n, "\r\n", 2);
	return n + 2;
}

/* ---------------------------------------------------------------- the reader (child) */

/* Connect opt.conns sockets to port, tell the writer over `up` that all are in place, drain them
 * with level-triggered epoll and one read per ready socket until the byte total the writer sends
 * down `down` has arrived, then send a struct reader_report up. Never returns. */
static void reader_run(uint16_t port, int up, int down)
{
	alarm((unsigned)opt.duration_s + 2 * SETUP_GRACE_S);
	int ep = epoll_create1(0);
	if (ep < 0)
		die("epoll_create1");
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	for (long i = 0; i < opt.conns; i++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0)
			die("reader: socket");
		if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
			die("reader: connect");
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
			die("reader: epoll_ctl");
	}
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = down};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, down, &ev) < 0)
		die("reader: epoll_ctl");

	static char buf[READ_BUF];
	struct epoll_event evs[256];
	struct reader_report rep = {0};
	uint64_t total = UINT64_MAX; /* known once the writer is done */
	double cpu0 = cpu_self_s(NULL);
	uint64_t t0 = now_ns();
	if (!pipe_io(up, "r", 1, true))
		die("reader: ready pipe");
	while (rep.bytes < total) {
		int n = epoll_wait(ep, evs, 256, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("reader: epoll_wait");
		rep.wakeups++;
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == down) {
				if (!pipe_io(down, &total, sizeof total, false)) {
					fprintf(stderr, "carpool-writefloor: reader: the writer went away\n");
					exit(1);
				}
				continue;
			}
			ssize_t r = read(fd, buf, sizeof buf);
			if (r < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (r <= 0) {
				fprintf(stderr, "carpool-writefloor: reader: connection closed early\n");
				exit(1);
			}
			rep.reads++;
			rep.bytes += (uint64_t)r;
		}
	}
	rep.cpu_s = cpu_self_s(NULL) - cpu0;
	rep.wall_s = (double)(now_ns() - t0) / 1e9;
	if (!pipe_io(up, &rep, sizeof rep, true))
		die("reader: report pipe");
	exit(0);
}

/* ---------------------------------------------------------------- the writer (parent) */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: carpool-writefloor [options]\n"
		"  --conns N             loopback connections held by the reader (256)\n"
		"  --step-ms MS          one event per connection every MS ms (20); 0: as fast as possible\n"
		"  --steps K             stop after K steps (0: no limit)\n"
		"  --duration-s S        stop after S seconds of writing (5), whichever comes first\n"
		"  --bytes B             SSE event size in bytes, chunk framing excluded (200)\n"
		"  --events-per-write E  events concatenated into each write (1)\n"
		"  --io write|uring      one write() per socket (write), or one io_uring submit per step (uring)\n"
		"Prints a summary and a final line: RESULT writer_us_per_write=.. reader_us_per_write=.. ...\n"
		"(with --io uring a \"write\" is one send; the line adds submits= and resubmits=)\n");
}

static bool parse_long(const char *s, long *out, long lo, long hi)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

static void parse_args(int argc, char **argv)
{
	enum { O_CONNS = 256, O_STEP, O_STEPS, O_DURATION, O_BYTES, O_EPW, O_IO, O_HELP };
	static const struct option lo[] = {
		{"conns", required_argument, 0, O_CONNS},
		{"step-ms", required_argument, 0, O_STEP},
		{"steps", required_argument, 0, O_STEPS},
		{"duration-s", required_argument, 0, O_DURATION},
		{"bytes", required_argument, 0, O_BYTES},
		{"events-per-write", required_argument, 0, O_EPW},
		{"io", required_argument, 0, O_IO},
		{"help", no_argument, 0, O_HELP},
		{0, 0, 0, 0},
	};
	int c;
	long v;
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		bool ok = true;
		switch (c) {
		case O_CONNS: ok = parse_long(optarg, &opt.conns, 1, 100000); break;
		case O_STEP: ok = parse_long(optarg, &opt.step_ms, 0, 10000); break;
		case O_STEPS: ok = parse_long(optarg, &opt.steps, 0, 1000000000); break;
		case O_DURATION: /* whole seconds keep the alarm arithmetic simple */
			ok = parse_long(optarg, &v, 1, 3600);
			opt.duration_s = (double)v;
			break;
		case O_BYTES: ok = parse_long(optarg, &opt.bytes, 16, 1 << 20); break;
		case O_EPW: ok = parse_long(optarg, &opt.events_per_write, 1, 4096); break;
		case O_IO:
			ok = !strcmp(optarg, "write") || !strcmp(optarg, "uring");
			opt.uring = ok && !strcmp(optarg, "uring");
			break;
		case 'h':
		case O_HELP: usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
		if (!ok) {
			fprintf(stderr, "carpool-writefloor: bad value for --%s: \"%s\"\n", lo[c - O_CONNS].name, optarg);
			exit(2);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "carpool-writefloor: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		exit(2);
	}
	if (opt.bytes * opt.events_per_write > (16L << 20)) {
		fprintf(stderr, "carpool-writefloor: --bytes x --events-per-write must stay under 16 MiB\n");
		exit(2);
	}
}

/* ---------------------------------------------------------------- the two ways of sending */

/* One step with write(): one call per socket, each blocking until the event has gone. */
static bool write_step(const int *fds, const char *msg, size_t len)
{
	for (long i = 0; i < opt.conns; i++) {
		ssize_t w = write(fds[i], msg, len);
		if (w != (ssize_t)len) { /* blocking socket: short only on error */
			fprintf(stderr, "carpool-writefloor: write: %s\n", w < 0 ? strerror(errno) : "short write");
			return false;
		}
	}
	return true;
}

#define URING_DEPTH 4096 /* sends queued per submit at most; --conns beyond it take more submits */

struct uring_writer {
	struct io_uring ring;
	unsigned depth;
	size_t *sent;	      /* bytes of this step's event gone, per socket */
	long *todo, *again;   /* sockets to send to in this round, and left for the next */
	uint64_t submits;     /* io_uring_enter calls */
	uint64_t resubmits;   /* sends queued again after -EAGAIN or a partial send */
};

static void uring_init(struct uring_writer *u)
{
	u->depth = opt.conns < URING_DEPTH ? (unsigned)opt.conns : URING_DEPTH;
	int r = io_uring_queue_init(u->depth, &u->ring, 0);
	if (r < 0) {
		errno = -r;
		die("io_uring_queue_init");
	}
	u->sent = calloc((size_t)opt.conns, sizeof *u->sent);
	u->todo = calloc((size_t)opt.conns, sizeof *u->todo);
	u->again = calloc((size_t)opt.conns, sizeof *u->again);
	if (!u->sent || !u->todo || !u->again)
		die("calloc");
}

static void uring_free(struct uring_writer *u)
{
	io_uring_queue_exit(&u->ring);
	free(u->sent);
	free(u->todo);
	free(u->again);
}

/* One step with io_uring: a send per socket, all submitted together (one io_uring_enter for up to
 * URING_DEPTH of them, which also waits for their completions). The first round says MSG_DONTWAIT;
 * what a socket could not take then goes again in a round without it, where io_uring waits for room. */
static bool uring_step(struct uring_writer *u, const int *fds, const char *msg, size_t len)
{
	long n = opt.conns;
	for (long i = 0; i < n; i++) {
		u->todo[i] = i;
		u->sent[i] = 0;
	}
	for (int flags = MSG_DONTWAIT; n > 0; flags = 0) {
		long left = 0;
		for (long k = 0; k < n;) {
			unsigned batch = (unsigned)(n - k < (long)u->depth ? n - k : (long)u->depth);
			for (unsigned b = 0; b < batch; b++) {
				long s = u->todo[k + b];
				struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
				io_uring_prep_send(sqe, fds[s], msg + u->sent[s], len - u->sent[s], flags);
				io_uring_sqe_set_data64(sqe, (uint64_t)s);
			}
			int r;
			do
				r = io_uring_submit_and_wait(&u->ring, batch);
			while (r == -EINTR);
			if (r < 0) {
				errno = -r;
				die("io_uring_submit_and_wait");
			}
			u->submits++;
			for (unsigned got = 0; got < batch;) {
				struct io_uring_cqe *cqe;
				r = io_uring_wait_cqe(&u->ring, &cqe);
				if (r == -EINTR)
					continue;
				if (r < 0) {
					errno = -r;
					die("io_uring_wait_cqe");
				}
				long s = (long)io_uring_cqe_get_data64(cqe);
				int res = cqe->res;
				io_uring_cqe_seen(&u->ring, cqe);
				got++;
				if (res < 0 && res != -EAGAIN) {
					fprintf(stderr, "carpool-writefloor: send: %s\n", strerror(-res));
					return false;
				}
				if (res > 0)
					u->sent[s] += (size_t)res;
				if (u->sent[s] < len)
					u->again[left++] = s;
			}
			k += batch;
		}
		u->resubmits += (uint64_t)left;
		long *t = u->todo;
		u->todo = u->again;
		u->again = t;
		n = left;
	}
	return true;
}

/* Both processes hold opt.conns sockets. */
static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    (rlim_t)opt.conns + 16 > rl.rlim_cur) {
		fprintf(stderr, "carpool-writefloor: --conns %ld exceeds the open-file limit %llu\n", opt.conns,
			(unsigned long long)rl.rlim_cur);
		exit(2);
	}
}

/* A listener on 127.0.0.1, port chosen by the kernel; returns the fd, the port in *port. */
static int listen_loopback(uint16_t *port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	struct sockaddr_in sa = {.sin_family = AF_INET};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof sa;
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, (int)opt.conns) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &sl) < 0)
		die("listen on 127.0.0.1");
	*port = ntohs(sa.sin_port);
	return fd;
}

int main(int argc, char **argv)
{
	parse_args(argc, argv);
	raise_nofile();
	signal(SIGPIPE, SIG_IGN); /* a reader that dies shows as EPIPE, not as a silent exit */

	uint16_t port;
	int lfd = listen_loopback(&port);
	int up[2], down[2];
	if (pipe(up) < 0 || pipe(down) < 0)
		die("pipe");
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		close(lfd);
		close(up[0]);
		close(down[1]);
		reader_run(port, up[1], down[0]);
	}
	close(up[1]);
	close(down[0]);
	alarm((unsigned)opt.duration_s + 2 * SETUP_GRACE_S);

	/* Accept while the reader connects: the backlog may be shorter than --conns. */
	int *fds = calloc((size_t)opt.conns, sizeof *fds);
	if (!fds)
		die("calloc");
	for (long i = 0; i < opt.conns; i++) {
		do
			fds[i] = accept(lfd, NULL, NULL);
		while (fds[i] < 0 && errno == EINTR);
		if (fds[i] < 0)
			die("accept");
		int one = 1;
		if (setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
			die("TCP_NODELAY");
	}
	close(lfd);
	char ready;
	if (!pipe_io(up[0], &ready, 1, false)) {
		fprintf(stderr, "carpool-writefloor: the reader failed to set up\n");
		return 1;
	}

	size_t ev_cap = (size_t)opt.bytes + 16;
	char *msg = malloc(ev_cap * (size_t)opt.events_per_write);
	if (!msg)
		die("malloc");
	size_t ev_len = build_event(msg, (size_t)opt.bytes), len = ev_len;
	for (long e = 1; e < opt.events_per_write; e++, len += ev_len)
		memcpy(msg + len, msg, ev_len);

	struct uring_writer uw = {0};
	if (opt.uring)
		uring_init(&uw);

	/* Steps run on an absolute schedule so that a slow step does not shift the ones after it. */
	uint64_t step_ns = (uint64_t)opt.step_ms * 1000000u, dur_ns = (uint64_t)(opt.duration_s * 1e9);
	uint64_t steps = 0, late = 0;
	struct rusage ru0, ru1;
	double cpu0 = cpu_self_s(&ru0);
	uint64_t t0 = now_ns();
	for (;;) {
		uint64_t due = t0 + steps * step_ns, now = now_ns();
		if ((opt.steps && steps >= (uint64_t)opt.steps) || (due > now ? due : now) - t0 >= dur_ns)
			break;
		if (due > now) {
			struct timespec ts = {.tv_sec = (time_t)(due / 1000000000u), .tv_nsec = (long)(due % 1000000000u)};
			while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
				;
		}
		if (!(opt.uring ? uring_step(&uw, fds, msg, len) : write_step(fds, msg, len)))
			return 1;
		steps++;
		if (step_ns && now_ns() > t0 + steps * step_ns)
			late++;
	}
	uint64_t t1 = now_ns();
	double w_cpu = cpu_self_s(&ru1) - cpu0;

	uint64_t writes = steps * (uint64_t)opt.conns, events = writes * (uint64_t)opt.events_per_write;
	uint64_t total = writes * len;
	struct reader_report rep;
	if (!pipe_io(down[1], &total, sizeof total, true) || !pipe_io(up[0], &rep, sizeof rep, false)) {
		fprintf(stderr, "carpool-writefloor: the reader did not report\n");
		return 1;
	}
	int st;
	waitpid(pid, &st, 0);
	for (long i = 0; i < opt.conns; i++)
		close(fds[i]);

	double wall = (double)(t1 - t0) / 1e9, nw = writes ? (double)writes : 1;
	double w_us = w_cpu * 1e6 / nw, r_us = rep.cpu_s * 1e6 / nw;
	double w_user = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
			(double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6;
	printf("carpool-writefloor: %ld loopback connections, %s, %ld-byte events (%zu on the wire), "
	       "%ld per write, %s\n",
	       opt.conns, opt.step_ms ? "paced" : "flood", opt.bytes, ev_len, opt.events_per_write,
	       opt.uring ? "io_uring sends, one submit per step" : "one write() per socket");
	if (opt.uring)
		printf("  io_uring     %llu submits (%.2f per step), %llu sends queued again after -EAGAIN or a part\n",
		       (unsigned long long)uw.submits, steps ? (double)uw.submits / (double)steps : 0,
		       (unsigned long long)uw.resubmits);
	if (opt.step_ms)
		printf("  steps        %llu every %ld ms, %llu overran their slot\n", (unsigned long long)steps,
		       opt.step_ms, (unsigned long long)late);
	else
		printf("  steps        %llu back to back\n", (unsigned long long)steps);
	printf("  writes       %llu (%llu events) in %.3f s: %.0f writes/s, %.1f MB/s\n", (unsigned long long)writes,
	       (unsigned long long)events, wall, (double)writes / wall, (double)total / wall / 1e6);
	printf("  writer CPU   %.3f s (%.0f%% user), %.1f%% of a core: %.2f us per write, %.2f us per event; "
	       "%ld voluntary context switches\n",
	       w_cpu, w_cpu > 0 ? 100 * w_user / w_cpu : 0, 100 * w_cpu / wall, w_us, w_us / opt.events_per_write,
	       ru1.ru_nvcsw - ru0.ru_nvcsw);
	printf("  reader CPU   %.3f s over %.3f s: %.2f us per write; %llu wakeups, %.2f reads per write\n", rep.cpu_s,
	       rep.wall_s, r_us, (unsigned long long)rep.wakeups, (double)rep.reads / nw);
	if (rep.bytes != total || !WIFEXITED(st) || WEXITSTATUS(st)) {
		fprintf(stderr, "carpool-writefloor: reader read %llu of %llu bytes\n", (unsigned long long)rep.bytes,
			(unsigned long long)total);
		return 1;
	}
	printf("RESULT writer_us_per_write=%.3f reader_us_per_write=%.3f writer_us_per_event=%.3f writes=%llu "
	       "writes_per_s=%.0f conns=%ld step_ms=%ld steps=%llu late_steps=%llu bytes=%ld events_per_write=%ld "
	       "wall_s=%.3f writer_cpu_s=%.4f reader_cpu_s=%.4f io=%s submits=%llu resubmits=%llu\n",
	       w_us, r_us, w_us / opt.events_per_write, (unsigned long long)writes, (double)writes / wall, opt.conns,
	       opt.step_ms, (unsigned long long)steps, (unsigned long long)late, opt.bytes, opt.events_per_write, wall,
	       w_cpu, rep.cpu_s, opt.uring ? "uring" : "write", (unsigned long long)uw.submits,
	       (unsigned long long)uw.resubmits);
	if (opt.uring)
		uring_free(&uw);
	free(msg);
	free(fds);
	return 0;
}
