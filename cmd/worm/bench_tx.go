package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/apps/wormtx/twopc"
	"github.com/wormspace/wormspace/apps/wormtx/txbench"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/bench"
	"github.com/wormspace/wormspace/worm/client"
	"github.com/wormspace/wormspace/worm/localcluster"
	"github.com/wormspace/wormspace/worm/spec"
)

func init() {
	benchApps["tx"] = cmdBenchTx
	benchApps["tx-participants"] = cmdBenchTxParticipants
}

const benchTxUsage = `usage: worm bench tx [-participants 3] [-clients 1,4,16] [-local 3] [-volatile] [-quick] [-json FILE]

Measures WormTX against classic two-phase commit in one run: closed-loop
clients each begin a transaction among every participant and await its
outcome. The clients and both protocols' coordinators run in this
process; the participants of both run in a second process, reached over the same
loopback TCP network, so that every message on either critical path
crosses processes. WormTX (its direct mode, transactions sharing
segments allocated and subscribed to ahead) votes into -local wormds
started for the run; 2PC's coordinator forces its decisions to a log
file, synced like the wormds (nothing is synced with -volatile). By
default WormTX's participants do not force their votes: each vote
carries its prepare record, made durable by the wormds' acceptance
(-records=false forces them, as 2PC's participants must). The
participants' process runs one WormSpace client, which its WormTX
participants share, as its 2PC participants share its one connection to
this process (-client-per-participant gives each WormTX participant a
client of its own). Each client
count runs -reps rounds, and each round runs both protocols back to back,
the one that goes first alternating, so that drift of a noisy machine
falls on both; a ratio is taken within each round, and the report gives
the median of the rounds' ratios with the range of the p50 ratio.

Also reported: each protocol's critical path in message delays (the same
code over an in-memory space with a fixed one-way delay); what each wormd
did per WormTX commit over the measured window (syncs and their mean
duration, syncs held for followers, accepts, notifications), from its
status counters, and 2PC's forces per commit over its window (the
coordinator's decision log, the participants' vote logs); and a
coordinator crash after the prepares: 2PC's
participants stay in doubt until their coordinator comes back, WormTX's
apply without it.`

// TxBenchRow is one client count: both protocols, over -reps rounds.
type TxBenchRow struct {
	Clients int `json:"clients"`
	// The round whose p50 is the median of each protocol's rounds.
	WormTX txbench.Result `json:"wormtx"`
	TwoPC  txbench.Result `json:"twopc"`
	// The medians of the rounds' ratios, each measured in one round
	// where the protocols ran back to back.
	TxBenchRatios
	// The lowest and highest of the rounds' p50 ratios.
	P50RatioMin float64 `json:"p50_ratio_min"`
	P50RatioMax float64 `json:"p50_ratio_max"`
	// Wormds: the wormservers' work per WormTX commit, each counter's
	// median over the rounds.
	Wormds *WormdCounters `json:"wormds,omitempty"`
	// TwoPCForces: 2PC's forces per commit, each counter's median over
	// the rounds.
	TwoPCForces *TwoPCCounters `json:"twopc_forces,omitempty"`
	// Rounds, in the order they ran.
	Rounds []TxBenchRound `json:"rounds,omitempty"`
}

// TxBenchRound is one round of a client count: both protocols back to
// back, in an order that alternates from round to round.
type TxBenchRound struct {
	WormTX txbench.Result `json:"wormtx"`
	TwoPC  txbench.Result `json:"twopc"`
	// Wormds: the wormservers' work per WormTX commit in this round.
	Wormds *WormdCounters `json:"wormds,omitempty"`
	// TwoPCForces: 2PC's forces per commit in this round.
	TwoPCForces *TwoPCCounters `json:"twopc_forces,omitempty"`
	TxBenchRatios
}

// TxBenchRatios are WormTX's figures over 2PC's (above 1: WormTX is
// slower, or commits more per second).
type TxBenchRatios struct {
	P50Ratio        float64 `json:"p50_ratio"`
	P99Ratio        float64 `json:"p99_ratio"`
	AppliedP50Ratio float64 `json:"applied_p50_ratio"`
	ThroughputRatio float64 `json:"throughput_ratio"`
}

