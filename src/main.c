/* carpool: command line, workers (one event loop per thread), signals, start and stop. */
#include "carpool/auth.h"
#include "carpool/batcher.h"
#include "carpool/common.h"
#include "carpool/config.h"
#include "carpool/metrics.h"
#include "carpool/preflight.h"
#include "carpool/relay.h"
#include "carpool/signals.h"
#include "carpool/router.h"
#include "carpool/server.h"
#include "carpool/upstream.h"

#include <cjson/cJSON.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <getopt.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

#define MAX_WORKERS 64

/* One event loop and everything it drives: its own copy of each upstream pool (their health is one
 * record, upstream.h), batcher and client connections. With batching.queue: shared (and more than
 * one worker) batches form on worker 0 for every worker (relay.h), and only worker 0 has a batcher;
 * with per_worker each worker batches its own clients. The client keys are shared (under a lock). */
struct worker {
	int id;
	pthread_t thread;
	struct event_base *base;
	struct evdns_base *dns;
	struct config cfg; /* this worker's copy: a reload updates it from the worker's own thread */
	struct upstream ups[CFG_MAX_UPSTREAMS];
	int nups;
	struct batcher *bt;  /* NULL on a worker other than 0 when the queue is shared */
	struct relay *relay; /* NULL unless the queue is shared */
	struct router rt;
	struct server *srv;
	struct metrics metrics;
	struct event *stop_ev, *reload_ev, *drain_ev;
	uint64_t drain_start;
	bool stopping;
	bool ended; /* the drain deadline passed: open requests were ended, their answers are leaving */
	pthread_mutex_t mu;	 /* guards pending */
	struct config *pending;	 /* a reloaded config handed over by the main thread */
};

static struct worker *g_workers[MAX_WORKERS];
static struct router *g_routers[MAX_WORKERS];
static int g_nworkers;
static atomic_int g_exited; /* workers other than 0 that left their loop */
static struct auth_table *g_auth;

static void usage(FILE *f)
{
	fputs("usage: carpool [-t] [-c FILE]\n"
	      "\n"
	      "  -c, --config FILE     the config file (default: " CARPOOL_DEFAULT_CONFIG ")\n"
	      "  -t, --check-config    validate FILE (and its client keys file), print \"FILE: ok\" and exit 0;\n"
	      "                        on an error print FILE:LINE:COLUMN: message and exit 1\n"
	      "  -h, --help            print this help and exit\n"
	      "  -V, --version         print the version, git revision and library versions, and exit\n"
	      "\n"
	      "carpool is a request-batching reverse proxy for OpenAI-compatible LLM servers: it holds\n"
	      "compatible /v1/completions and /v1/embeddings requests for a short window, sends them\n"
	      "upstream as one call with an array prompt, and splits the answer back to each client.\n"
	      "Every config key is documented in the example carpool.yaml (configs/ in the sources,\n"
	      "PREFIX/share/carpool/configs/ once installed); see also carpool(1).\n"
	      "Signals: SIGTERM/SIGINT drain and stop (timeouts.drain_ms deadline), SIGHUP reloads the config.\n",
	      f);
}

/* The build (version, git revision) and the libraries as loaded at run time. */
static void version(void)
{
	printf("carpool %s (git %s)\n", CARPOOL_VERSION, CARPOOL_REVISION);
	printf("libevent %s, %s, cJSON %s, libyaml %s\n", event_get_version(), OpenSSL_version(OPENSSL_VERSION),
	       cJSON_Version(), yaml_get_version_string());
}

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct worker *w = arg;
	/* worker 0's stand-ins are in its batcher's count already */
	unsigned active = (w->bt ? batcher_active(w->bt) : 0) + (w->relay && w->id ? relay_open_count(w->relay) : 0);
	/* the dispatcher serves the other workers' requests until they are gone */
	bool others = w->relay && w->id == 0 && atomic_load(&g_exited) < g_nworkers - 1;
	uint64_t waited = (now_us() - w->drain_start) / 1000;
	if (!w->ended && waited >= (uint64_t)w->cfg.timeouts.drain_ms) {
		/* each worker counts its own clients: the dispatcher's stand-ins are the others' */
		unsigned others_open = w->relay && w->id == 0 ? relay_open_count(w->relay) : 0;
		unsigned own = active > others_open ? active - others_open : 0;
		if (own)
			log_warn("worker %d: drain deadline passed with %u requests of its clients open; ending them",
				 w->id, own);
		/* each client gets a proper end (an error event, or a 503), then 200 ms to take it */
		server_end_all(w->srv, "carpool is shutting down: the answer was cut at its drain deadline.");
		w->ended = true;
		struct timeval tv = {0, 200000};
		evtimer_add(w->drain_ev, &tv);
		return;
	}
	if ((active == 0 && !others) || w->ended) {
		if (w->relay)
			relay_flush(w->relay);
		event_base_loopexit(w->base, NULL);
		return;
	}
	struct timeval tv = {0, 50000};
	evtimer_add(w->drain_ev, &tv);
}

