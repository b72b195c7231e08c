package names

import "testing"

func TestNames_Validate(t *testing.T) {
	for _, ok := range []string{"web", "edge-1", "a", "A_b-9", "x123456789012345678901234567890123456789012345678901234567890ab"} {
		if err := Validate(ok); err != nil {
			t.Errorf("Validate(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-web", "web.eu", "web eu", "web*", "web>", "$KV", "x1234567890123456789012345678901234567890123456789012345678901abc"} {
		if err := Validate(bad); err == nil {
			t.Errorf("Validate(%q) accepted", bad)
		}
	}
}
