package analysis

import (
	"math/bits"
	"slices"
)

// bitset is a set of node numbers, one bit a number: a second's worth of
// a fleet's nodes in an eighth of a byte each.
type bitset []uint64

// set adds id and reports whether it was not there before.
func (b *bitset) set(id nodeID) bool {
	w := int(id / 64)
	b.grow(w + 1)
	m := uint64(1) << (id % 64)
	if (*b)[w]&m != 0 {
		return false
	}
	(*b)[w] |= m
	return true
}

// grow makes b at least n words long, the new ones empty.
func (b *bitset) grow(n int) {
	if old := len(*b); n > old {
		*b = slices.Grow(*b, n-old)[:n]
		clear((*b)[old:])
	}
}

func (b bitset) has(id nodeID) bool {
	w := int(id / 64)
	return w < len(b) && b[w]&(1<<(id%64)) != 0
}

// or adds every number of o.
func (b *bitset) or(o bitset) {
	b.grow(len(o))
	for i, w := range o {
		(*b)[i] |= w
	}
}

func (b bitset) count() int {
	n := 0
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return n
}

// each calls f with every number, in order.
func (b bitset) each(f func(nodeID)) {
	for i, w := range b {
		for w != 0 {
			f(nodeID(i*64 + bits.TrailingZeros64(w)))
			w &= w - 1
		}
	}
}

// idSet is the nodes that reported into one window cell: a list of their
// numbers while the cell holds few, a bitset once the list would take
// more memory than a bit for every number up to its largest. A cell of a
// canary's 100,000 nodes holds 12.5 KB for the second instead of 400 KB,
// and a cell of three nodes 12 bytes whatever their numbers.
type idSet struct {
	list []nodeID // may repeat a number (a node's report in two parts)
	top  nodeID   // the largest number in list
	bits bitset   // once made, holds every number and list is nil
}

// listToBits is the shortest list that may become a bitset.
const listToBits = 16

func (s *idSet) add(id nodeID) {
	if s.bits != nil {
		s.bits.set(id)
		return
	}
	s.top = max(s.top, id)
	if n := len(s.list); n == cap(s.list) && n >= listToBits && int(s.top)/64+1 <= n {
		// The list would grow to 8 bytes a number held (4 each, doubled);
		// the bitset, a word of 8 bytes per 64 numbers, is no larger.
		s.bits = make(bitset, 0, int(s.top)/64+1)
		for _, v := range s.list {
			s.bits.set(v)
		}
		s.bits.set(id)
		s.list = nil
		return
	}
	s.list = append(s.list, id)
}

// addTo adds every number of s to b.
func (s *idSet) addTo(b *bitset) {
	if s.bits != nil {
		b.or(s.bits)
		return
	}
	for _, id := range s.list {
		b.set(id)
	}
}

// count is how many numbers s holds.
func (s *idSet) count() int {
	if s.bits != nil {
		return s.bits.count()
	}
	// A short list, of numbers that may be far apart: sorted, not set.
	return len(slices.Compact(slices.Sorted(slices.Values(s.list))))
}

// sizedLike returns an empty set with room for as many numbers as s
// holds: the next second's, of a fleet that reports every second.
func (s *idSet) sizedLike() idSet {
	if s.bits == nil {
		return idSet{list: make([]nodeID, 0, len(s.list))}
	}
	if n := s.bits.count(); 4*n < 8*len(s.bits) {
		// Fewer numbers than the bitset's reach warrants: the numbers
		// of a few nodes among many.
		return idSet{list: make([]nodeID, 0, n)}
	}
	return idSet{bits: make(bitset, 0, cap(s.bits))}
}

// bytes is the memory the set's numbers take.
func (s *idSet) bytes() int { return 4*cap(s.list) + 8*cap(s.bits) }
