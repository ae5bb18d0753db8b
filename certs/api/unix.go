package api

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"slices"
	"time"
)

// AdminSocket is the admin socket's file name in the data directory.
const AdminSocket = "admin.sock"

// ListenUnix listens on a Unix socket at path, mode 0600, and accepts only
// connections whose peer (by SO_PEERCRED, which the kernel fills in and the
// peer cannot forge) runs as one of uids; others are logged and closed
// before a byte is read. A stale socket file left by a crashed process is
// replaced; a live one, or any other kind of file, is an error.
//
// The file mode alone would not do: a process running as root, or as the
// owner under another identity, can open it; the check says who may talk.
func ListenUnix(path string, uids []int, log *slog.Logger) (net.Listener, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return &peerListener{UnixListener: l, uids: slices.Clone(uids), log: log, path: path}, nil
}

// removeStale removes a socket file no process answers on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("socket %s: a %s is in the way", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("socket %s: another process is listening on it", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	return nil
}

type peerListener struct {
	*net.UnixListener
	uids []int
	log  *slog.Logger
	path string
}

// Accept returns the next connection from an allowed peer.
func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		uid, pid, err := peerCred(c)
		if err != nil {
			l.log.Warn("refused a connection: no peer credentials", "socket", l.path, "error", err)
			c.Close()
			continue
		}
		if !slices.Contains(l.uids, uid) {
			l.log.Warn("refused a connection from a process of another user", "socket", l.path,
				"peer_uid", uid, "peer_pid", pid, "allowed_uids", l.uids)
			c.Close()
			continue
		}
		return c, nil
	}
}
