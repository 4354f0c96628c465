# WormSpace. Two commands do everything on a fresh machine:
#   make test     install what the tests need, then run every test
#   make compare  the main job (the OS-stack comparison; see README.md)
# Everything else is a building block of those two.

GO        ?= go
export GOFLAGS ?= -mod=mod
GOTESTFLAGS ?= -timeout 30m
BIN       := build/bin

.PHONY: all compare build test test-short deps deps-go deps-apt vet fmt-check sim fuzz clean

all: build

build: deps-go
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ ./cmd/...

# deps installs what the build and the tests use: Go modules, and from
# Debian QEMU, e2fsprogs (data disks for VMs), iproute2 (namespaces),
# dpkg-dev (apt-get download / dpkg-deb for the guest kernel) and iptables
# (the fault harness's partitions and one-way drops).
deps: deps-go deps-apt

deps-go:
	$(GO) mod download

APT_PKGS := qemu-system-x86 qemu-utils e2fsprogs iproute2 dpkg-dev iptables
deps-apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: apt packages present"; fi

# vet runs go vet and staticcheck (pinned; fetched from the module proxy,
# outside this module's dependency graph).
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
vet:
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

fmt-check:
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt wants to rewrite:"; echo "$$bad"; exit 1; fi

# test runs every package's tests, then a short fuzz pass. Tests that need root, TAP devices,
# namespaces or QEMU run when the machine has them (CI is root) and skip
# with a reason where it truly lacks them.
# The boot image is built first so that the VM launcher's tests boot it
# (the image tests build their own).
test: deps fmt-check vet image
	$(GO) test $(GOTESTFLAGS) ./...
	$(MAKE) --no-print-directory fuzz FUZZTIME=$(TEST_FUZZTIME)

test-short: deps-go
	$(GO) test -short ./...

# sim runs the deterministic simulation over many more seeds.
SEEDS ?= 5000
sim:
	WORM_SIM_SEEDS=$(SEEDS) $(GO) test -count=1 -v -run 'TestSimulation|TestCleanRuns' ./worm/sim

# fuzz runs every fuzz target of the module for FUZZTIME each (the checked-in
# seeds also run as plain tests in make test).
FUZZTIME ?= 10s
# make test fuzzes every target briefly, beyond its checked-in seeds. The
# budget is a count of executions, not a duration: with a duration, Go's fuzz
# coordinator can end a target with a bare "context deadline exceeded" and no
# failing input when a loaded machine leaves a worker mid-call (or minimizing
# a new input) at the deadline; a count has no deadline to race. 40000 runs
# take about 1-2 s per target here, and about 30 s for FuzzRecover.
TEST_FUZZTIME ?= 40000x
fuzz: deps-go
	@set -e; for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
			echo "fuzz: $$pkg $$f ($(FUZZTIME))"; \
			mkdir -p build; \
			if $(GO) test -run XXX -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg > build/fuzz.log 2>&1; then \
				cat build/fuzz.log; \
			else \
				cat build/fuzz.log; \
				if grep -q 'Failing input written to' build/fuzz.log; then exit 1; fi; \
				echo "fuzz: $$f ended without a failing input (Go's fuzz coordinator racing a duration -fuzztime); running it once more"; \
				$(GO) test -run XXX -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
			fi; \
		done; \
	done

clean:
	rm -rf build

-include images/image.mk

# compare is the project's main job (issue #5): the OS-stack comparison.
# It installs what it needs (deps), builds wormd and worm, builds the boot
# image when a VM configuration is selected, then runs `worm compare`,
# which writes its report to build/compare/<timestamp>. For example:
#   make compare COMPARE_CONFIGS=host-kernel,host-netstack
#   make compare COMPARE_FLAGS='-quick'
#   make compare COMPARE_FLAGS='-reps 5 -clients 1,4,16,64 -pprof'
COMPARE_CONFIGS ?= host-kernel,host-netstack,vm-kernel,vm-netstack
COMPARE_FLAGS   ?=
compare: deps build
	@case "$(COMPARE_CONFIGS)" in *vm-*) $(MAKE) --no-print-directory image ;; esac
	$(BIN)/worm compare -configs $(COMPARE_CONFIGS) $(COMPARE_FLAGS)

# soak runs the fault harness (worm nemesis: kill -9, SIGSTOP, full disk,
# power loss under register, WormLog and WormPaxos KV load, every history
# checked) for SOAK_DURATION per seed over SOAK_SEEDS; a failing seed is
# printed and replays with `worm nemesis -seed N`.
SOAK_SEEDS ?= 1,2,3,4,5,6
SOAK_DURATION ?= 60s
soak: build
	WORMD=$(BIN)/wormd $(BIN)/worm nemesis -seed $(SOAK_SEEDS) -duration $(SOAK_DURATION)
