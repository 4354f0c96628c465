package main

import (
	"strings"
	"testing"
)

func TestNetstackKnobsFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		err  string
	}{
		{[]string{"-data", "d", "-netstack-knobs", "processors=1"}, "needs -stack netstack"},
		{[]string{"-data", "d", "-stack", "netstack", "-netstack-knobs", "procesors=1"}, "unknown field"},
		{[]string{"-data", "d", "-stack", "netstack", "-netstack-knobs", "dispatch=inline,gro=true"}, "GRO and GSO need"},
	} {
		if _, err := parse(c.args); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("parse %q: %v, want %q", c.args, err, c.err)
		}
	}
	o, err := parse([]string{"-data", "d", "-stack", "netstack", "-netstack-knobs", "dispatch=recvmmsg,processors=1"})
	if err != nil {
		t.Fatal(err)
	}
	if o.knobs != "dispatch=recvmmsg,processors=1" {
		t.Fatalf("knobs %q", o.knobs)
	}
}
