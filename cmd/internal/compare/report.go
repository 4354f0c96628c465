package compare

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
)

// CSVHeader is the column list of results.csv.
var CSVHeader = []string{"config", "workload", "clients", "rate", "floor", "reps",
	"ops_per_sec_median", "ops_per_sec_min", "ops_per_sec_max",
	"p50_us_median", "p50_us_min", "p50_us_max", "p99_us_median",
	"server_cpu_us_per_op", "client_cpu_us_per_op", "cpu_busy",
	"throughput_ratio", "p50_ratio", "p99_ratio", "server_cpu_ratio",
	"stack_throughput_ratio", "stack_p50_ratio", "errors"}

func f1(x float64) string { return strconv.FormatFloat(x, 'f', 1, 64) }
func f2(x float64) string { return strconv.FormatFloat(x, 'f', 2, 64) }

// CSV renders the rows.
func CSV(rep *Report) []byte {
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	w.Write(CSVHeader)
	for _, x := range rep.Rows {
		w.Write([]string{x.Config, x.Workload, strconv.Itoa(x.Clients), strconv.Itoa(x.Rate), strconv.FormatBool(x.Floor), strconv.Itoa(len(x.Samples)),
			f1(x.OpsPerSec.Median), f1(x.OpsPerSec.Min), f1(x.OpsPerSec.Max),
			f1(x.P50us.Median), f1(x.P50us.Min), f1(x.P50us.Max), f1(x.P99us.Median),
			f2(x.ServerCPU.Median), f2(x.ClientCPU.Median), f2(x.CPUBusy.Median),
			f2(x.TputRatio), f2(x.P50Ratio), f2(x.P99Ratio), f2(x.CPURatio),
			f2(x.StackTputRatio), f2(x.StackP50Ratio), strconv.FormatInt(x.Errors, 10)})
	}
	w.Flush()
	return b.Bytes()
}

func ratio(x float64) string {
	if x == 0 {
		return "-"
	}
	return strconv.FormatFloat(x, 'g', 3, 64) + "x"
}

// Table renders the report for a terminal.
func Table(rep *Report) string {
	var b bytes.Buffer
	e := rep.Env
	fmt.Fprintf(&b, "OS-stack comparison, %s\n", rep.Started.Format("2006-01-02 15:04 MST"))
	cpus := fmt.Sprintf("%d CPUs", e.CPUs)
	if e.CPUsOnline > e.CPUs {
		which := "CPU "
		if e.CPUs > 1 {
			which = "CPUs "
		}
		cpus = fmt.Sprintf("%d of %d CPUs (every process pinned to %s%s)", e.CPUs, e.CPUsOnline, which, e.Affinity)
	}
	fmt.Fprintf(&b, "env: %s, %s, host kernel %s, VM accel %s, %s, git %s\n", e.CPUModel, cpus, e.HostKernel, strings.ToUpper(e.Accel), e.GoVersion, e.GitRevision)
	if e.GuestKernel != "" {
		fmt.Fprintf(&b, "guest: kernel %s, image %s\n", e.GuestKernel, imageSize(e.ImageBytes))
	}
	fmt.Fprintf(&b, "settings: %v reps (interleaved), %vms measured after %vms warm-up, %v-byte values, volatile=%v\n",
		rep.Settings["reps"], rep.Settings["duration_ms"], rep.Settings["warmup_ms"], rep.Settings["value_bytes"], rep.Settings["volatile"])
	for _, c := range rep.Configs {
		s := c.Status
		if bt, ok := c.Info["boot_to_ready_ms"]; ok {
			s += fmt.Sprintf(" (boot-to-ready ms %v)", bt)
		} else if st, ok := c.Info["start_to_ready_ms"]; ok {
			s += fmt.Sprintf(" (start-to-ready %.0f ms)", st)
		}
		fmt.Fprintf(&b, "  %-14s %s\n", c.Name, s)
	}
	if e.Accel == "tcg" {
		fmt.Fprintf(&b, "NOTE: VMs ran under TCG (emulation): their figures include emulation cost; overhead numbers that matter come from KVM.\n")
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tclients\tconfig\tops/s\t(min-max)\tp50 µs\tp99 µs\tsrv cpu µs/op\tcli cpu µs/op\tcpus busy\ttput vs 1\tp50 vs 1\tcpu vs 1\tns/kernel tput\tns/kernel p50\terrors\t")
	for _, x := range rep.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t\n",
			x.Workload, load(x), x.Config, opsCell(x, x.OpsPerSec.Median), opsCell(x, x.OpsPerSec.Min)+"-"+opsCell(x, x.OpsPerSec.Max),
			f1(x.P50us.Median), f1(x.P99us.Median), dash(x.ServerCPU.Median), dash(x.ClientCPU.Median), percent(x.CPUBusy.Median),
			ratio(x.TputRatio), ratio(x.P50Ratio), ratio(x.CPURatio), ratio(x.StackTputRatio), ratio(x.StackP50Ratio), x.Errors)
	}
	tw.Flush()
	b.WriteString(goalNote(rep, "  "))
	b.WriteString(streamNote(rep))
	b.WriteString(busyNote(rep))
	b.WriteString(pacerNote(rep))
	return b.String()
}

