package guest

import (
	"crypto/sha256"
	"encoding/hex"
	"github.com/corridor-dev/corridor/internal/hostns"
	"strings"
)

// NetnsPrefix starts the name of every guest network namespace.
const NetnsPrefix = "cor-"

// maxNameLen bounds Name so that the netns name, cgroup directory and state
// directory stay short enough to type and well inside NAME_MAX.
const maxNameLen = 40

// Name is the short, file-name-safe form of a task ID, unique per task ID.
// It names the task's state directory, its cgroup and (after NetnsPrefix)
// its network namespace.
//
// A task ID "<app>/<class>/<index>" whose parts are plain lower-case
// letters and digits maps to "<app>-<class>-<index>" ("shop/web/0" ->
// "shop-web-0"). Any other ID (a part holding '-' or other characters, a
// different number of parts, a long ID) maps to a sanitised form followed
// by '-' and a hash of the exact ID. The two forms cannot meet: a plain
// name has exactly three '-'-separated parts, a hashed one at least four
// (a hashed ID that sanitises to fewer parts is still given the hash).
func Name(task string) string {
	parts := strings.Split(task, "/")
	if len(parts) == 3 && len(task) <= maxNameLen {
		plain := true
		for _, p := range parts {
			if p == "" || !isPlain(p) {
				plain = false
				break
			}
		}
		if plain {
			return strings.Join(parts, "-")
		}
	}
	sum := sha256.Sum256([]byte(task))
	suffix := hex.EncodeToString(sum[:])[:10]
	var b strings.Builder
	dash := true // drop leading and repeated '-'
	for _, r := range strings.ToLower(task) {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9'
		switch {
		case ok:
			b.WriteRune(r)
			dash = false
		case !dash:
			b.WriteByte('-')
			dash = true
		}
	}
	s := strings.TrimRight(b.String(), "-")
	limit := maxNameLen - len(suffix) - 1
	if len(s) > limit {
		s = strings.TrimRight(s[:limit], "-")
	}
	if s == "" {
		s = "x"
	}
	// Pad so that a hashed name always has at least four parts.
	for {
		need := 2 - strings.Count(s, "-")
		if need <= 0 {
			break
		}
		if len(s) > limit-2*need {
			s = strings.TrimRight(s[:limit-2*need], "-")
			continue
		}
		s += strings.Repeat("-x", need)
	}
	return s + "-" + suffix
}

// NetnsName is the name of the task's network namespace under /run/netns,
// as `ip netns` shows it.
func NetnsName(task string) string { return NetnsPrefix + Name(task) }

// NetnsPath is the file of the task's network namespace: what `nsenter
// --net` and a prober open to run inside the guest.
func NetnsPath(task string) string { return hostns.Path(NetnsName(task)) }

func isPlain(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}
