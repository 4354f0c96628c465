package compare

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// The comparison's targets for wormd on netstack against wormd on the
// kernel's TCP, on the host (configuration 2 against 1): the original
// system lost more than 10x of its throughput and 1.5x of its latency to
// its minimal OS's stack; this one should keep netstack's throughput at
// GoalThroughput of the kernel's or better and its p50 within GoalP50.
const (
	GoalThroughput = 0.7
	GoalP50        = 1.3
)

// GoalCheck is how one host-netstack configuration (the base or a
// variant) did against the goals at one load: over the wormd workloads
// (not the floors) measured at that client count or open-loop rate, the
// range of its netstack/kernel ratios and the workloads that missed.
// Ratios are judged as the report prints them, to two decimals, so that
// a "1.30x" is never a miss. An open loop runs at a fixed rate, so its
// throughput is not judged.
type GoalCheck struct {
	Config string `json:"config"`
	// Clients is the closed-loop client count, 0 for an open loop.
	Clients int `json:"clients,omitempty"`
	// Rate is the open loop's arrival rate (ops/s), 0 for a closed loop.
	Rate      int `json:"rate,omitempty"`
	Workloads int `json:"workloads"`
	// ThroughputMin and ThroughputMax: netstack's throughput over the
	// kernel's (0 for an open loop).
	ThroughputMin float64 `json:"throughput_min,omitempty"`
	ThroughputMax float64 `json:"throughput_max,omitempty"`
	// P50Min and P50Max: netstack's p50 over the kernel's.
	P50Min float64 `json:"p50_min"`
	P50Max float64 `json:"p50_max"`
	// ThroughputMissed and P50Missed name the workloads below
	// GoalThroughput and above GoalP50.
	ThroughputMissed []string `json:"throughput_missed,omitempty"`
	P50Missed        []string `json:"p50_missed,omitempty"`
}

// Met reports whether every workload met both goals.
func (g GoalCheck) Met() bool { return len(g.ThroughputMissed) == 0 && len(g.P50Missed) == 0 }

// load renders the check's load as the table's clients column does.
func (g GoalCheck) load() string {
	if g.Rate > 0 {
		return "@" + strconv.Itoa(g.Rate) + "/s"
	}
	if g.Clients == 1 {
		return "1 client"
	}
	return strconv.Itoa(g.Clients) + " clients"
}

// round2 is x as printed with two decimals.
func round2(x float64) float64 { return math.Round(x*100) / 100 }

// checkGoals judges rows (sorted as the report sorts them) against the
// goals: one GoalCheck per host-netstack configuration and load with a
// kernel peer, configurations in their first appearance's order, closed
// loops by client count before open loops by rate.
func checkGoals(rows []Row) []GoalCheck {
	var out []GoalCheck
	var order []string
	index := map[string]int{}
	for _, x := range rows {
		if baseConfig(x.Config) != HostNetstack || x.Floor || x.StackP50Ratio == 0 {
			continue
		}
		key := fmt.Sprintf("%s|%d|%d", x.Config, x.Clients, x.Rate)
		i, ok := index[key]
		if !ok {
			i = len(out)
			index[key] = i
			g := GoalCheck{Config: x.Config, Clients: x.Clients, Rate: x.Rate, P50Min: math.Inf(1)}
			if x.Rate == 0 {
				g.ThroughputMin = math.Inf(1)
			}
			out = append(out, g)
			if !slices.Contains(order, x.Config) {
				order = append(order, x.Config)
			}
		}
		g := &out[i]
		g.Workloads++
		p50 := round2(x.StackP50Ratio)
		g.P50Min, g.P50Max = min(g.P50Min, p50), max(g.P50Max, p50)
		if p50 > GoalP50 {
			g.P50Missed = append(g.P50Missed, x.Workload)
		}
		if x.Rate == 0 {
			t := round2(x.StackTputRatio)
			g.ThroughputMin, g.ThroughputMax = min(g.ThroughputMin, t), max(g.ThroughputMax, t)
			if t < GoalThroughput {
				g.ThroughputMissed = append(g.ThroughputMissed, x.Workload)
			}
		}
	}
	slices.SortStableFunc(out, func(a, b GoalCheck) int {
		if a.Config != b.Config {
			return slices.Index(order, a.Config) - slices.Index(order, b.Config)
		}
		if (a.Rate > 0) != (b.Rate > 0) {
			if a.Rate > 0 {
				return 1
			}
			return -1
		}
		if a.Clients != b.Clients {
			return a.Clients - b.Clients
		}
		return a.Rate - b.Rate
	})
	return out
}

// span renders a ratio range: "0.69–0.97x", or "1.23x" when both ends
// are equal.
func span(lo, hi float64) string {
	if lo == hi {
		return f2(lo) + "x"
	}
	return f2(lo) + "–" + f2(hi) + "x"
}

// goalNote renders the goal checks, each line after bullet ("  " for the
// terminal, "- " for Markdown); "" without any.
func goalNote(rep *Report, bullet string) string {
	if len(rep.Goals) == 0 {
		return ""
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "\ngoals, wormd on netstack against the kernel on the host (throughput %sx or better, p50 within %sx):\n",
		strconv.FormatFloat(GoalThroughput, 'f', -1, 64), strconv.FormatFloat(GoalP50, 'f', -1, 64))
	for _, g := range rep.Goals {
		workloads := "workloads"
		if g.Workloads == 1 {
			workloads = "workload"
		}
		line := fmt.Sprintf("%s%s, %s (%d %s):", bullet, g.Config, g.load(), g.Workloads, workloads)
		if g.Rate == 0 {
			line += " throughput " + span(g.ThroughputMin, g.ThroughputMax) + ","
		}
		line += " p50 " + span(g.P50Min, g.P50Max)
		var missed []string
		if len(g.ThroughputMissed) > 0 {
			missed = append(missed, "throughput ("+strings.Join(g.ThroughputMissed, ", ")+")")
		}
		if len(g.P50Missed) > 0 {
			missed = append(missed, "p50 ("+strings.Join(g.P50Missed, ", ")+")")
		}
		if len(missed) == 0 {
			line += ": met"
		} else {
			line += ": missed, " + strings.Join(missed, "; ")
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}