// percent renders a share (0.74) as "74%"; "-" for none.
func percent(x float64) string {
	if x == 0 {
		return "-"
	}
	return strconv.FormatFloat(100*x, 'f', 0, 64) + "%"
}

// pacerNote says how late the open loop's pacer was, when the report has
// open-loop rows: the worst median and p99 over their samples.
func pacerNote(rep *Report) string {
	var p50, p99 float64
	seen := false
	for _, x := range rep.Rows {
		if x.Rate == 0 {
			continue
		}
		for _, s := range x.Samples {
			if s.Ops > 0 {
				seen = true
				p50, p99 = max(p50, s.PacerLateP50us), max(p99, s.PacerLateP99us)
			}
		}
	}
	if !seen {
		return ""
	}
	return fmt.Sprintf("\n%s: latency from each append's scheduled start; the harness issued them at most %.1f µs late at the median, %.1f µs at p99 (worst sample).\n", OpenLoop, p50, p99)
}

// busyNote explains the cpus busy column when the report has it.
func busyNote(rep *Report) string {
	for _, x := range rep.Rows {
		if x.CPUBusy.Median > 0 {
			return fmt.Sprintf("\ncpus busy: the cluster's and the harness's CPU time over wall time times %d CPUs. Where it nears 100%%, latency is CPU per operation more than the network's round trip.\n", rep.Env.CPUs)
		}
	}
	return ""
}

// opsCell renders a throughput: operations per second, or MB/s (one
// decimal) on the bulk floor's rows.
func opsCell(x Row, v float64) string {
	if x.Workload == StreamWorkload {
		return f1(v)
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

// streamNote explains the bulk floor's columns when the report has it.
func streamNote(rep *Report) string {
	for _, x := range rep.Rows {
		if x.Workload == StreamWorkload {
			return fmt.Sprintf("\n%s: %d KiB writes streamed through the echo floor on one connection; its ops/s is MB/s each way, its p50/p99 the time a chunk takes to come back.\n", StreamWorkload, StreamChunk>>10)
		}
	}
	return ""
}

// load is the clients column: the client count, or @RATE/s open loop.
func load(x Row) string {
	if x.Rate > 0 {
		return "@" + strconv.Itoa(x.Rate) + "/s"
	}
	return strconv.Itoa(x.Clients)
}

func dash(x float64) string {
	if x == 0 {
		return "-"
	}
	return f1(x)
}

func imageSize(m map[string]int64) string {
	var t int64
	var parts []string
	for k, v := range m {
		t += v
		parts = append(parts, fmt.Sprintf("%s %.1f MB", k, float64(v)/1e6))
	}
	return fmt.Sprintf("%.1f MB (%s)", float64(t)/1e6, strings.Join(parts, ", "))
}

// Markdown renders the main rows as a Markdown table (for README).
func Markdown(rep *Report) string {
	var b bytes.Buffer
	b.WriteString("| workload | clients | config | ops/s (min–max) | p50 µs | p99 µs | server CPU µs/op | CPUs busy | tput vs host-kernel | p50 vs host-kernel | netstack/kernel tput | netstack/kernel p50 |\n")
	b.WriteString("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, x := range rep.Rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s (%s–%s) | %s | %s | %s | %s | %s | %s | %s | %s |\n", x.Workload, load(x), x.Config,
			opsCell(x, x.OpsPerSec.Median), opsCell(x, x.OpsPerSec.Min), opsCell(x, x.OpsPerSec.Max), f1(x.P50us.Median), f1(x.P99us.Median), dash(x.ServerCPU.Median), percent(x.CPUBusy.Median),
			ratio(x.TputRatio), ratio(x.P50Ratio), ratio(x.StackTputRatio), ratio(x.StackP50Ratio))
	}
	b.WriteString(goalNote(rep, "- "))
	b.WriteString(streamNote(rep))
	b.WriteString(busyNote(rep))
	b.WriteString(pacerNote(rep))
	return b.String()
}

// writeOutputs writes report.json, results.csv, table.txt, table.md and
// the plots into dir.
func writeOutputs(rep *Report, dir string) error {
	plots, err := writePlots(rep, dir)
	if err != nil {
		return err
	}
	rep.Files = append([]string{"report.json", "results.csv", "table.txt", "table.md"}, plots...)
	if err := os.WriteFile(filepath.Join(dir, "results.csv"), CSV(rep), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "table.txt"), []byte(Table(rep)), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "table.md"), []byte(Markdown(rep)), 0o644); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "report.json"), append(b, '\n'), 0o644)
}
