//go:build !linux

package haproxy

// read hands over one datagram at a time; the Linux version empties the
// queue per wake-up instead.
func (l *LogListener) read(b *logBatch, flush func()) error {
	for {
		n, err := l.conn.Read(b.room())
		if err != nil {
			return err
		}
		b.ends = append(b.ends, n)
		flush()
	}
}
