package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/wormspace/wormspace/netstack"
)

func TestNetFaultsFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		err  string
	}{
		{[]string{"-data", "d", "-net-faults"}, "needs -stack netstack"},
		{[]string{"-data", "d", "-net-faults", "-stack", "netstack"}, "needs -metrics"},
	} {
		if _, err := parse(c.args); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("parse %q: %v, want %q", c.args, err, c.err)
		}
	}
	o, err := parse([]string{"-data", "d", "-id", "3", "-net-faults", "-stack", "netstack", "-metrics", "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if o.faults.seed != 3 {
		t.Errorf("default seed %d, want the acceptor id 3", o.faults.seed)
	}
	var cfg netstack.Config
	o.faults.attach(&cfg)
	if cfg.Faults == nil || cfg.Faults != o.faults.faults {
		t.Fatal("no fault injector attached to the netstack configuration")
	}
	// Off by default: nothing attached, no endpoint.
	o, err = parse([]string{"-data", "d", "-stack", "netstack", "-metrics", "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	cfg = netstack.Config{}
	o.faults.attach(&cfg)
	mux := http.NewServeMux()
	o.faults.serve(mux, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if cfg.Faults != nil {
		t.Fatal("faults attached without -net-faults")
	}
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", netFaultsPath, nil))
	if rec.Code != http.StatusNotFound {
		t.Fatalf("control endpoint served without -net-faults: %d", rec.Code)
	}
}

func TestNetFaultsEndpoint(t *testing.T) {
	ff := &faultFlags{enabled: true, seed: 1}
	var cfg netstack.Config
	ff.attach(&cfg)
	mux := http.NewServeMux()
	ff.serve(mux, slog.New(slog.NewTextHandler(io.Discard, nil)))
	do := func(method, body string) (int, faultState, string) {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(method, netFaultsPath, strings.NewReader(body)))
		var st faultState
		if rec.Code == http.StatusOK {
			if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
				t.Fatalf("%s: %v: %s", method, err, rec.Body)
			}
		}
		return rec.Code, st, rec.Body.String()
	}
	code, st, _ := do("PUT", `{"egress":{"loss":0.25,"delay":"3ms"},"ingress":{"reorder":0.5}}`)
	want := netstack.FaultConfig{Egress: netstack.FaultRates{Loss: 0.25, Delay: 3e6}, Ingress: netstack.FaultRates{Reorder: 0.5}}
	if code != http.StatusOK || st.Config != want || ff.faults.Config() != want {
		t.Fatalf("PUT: %d %+v (injector has %+v)", code, st.Config, ff.faults.Config())
	}
	if code, st, _ = do("GET", ""); code != http.StatusOK || st.Config != want {
		t.Fatalf("GET: %d %+v", code, st)
	}
	for _, bad := range []string{`{"egress":{"loss":2}}`, `{"egress":{"lose":0.1}}`, `not json`} {
		if code, _, body := do("PUT", bad); code != http.StatusBadRequest {
			t.Errorf("PUT %s: %d %s", bad, code, body)
		}
	}
	if ff.faults.Config() != want {
		t.Fatal("a refused PUT changed the faults")
	}
	if code, _, _ := do("DELETE", ""); code != http.StatusMethodNotAllowed {
		t.Errorf("DELETE: %d", code)
	}
	if code, st, _ = do("POST", `{}`); code != http.StatusOK || st.Config != (netstack.FaultConfig{}) {
		t.Fatalf("clearing: %d %+v", code, st.Config)
	}
}
