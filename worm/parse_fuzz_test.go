package worm

import "testing"

// FuzzParseAddr: any string either parses to an address that prints back
// to an equivalent string, or is refused with an error; never a panic.
func FuzzParseAddr(f *testing.F) {
	for _, s := range []string{"7/0", "7/meta", "18446744073709551615/4294967294", "1/4294967295", "/", "7/", "/0", "-1/0", "7/0x1", " 7/0", "7/+1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddr(s)
		if err != nil {
			return
		}
		b, err := ParseAddr(a.String())
		if err != nil || b != a {
			t.Fatalf("%q parsed to %v, which reparses to %v, %v", s, a, b, err)
		}
	})
}

// FuzzParseToken: tokens round-trip through String, and round 0 (the
// unsafe-write ballot) is never accepted.
func FuzzParseToken(f *testing.F) {
	for _, s := range []string{"1.a371803f74b09ba4", "0.1", "1.", ".1", "18446744073709551615.ffffffffffffffff", "1.-1", "1.1.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			return
		}
		if tok.Round == 0 {
			t.Fatalf("%q parsed to a round-0 token", s)
		}
		back, err := ParseToken(tok.String())
		if err != nil || back != tok {
			t.Fatalf("%q parsed to %v, which reparses to %v, %v", s, tok, back, err)
		}
	})
}
