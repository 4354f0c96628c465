package main

import (
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/http"

	"github.com/wormspace/wormspace/netstack"
)

// faultFlags is wormd's opt-in control of packet faults on its netstack
// link, for fault-injection harnesses (worm nemesis):
//
//	wormd -stack netstack -tap wtap1 -addr 10.78.1.2/24 -metrics 127.0.0.1:9101 -net-faults
//
// With -net-faults the stack's link passes through a netstack.Faults
// (seeded by -net-faults-seed, by default the acceptor id) and the
// metrics listener serves /debug/netfaults:
//
//	GET  /debug/netfaults   {"config": {...}, "stats": {...}}
//	PUT  /debug/netfaults   body: a netstack.FaultConfig in JSON, e.g.
//	     {"egress":{"loss":0.1,"delay":"5ms","jitter":"2ms"},"ingress":{"duplicate":0.05,"reorder":0.1}}
//	     (an empty object {} removes every fault); answers like GET.
//
// It is off by default: anyone who reaches the metrics address could
// degrade the acceptor's network at will, so it is meant for test rigs
// whose metrics address is loopback in a private namespace. The metrics
// listener is kernel TCP, not the faulty link, so the control channel is
// never itself subject to the faults. It needs -stack netstack (the
// kernel stack's faults belong to the kernel: tc netem) and -metrics.
type faultFlags struct {
	enabled bool
	seed    uint64
	faults  *netstack.Faults
}

const netFaultsPath = "/debug/netfaults"

func (ff *faultFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&ff.enabled, "net-faults", false, "netstack: inject packet faults on the link, controlled at "+netFaultsPath+" on the -metrics address (fault-injection rigs only; off by default)")
	fs.Uint64Var(&ff.seed, "net-faults-seed", 0, "seed of -net-faults' random decisions (default: the acceptor id)")
}

// check validates the flags against the others.
func (ff *faultFlags) check(o *options) error {
	if !ff.enabled {
		return nil
	}
	if o.stack != "netstack" {
		return errors.New("-net-faults needs -stack netstack")
	}
	if o.metrics == "" {
		return errors.New("-net-faults needs -metrics ADDR (its control endpoint lives there)")
	}
	if ff.seed == 0 {
		ff.seed = uint64(o.id)
	}
	return nil
}

// attach adds the fault injector to the netstack configuration.
func (ff *faultFlags) attach(cfg *netstack.Config) {
	if !ff.enabled {
		return
	}
	ff.faults = netstack.NewFaults(ff.seed)
	cfg.Faults = ff.faults
}

// faultState is the control endpoint's answer.
type faultState struct {
	Config netstack.FaultConfig `json:"config"`
	Stats  netstack.FaultStats  `json:"stats"`
}

// serve registers the control endpoint on the metrics mux.
func (ff *faultFlags) serve(mux *http.ServeMux, log *slog.Logger) {
	if ff.faults == nil {
		return
	}
	f := ff.faults
	mux.HandleFunc(netFaultsPath, func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
		case http.MethodPut, http.MethodPost:
			b, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			c, err := netstack.ParseFaultConfig(b)
			if err == nil {
				err = f.Set(c)
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			log.Info("net faults set", "faults", c.String(), "remote", r.RemoteAddr)
		default:
			w.Header().Set("Allow", "GET, PUT, POST")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(faultState{Config: f.Config(), Stats: f.Stats()})
	})
	log.Warn("packet fault injection enabled (-net-faults)", "control", netFaultsPath, "seed", ff.seed)
}
