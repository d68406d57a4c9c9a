package sample

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// Environment variables set by the Corridor agent for every task.
const (
	EnvTask     = "CORRIDOR_TASK"
	EnvAddr     = "CORRIDOR_ADDR"
	EnvPeersDB  = "CORRIDOR_PEERS_DB"
	EnvPeersApp = "CORRIDOR_PEERS_APP"
)

// Identity says which task of which tier served a request.
type Identity struct {
	Tier string `json:"tier"`
	Task string `json:"task"`
	Addr string `json:"addr,omitempty"`
}

// IdentityFromEnv names a tier's task from CORRIDOR_TASK and CORRIDOR_ADDR.
// Outside Corridor (no CORRIDOR_TASK) the host name stands in, so that a
// tier run by hand still tells its instances apart.
func IdentityFromEnv(tier string) Identity {
	id := Identity{Tier: tier, Task: os.Getenv(EnvTask), Addr: os.Getenv(EnvAddr)}
	if id.Task == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "local"
		}
		id.Task = tier + "@" + h
	}
	return id
}

// ParsePeers parses a peer list as the agent writes it in
// CORRIDOR_PEERS_<CLASS>: comma-separated "addr:port" entries (IPv6 in
// brackets). Blank entries are skipped; an entry that is not host:port with
// a numeric port is an error naming the entry, so that a bad environment is
// seen at start rather than at the first request.
func ParsePeers(list string) ([]string, error) {
	var out []string
	for _, e := range strings.Split(list, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		host, port, err := net.SplitHostPort(e)
		if err != nil {
			return nil, fmt.Errorf("peer %q: want addr:port: %w", e, err)
		}
		if host == "" {
			return nil, fmt.Errorf("peer %q: empty address", e)
		}
		if _, err := net.LookupPort("tcp", port); err != nil || strings.Trim(port, "0123456789") != "" {
			return nil, fmt.Errorf("peer %q: port %q is not a number", e, port)
		}
		out = append(out, e)
	}
	return out, nil
}
