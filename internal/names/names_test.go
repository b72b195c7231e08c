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

func TestNames_FewAndListed(t *testing.T) {
	for _, c := range []struct {
		list []string
		n    int
		want string
	}{
		{nil, 3, ""},
		{[]string{"a"}, 3, "a"},
		{[]string{"a", "b", "c"}, 3, "a, b, c"},
		{[]string{"a", "b", "c", "d", "e"}, 2, "a, b and 3 more"},
	} {
		if got := Few(c.list, c.n); got != c.want {
			t.Errorf("Few(%v, %d) = %q, want %q", c.list, c.n, got, c.want)
		}
	}
	if got := Listed([]string{"edge-1"}, 4); got != "edge-1 and 4 more" {
		t.Errorf("Listed = %q", got)
	}
}
