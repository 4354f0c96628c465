package qemu

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestClusterKey: a cluster key is generated (32 random bytes, hex, in a
// 0600 key file), reused from the key file by the next cluster in the
// same state directory, replaced by a given key, and a short or non-hex
// key is refused.
func TestClusterKey(t *testing.T) {
	dir := t.TempDir()
	k1, why, err := clusterKey(dir, "")
	if err != nil || why != "generated" || len(k1) != 2*KeyBytes {
		t.Fatalf("generated %q %q %v", k1, why, err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, KeyFile))
	if strings.TrimSpace(string(b)) != k1 {
		t.Fatalf("key file holds %q, want %q", b, k1)
	}
	k2, why, err := clusterKey(dir, "")
	if err != nil || why != "reused" || k2 != k1 {
		t.Fatalf("second cluster: %q %q %v, want %q reused", k2, why, err, k1)
	}
	if k, _, _ := clusterKey(t.TempDir(), ""); k == k1 {
		t.Fatal("two state directories got the same random key")
	}
	given := strings.Repeat("AB", 40)
	k3, why, err := clusterKey(dir, given)
	if err != nil || why != "given" || k3 != strings.ToLower(given) {
		t.Fatalf("given: %q %q %v", k3, why, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, KeyFile)); strings.TrimSpace(string(b)) != k3 {
		t.Fatalf("key file not replaced by the given key: %q", b)
	}
	for _, bad := range []string{"abcd", "zz" + strings.Repeat("00", 32)} {
		cfg := Config{N: 1, Key: bad}
		if err := cfg.defaults(); !errors.Is(err, ErrConfig) {
			t.Errorf("key %q: %v, want ErrConfig", bad, err)
		}
	}
	os.WriteFile(filepath.Join(dir, KeyFile), []byte("not a key\n"), 0o600)
	if _, _, err := clusterKey(dir, ""); !errors.Is(err, ErrConfig) {
		t.Errorf("unusable key file: %v, want ErrConfig", err)
	}
}
