package server

import (
	"bufio"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/wormspace/wormspace/worm/paxos"
)

var (
	sampleRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*)\})? (\S+)$`)
	labelRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
	typeRE   = regexp.MustCompile(`^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$`)
	helpRE   = regexp.MustCompile(`^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .+$`)
)

type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// scrape fetches the metrics and parses them line by line, failing on any
// line that is not valid text exposition format.
func scrape(t *testing.T, s *Server) []sample {
	t.Helper()
	rec := httptest.NewRecorder()
	s.Metrics().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Fatalf("content type %q", ct)
	}
	types := map[string]string{}
	var out []sample
	sc := bufio.NewScanner(rec.Body)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "# TYPE"):
			m := typeRE.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("line %d: bad TYPE line %q", n, line)
			}
			if _, dup := types[m[1]]; dup {
				t.Fatalf("line %d: second TYPE for %s", n, m[1])
			}
			types[m[1]] = m[2]
		case strings.HasPrefix(line, "#"):
			if !helpRE.MatchString(line) {
				t.Fatalf("line %d: bad comment %q", n, line)
			}
		default:
			m := sampleRE.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("line %d: not a sample: %q", n, line)
			}
			v, err := strconv.ParseFloat(m[4], 64)
			if err != nil {
				t.Fatalf("line %d: value %q: %v", n, m[4], err)
			}
			family := m[1]
			if typ, ok := types[family]; !ok || typ == "histogram" {
				for _, suf := range []string{"_bucket", "_sum", "_count"} {
					if f := strings.TrimSuffix(m[1], suf); f != m[1] && types[f] == "histogram" {
						family = f
					}
				}
			}
			if _, ok := types[family]; !ok {
				t.Fatalf("line %d: sample %s before its TYPE", n, m[1])
			}
			labels := map[string]string{}
			for _, l := range labelRE.FindAllStringSubmatch(m[3], -1) {
				labels[l[1]] = l[2]
			}
			out = append(out, sample{m[1], labels, v})
		}
	}
	return out
}

func find(samples []sample, name string, labels ...string) (float64, bool) {
next:
	for _, s := range samples {
		if s.name != name {
			continue
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if s.labels[labels[i]] != labels[i+1] {
				continue next
			}
		}
		return s.value, true
	}
	return 0, false
}

// checkHistogram checks that the buckets of name{labels} are cumulative
// and end in +Inf equal to _count, and returns _count.
func checkHistogram(t *testing.T, samples []sample, name string, labels ...string) float64 {
	t.Helper()
	prev, sawInf := -1.0, false
	for _, s := range samples {
		if s.name != name+"_bucket" {
			continue
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			match = match && s.labels[labels[i]] == labels[i+1]
		}
		if !match {
			continue
		}
		if s.value < prev {
			t.Fatalf("%s buckets decrease at le=%s", name, s.labels["le"])
		}
		prev = s.value
		sawInf = s.labels["le"] == "+Inf"
	}
	count, ok := find(samples, name+"_count", labels...)
	if !ok || !sawInf || prev != count {
		t.Fatalf("%s%v: last bucket %v (+Inf %v), count %v", name, labels, prev, sawInf, count)
	}
	return count
}

func TestMetricsExposition(t *testing.T) {
	ts := startServer(t, nil, false, nil)
	c := ts.dial()
	const n = 12
	for i := range uint32(n) {
		c.roundTrip(uint64(i), accept(1, i, []byte("v")))
	}
	c.roundTrip(100, &paxos.Request{Kind: paxos.KindRead, Seg: 1, Off: 0})
	c.roundTrip(101, &paxos.Request{Kind: paxos.KindTrim, Seg: 2})
	if _, err := ts.dialKey(make([]byte, 40)); err == nil {
		t.Fatal("a keyed client was accepted by a server without a key")
	}
	eventually(t, "the refused connection to be closed", func() bool { return ts.srv.nconns.Load() == 1 })
	samples := scrape(t, ts.srv)
	want := func(v float64, name string, labels ...string) {
		t.Helper()
		got, ok := find(samples, name, labels...)
		if !ok || got != v {
			t.Errorf("%s%v = %v (present %v), want %v", name, labels, got, ok, v)
		}
	}
	want(n, "worm_requests_total", "kind", "accept", "status", "ok")
	want(1, "worm_requests_total", "kind", "read", "status", "ok")
	want(1, "worm_requests_total", "kind", "trim", "status", "ok")
	want(1, "worm_connections")
	want(1, "worm_segments", "state", "live")
	want(1, "worm_segments", "state", "trimmed")
	want(n+1, "worm_durable_position")
	want(0, "worm_storage_failed")
	if v, _ := find(samples, "worm_live_bytes"); v <= 0 {
		t.Errorf("worm_live_bytes = %v", v)
	}
	if got := checkHistogram(t, samples, "worm_request_seconds", "kind", "accept"); got != n {
		t.Errorf("accept latency count %v, want %d", got, n)
	}
	if got := checkHistogram(t, samples, "worm_fsync_seconds"); got < 1 {
		t.Errorf("fsync count %v", got)
	}
	// The refused key shows up as an authentication failure (the client
	// refuses a server that cannot prove the key, and tells it so).
	eventually(t, "the failed handshake to be counted", func() bool {
		v, _ := find(scrape(t, ts.srv), "worm_handshake_failures_total", "reason", "auth")
		return v == 1
	})
}
