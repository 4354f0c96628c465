package guest

import "strings"

// ModulesDir holds the image's modules and their load order.
const ModulesDir = "/lib/modules"

// OrderFile lists the module files to load, one per line, dependencies
// first (written by the image builder from kernel.LoadOrder).
const OrderFile = ModulesDir + "/order"

// ParseOrder returns the module file names of an order file: one per line,
// blank lines and '#' comments skipped. Names are relative to ModulesDir;
// anything with a '/' or "..", which could escape it, is dropped.
func ParseOrder(data string) []string {
	var out []string
	for _, l := range strings.Split(data, "\n") {
		l = strings.TrimSpace(l)
		if i := strings.IndexByte(l, '#'); i >= 0 {
			l = strings.TrimSpace(l[:i])
		}
		if l == "" || strings.Contains(l, "/") || l == "." || l == ".." {
			continue
		}
		out = append(out, l)
	}
	return out
}
