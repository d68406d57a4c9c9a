package lab

import (
	"strings"
	"testing"

	"github.com/corridor-dev/corridor/internal/guest"
)

// isLabGuest tells whether the network namespace ns is a guest of app on
// the lab of prefix: cor-<prefix>sN.<app>-... (guest.ScopedName with the
// server's GuestScope).
func isLabGuest(ns, prefix, app string) bool {
	scope, name, ok := strings.Cut(strings.TrimPrefix(ns, guest.NetnsPrefix), guest.ScopeSep)
	return ok && strings.HasPrefix(ns, guest.NetnsPrefix) && strings.HasPrefix(scope, prefix) && strings.HasPrefix(name, app+"-")
}

func TestGuestScopeOfLabServers(t *testing.T) {
	l := newLab(Options{Dir: t.TempDir(), Servers: 2, Prefix: "cortst-", Underlay: DefaultUnderlay})
	got := []string{l.Servers[0].GuestScope(), l.Servers[1].GuestScope()}
	if got[0] != "cortst-s1" || got[1] != "cortst-s2" {
		t.Errorf("guest scopes %v, want the servers' namespaces", got)
	}
	args := strings.Join(l.agentArgs(&l.Servers[0], Options{}), " ")
	if !strings.Contains(args, "--guest-scope cortst-s1") {
		t.Errorf("agent args %q pass no --guest-scope", args)
	}
	ns := guest.NetnsNameIn(got[0], "shop/web/0")
	if !isLabGuest(ns, "cortst-", "shop") || isLabGuest(ns, "cortst-", "sho") || isLabGuest(ns, "corlab-", "shop") {
		t.Errorf("isLabGuest wrong for %s", ns)
	}
}
