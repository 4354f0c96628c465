package sim

import (
	"go/build"
	"strings"
	"testing"
)

// TestImports enforces the package doc: the real core and storage, the
// simulated disk, and the standard library; nothing that does real I/O.
func TestImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	const mod = "github.com/wormspace/wormspace/"
	for _, imp := range pkg.Imports {
		switch {
		case imp == mod+"worm", imp == mod+"worm/paxos", imp == mod+"worm/storage", imp == mod+"worm/storage/simfs":
		case strings.HasPrefix(imp, mod), strings.Contains(strings.SplitN(imp, "/", 2)[0], "."):
			t.Errorf("%s imports %s", pkg.ImportPath, imp)
		case imp == "os", imp == "net", imp == "os/exec":
			t.Errorf("%s imports %s, which does real I/O", pkg.ImportPath, imp)
		}
	}
	if len(pkg.Imports) == 0 {
		t.Fatal("no imports found: the test is not looking at the package")
	}
}