/* Runs in the worker's thread: stop accepting, let open requests finish, then leave the loop. */
static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct worker *w = arg;
	if (w->stopping) {
		event_base_loopexit(w->base, NULL);
		return;
	}
	w->stopping = true;
	server_stop_listening(w->srv);
	w->drain_start = now_us();
	struct timeval tv = {0, 0};
	evtimer_add(w->drain_ev, &tv);
}

/* Runs in the worker's thread: takes the config the main thread validated. */
static void worker_reload_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct worker *w = arg;
	pthread_mutex_lock(&w->mu);
	struct config *n = w->pending;
	w->pending = NULL;
	pthread_mutex_unlock(&w->mu);
	if (!n)
		return;
	long queue = w->cfg.batching.queue; /* fixed at start */
	w->cfg.batching = n->batching;
	w->cfg.batching.queue = queue;
	memcpy(&w->cfg.auth, &n->auth, sizeof n->auth);
	w->cfg.limits = n->limits;
	w->cfg.timeouts = n->timeouts;
	w->cfg.log.level = n->log.level;
	free(n);
	if (w->id == 0)
		CNT_ADD(w->metrics.config_reloads_total, 1);
}

/* SIGHUP (main thread): the new file is validated first; a bad one leaves the running config in
 * place. Batching, auth, limits, timeouts and log level apply to new requests; listeners and
 * upstreams need a restart (a warning says so). Requests in flight finish as they started. */
static void reload(struct worker *w0)
{
	static struct config n; /* large */
	char err[1024];
	struct auth_table *auth = NULL;
	if (config_load(w0->cfg.path, &n, err, sizeof err) != CP_OK || auth_load(&n, &auth, err, sizeof err) != CP_OK) {
		CNT_ADD(w0->metrics.config_reload_failures_total, 1);
		log_error("reload failed, keeping the running config: %s", err);
		return;
	}
	if (memcmp(n.listen, w0->cfg.listen, sizeof n.listen) || n.nlisten != w0->cfg.nlisten ||
	    memcmp(n.upstreams, w0->cfg.upstreams, sizeof n.upstreams) || n.nupstreams != w0->cfg.nupstreams ||
	    n.workers != w0->cfg.workers || n.batching.queue != w0->cfg.batching.queue || n.io_uring != w0->cfg.io_uring)
		log_warn("reload: listen, upstreams, workers, io_uring and batching.queue changes take effect at the next restart");
	log_set_level((enum log_level)n.log.level);
	auth_swap(&g_auth, auth);
	for (int i = 0; i < g_nworkers; i++) {
		struct worker *w = g_workers[i];
		struct config *copy = xmalloc(sizeof *copy);
		*copy = n;
		pthread_mutex_lock(&w->mu);
		free(w->pending);
		w->pending = copy;
		pthread_mutex_unlock(&w->mu);
		event_active(w->reload_ev, 0, 0);
	}
	log_info("reloaded %s (%d client keys)", n.path, auth->n);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	struct worker *w0 = arg;
	if (sig == SIGHUP) {
		reload(w0);
		return;
	}
	log_info("signal %d: no longer accepting; draining open requests", (int)sig);
	for (int i = 0; i < g_nworkers; i++)
		event_active(g_workers[i]->stop_ev, 0, 0);
}

