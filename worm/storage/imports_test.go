package storage

import (
	"go/build"
	"strings"
	"testing"
)

// TestImports enforces the package doc: only the standard library,
// golang.org/x/sys/unix, worm and worm/paxos.
func TestImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	const mod = "github.com/wormspace/wormspace/"
	for _, imp := range pkg.Imports {
		switch {
		case imp == "golang.org/x/sys/unix", imp == mod+"worm", imp == mod+"worm/paxos":
		case strings.Contains(strings.SplitN(imp, "/", 2)[0], "."):
			t.Errorf("%s imports %s", pkg.ImportPath, imp)
		}
	}
	if len(pkg.Imports) == 0 {
		t.Fatal("no imports found: the test is not looking at the package")
	}
}
