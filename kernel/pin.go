package kernel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// DefaultPinFile is the checked-in pin, relative to the repository root.
const DefaultPinFile = "kernel/pin.json"

// DefaultMeta is the Debian meta package whose dependency names the
// current cloud kernel. The cloud flavour is chosen because it is small
// (virtio drivers as modules, no hardware zoo) and boots under QEMU.
const DefaultMeta = "linux-image-cloud-amd64"

// Errors for expected pin failures.
var (
	// ErrPinGone: the pinned package is neither cached nor in the apt
	// archive any more (a security update replaced it). Re-pin.
	ErrPinGone = errors.New("kernel: pinned kernel package is no longer available")
	// ErrChecksum: a downloaded or cached .deb does not match the pin.
	ErrChecksum = errors.New("kernel: .deb sha256 does not match the pin")
	// ErrBadPin: the pin file is malformed.
	ErrBadPin = errors.New("kernel: bad pin file")
)

// Pin names one exact kernel package. It is stored as JSON in
// kernel/pin.json and recorded in every image manifest.
type Pin struct {
	// Meta is the meta package the pin was resolved from.
	Meta string `json:"meta"`
	// Package and Version are the exact Debian package, e.g.
	// linux-image-6.1.0-56-cloud-amd64 6.1.192-2.
	Package string `json:"package"`
	Version string `json:"version"`
	// Arch is the Debian architecture (amd64).
	Arch string `json:"arch"`
	// SHA256 is the hex sha256 of the .deb file.
	SHA256 string `json:"sha256"`
	// Pinned is the date the pin was made (YYYY-MM-DD), for humans.
	Pinned string `json:"pinned,omitempty"`
}