// ratios fills the round's ratios when both protocols ran.
func (r *TxBenchRound) ratios() bool {
	if r.WormTX.Ops == 0 || r.TwoPC.Ops == 0 {
		return false
	}
	r.P50Ratio = float64(r.WormTX.Latency.P50) / float64(r.TwoPC.Latency.P50)
	r.P99Ratio = float64(r.WormTX.Latency.P99) / float64(r.TwoPC.Latency.P99)
	r.ThroughputRatio = r.WormTX.OpsPerSec / r.TwoPC.OpsPerSec
	if r.TwoPC.Applied.P50 > 0 {
		r.AppliedP50Ratio = float64(r.WormTX.Applied.P50) / float64(r.TwoPC.Applied.P50)
	}
	return true
}

// summarize sets the row's figures from its rounds: each protocol's
// median round (by p50) and the medians of the rounds' ratios.
func (row *TxBenchRow) summarize() {
	medianRound := func(pick func(TxBenchRound) txbench.Result) txbench.Result {
		var rs []txbench.Result
		for _, r := range row.Rounds {
			if x := pick(r); x.Ops > 0 || x.Errors > 0 {
				rs = append(rs, x)
			}
		}
		if len(rs) == 0 {
			return txbench.Result{}
		}
		slices.SortFunc(rs, func(a, b txbench.Result) int { return cmp.Compare(a.Latency.P50, b.Latency.P50) })
		return rs[(len(rs)-1)/2]
	}
	row.WormTX = medianRound(func(r TxBenchRound) txbench.Result { return r.WormTX })
	row.TwoPC = medianRound(func(r TxBenchRound) txbench.Result { return r.TwoPC })
	row.Wormds = medianWormdCounters(row.Rounds)
	row.TwoPCForces = medianTwoPCCounters(row.Rounds)
	var p50, p99, applied, tput []float64
	for _, r := range row.Rounds {
		if r.P50Ratio == 0 {
			continue
		}
		p50, p99, tput = append(p50, r.P50Ratio), append(p99, r.P99Ratio), append(tput, r.ThroughputRatio)
		if r.AppliedP50Ratio > 0 {
			applied = append(applied, r.AppliedP50Ratio)
		}
	}
	row.P50Ratio, row.P99Ratio, row.AppliedP50Ratio, row.ThroughputRatio = median(p50), median(p99), median(applied), median(tput)
	if len(p50) > 0 {
		row.P50RatioMin, row.P50RatioMax = slices.Min(p50), slices.Max(p50)
	}
}

// TxBenchReport is what -json writes.
type TxBenchReport struct {
	Time     time.Time `json:"time"`
	Volatile bool      `json:"volatile"`
	Records  bool      `json:"records"`
	// ClientPerParticipant: each WormTX participant had a WormSpace
	// client of its own (false: one for the participants' process).
	ClientPerParticipant bool                    `json:"client_per_participant"`
	Participants         int                     `json:"participants"`
	Wormds               []string                `json:"wormds"`
	Duration             time.Duration           `json:"duration_ns"`
	Reps                 int                     `json:"reps"`
	Think                time.Duration           `json:"think_ns,omitempty"`
	Warmup               time.Duration           `json:"warmup_ns"`
	Delays               txbench.DelayCount      `json:"delays"`
	Rows                 []TxBenchRow            `json:"rows"`
	Blocking             *txbench.BlockingReport `json:"blocking,omitempty"`
}

