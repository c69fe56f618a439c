/* carpool: command line, signals, start and stop. */
#include "carpool/auth.h"
#include "carpool/batcher.h"
#include "carpool/common.h"
#include "carpool/config.h"
#include "carpool/router.h"
#include "carpool/server.h"
#include "carpool/upstream.h"

#include <event2/dns.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DRAIN_DEADLINE_MS 10000

struct app {
	struct event_base *base;
	struct config cfg;
	struct upstream ups[CFG_MAX_UPSTREAMS];
	int nups;
	struct batcher *bt;
	struct router rt;
	struct server *srv;
	struct event *drain_ev;
	uint64_t drain_start;
	bool stopping;
};

static void usage(FILE *f)
{
	fputs("usage: carpool -c FILE          run with the config FILE\n"
	      "       carpool --check-config -c FILE   validate FILE and exit (0: valid)\n"
	      "       carpool --help | --version\n"
	      "\n"
	      "carpool is a request-batching reverse proxy for OpenAI-compatible LLM servers: it holds\n"
	      "compatible /v1/completions requests for a short window, sends them upstream as one call\n"
	      "with an array prompt, and splits the streamed answer back to each client.\n"
	      "Every config key is documented in configs/carpool.yaml.\n",
	      f);
}

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct app *a = arg;
	unsigned active = batcher_active(a->bt);
	uint64_t waited = (now_us() - a->drain_start) / 1000;
	if (active == 0 || waited >= DRAIN_DEADLINE_MS) {
		if (active)
			log_warn("drain deadline passed with %u requests still open; closing them", active);
		event_base_loopexit(a->base, NULL);
		return;
	}
	struct timeval tv = {0, 50000};
	evtimer_add(a->drain_ev, &tv);
}

/* SIGHUP: the new file is validated first; a bad one leaves the running config in place. Batching,
 * auth, limits, timeouts and log level apply to new requests; listeners and upstreams need a
 * restart (a warning says so). */
static void reload_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	struct app *a = arg;
	static struct config n; /* large */
	char err[1024];
	struct auth_table *auth = NULL;
	if (config_load(a->cfg.path, &n, err, sizeof err) != CP_OK ||
	    auth_load(&n, &auth, err, sizeof err) != CP_OK) {
		a->rt.reload_failures++;
		log_error("reload failed, keeping the running config: %s", err);
		return;
	}
	if (memcmp(n.listen, a->cfg.listen, sizeof n.listen) || n.nlisten != a->cfg.nlisten ||
	    memcmp(n.upstreams, a->cfg.upstreams, sizeof n.upstreams) || n.nupstreams != a->cfg.nupstreams)
		log_warn("reload: listen and upstreams changes take effect at the next restart");
	a->cfg.batching = n.batching;
	memcpy(&a->cfg.auth, &n.auth, sizeof n.auth);
	a->cfg.limits = n.limits;
	a->cfg.timeouts = n.timeouts;
	a->cfg.log.level = n.log.level;
	log_set_level((enum log_level)n.log.level);
	auth_free(a->rt.auth);
	a->rt.auth = auth;
	a->rt.reloads++;
	log_info("reloaded %s (%d client keys)", a->cfg.path, auth->n);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	struct app *a = arg;
	if (a->stopping) {
		log_info("second signal: stopping now");
		event_base_loopexit(a->base, NULL);
		return;
	}
	a->stopping = true;
	log_info("signal %d: no longer accepting; draining %u open requests", (int)sig, batcher_active(a->bt));
	server_stop_listening(a->srv);
	a->drain_start = now_us();
	a->drain_ev = evtimer_new(a->base, drain_cb, a);
	struct timeval tv = {0, 0};
	evtimer_add(a->drain_ev, &tv);
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
		case 'V': printf("carpool %s\n", CARPOOL_VERSION); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!file || optind < argc) {
		usage(stderr);
		return 2;
	}
	static struct app a; /* large: keep it off the stack */
	char err[1024];
	if (config_load(file, &a.cfg, err, sizeof err) != CP_OK) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	if (check) {
		printf("%s: ok\n", file);
		return 0;
	}
	log_set_level((enum log_level)a.cfg.log.level);
	signal(SIGPIPE, SIG_IGN);

	int rc = 1;
	a.base = event_base_new();
	struct evdns_base *dns = evdns_base_new(a.base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
	struct event *sigint = evsignal_new(a.base, SIGINT, signal_cb, &a);
	struct event *sigterm = evsignal_new(a.base, SIGTERM, signal_cb, &a);
	struct event *sighup = evsignal_new(a.base, SIGHUP, reload_cb, &a);
	evsignal_add(sigint, NULL);
	evsignal_add(sigterm, NULL);
	evsignal_add(sighup, NULL);
	for (int i = 0; i < a.cfg.nupstreams; i++) {
		if (upstream_init(&a.ups[i], i, a.base, dns, &a.cfg, &a.cfg.upstreams[i]) != CP_OK) {
			a.nups = i + 1;
			goto out;
		}
		a.nups = i + 1;
	}
	a.bt = batcher_new(a.base, &a.cfg, a.ups, a.nups);
	a.rt = (struct router){.cfg = &a.cfg, .ups = a.ups, .nups = a.nups, .bt = a.bt};
	if (auth_load(&a.cfg, &a.rt.auth, err, sizeof err) != CP_OK) {
		log_error("auth: %s", err);
		goto out;
	}
	a.srv = server_new(a.base, &a.cfg, router_handle, &a.rt);
	if (!a.srv)
		goto out;
	for (int i = 0; i < a.nups; i++) {
		log_info("upstream %s (dialect %s, max_inflight %ld)", a.cfg.upstreams[i].url,
			 dialect_name((enum dialect)a.cfg.upstreams[i].dialect), a.cfg.upstreams[i].max_inflight);
		upstream_probe(&a.ups[i]);
		upstream_start_health(&a.ups[i]);
	}
	log_info("carpool %s ready (policy %s, max_wait_ms %ld, max_batch_size %ld)", CARPOOL_VERSION,
		 a.cfg.batching.policy == POLICY_FIXED ? "fixed" : "adaptive", a.cfg.batching.max_wait_ms,
		 a.cfg.batching.max_batch_size);
	event_base_dispatch(a.base);
	rc = 0;
	log_info("stopped");
out:
	server_free(a.srv);
	batcher_free(a.bt);
	auth_free(a.rt.auth);
	for (int i = 0; i < a.nups; i++)
		upstream_free(&a.ups[i]);
	if (a.drain_ev)
		event_free(a.drain_ev);
	event_free(sigint);
	event_free(sigterm);
	event_free(sighup);
	evdns_base_free(dns, 0);
	event_base_free(a.base);
	return rc;
}
