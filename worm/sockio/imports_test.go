package sockio

import (
	"go/build"
	"strings"
	"testing"
)

// TestImports keeps this package a leaf: it must never import other
// packages of this module (wormd's server and the client library both
// import it).
func TestImports(t *testing.T) {
	p, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range p.Imports {
		if strings.HasPrefix(imp, "github.com/wormspace/wormspace/") {
			t.Errorf("sockio imports %s", imp)
		}
	}
}
