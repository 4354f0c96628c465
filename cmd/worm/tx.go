package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/apps/wormtx/bank"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/localcluster"
)

func init() {
	register(&command{
		name:    "tx",
		summary: "WormTX demo: bank transfers between participant processes, with crash points",
		run:     cmdTx,
	})
}

const txUsage = `usage: worm tx [flags]
       worm tx participant|coordinator ...   (started by worm tx)

Runs bank transfers between accounts held by different participants,
committed by WormTX. Every participant is its own OS process (worm tx
participant, a child of this command) with its own WormSpace client
identity and its ledger in a file it syncs before each vote; the
transfers are run by a coordinator process (worm tx coordinator). The
processes talk only through WormSpace: the coordinator posts each
transaction to its participants' inboxes, each participant writes its
vote with an unsafe write into the transaction's segment, and everyone
computes the outcome from the votes (commit iff every vote is yes); a vote
missing after -recovery is captured and written "no" by whoever waits
for it, so a crashed coordinator blocks nobody.

-crash-coordinator makes the coordinator process exit at that point of
the first transfer (a real process exit; the rest of the transfers run in
a new coordinator process). -crash-participant makes participant
-crash-index exit at that point of its first transfer; it is restarted
after 2x-recovery on its ledger file (with -kill, the process is killed
with SIGKILL by this command instead, once it reports the point). At the
end the invariants are checked on the ledger files: money conserved,
every transfer applied by both its participants with one outcome, no
account left locked.

crash points: ` + "coordinator-after-alloc, coordinator-after-post, coordinator-before-await; participant-before-vote, participant-after-vote"

// txCrashExit is the exit status of a tx child process that crashed at a
// crash point.
const txCrashExit = 3

func parseCrash(s string) (wormtx.CrashPoint, error) {
	if s == "" {
		return 0, nil
	}
	for c := wormtx.CoordinatorAfterAlloc; c <= wormtx.ParticipantAfterVote; c++ {
		if c.String() == s {
			return c, nil
		}
	}
	return 0, fmt.Errorf("unknown crash point %q", s)
}

// txDemo is the driver's state.
type txDemo struct {
	exe      string
	space    []string // the space flags every child gets
	dir      string
	base     uint64
	parts    int
	seed     uint64
	recovery time.Duration
	say      func(format string, args ...any)

	mu      sync.Mutex
	pcrash  int // participant crashes seen
	stopped bool
}