/* Builds worker id's loop; the primary (id 0) opens the listeners, the others share them. batches:
 * whether this worker forms batches (worker 0, or every worker when the queue is per_worker). */
static int worker_init(struct worker *w, int id, const struct config *cfg, struct server *primary, bool batches)
{
	w->id = id;
	w->cfg = *cfg;
	pthread_mutex_init(&w->mu, NULL);
	w->base = event_base_new();
	if (!w->base)
		return CP_ERROR;
	w->dns = evdns_base_new(w->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
	w->stop_ev = event_new(w->base, -1, 0, stop_cb, w);
	w->reload_ev = event_new(w->base, -1, 0, worker_reload_cb, w);
	w->drain_ev = evtimer_new(w->base, drain_cb, w);
	for (int i = 0; i < w->cfg.nupstreams; i++) {
		struct upstream *first = id ? &g_workers[0]->ups[i] : NULL; /* owns the health record */
		if (upstream_init(&w->ups[i], i, w->base, w->dns, &w->cfg, &w->cfg.upstreams[i], first) != CP_OK) {
			w->nups = i + 1;
			return CP_ERROR;
		}
		w->nups = i + 1;
	}
	if (batches) {
		w->bt = batcher_new(w->base, &w->cfg, w->ups, w->nups);
		batcher_set_metrics(w->bt, &w->metrics);
	}
	w->rt = (struct router){.cfg = &w->cfg, .ups = w->ups, .nups = w->nups, .bt = w->bt, .auth = &g_auth,
				.metrics = &w->metrics, .peers = g_routers, .npeers = 0};
	w->srv = primary ? server_new_shared(w->base, &w->cfg, router_handle, &w->rt, primary)
			 : server_new(w->base, &w->cfg, router_handle, &w->rt);
	if (!w->srv)
		return CP_ERROR;
	server_set_metrics(w->srv, &w->metrics);
	server_set_worker(w->srv, id);
	server_set_head_check(w->srv, router_head);
	for (int i = 0; i < w->nups; i++) {
		upstream_probe(&w->ups[i]);
		upstream_probe_info(&w->ups[i]);
		if (id == 0)
			upstream_start_health(&w->ups[i]);
		/* the load signals are read where batches are dispatched */
		if (id == 0 || w->cfg.batching.queue != QUEUE_SHARED)
			signals_start(&w->ups[i]);
	}
	return CP_OK;
}

static void worker_free(struct worker *w)
{
	server_free(w->srv);
	batcher_free(w->bt);
	relay_free(w->relay); /* after the server and batcher, whose callbacks post to it */
	for (int i = 0; i < w->nups; i++) {
		signals_stop(&w->ups[i]);
		upstream_free(&w->ups[i]);
	}
	if (w->stop_ev)
		event_free(w->stop_ev);
	if (w->reload_ev)
		event_free(w->reload_ev);
	if (w->drain_ev)
		event_free(w->drain_ev);
	if (w->dns)
		evdns_base_free(w->dns, 0);
	if (w->base)
		event_base_free(w->base);
	free(w->pending);
	pthread_mutex_destroy(&w->mu);
	free(w);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	event_base_dispatch(w->base);
	atomic_fetch_add(&g_exited, 1);
	return NULL;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
					     {"check-config", no_argument, NULL, 't'},
					     {"help", no_argument, NULL, 'h'},
					     {"version", no_argument, NULL, 'V'},
					     {NULL, 0, NULL, 0}};
	const char *file = NULL;
	bool check = false;
	int o;
	while ((o = getopt_long(argc, argv, "c:thV", opts, NULL)) != -1) {
		switch (o) {
		case 'c': file = optarg; break;
		case 't': check = true; break;
		case 'h': usage(stdout); return 0;
		case 'V': version(); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!file) {
		file = CARPOOL_DEFAULT_CONFIG;
		if (access(file, F_OK) != 0) {
			fprintf(stderr, "carpool: no -c FILE given, and the default config %s: %s\n", file, strerror(errno));
			usage(stderr);
			return 1;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	static struct config cfg; /* large: keep it off the stack */
	static char err[8192];
	if (config_load(file, &cfg, err, sizeof err) != CP_OK) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	/* What a start would trip over (files, keys, the environment): all of it, in check mode too. */
	int problems = preflight(&cfg, err, sizeof err);
	if (problems)
		fprintf(stderr, "%s\n", err);
	if (auth_load(&cfg, &g_auth, err, sizeof err) != CP_OK) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	if (problems) {
		fprintf(stderr, "%s: %d problem%s found\n", file, problems, problems == 1 ? "" : "s");
		auth_free(g_auth);
		return 1;
	}
	if (check) {
		printf("%s: ok\n", file);
		auth_free(g_auth);
		return 0;
	}
	log_set_level((enum log_level)cfg.log.level);
	signal(SIGPIPE, SIG_IGN);
	server_fit_descriptors(&cfg);
	evthread_use_pthreads();

	long n = cfg.workers ? cfg.workers : sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	if (n > MAX_WORKERS)
		n = MAX_WORKERS;
	int rc = 1;
	struct event *sigs[3] = {NULL, NULL, NULL};
	for (int i = 0; i < n; i++) {
		struct worker *w = xcalloc(1, sizeof *w);
		g_workers[i] = w;
		g_nworkers = i + 1;
		bool batches = i == 0 || cfg.batching.queue != QUEUE_SHARED;
		if (worker_init(w, i, &cfg, i ? g_workers[0]->srv : NULL, batches) != CP_OK)
			goto out;
		g_routers[i] = &w->rt;
	}
	for (int i = 0; i < g_nworkers; i++)
		g_workers[i]->rt.npeers = g_nworkers;
	if (cfg.batching.queue == QUEUE_SHARED && g_nworkers > 1) {
		struct relay *relays[MAX_WORKERS];
		for (int i = 0; i < g_nworkers; i++)
			relays[i] = g_workers[i]->relay = relay_new(g_workers[i]->base, i);
		for (int i = 0; i < g_nworkers; i++) {
			relay_link(relays[i], relays, g_nworkers, g_workers[0]->bt);
			if (i)
				g_workers[i]->rt.relay = relays[i];
		}
	}
	/* Signals are handled by worker 0's loop, in the main thread. */
	int signos[3] = {SIGINT, SIGTERM, SIGHUP};
	for (int i = 0; i < 3; i++) {
		sigs[i] = evsignal_new(g_workers[0]->base, signos[i], signal_cb, g_workers[0]);
		evsignal_add(sigs[i], NULL);
	}
	for (int i = 0; i < cfg.nupstreams; i++)
		log_info("upstream %s (dialect %s, max_sequences %ld, max_inflight %ld%s)", cfg.upstreams[i].url,
			 dialect_name((enum dialect)cfg.upstreams[i].dialect), cfg.upstreams[i].max_sequences,
			 cfg.upstreams[i].max_inflight,
			 g_workers[0]->relay || g_nworkers == 1 ? "" : " per worker");
	log_info("carpool %s ready (%d workers, %s queue, policy %s, max_wait_ms %ld, max_batch_size %ld)",
		 CARPOOL_VERSION, g_nworkers, g_workers[0]->relay ? "one shared" : "per-worker",
		 cfg.batching.policy == POLICY_FIXED ? "fixed" : "adaptive", cfg.batching.max_wait_ms,
		 cfg.batching.max_batch_size);
	for (int i = 1; i < g_nworkers; i++)
		pthread_create(&g_workers[i]->thread, NULL, worker_main, g_workers[i]);
	event_base_dispatch(g_workers[0]->base);
	for (int i = 1; i < g_nworkers; i++)
		pthread_join(g_workers[i]->thread, NULL);
	rc = 0;
	log_info("stopped");
out:
	for (int i = 0; i < 3; i++)
		if (sigs[i])
			event_free(sigs[i]);
	for (int i = g_nworkers - 1; i >= 0; i--)
		worker_free(g_workers[i]);
	auth_free(g_auth);
	return rc;
}
