// Package guest is the shared kit of the guest runtimes that run tasks
// on one host: the Runtime interface and the Manager that dispatches to
// a runtime by name, the Supervisor that keeps a program running (with a
// readiness hook), cgroups, the host side of a guest link (HostNet),
// process identity across agent restarts, task logs, and the names and
// state layout of guests (layout.go). The runtimes themselves live beside
// it: internal/guest/nsguest (network-namespace guests) and
// internal/guest/vm (QEMU guests).
//
// The agent drives a Runtime with the guests of its desired state:
// Ensure for each wanted guest, Remove for each listed guest no longer
// wanted.
//
// The host networking of a guest is a /32 route through its own interface
// (veth or tap), with proxy ARP on the host end; the guest's default route
// goes to 169.254.1.1 on its only interface. The data plane
// (internal/dataplane) takes it from there.
package guest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/corridor-dev/corridor/internal/api"
	"github.com/corridor-dev/corridor/internal/compile"
)

// Runtime creates, repairs, lists and removes guests of one kind.
type Runtime interface {
	// Ensure creates or repairs the guest so that it matches g. It is
	// idempotent; it restarts the program when its command or environment
	// changed.
	Ensure(ctx context.Context, g compile.Guest) error
	// Remove stops the program (SIGTERM, then SIGKILL after a grace
	// period) and deletes everything the guest had. Removing a guest that
	// does not exist is not an error.
	Remove(ctx context.Context, task string) error
	// List returns the guests that exist on this host, from the state
	// directory checked against the kernel, so that a restarted agent
	// finds the guests of the one before.
	List(ctx context.Context) ([]Info, error)
	// Status is the live state of the task's guest.
	Status(task string) api.TaskStatus
}

// Info is one guest found on the host.
type Info struct {
	Task    string     `json:"task"`
	Runtime string     `json:"runtime"`
	Address netip.Addr `json:"address"`
	HostIf  string     `json:"hostIf"`
	Netns   string     `json:"netns,omitempty"` // name under /run/netns
	// PID of the running program, 0 when none runs.
	PID int `json:"pid,omitempty"`
	// Missing names the kernel objects of the guest that are not there
	// ("netns", "link", "cgroup"); Ensure recreates them.
	Missing []string `json:"missing,omitempty"`
}

// ErrUnknownRuntime is returned for a guest whose runtime has no
// registered implementation.
var ErrUnknownRuntime = errors.New("guest: unknown runtime")

// Manager is a Runtime that hands each guest to the runtime its spec
// names (spec.Guest.Runtime; empty means netns).
type Manager struct {
	mu       sync.Mutex
	runtimes map[string]Runtime
	owner    map[string]string // task -> runtime name, from Ensure and List
}

// NewManager returns a Manager with no runtime registered.
func NewManager() *Manager {
	return &Manager{runtimes: map[string]Runtime{}, owner: map[string]string{}}
}

// Register makes r serve guests whose spec names runtime name.
func (m *Manager) Register(name string, r Runtime) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.runtimes[name] = r
}

func runtimeName(g compile.Guest) string { return g.Spec.RuntimeName() }

// Ensure implements Runtime.
func (m *Manager) Ensure(ctx context.Context, g compile.Guest) error {
	name := runtimeName(g)
	m.mu.Lock()
	r, ok := m.runtimes[name]
	prev, had := m.owner[g.Task]
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: guest %s: spec.runtime %q (have %s)", ErrUnknownRuntime, g.Task, name, strings.Join(m.Names(), ", "))
	}
	// A task whose runtime changed is moved: the old guest goes first, as
	// both would claim the same host interface and address.
	if had && prev != name {
		if old, ok := m.runtime(prev); ok {
			if err := old.Remove(ctx, g.Task); err != nil {
				return err
			}
		}
	}
	if err := r.Ensure(ctx, g); err != nil {
		return err
	}
	m.mu.Lock()
	m.owner[g.Task] = name
	m.mu.Unlock()
	return nil
}

// Remove implements Runtime. It asks every runtime, so that a guest left
// by an earlier agent is removed whichever runtime made it.
func (m *Manager) Remove(ctx context.Context, task string) error {
	var errs []error
	for _, name := range m.Names() {
		r, _ := m.runtime(name)
		if err := r.Remove(ctx, task); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	m.mu.Lock()
	delete(m.owner, task)
	m.mu.Unlock()
	return errors.Join(errs...)
}

// List implements Runtime: the guests of all runtimes, sorted by task.
func (m *Manager) List(ctx context.Context) ([]Info, error) {
	var all []Info
	var errs []error
	for _, name := range m.Names() {
		r, _ := m.runtime(name)
		infos, err := r.List(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		m.mu.Lock()
		for _, in := range infos {
			if _, ok := m.owner[in.Task]; !ok {
				m.owner[in.Task] = name
			}
		}
		m.mu.Unlock()
		all = append(all, infos...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Task < all[j].Task })
	return all, errors.Join(errs...)
}

// Status implements Runtime: the owning runtime's answer, or pending for
// a task no runtime knows.
func (m *Manager) Status(task string) api.TaskStatus {
	m.mu.Lock()
	name, ok := m.owner[task]
	m.mu.Unlock()
	if ok {
		if r, ok := m.runtime(name); ok {
			return r.Status(task)
		}
	}
	return api.TaskStatus{Task: task, State: api.TaskPending}
}

func (m *Manager) runtime(name string) (Runtime, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.runtimes[name]
	return r, ok
}

// Names lists the registered runtimes, sorted.
func (m *Manager) Names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Sorted(maps.Keys(m.runtimes))
}
