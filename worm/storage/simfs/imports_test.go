package simfs

import (
	"go/build"
	"strings"
	"testing"
)

// TestImports enforces the package doc: the standard library and
// worm/storage only (for the interface it implements).
func TestImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if imp == "github.com/wormspace/wormspace/worm/storage" {
			continue
		}
		if strings.Contains(strings.SplitN(imp, "/", 2)[0], ".") {
			t.Errorf("%s imports %s", pkg.ImportPath, imp)
		}
		if imp == "net" || imp == "os/exec" {
			t.Errorf("%s imports %s, which does real I/O", pkg.ImportPath, imp)
		}
	}
	if len(pkg.Imports) == 0 {
		t.Fatal("no imports found: the test is not looking at the package")
	}
}