func cmdTx(args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "participant":
			return cmdTxParticipant(args[1:])
		case "coordinator":
			return cmdTxCoordinator(args[1:])
		}
	}
	var sf spaceFlags
	fs := flag.NewFlagSet("tx", flag.ContinueOnError)
	sf.add(fs)
	parts := fs.Int("participants", 3, "participant processes (each holds two accounts of 100)")
	transfers := fs.Int("transfers", 10, "transfers to run")
	conc := fs.Int("concurrency", 1, "transfers in flight at once")
	seed := fs.Uint64("seed", uint64(time.Now().UnixNano()), "picks the transfers")
	recovery := fs.Duration("recovery", 200*time.Millisecond, "how long a missing vote is waited for before it is captured and written no")
	crashC := fs.String("crash-coordinator", "", "the coordinator process exits at this point of the first transfer")
	crashP := fs.String("crash-participant", "", "participant -crash-index exits at this point of its first transfer (it restarts)")
	crashIdx := fs.Int("crash-index", 0, "which participant -crash-participant crashes")
	kill := fs.Bool("kill", false, "with -crash-participant: SIGKILL the participant at its crash point instead of letting it exit")
	afterPosts := fs.Int("crash-after-posts", 1, "with coordinator-after-post: how many participants were told")
	local := fs.Int("local", 0, "start this many wormds on loopback for the run (instead of -servers)")
	dirF := fs.String("dir", "", "directory for the ledgers and logs (default: a temporary one, removed)")
	quiet := fs.Bool("q", false, "only the summary")
	fs.Usage = func() { fmt.Fprintln(fs.Output(), txUsage); fs.PrintDefaults() }
	if _, err := parseArgs(fs, args, 0, "tx [flags]"); err != nil {
		return err
	}
	cc, err := parseCrash(*crashC)
	if err != nil || (cc != 0 && !strings.HasPrefix(cc.String(), "coordinator")) {
		return &exitError{code: exitFailure, msg: fmt.Sprintf("-crash-coordinator %q: want a coordinator-... point", *crashC)}
	}
	pc, err := parseCrash(*crashP)
	if err != nil || (pc != 0 && !strings.HasPrefix(pc.String(), "participant")) {
		return &exitError{code: exitFailure, msg: fmt.Sprintf("-crash-participant %q: want a participant-... point", *crashP)}
	}
	if *parts < 2 || *transfers < 1 || *crashIdx < 0 || *crashIdx >= *parts {
		fs.Usage()
		return errUsage
	}
	if sf.timeout < 2*time.Minute {
		sf.timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), sf.timeout)
	defer cancel()
	dir := *dirF
	if dir == "" {
		if dir, err = os.MkdirTemp("", "worm-tx-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if *local > 0 {
		lc, err := localcluster.Start(ctx, localcluster.Config{N: *local, Dir: filepath.Join(dir, "wormds")})
		if err != nil {
			return err
		}
		defer lc.Stop()
		sf.servers, sf.keyFile, sf.keyHex = strings.Join(lc.Servers(), ","), lc.KeyFile, ""
	}
	if sf.servers == "" {
		return &exitError{code: exitFailure, msg: "no servers: give -servers a,b,c, set WORM_SERVERS, or -local 3"}
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	out := io.Writer(os.Stdout)
	if *quiet {
		out = io.Discard
	}
	var outMu sync.Mutex
	d := &txDemo{exe: exe, dir: dir, parts: *parts, seed: *seed, recovery: *recovery,
		base:  1<<40 + (*seed%(1<<20))<<12,
		space: []string{"-servers", sf.servers},
		say: func(format string, args ...any) {
			outMu.Lock()
			fmt.Fprintf(out, format+"\n", args...)
			outMu.Unlock()
		}}
	if sf.keyFile != "" {
		d.space = append(d.space, "-key-file", sf.keyFile)
	} else if sf.keyHex != "" {
		d.space = append(d.space, "-key-hex", sf.keyHex)
	}
	rep, err := d.run(ctx, *transfers, *conc, cc, *afterPosts, pc, *crashIdx, *kill, sf)
	if err != nil {
		return classify(err)
	}
	fmt.Printf("%d committed, %d aborted, %d coordinator crash(es), %d participant crash(es) in %v; money %d of %d; ",
		rep.Committed, rep.Aborted, rep.CoordinatorCrashes, rep.ParticipantCrashes, rep.Elapsed.Round(time.Millisecond), rep.Total, rep.WantTotal)
	if !rep.OK() {
		fmt.Println("INVARIANTS VIOLATED")
		for _, c := range rep.Conflicts {
			fmt.Println("  conflict:", c)
		}
		for _, l := range rep.Locked {
			fmt.Println("  still locked:", l)
		}
		return &exitError{code: exitFailure, msg: "invariants violated"}
	}
	fmt.Println("invariants held")
	return nil
}

// txJob is what the driver knows of a transfer.
type txJob struct {
	bank.PlannedTransfer
	tx      wormtx.TxID
	begun   bool
	outcome wormtx.Outcome // as the coordinator learned it
	crash   wormtx.CrashPoint
}

func (d *txDemo) ledgerPath(i int) string {
	return filepath.Join(d.dir, "ledger-p"+strconv.Itoa(i)+".json")
}

func (d *txDemo) run(ctx context.Context, transfers, conc int, cc wormtx.CrashPoint, afterPosts int, pc wormtx.CrashPoint, crashIdx int, kill bool, sf spaceFlags) (bank.DemoReport, error) {
	start := time.Now()
	names, accounts, owner := bank.DemoAccounts(d.parts)
	rep := bank.DemoReport{WantTotal: int64(100 * len(accounts))}

	// The participant processes, each restarted after a crash.
	pctx, stopParts := context.WithCancel(ctx)
	var pwg sync.WaitGroup
	ready := make(chan error, d.parts)
	for i := range d.parts {
		crash := wormtx.CrashPoint(0)
		if i == crashIdx {
			crash = pc
		}
		pwg.Go(func() { d.superviseParticipant(pctx, i, crash, kill, ready) })
	}
	stopAll := func() {
		d.mu.Lock()
		d.stopped = true
		d.mu.Unlock()
		stopParts()
		pwg.Wait()
	}
	defer stopAll()
	for range d.parts {
		select {
		case err := <-ready:
			if err != nil {
				return rep, err
			}
		case <-ctx.Done():
			return rep, fmt.Errorf("tx: participants not ready: %w", ctx.Err())
		}
	}
	d.say("%d participant processes ready (ledgers in %s)", d.parts, d.dir)

	// The coordinator processes: the first runs transfer 0 alone when it
	// is to crash, then one runs the rest.
	plan := bank.PlanTransfers(d.seed, accounts, transfers)
	jobs := make([]*txJob, len(plan))
	for k, p := range plan {
		jobs[k] = &txJob{PlannedTransfer: p}
	}
	incarnation := 0
	if cc != 0 {
		crashed, err := d.runCoordinator(ctx, incarnation, jobs[:1], 1, cc, afterPosts)
		if err != nil {
			return rep, err
		}
		incarnation++
		if crashed {
			rep.CoordinatorCrashes++
		}
	}
	for {
		var todo []*txJob
		for _, j := range jobs {
			if !j.begun && j.crash == 0 {
				todo = append(todo, j)
			}
		}
		if len(todo) == 0 {
			break
		}
		crashed, err := d.runCoordinator(ctx, incarnation, todo, conc, 0, 0)
		if err != nil {
			return rep, err
		}
		if crashed {
			return rep, errors.New("tx: a coordinator process without a crash point crashed")
		}
		incarnation++
	}

	// A coordinator that died right after Alloc told nobody: an observer
	// resolves its transaction (recovery posts it to the participants'
	// inboxes, so they apply and acknowledge it).
	layout := bank.Layout{Base: d.base, Participants: names}
	for _, j := range jobs {
		if j.crash != wormtx.CoordinatorAfterAlloc {
			continue
		}
		f := sf
		f.id = "tx-observer"
		obs, err := f.dial(ctx)
		if err != nil {
			return rep, err
		}
		pol := wormtx.Policy{RecoverAfter: 0, Poll: 20 * time.Millisecond, Notify: layout.Directory()}
		o, err := wormtx.Resolve(ctx, obs, j.tx, pol)
		obs.Close()
		if err != nil && !errors.Is(err, worm.ErrTrimmed) {
			return rep, fmt.Errorf("tx: resolving %v: %w", j.tx, err)
		}
		d.say("%v: its coordinator died after Alloc; resolved by an observer: %v", j.tx, o)
	}

	// Wait until both participants of every transfer applied it (their
	// ledger files say so).
	for _, j := range jobs {
		for _, p := range []string{owner[j.From], owner[j.To]} {
			i := slices.Index(names, p)
			for {
				l, err := bank.LoadLedgerFile(d.ledgerPath(i))
				if err == nil {
					if _, ok := l.Applied(j.tx); ok {
						break
					}
				}
				select {
				case <-ctx.Done():
					return rep, fmt.Errorf("tx: %v (transfer %d) not applied by %s: %w", j.tx, j.K, p, ctx.Err())
				case <-time.After(10 * time.Millisecond):
				}
			}
		}
	}
	stopAll()

	// The invariants, on the ledger files.
	ledgers := make([]*bank.Ledger, d.parts)
	for i := range d.parts {
		l, err := bank.LoadLedgerFile(d.ledgerPath(i))
		if err != nil {
			return rep, err
		}
		ledgers[i] = l
		rep.Total += l.Total()
		rep.Conflicts = append(rep.Conflicts, l.Conflicts()...)
		for _, a := range l.Locked() {
			rep.Locked = append(rep.Locked, names[i]+":"+a)
		}
	}
	for _, j := range jobs {
		from, to := ledgers[slices.Index(names, owner[j.From])], ledgers[slices.Index(names, owner[j.To])]
		of, _ := from.Applied(j.tx)
		ot, _ := to.Applied(j.tx)
		switch {
		case of != ot:
			rep.Conflicts = append(rep.Conflicts, fmt.Sprintf("%v: %s applied %v, %s applied %v", j.tx, owner[j.From], of, owner[j.To], ot))
		case j.outcome != wormtx.Pending && j.outcome != of:
			rep.Conflicts = append(rep.Conflicts, fmt.Sprintf("%v: the coordinator learned %v, the participants applied %v", j.tx, j.outcome, of))
		case of == wormtx.Commit:
			rep.Committed++
		default:
			rep.Aborted++
		}
		note := ""
		if j.crash != 0 {
			note = fmt.Sprintf(" (coordinator crashed at %v; completed without it)", j.crash)
		}
		d.say("%v: %s -> %s %d: %v%s", j.tx, j.From, j.To, j.Amount, of, note)
	}
	for i, l := range ledgers {
		for _, a := range accounts {
			if b, ok := l.Balance(a); ok {
				d.say("%s %s = %d", names[i], a, b)
			}
		}
	}
	d.mu.Lock()
	rep.ParticipantCrashes = d.pcrash
	d.mu.Unlock()
	rep.Elapsed = time.Since(start)
	return rep, nil
}

// superviseParticipant runs participant i's process until ctx ends,
// restarting it 2x-recovery after a crash (without the crash point). It
// reports on ready once, when the first incarnation serves.
func (d *txDemo) superviseParticipant(ctx context.Context, i int, crash wormtx.CrashPoint, kill bool, ready chan<- error) {
	var announced atomic.Bool // ready was sent
	for ctx.Err() == nil {
		args := append([]string{"tx", "participant", "-index", strconv.Itoa(i), "-participants", strconv.Itoa(d.parts),
			"-base", strconv.FormatUint(d.base, 10), "-ledger", d.ledgerPath(i), "-recovery", d.recovery.String()}, d.space...)
		if crash != 0 {
			args = append(args, "-crash", crash.String())
		}
		cmd := exec.Command(d.exe, args...)
		stdin, err := cmd.StdinPipe()
		if err == nil {
			var out io.ReadCloser
			out, err = cmd.StdoutPipe()
			if err == nil {
				cmd.Stderr = os.Stderr
				err = cmd.Start()
			}
			if err == nil {
				go func() {
					// Lines: "ready"; "crashing POINT TX" just before the
					// process exits (or waits for SIGKILL with -kill).
					r := bufio.NewScanner(out)
					for r.Scan() {
						f := strings.Fields(r.Text())
						switch {
						case len(f) == 1 && f[0] == "ready":
							if announced.CompareAndSwap(false, true) {
								ready <- nil
							} else {
								d.say("p%d restarted on its ledger", i)
							}
						case len(f) == 3 && f[0] == "crashing":
							d.say("p%d crashes at %s of %s", i, f[1], f[2])
							if kill {
								_ = cmd.Process.Kill()
							}
						}
					}
				}()
			}
		}
		if err != nil {
			if announced.CompareAndSwap(false, true) {
				ready <- fmt.Errorf("tx: starting participant p%d: %w", i, err)
			}
			return
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var werr error
		select {
		case werr = <-done:
		case <-ctx.Done():
			// Shutting down: its exit status is not news (the ledgers
			// are checked afterwards).
			stdin.Close() // it stops when its stdin closes
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
			return
		}
		d.mu.Lock()
		stopped := d.stopped
		d.mu.Unlock()
		if stopped {
			return
		}
		var ee *exec.ExitError
		crashed := errors.As(werr, &ee) && (ee.ExitCode() == txCrashExit || kill && ee.ExitCode() == -1)
		if !crashed {
			if announced.CompareAndSwap(false, true) {
				ready <- fmt.Errorf("tx: participant p%d exited: %v", i, werr)
				return
			} else {
				d.say("p%d exited unexpectedly (%v); restarting", i, werr)
			}
		} else {
			d.mu.Lock()
			d.pcrash++
			d.mu.Unlock()
			d.say("p%d is down (%v); restarting it in %v", i, werr, 2*d.recovery)
		}
		crash = 0
		select {
		case <-time.After(2 * d.recovery):
		case <-ctx.Done():
			return
		}
	}
}

// runCoordinator runs a coordinator process for jobs and records what it
// reports. It returns whether the process crashed at its crash point.
func (d *txDemo) runCoordinator(ctx context.Context, incarnation int, jobs []*txJob, conc int, crash wormtx.CrashPoint, afterPosts int) (bool, error) {
	ks := make([]string, len(jobs))
	byK := map[int]*txJob{}
	for i, j := range jobs {
		ks[i] = strconv.Itoa(j.K)
		byK[j.K] = j
	}
	args := append([]string{"tx", "coordinator", "-incarnation", strconv.Itoa(incarnation), "-participants", strconv.Itoa(d.parts),
		"-base", strconv.FormatUint(d.base, 10), "-seed", strconv.FormatUint(d.seed, 10), "-transfers", strconv.Itoa(maxK(jobs) + 1),
		"-jobs", strings.Join(ks, ","), "-concurrency", strconv.Itoa(conc), "-recovery", d.recovery.String()}, d.space...)
	if crash != 0 {
		args = append(args, "-crash", crash.String(), "-crash-after-posts", strconv.Itoa(afterPosts))
	}
	cmd := exec.CommandContext(ctx, d.exe, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return false, err
	}
	if err := cmd.Start(); err != nil {
		return false, fmt.Errorf("tx: starting the coordinator: %w", err)
	}
	// Lines: "begun K TX", "done K TX OUTCOME", "crashed K TX POINT".
	r := bufio.NewScanner(out)
	for r.Scan() {
		f := strings.Fields(r.Text())
		if len(f) < 3 {
			continue
		}
		k, err1 := strconv.Atoi(f[1])
		tx, err2 := strconv.ParseUint(f[2], 10, 64)
		j := byK[k]
		if err1 != nil || err2 != nil || j == nil {
			continue
		}
		j.tx, j.begun = wormtx.TxID(tx), true
		switch {
		case f[0] == "done" && len(f) == 4:
			if f[3] == wormtx.Commit.String() {
				j.outcome = wormtx.Commit
			} else {
				j.outcome = wormtx.Abort
			}
		case f[0] == "crashed" && len(f) == 4:
			j.crash, _ = parseCrash(f[3])
			d.say("%v: %s -> %s %d: the coordinator process exits at %s", j.tx, j.From, j.To, j.Amount, f[3])
		}
	}
	werr := cmd.Wait()
	var ee *exec.ExitError
	if errors.As(werr, &ee) && ee.ExitCode() == txCrashExit && crash != 0 {
		// Transfers it had begun and not finished lost their coordinator
		// too.
		for _, j := range jobs {
			if j.begun && j.outcome == wormtx.Pending && j.crash == 0 {
				j.crash = crash
			}
		}
		return true, nil
	}
	if werr != nil {
		return false, fmt.Errorf("tx: the coordinator process: %w", werr)
	}
	for _, j := range jobs {
		if !j.begun || j.outcome == wormtx.Pending {
			return false, fmt.Errorf("tx: the coordinator process ended without finishing transfer %d", j.K)
		}
	}
	return false, nil
}

func maxK(jobs []*txJob) int {
	m := 0
	for _, j := range jobs {
		m = max(m, j.K)
	}
	return m
}
