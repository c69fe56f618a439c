/* signals: polls an upstream's own load figures (see the header). */
#include "carpool/signals.h"
#include "carpool/promtext.h"
#include "carpool/upstream.h"

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_JSON_BODY (1u << 20)     /* /props and /slots */
#define MAX_METRICS_BODY (8u << 20)  /* /metrics: read line by line, but not for ever */
#define MIN_POLL_TIMEOUT_MS 1000     /* a poll may take this long even when the period is shorter */
#define SATURATED_POLLS 2	     /* polls in a row with requests waiting before capacity is learned */

enum sig_source { SRC_PROPS, SRC_METRICS, SRC_SLOTS };

struct signals {
	struct upstream *up;
	struct event *tick;
	struct upcall *call;	/* the poll in flight, or NULL */
	uint64_t t_sent;
	enum sig_source src;
	int status;
	size_t bytes;
	struct prom_parser prom;
	struct sbuf json;
	bool props_tried;
	bool cap_told;		/* learned_cap came from /props (total_slots), not from watching */
	unsigned saturated;	/* polls in a row that showed requests waiting */
	bool missing;		/* the log said the signals are missing (until they come back) */
	bool said_none;		/* the log said this dialect exports none */
};

static const char *source_path(enum sig_source s)
{
	return s == SRC_PROPS ? "/props" : s == SRC_SLOTS ? "/slots" : "/metrics";
}

static unsigned clamp_count(double v) { return v >= (double)UINT_MAX / 2 ? UINT_MAX / 2 : (unsigned)v; }

/* No usable figures: carpool's own accounting stands alone (said once until they come back). */
static void signals_lost(struct signals *s, const char *why)
{
	struct upstream *up = s->up;
	CNT_SET(up->sig_fresh, false);
	s->saturated = 0;
	if (!s->missing)
		log_warn("upstream %s: no load signals (GET %s: %s); counting its load from carpool's own calls%s",
			 up->cfg->url, source_path(s->src), why, upstream_capacity(up) ? "" : " (capacity unknown: unbounded)");
	s->missing = true;
	event_active(up->room_ev, 0, 0); /* others' load no longer counts: there may be room */
}

/* Fresh figures: the server's running and waiting sequences (waiting < 0: not told). */
static void signals_got(struct signals *s, double running, double waiting)
{
	struct upstream *up = s->up;
	unsigned r = clamp_count(running), w = waiting > 0 ? clamp_count(waiting) : 0;
	unsigned total = r + w;
	/* the server's figure includes carpool's own sequences; others' load is the rest */
	CNT_SET(up->sig_others, total > up->seqs ? total - up->seqs : 0);
	CNT_SET(up->sig_fresh, true);
	CNT_SET(up->sig_at, now_us());
	if (!s->cap_told) {
		/* requests waiting in the server, poll after poll: it decodes what it runs, no more */
		s->saturated = w > 0 ? s->saturated + 1 : 0;
		unsigned cap = up->learned_cap;
		if (s->saturated >= SATURATED_POLLS && r > 0 && r != cap) {
			log_info("upstream %s: saturated at %u running (%u waiting): capacity %u sequences", up->cfg->url, r,
				 w, r);
			CNT_SET(up->learned_cap, r);
		} else if (cap && r > cap) {
			CNT_SET(up->learned_cap, r);
		} else if (cap && !w && !upstream_free_seqs(up)) {
			/* carpool holds work back and the server queues nothing: the capacity learned may be
			 * low (requests briefly waiting for a step look like saturation); probe a little above
			 * it - a server really full queues the extra, and the next polls bring it back down */
			CNT_SET(up->learned_cap, cap + (cap / 8 ? cap / 8 : 1));
			log_debug("upstream %s: nothing waiting at capacity %u: trying %u", up->cfg->url, cap, up->learned_cap);
		}
	}
	if (s->missing)
		log_info("upstream %s: load signals back (GET %s: %u running, %u waiting)", up->cfg->url,
			 source_path(s->src), r, w);
	s->missing = false;
	event_active(up->room_ev, 0, 0);
}

static void poll_head(void *arg, int status, const struct evkeyvalq *headers)
{
	(void)headers;
	((struct signals *)arg)->status = status;
}

static void poll_data(void *arg, const char *data, size_t len)
{
	struct signals *s = arg;
	s->bytes += len;
	if (s->status != 200)
		return;
	if (s->src == SRC_METRICS) {
		if (s->bytes <= MAX_METRICS_BODY)
			prom_feed(&s->prom, data, len);
	} else if (s->bytes <= MAX_JSON_BODY) {
		sbuf_add(&s->json, data, len);
	}
}

/* llama.cpp's /slots: one object per slot, is_processing true for the busy ones. -1: not that. */
static long busy_slots(const cJSON *j)
{
	if (!cJSON_IsArray(j) || !j->child)
		return -1;
	long busy = 0;
	for (const cJSON *e = j->child; e; e = e->next) {
		const cJSON *p = cJSON_GetObjectItemCaseSensitive(e, "is_processing");
		if (!cJSON_IsBool(p))
			return -1;
		busy += cJSON_IsTrue(p);
	}
	return busy;
}