// LoadPin reads and validates a pin file.
func LoadPin(path string) (Pin, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Pin{}, fmt.Errorf("kernel: read pin: %w", err)
	}
	var p Pin
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Pin{}, fmt.Errorf("%w: %s: %v", ErrBadPin, path, err)
	}
	if err := p.Validate(); err != nil {
		return Pin{}, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// Validate checks that every field needed to fetch and verify is present.
func (p Pin) Validate() error {
	if p.Package == "" || p.Version == "" || p.Arch == "" {
		return fmt.Errorf("%w: package, version and arch are required", ErrBadPin)
	}
	if b, err := hex.DecodeString(p.SHA256); err != nil || len(b) != sha256.Size {
		return fmt.Errorf("%w: sha256 %q is not 64 hex digits", ErrBadPin, p.SHA256)
	}
	return nil
}

// Save writes the pin as indented JSON, atomically.
func (p Pin) Save(path string) error {
	if err := p.Validate(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'), 0o644)
}

// DebName is the file name apt-get download gives the package (an epoch's
// ':' is written as %3a).
func (p Pin) DebName() string {
	return fmt.Sprintf("%s_%s_%s.deb", p.Package, strings.ReplaceAll(p.Version, ":", "%3a"), p.Arch)
}

// Spec is the package=version argument for apt-get.
func (p Pin) Spec() string { return p.Package + "=" + p.Version }

func (p Pin) String() string { return p.Spec() + " (sha256 " + p.SHA256 + ")" }

// RepinHint is the instruction printed when a pin must be refreshed.
const RepinHint = "re-pin with `worm image pin` (or `make kernel-pin`), which resolves the current " +
	DefaultMeta + " dependency with apt-cache and rewrites " + DefaultPinFile

// ensureDeb returns the path of the pinned .deb in cacheDir, downloading it
// when absent. apt-get update runs only when the first download fails.
func ensureDeb(ctx context.Context, p Pin, cacheDir string, progress func(string)) (string, error) {
	path := filepath.Join(cacheDir, p.DebName())
	if _, err := os.Stat(path); err == nil {
		if err := verifySHA256(path, p.SHA256); err != nil {
			return "", fmt.Errorf("%w (delete %s to download it again)", err, path)
		}
		progress("kernel: using cached " + path)
		return path, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	progress("kernel: apt-get download " + p.Spec())
	out, err := aptDownload(ctx, p, cacheDir)
	if err != nil {
		progress("kernel: not found; apt-get update and retry")
		if uerr := run(ctx, "", "apt-get", "update", "-qq"); uerr != nil {
			return "", fmt.Errorf("%w: %s: apt-get download failed (%s) and apt-get update failed (%v); %s",
				ErrPinGone, p.Spec(), strings.TrimSpace(out), uerr, RepinHint)
		}
		if out, err = aptDownload(ctx, p, cacheDir); err != nil {
			return "", fmt.Errorf("%w: %s is not in the apt archive nor in %s: %s; %s",
				ErrPinGone, p.Spec(), cacheDir, strings.TrimSpace(lastLine(out)), RepinHint)
		}
	}
	if err := verifySHA256(path, p.SHA256); err != nil {
		os.Remove(path)
		return "", err
	}
	return path, nil
}

// aptDownload downloads the pinned package into dir. apt-get writes into a
// private temporary directory and the finished file is renamed into dir,
// so concurrent builds sharing a cache never see a partial .deb.
func aptDownload(ctx context.Context, p Pin, dir string) (string, error) {
	tmp, err := os.MkdirTemp(dir, ".download-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", p.Spec())
	cmd.Dir = tmp
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), err
	}
	if err := os.Rename(filepath.Join(tmp, p.DebName()), filepath.Join(dir, p.DebName())); err != nil {
		return string(out), fmt.Errorf("apt-get download did not produce %s: %w", p.DebName(), err)
	}
	return string(out), nil
}

// RepinOptions configures Repin.
type RepinOptions struct {
	// Meta is the meta package to resolve (default DefaultMeta).
	Meta string
	// Arch defaults to amd64.
	Arch string
	// CacheDir receives the downloaded .deb.
	CacheDir string
	// Update runs apt-get update first, so that the newest kernel is seen.
	Update   bool
	Progress func(string)
}

// Repin resolves the package the meta package currently depends on and its
// candidate version (apt-cache), downloads it into the cache and returns a
// pin with its sha256. The caller saves it (Pin.Save).
func Repin(ctx context.Context, o RepinOptions) (Pin, error) {
	if o.Meta == "" {
		o.Meta = DefaultMeta
	}
	if o.Arch == "" {
		o.Arch = "amd64"
	}
	progress := o.Progress
	if progress == nil {
		progress = func(string) {}
	}
	if o.Update {
		progress("kernel: apt-get update")
		if err := run(ctx, "", "apt-get", "update", "-qq"); err != nil {
			return Pin{}, err
		}
	}
	out, err := output(ctx, "apt-cache", "depends", o.Meta)
	if err != nil {
		return Pin{}, err
	}
	pkg := parseDepends(out, "linux-image-")
	if pkg == "" {
		return Pin{}, fmt.Errorf("kernel: apt-cache depends %s names no linux-image-* package", o.Meta)
	}
	out, err = output(ctx, "apt-cache", "policy", pkg)
	if err != nil {
		return Pin{}, err
	}
	ver := parseCandidate(out)
	if ver == "" {
		return Pin{}, fmt.Errorf("kernel: apt-cache policy %s shows no candidate version", pkg)
	}
	p := Pin{Meta: o.Meta, Package: pkg, Version: ver, Arch: o.Arch, Pinned: time.Now().UTC().Format("2006-01-02")}
	if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
		return Pin{}, err
	}
	path := filepath.Join(o.CacheDir, p.DebName())
	if _, err := os.Stat(path); err != nil {
		progress("kernel: apt-get download " + p.Spec())
		if out, err := aptDownload(ctx, p, o.CacheDir); err != nil {
			return Pin{}, fmt.Errorf("kernel: apt-get download %s: %v: %s", p.Spec(), err, strings.TrimSpace(out))
		}
	}
	sum, err := fileSHA256(path)
	if err != nil {
		return Pin{}, err
	}
	p.SHA256 = sum
	return p, nil
}

// parseDepends returns the first "Depends: PREFIX..." package in apt-cache
// depends output.
func parseDepends(out, prefix string) string {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		v = strings.TrimSpace(v)
		if ok && (k == "Depends" || k == "|Depends") && strings.HasPrefix(v, prefix) {
			return v
		}
	}
	return ""
}

// parseCandidate returns the Candidate: version from apt-cache policy.
func parseCandidate(out string) string {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Candidate:"); ok {
			v = strings.TrimSpace(v)
			if v == "(none)" {
				return ""
			}
			return v
		}
	}
	return ""
}

func verifySHA256(path, want string) error {
	got, err := fileSHA256(path)
	if err != nil {
		return err
	}
	if !strings.EqualFold(got, want) {
		return fmt.Errorf("%w: %s has %s, pin says %s", ErrChecksum, path, got, want)
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func run(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kernel: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(lastLine(string(out))))
	}
	return nil
}

func output(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("kernel: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
