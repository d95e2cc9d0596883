package balancer

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
)

// DefaultUnixMode is the mode of a Unix socket the master creates when
// SocketOptions.UnixMode is 0: only its user (and root) may connect.
const DefaultUnixMode os.FileMode = 0o600

// SocketOptions says how the master opens a listening socket. Its zero
// value is what net.Listen does, with a Unix socket made 0600.
type SocketOptions struct {
	// UnixMode is the permission bits of a Unix socket's file; 0 means
	// DefaultUnixMode. 0660 with UnixGroup lets a proxy that runs as
	// another user, such as nginx's www-data, connect.
	UnixMode os.FileMode

	// UnixGroup, if set, is the group (a name or a numeric id) that owns
	// a Unix socket's file.
	UnixGroup string

	// Backlog, if positive, is the listen backlog: the connections the
	// kernel queues before the master accepts them. 0 keeps net.Listen's,
	// the kernel's net.core.somaxconn, which also caps a larger value.
	Backlog int
}

// validate checks what needs no lookup.
func (o SocketOptions) validate() error {
	switch {
	case o.UnixMode&^os.ModePerm != 0:
		return &OptionError{Field: "Socket.UnixMode", Value: fmt.Sprintf("%#o", uint32(o.UnixMode)), Rule: "must be permission bits only (0 to 0777)"}
	case o.Backlog < 0:
		return &OptionError{Field: "Socket.Backlog", Value: o.Backlog, Rule: "must not be negative"}
	}
	return nil
}

// LookupGroup returns the id of the group named, or numbered, name.
func LookupGroup(name string) (int, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		if id, aerr := strconv.Atoi(name); aerr == nil && id >= 0 {
			return id, nil
		}
		return 0, err
	}
	return strconv.Atoi(g.Gid)
}
