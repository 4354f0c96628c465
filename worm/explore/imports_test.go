package explore

import (
	"go/build"
	"sort"
	"testing"
)

// TestImports enforces the package doc: only the standard library, worm and
// worm/paxos.
func TestImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	const mod = "github.com/wormspace/wormspace/"
	ours := 0
	for _, imp := range pkg.Imports {
		if len(imp) > len(mod) && imp[:len(mod)] == mod {
			ours++
			if imp != mod+"worm" && imp != mod+"worm/paxos" {
				t.Errorf("%s imports %s", pkg.ImportPath, imp)
			}
		}
	}
	if ours == 0 {
		t.Fatal("no module imports found: the test is not looking at the package")
	}
}

func sortStrings(s []string) { sort.Strings(s) }