static void poll_done(void *arg, enum upcall_error err)
{
	struct signals *s = arg;
	struct upstream *up = s->up;
	s->call = NULL;
	char why[64];
	if (err != UPE_NONE) {
		snprintf(why, sizeof why, "%s", upcall_error_name(err));
		/* the server is gone or restarting (perhaps with another -np): once it answers again,
		 * its /props is read again */
		if (up->dialect == DIALECT_LLAMACPP && s->src != SRC_PROPS)
			s->props_tried = false;
	}
	else if (s->status != 200)
		snprintf(why, sizeof why, "status %d", s->status);
	else if (s->bytes > (s->src == SRC_METRICS ? MAX_METRICS_BODY : MAX_JSON_BODY))
		snprintf(why, sizeof why, "more than %u bytes", s->src == SRC_METRICS ? MAX_METRICS_BODY : MAX_JSON_BODY);
	else
		why[0] = 0;
	if (s->src == SRC_METRICS) {
		struct prom_load l;
		if (!why[0] && prom_finish(&s->prom, &l) == CP_OK) {
			signals_got(s, l.running, l.has_waiting ? l.waiting : -1);
			return;
		}
		if (!why[0])
			snprintf(why, sizeof why, "no load gauges in it");
		signals_lost(s, why);
		if (up->dialect == DIALECT_LLAMACPP && err == UPE_NONE)
			s->src = SRC_SLOTS; /* llama-server without --metrics: its slot list says as much */
		return;
	}
	cJSON *j = why[0] ? NULL : cJSON_ParseWithLength(s->json.data ? s->json.data : "", s->json.len);
	if (s->src == SRC_PROPS) {
		s->props_tried = err == UPE_NONE; /* asked again at the next poll until the server answers */
		if (err != UPE_NONE)
			signals_lost(s, why); /* said once */
		s->src = SRC_METRICS;
		const cJSON *ts = cJSON_GetObjectItemCaseSensitive(j, "total_slots");
		if (cJSON_IsNumber(ts) && ts->valuedouble >= 1 && ts->valuedouble <= 1e6) {
			s->cap_told = true;
			CNT_SET(up->learned_cap, (unsigned)ts->valuedouble);
			log_info("upstream %s: /props says %u slots", up->cfg->url, up->learned_cap);
		} else if (err == UPE_NONE) {
			log_info("upstream %s: no total_slots in GET /props (%s)", up->cfg->url, why[0] ? why : "not there");
		}
	} else {
		long busy = busy_slots(j);
		if (busy >= 0) {
			if (!s->cap_told && cJSON_GetArraySize(j) > 0) {
				s->cap_told = true;
				CNT_SET(up->learned_cap, (unsigned)cJSON_GetArraySize(j));
			}
			signals_got(s, (double)busy, -1);
		} else {
			signals_lost(s, why[0] ? why : "not a slot list");
			s->src = SRC_METRICS;
		}
	}
	cJSON_Delete(j);
}

static const struct upcall_ops poll_ops = {poll_head, poll_data, poll_done};

static long poll_timeout_ms(const struct upstream *up)
{
	return up->cfg->load_poll_ms > MIN_POLL_TIMEOUT_MS ? up->cfg->load_poll_ms : MIN_POLL_TIMEOUT_MS;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct signals *s = arg;
	struct upstream *up = s->up;
	long ms = up->cfg->load_poll_ms;
	struct timeval tv = tv_of_ms(ms);
	/* the timer runs whatever the dialect: an auto upstream is detected again after a failure, and
	 * may turn out to be a server with load figures after all */
	evtimer_add(s->tick, &tv);
	if (up->dialect == DIALECT_OPENAI) { /* a hosted API: no load figures; its room is its budget */
		if (!s->said_none)
			log_info("upstream %s: dialect openai: no load figures to read (room: its budget and carpool's own calls)",
				 up->cfg->url);
		s->said_none = true;
		return;
	}
	if (up->dialect == DIALECT_AUTO)
		return; /* not detected yet */
	if (s->call) {
		if ((long)((now_us() - s->t_sent) / 1000) < poll_timeout_ms(up))
			return; /* still within its time */
		upcall_cancel(s->call);
		s->call = NULL;
		signals_lost(s, "no answer in time");
	}
	if (up->dialect == DIALECT_LLAMACPP && !s->props_tried)
		s->src = SRC_PROPS;
	s->status = 0;
	s->bytes = 0;
	prom_init(&s->prom);
	sbuf_reset(&s->json);
	s->t_sent = now_us();
	s->call = upstream_side_get(up, source_path(s->src), &poll_ops, s);
	if (!s->call)
		signals_lost(s, "cannot start a connection");
}

void signals_start(struct upstream *up)
{
	if (!up->cfg->load_poll_ms || up->signals)
		return;
	struct signals *s = xcalloc(1, sizeof *s);
	s->up = up;
	s->src = SRC_METRICS;
	s->tick = evtimer_new(up->base, tick_cb, s);
	up->signals = s;
	struct timeval tv = {0, 0};
	evtimer_add(s->tick, &tv);
}

void signals_stop(struct upstream *up)
{
	struct signals *s = up->signals;
	if (!s)
		return;
	if (s->call)
		upcall_cancel(s->call);
	event_free(s->tick);
	sbuf_free(&s->json);
	free(s);
	up->signals = NULL;
}
