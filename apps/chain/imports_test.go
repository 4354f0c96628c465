package chain

import (
	"go/build"
	"strings"
	"testing"
)

// TestImports enforces the package doc: the baseline shares the handshake
// and frame reader (worm/wire) and nothing of the Paxos implementation.
func TestImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		for _, bad := range []string{"/worm/paxos", "/worm/client", "/worm/server", "/worm/storage"} {
			if strings.HasSuffix(imp, bad) || strings.Contains(imp, bad+"/") {
				t.Errorf("%s imports %s", pkg.ImportPath, imp)
			}
		}
	}
	if len(pkg.Imports) == 0 {
		t.Fatal("no imports found: the test is not looking at the package")
	}
}