func cmdBenchTx(args []string) error {
	fs := flag.NewFlagSet("bench tx", flag.ContinueOnError)
	parts := fs.Int("participants", 3, "participants per transaction")
	clientsF := fs.String("clients", "1,4,16", "closed-loop client counts to sweep")
	local := fs.Int("local", 3, "wormds to start on loopback for the run")
	volatile := fs.Bool("volatile", false, "no fsync anywhere: wormds, 2PC's decision log, the participants' vote logs")
	stages := fs.Bool("stages", false, "also time each stage of both protocols' transactions (prepare sent, prepare start, prepared, voted, outcome, applied; first and last participant) and print where the latency goes")
	records := fs.Bool("records", true, "WormTX participants' votes carry their prepare records (set segments and a segment log per participant; apps/wormtx/records.go); false: each forces its vote to its log before casting it, as 2PC's participants do")
	quick := fs.Bool("quick", false, "short runs (1s, 200ms warm-up, one round unless -reps says otherwise)")
	duration := fs.Duration("duration", 2*time.Second, "measured time per protocol, client count and round")
	reps := fs.Int("reps", 3, "rounds per client count, each running both protocols back to back (alternating which goes first); the ratios reported are the medians of the rounds' ratios, with the range of the p50 ratio")
	warmup := fs.Duration("warmup", time.Second, "unmeasured time before each measurement")
	oneWay := fs.Duration("delay", 2*time.Millisecond, "the one-way delay of the message-delay count (in-memory space)")
	blocking := fs.Duration("blocking", time.Second, "how long 2PC's participants are watched in doubt after their coordinator's crash (0: skip the crash demonstration)")
	think := fs.Duration("think", 0, "each client's pause between its transactions, not measured (0: back to back); a pause longer than a transaction's aftermath measures each transaction on a machine its predecessors no longer load")
	perParticipant := fs.Bool("client-per-participant", false, "give each WormTX participant a WormSpace client (connections to every wormd) of its own; default one client for the participants' process, as its 2PC participants share one connection to this process")
	protocols := fs.String("protocols", "wormtx,2pc", "which protocols to run")
	jsonOut := fs.String("json", "", "also write the report as JSON to this file")
	profDir := fs.String("cpuprofile", "", "write a CPU profile of this process per run into this directory")
	fs.Usage = func() { fmt.Fprintln(fs.Output(), benchTxUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 || *local < 1 || *parts < 1 || *reps < 1 {
		fs.Usage()
		return errUsage
	}
	if *quick {
		*duration, *warmup = time.Second, 200*time.Millisecond
		if !givenFlags(fs)["reps"] {
			*reps = 1
		}
	}
	counts, err := parseInts(*clientsF)
	if err != nil {
		return &exitError{code: exitFailure, msg: "-clients: " + err.Error()}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Fprintf(os.Stderr, "bench tx: counting message delays (%v one-way, in memory) ...\n", *oneWay)
	newSpace := func() func(string) worm.Space {
		st := spec.New(1024)
		return func(id string) worm.Space { return st.Client(id) }
	}
	delays, err := txbench.Delays(ctx, newSpace, *parts, *oneWay, 20)
	if err != nil {
		return err
	}

	dir, err := os.MkdirTemp("", "worm-bench-tx-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	mode := "durable (fsync)"
	if *volatile {
		mode = "volatile (no fsync)"
	}
	fmt.Fprintf(os.Stderr, "bench tx: starting %d local wormds, %s ...\n", *local, mode)
	lc, err := localcluster.Start(ctx, localcluster.Config{N: *local, Dir: filepath.Join(dir, "wormds"), Volatile: *volatile})
	if err != nil {
		return err
	}
	defer lc.Stop()
	key, err := lc.Key()
	if err != nil {
		return err
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dial := func(ctx context.Context, id string) (worm.Space, error) {
		dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		return client.Dial(dctx, client.Config{Servers: lc.Servers(), Key: key, ID: "bench-tx-" + id, Logger: quiet})
	}
	// A client of its own asks the wormds for their counters at both
	// ends of each WormTX run's measured window.
	statusCl, err := client.Dial(ctx, client.Config{Servers: lc.Servers(), Key: key, ID: "bench-tx-status", Logger: quiet})
	if err != nil {
		return err
	}
	defer statusCl.Close()
	win := &wormdWindow{status: statusCl}
	forces := &forcesWindow{}
	var h *txbench.Harness // set below, before any run
	net, err := twopc.NewTCPNetwork()
	if err != nil {
		return err
	}
	defer net.Close()
	segBase := txbench.NewSegBase()
	stopParts, err := startTxParticipants(ctx, net, txParticipantsArgs{participants: *parts, servers: lc.Servers(), keyFile: lc.KeyFile,
		dir: filepath.Join(dir, "participants"), volatile: *volatile, segBase: segBase, profile: participantsProfile(*profDir), stages: *stages, records: *records,
		clientPerParticipant: *perParticipant})
	if err != nil {
		return err
	}
	defer stopParts()
	h, err = txbench.Start(ctx, txbench.Config{Participants: *parts, Net: net, Dial: dial, Dir: filepath.Join(dir, "coordinators"),
		Volatile: *volatile, SegBase: segBase, Stages: *stages, Records: *records, ClientPerParticipant: *perParticipant, Think: *think, Logger: quiet,
		Window: func(p txbench.Protocol, begins bool) {
			if p == txbench.WormTX {
				win.mark(ctx, begins)
			} else {
				forces.mark(ctx, h, begins)
			}
		}})
	if err != nil {
		return err
	}
	defer h.Close()

	report := TxBenchReport{Time: time.Now().UTC(), Volatile: *volatile, Records: *records, ClientPerParticipant: *perParticipant, Participants: *parts, Wormds: lc.Servers(),
		Duration: *duration, Reps: *reps, Warmup: *warmup, Think: *think, Delays: delays}
	flip := false // which protocol goes first, alternating across rounds and client counts
	for _, c := range counts {
		row := TxBenchRow{Clients: c}
		for k := 0; k < *reps; k++ {
			var round TxBenchRound
			order := []txbench.Protocol{txbench.WormTX, txbench.TwoPC}
			if flip {
				order = []txbench.Protocol{txbench.TwoPC, txbench.WormTX}
			}
			flip = !flip
			for _, p := range order {
				if !slices.Contains(strings.Split(*protocols, ","), string(p)) {
					continue
				}
				fmt.Fprintf(os.Stderr, "bench tx: %s, %d client(s), round %d of %d, %v ...\n", p, c, k+1, *reps, *duration)
				name := fmt.Sprintf("tx-%s-c%d.pprof", p, c)
				if *reps > 1 {
					name = fmt.Sprintf("tx-%s-c%d-r%d.pprof", p, c, k+1)
				}
				stopProf, err := startProfile(*profDir, name)
				if err != nil {
					return err
				}
				r, err := h.Run(ctx, p, c, *warmup, *duration)
				stopProf()
				if err != nil {
					return fmt.Errorf("%s with %d clients: %w", p, c, err)
				}
				if err := wormdsAlive(lc); err != nil {
					// A run with a wormserver down measures a degraded
					// cluster (every learner falls back on reads): not a
					// figure to compare.
					return fmt.Errorf("%s with %d clients: %w", p, c, err)
				}
				fmt.Fprintf(os.Stderr, "bench tx:   %v; every participant applied: p50 %v\n", r.Result, r.Applied.P50.Round(time.Microsecond))
				if p == txbench.WormTX {
					round.WormTX = r
					if round.Wormds, err = win.perCommit(r.Ops); err != nil {
						fmt.Fprintf(os.Stderr, "bench tx:   no wormd counters for this run: %v\n", err)
					}
				} else {
					round.TwoPC = r
					if round.TwoPCForces, err = forces.perCommit(r.Ops); err != nil {
						fmt.Fprintf(os.Stderr, "bench tx:   no 2PC force counters for this run: %v\n", err)
					}
				}
			}
			if round.ratios() {
				fmt.Fprintf(os.Stderr, "bench tx:   round %d: wormtx/2pc p50 %.2f\n", k+1, round.P50Ratio)
			}
			row.Rounds = append(row.Rounds, round)
		}
		row.summarize()
		report.Rows = append(report.Rows, row)
	}
	if *blocking > 0 {
		fmt.Fprintf(os.Stderr, "bench tx: coordinator crashes after the prepares ...\n")
		b, err := h.Blocking(ctx, *blocking)
		if err != nil {
			return fmt.Errorf("crash demonstration: %w", err)
		}
		report.Blocking = &b
	}
	printTxBench(os.Stdout, report)
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(report, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func printTxBench(w io.Writer, r TxBenchReport) {
	mode := "durable (fsync)"
	if r.Volatile {
		mode = "volatile (no fsync)"
	}
	rounds := "1 round"
	if r.Reps > 1 {
		rounds = fmt.Sprintf("%d rounds (figures: each protocol's median round; ratios: the median of the rounds' ratios, p50's range in brackets)", r.Reps)
	}
	if r.Think > 0 {
		mode += fmt.Sprintf(", each client pausing %v between transactions", r.Think)
	}
	clients := "one WormSpace client for the participants' process"
	if r.ClientPerParticipant {
		clients = "a WormSpace client per participant"
	}
	fmt.Fprintf(w, "WormTX (direct mode, shared segments, %d wormds, %s) vs 2PC, %d participants, %s; %v per protocol and round, %s\n",
		len(r.Wormds), clients, r.Participants, mode, r.Duration, rounds)
	d := r.Delays
	fmt.Fprintf(w, "message delays on the critical path (median, %v one-way, in memory): WormTX %.1f to the coordinator, %.1f to every participant; 2PC %.1f and %.1f\n",
		d.OneWay, d.WormTXCoordinator, d.WormTXApplied, d.TwoPCCoordinator, d.TwoPCApplied)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "clients\tprotocol\tcommits/s\tp50 µs\tp99 µs\tapplied p50 µs\tapplied p99 µs\terrors\t")
	line := func(c int, name string, x txbench.Result) {
		if x.Ops == 0 && x.Errors == 0 {
			return
		}
		fmt.Fprintf(tw, "%d\t%s\t%.0f\t%s\t%s\t%s\t%s\t%d\t\n", c, name, x.OpsPerSec, us(x.Latency.P50), us(x.Latency.P99), us(x.Applied.P50), us(x.Applied.P99), x.Errors)
	}
	ratio := func(x float64) string {
		if x == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", x)
	}
	for _, row := range r.Rows {
		line(row.Clients, "wormtx", row.WormTX)
		line(row.Clients, "2pc", row.TwoPC)
		p50 := ratio(row.P50Ratio)
		if len(row.Rounds) > 1 && row.P50Ratio > 0 {
			p50 = fmt.Sprintf("%.2f [%.2f-%.2f]", row.P50Ratio, row.P50RatioMin, row.P50RatioMax)
		}
		fmt.Fprintf(tw, "%d\twormtx/2pc\t%s\t%s\t%s\t%s\t\t\t\n", row.Clients, ratio(row.ThroughputRatio), p50, ratio(row.P99Ratio), ratio(row.AppliedP50Ratio))
	}
	tw.Flush()
	printWormdCounters(w, r.Rows)
	printTwoPCCounters(w, r.Rows)
	for _, row := range r.Rows {
		for _, x := range []bench.Result{row.WormTX.Result, row.TwoPC.Result} {
			if x.Errors > 0 {
				fmt.Fprintf(w, "%s c=%d: %d errors, first: %s\n", x.Workload, x.Clients, x.Errors, strings.TrimSpace(x.FirstError))
			}
		}
	}
	for _, row := range r.Rows {
		printTxStages(w, row)
	}
	if b := r.Blocking; b != nil {
		fmt.Fprintf(w, "coordinator crash after the prepares:\n")
		fmt.Fprintf(w, "  2pc:    %d of %d participants in doubt after %v (voted yes, resources held); they learned %v %v after their coordinator came back on its log\n",
			b.TwoPCInDoubt, r.Participants, b.Wait, b.TwoPCOutcome, b.TwoPCResolved.Round(time.Microsecond))
		fmt.Fprintf(w, "  wormtx: every participant applied %v %v after Begin, without the coordinator\n", b.WormTXOutcome, b.WormTXApplied.Round(time.Microsecond))
		fmt.Fprintf(w, "  wormtx, coordinator dead after one prepare: every participant applied %v %v after Begin (recovery of the missing votes after 2s)\n",
			b.WormTXTold1, b.WormTXTold1Applied.Round(time.Millisecond))
	}
}

type txParticipantsArgs struct {
	profile      string
	participants int
	servers      []string
	keyFile      string
	dir          string
	volatile     bool
	segBase      uint64
	stages       bool
	records      bool
	// clientPerParticipant: -client-per-participant.
	clientPerParticipant bool
}

// startTxParticipants starts `worm bench tx-participants` as a child
// process whose network peers with net, and returns once it serves.
func startTxParticipants(ctx context.Context, net *twopc.Network, a txParticipantsArgs) (func(), error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"bench", "tx-participants", "-peer", net.Addr(), "-participants", strconv.Itoa(a.participants),
		"-servers", strings.Join(a.servers, ","), "-dir", a.dir, "-segbase", strconv.FormatUint(a.segBase, 10)}
	if a.keyFile != "" {
		args = append(args, "-key-file", a.keyFile)
	}
	if a.volatile {
		args = append(args, "-volatile")
	}
	if a.stages {
		args = append(args, "-stages")
	}
	if a.records {
		args = append(args, "-records")
	}
	if a.clientPerParticipant {
		args = append(args, "-client-per-participant")
	}
	if a.profile != "" {
		args = append(args, "-cpuprofile", a.profile)
	}
	cmd := exec.Command(exe, args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() { stdin.Close(); cmd.Wait() }
	r := bufio.NewReader(out)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			cmd.Process.Kill()
			stop()
			return nil, fmt.Errorf("bench tx: the participants' process did not start (%v)", err)
		}
		line = strings.TrimSpace(line)
		if addr, ok := strings.CutPrefix(line, "listening "); ok {
			net.SetPeer(addr)
		}
		if line == "ready" {
			return stop, nil
		}
	}
}

// cmdBenchTxParticipants is the participants' process of `worm bench tx`
// (internal): it serves both protocols' participants on a network whose
// peer is the parent's, prints "listening ADDR" and "ready", and stops
// when its standard input closes.
func cmdBenchTxParticipants(args []string) error {
	fs := flag.NewFlagSet("bench tx-participants", flag.ContinueOnError)
	peer := fs.String("peer", "", "the parent's network address")
	parts := fs.Int("participants", 3, "participants")
	servers := fs.String("servers", "", "wormds")
	keyFile := fs.String("key-file", "", "cluster key file")
	dir := fs.String("dir", "", "directory of the vote logs")
	volatile := fs.Bool("volatile", false, "do not sync the vote logs")
	stages := fs.Bool("stages", false, "send each participant's stage times with its reports")
	records := fs.Bool("records", false, "WormTX participants vote with records")
	perParticipant := fs.Bool("client-per-participant", false, "a WormSpace client for each WormTX participant (default: one for the process)")
	segBase := fs.Uint64("segbase", 0, "the harness's first segment")
	prof := fs.String("cpuprofile", "", "write a CPU profile of this process into this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *prof != "" {
		stopProf, err := startProfile(filepath.Dir(*prof), filepath.Base(*prof))
		if err != nil {
			return err
		}
		defer stopProf()
	}
	if *peer == "" || *servers == "" || *dir == "" || *segBase == 0 {
		return &exitError{code: exitFailure, msg: "bench tx-participants is started by worm bench tx"}
	}
	sf := spaceFlags{keyFile: *keyFile}
	key, err := sf.key()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		io.Copy(io.Discard, os.Stdin) // the parent closes it to stop us
		cancel()
	}()
	net, err := twopc.NewTCPPeerNetwork(*peer)
	if err != nil {
		return err
	}
	defer net.Close()
	fmt.Printf("listening %s\n", net.Addr())
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dial := func(ctx context.Context, id string) (worm.Space, error) {
		dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
		defer dcancel()
		return client.Dial(dctx, client.Config{Servers: strings.Split(*servers, ","), Key: key, ID: "bench-tx-" + id, Logger: quiet})
	}
	err = txbench.ServeParticipants(ctx, txbench.ParticipantsConfig{Participants: *parts, Net: net, Dial: dial, Dir: *dir,
		Volatile: *volatile, SegBase: *segBase, Stages: *stages, Records: *records,
		ClientPerParticipant: *perParticipant, Logger: quiet}, func(err error) {
		if err == nil {
			fmt.Println("ready")
		}
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// participantsProfile is where the participants' process writes its CPU
// profile (its whole life) when -cpuprofile is set.
func participantsProfile(dir string) string {
	if dir == "" {
		return ""
	}
	abs, err := filepath.Abs(filepath.Join(dir, "participants.pprof"))
	if err != nil {
		return ""
	}
	return abs
}

// wormdsAlive reports a wormd of lc that is no longer running, with the
// first lines of its log that tell why (a panic, a fatal error).
func wormdsAlive(lc *localcluster.Cluster) error {
	for i, n := range lc.Nodes {
		if n.Running() {
			continue
		}
		why := ""
		if b, err := os.ReadFile(n.Log); err == nil {
			lines := strings.Split(string(b), "\n")
			for k, l := range lines {
				if strings.HasPrefix(l, "panic:") || strings.HasPrefix(l, "fatal error:") {
					why = strings.Join(lines[k:min(k+6, len(lines))], "\n")
					break
				}
			}
		}
		return fmt.Errorf("wormd %d died during the run: %s", i+1, why)
	}
	return nil
}

// printTxStages prints where the latency of row's transactions goes
// (bench tx -stages): each stage's median from Begin, per protocol.
func printTxStages(w io.Writer, row TxBenchRow) {
	if len(row.WormTX.Stages) == 0 && len(row.TwoPC.Stages) == 0 {
		return
	}
	fmt.Fprintf(w, "stages at %d client(s): median µs from Begin (coordinator, or first / last participant)\n", row.Clients)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  stage\twormtx\t2pc\t")
	cell := func(st []txbench.StageStat, stage wormtx.Stage) string {
		var coord, first, last string
		for _, x := range st {
			if x.Stage != stage.String() {
				continue
			}
			switch x.Who {
			case "coordinator":
				coord = us(x.Latency.P50)
			case "first":
				first = us(x.Latency.P50)
			case "last":
				last = us(x.Latency.P50)
			}
		}
		switch {
		case first != "" && coord != "":
			return fmt.Sprintf("%s; %s / %s", coord, first, last)
		case first != "":
			return first + " / " + last
		case coord != "":
			return coord
		}
		return "-"
	}
	for _, s := range wormtx.Stages[1:] {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t\n", s, cell(row.WormTX.Stages, s), cell(row.TwoPC.Stages, s))
	}
	tw.Flush()
}
