package haproxy

import (
	"errors"
	"syscall"
)

// read empties the socket's queue into b each time it becomes readable:
// one wake-up of the poller, then recvfrom until EAGAIN with no other work
// in between, so that a burst of log lines finds room in the kernel's short
// queue; then flush handles the batch.
func (l *LogListener) read(b *logBatch, flush func()) error {
	rc, err := l.conn.SyscallConn()
	if err != nil {
		return err
	}
	var recvErr error
	for {
		err := rc.Read(func(fd uintptr) bool {
			for {
				room := b.room()
				if room == nil {
					flush()
					room = b.room()
				}
				n, _, err := syscall.Recvfrom(int(fd), room, syscall.MSG_DONTWAIT)
				switch {
				case errors.Is(err, syscall.EINTR):
					continue
				case errors.Is(err, syscall.EAGAIN):
					if len(b.ends) > 0 {
						flush()
					}
					return false // wait until readable again
				case err != nil:
					recvErr = err
					return true
				}
				b.ends = append(b.ends, b.used()+n)
			}
		})
		if err != nil {
			return err
		}
		if recvErr != nil {
			return recvErr
		}
	}
}
