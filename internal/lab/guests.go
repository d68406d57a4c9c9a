package lab

import (
	"os"

	"github.com/corridor-dev/corridor/internal/agent"
	"github.com/corridor-dev/corridor/internal/guest"
	"github.com/corridor-dev/corridor/internal/guest/nsguest"
)

// GuestScope is the scope of the guest names of s's agent (`corridor
// agent --guest-scope`, guest.ScopedName): the server's namespace, which
// holds the lab's prefix, so that the lab's servers, and two labs on one
// machine, never share a guest namespace or cgroup, even for copies of
// one task.
func (s Server) GuestScope() string {
	if s.Namespace != "" {
		return s.Namespace
	}
	return s.Name
}

// GuestNetnsOn is the file of the network namespace of task's netns guest
// on the lab server named server, as its agent names it (recorded name,
// else scoped: nsguest.NetnsPath). It is "" for a server the lab does not
// have.
func (l *Lab) GuestNetnsOn(server, task string) string {
	s := l.Server(server)
	if s == nil {
		return ""
	}
	return nsguest.NetnsPath(agent.GuestsDir(s.StateDir), s.GuestScope(), task)
}

// GuestNetns is the file of the network namespace of task's netns guest
// on whichever lab server holds it (the first, in server order, whose
// agent recorded the task and whose namespace exists); "" when none does.
func (l *Lab) GuestNetns(task string) string {
	for _, s := range l.Servers {
		if _, err := os.Stat(guest.TaskDir(agent.GuestsDir(s.StateDir), task)); err != nil {
			continue
		}
		p := l.GuestNetnsOn(s.Name, task)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}
