/* promtext: the load gauges of an LLM server's Prometheus text (see the header). */
#include "carpool/promtext.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const running_names[] = {"vllm:num_requests_running", "sglang:num_running_reqs",
					     "llamacpp:requests_processing"};
static const char *const waiting_names[] = {"vllm:num_requests_waiting", "sglang:num_queue_reqs",
					     "llamacpp:requests_deferred"};

void prom_init(struct prom_parser *p) { memset(p, 0, sizeof *p); }

static bool name_char(char c, bool first)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (!first && c >= '0' && c <= '9');
}

static bool is_one_of(const char *name, size_t len, const char *const *names)
{
	for (int i = 0; i < 3; i++)
		if (strlen(names[i]) == len && !memcmp(names[i], name, len))
			return true;
	return false;
}

/* Past a {label="value",...} set starting at s ('{'): the byte after '}', or NULL if malformed. */
static const char *skip_labels(const char *s)
{
	bool quoted = false;
	for (s++; *s; s++) {
		if (quoted) {
			if (*s == '\\' && s[1])
				s++;
			else if (*s == '"')
				quoted = false;
		} else if (*s == '"') {
			quoted = true;
		} else if (*s == '}') {
			return s + 1;
		}
	}
	return NULL;
}

/* One complete line, NUL-terminated. */
static void take_line(struct prom_parser *p, const char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	if (!*s || *s == '#')
		return;
	const char *name = s;
	if (!name_char(*s, true))
		return;
	while (name_char(*s, false))
		s++;
	size_t nlen = (size_t)(s - name);
	bool running = is_one_of(name, nlen, running_names), waiting = is_one_of(name, nlen, waiting_names);
	if (!running && !waiting)
		return;
	if (*s == '{' && !(s = skip_labels(s))) {
		p->bad++;
		return;
	}
	if (*s != ' ' && *s != '\t') {
		p->bad++;
		return;
	}
	char *end;
	double v = strtod(s, &end);
	if (end == s || !isfinite(v) || v < 0 || (*end && *end != ' ' && *end != '\t' && *end != '\r')) {
		p->bad++;
		return;
	}
	if (running) {
		p->load.running += v;
		p->load.has_running = true;
	} else {
		p->load.waiting += v;
		p->load.has_waiting = true;
	}
}

void prom_feed(struct prom_parser *p, const char *data, size_t len)
{
	while (len) {
		const char *nl = memchr(data, '\n', len);
		size_t n = nl ? (size_t)(nl - data) : len;
		if (!p->skipping) {
			if (p->len + n > PROM_MAX_LINE) {
				p->skipping = true; /* too long for any gauge we read */
				p->len = 0;
			} else {
				memcpy(p->line + p->len, data, n);
				p->len += n;
			}
		}
		if (!nl)
			return;
		p->lines++;
		if (!p->skipping) {
			p->line[p->len] = 0;
			if (memchr(p->line, 0, p->len) == NULL) /* a NUL inside: not text */
				take_line(p, p->line);
			else
				p->bad++;
		}
		p->skipping = false;
		p->len = 0;
		data += n + 1;
		len -= n + 1;
	}
}

int prom_finish(struct prom_parser *p, struct prom_load *out)
{
	if (p->len || p->skipping)
		prom_feed(p, "\n", 1);
	if (!p->load.has_running)
		return CP_DECLINED;
	*out = p->load;
	return CP_OK;
}
