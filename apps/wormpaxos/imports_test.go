package wormpaxos_test

import (
	"go/build"
	"strings"
	"testing"
)

// TestImports enforces the package docs: the replication layer and its
// applications see WormSpace only through package worm.
func TestImports(t *testing.T) {
	for _, dir := range []string{".", "kv", "wormpaxostest"} {
		pkg, err := build.ImportDir(dir, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(pkg.Imports) == 0 {
			t.Fatalf("%s: no imports found: the test is not looking at the package", dir)
		}
		for _, imp := range pkg.Imports {
			for _, bad := range []string{"/worm/client", "/worm/paxos", "/worm/wire", "/worm/server", "/worm/storage", "/worm/spec"} {
				if strings.HasSuffix(imp, bad) || strings.Contains(imp, bad+"/") {
					t.Errorf("%s imports %s", pkg.ImportPath, imp)
				}
			}
		}
	}
}
