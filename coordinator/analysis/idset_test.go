package analysis

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// An idSet holds what was added, whatever its form, and never takes more
// than a list of 4 bytes a number would, doubled as a growing list is, or
// a bitset of the largest number would.
func TestIDSet_HoldsWhatWasAddedInTheSmallerForm(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, c := range []struct {
		name    string
		n, span int
		bits    bool
	}{
		{"few nodes among many", 40, 100_000, false},
		{"a fleet", 5_000, 5_000, true},
		{"half a fleet", 2_500, 5_000, true},
		{"a node twice", 2, 10, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var s idSet
			want := map[nodeID]bool{}
			var top nodeID
			for range c.n {
				id := nodeID(r.IntN(c.span))
				s.add(id)
				want[id] = true
				top = max(top, id)
			}
			s.add(top) // a repeat
			if (s.bits != nil) != c.bits {
				t.Errorf("bitset: %v, want %v (%d numbers up to %d)", s.bits != nil, c.bits, len(want), top)
			}
			if got := s.count(); got != len(want) {
				t.Errorf("count %d, want %d", got, len(want))
			}
			var b bitset
			s.addTo(&b)
			var got []nodeID
			b.each(func(id nodeID) { got = append(got, id) })
			wantIDs := make([]nodeID, 0, len(want))
			for id := range want {
				wantIDs = append(wantIDs, id)
			}
			slices.Sort(wantIDs)
			if !slices.Equal(got, wantIDs) {
				t.Errorf("holds %d numbers, want the %d added", len(got), len(wantIDs))
			}
			if most := max(8*(c.n+2), 8*(int(top)/64+1)*2); s.bytes() > most {
				t.Errorf("%d bytes for %d numbers up to %d, want at most %d", s.bytes(), len(want), top, most)
			}
			next := s.sizedLike()
			if next.count() != 0 || (next.bits != nil) != c.bits {
				t.Errorf("the next second's set: %d numbers, bitset %v", next.count(), next.bits != nil)
			}
		})
	}
}
