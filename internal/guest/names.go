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

// maxScopeLen bounds Scope, so that a scoped name (Scope + "." + Name)
// stays under 90 bytes: far inside NAME_MAX (255) for the netns file, the
// cgroup directory and QEMU's -name.
const maxScopeLen = 40

// ScopeSep separates the scope from the task's Name in a scoped name. It
// is in neither (both hold only a-z, 0-9 and '-'), so a scoped name
// splits back into exactly one scope and one task name.
const ScopeSep = "."

// Scope is the file-name-safe form of a guest scope: what keeps the
// machine-wide names of one agent's guests (network namespaces under
// /run/netns, cgroup directories, QEMU names) apart from another agent's
// on the same machine. An agent's scope is its server name by default
// (`corridor agent --guest-scope`); the lab gives each simulated server
// its namespace name, which holds the lab's prefix.
//
// A scope of lower-case letters, digits and '-' (not starting or ending
// with '-') of at most 40 bytes is kept as it is ("s1", "corlab-s1"); any
// other is sanitised and followed by '-' and a hash of the exact scope,
// like Name. An empty scope stays empty (Unscoped).
func Scope(scope string) string {
	if scope == "" {
		return ""
	}
	if len(scope) <= maxScopeLen && isPlain(strings.ReplaceAll(scope, "-", "")) &&
		!strings.HasPrefix(scope, "-") && !strings.HasSuffix(scope, "-") && !strings.Contains(scope, "--") && strings.Trim(scope, "-") != "" {
		return scope
	}
	sum := sha256.Sum256([]byte(scope))
	suffix := hex.EncodeToString(sum[:])[:10]
	var b strings.Builder
	for _, r := range strings.ToLower(scope) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else if b.Len() > 0 && !strings.HasSuffix(b.String(), "-") {
			b.WriteByte('-')
		}
	}
	s := b.String()
	if limit := maxScopeLen - len(suffix) - 2; len(s) > limit {
		s = s[:limit]
	}
	s = strings.Trim(s, "-")
	if s == "" {
		s = "x"
	}
	// "--" marks a hashed scope: no kept scope holds it.
	return s + "--" + suffix
}

// ScopedName is the machine-wide name of task's guest under scope: the
// guest's cgroup directory and, after NetnsPrefix, its network namespace
// ("s1", "shop/web/0" -> "s1.shop-web-0"; namespace cor-s1.shop-web-0).
// Two agents on one machine with different scopes never share one, so
// two lab servers can each hold a copy of one task (make-before-break
// drain) and two labs can run one app. An empty scope gives the unscoped
// Name(task) that agents before scopes used.
func ScopedName(scope, task string) string {
	if s := Scope(scope); s != "" {
		return s + ScopeSep + Name(task)
	}
	return Name(task)
}

// NetnsNameIn is the network namespace of task's guest under scope.
func NetnsNameIn(scope, task string) string { return NetnsPrefix + ScopedName(scope, task) }

// NetnsPathIn is the file of the network namespace of task's guest under
// scope.
func NetnsPathIn(scope, task string) string { return hostns.Path(NetnsNameIn(scope, task)) }
