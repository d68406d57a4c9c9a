package lab

import (
	"context"
	"github.com/corridor-dev/corridor/internal/hostns"
	"time"

	"github.com/corridor-dev/corridor/internal/api"
)

// Status is what of a lab is up, as `corridor lab status` shows it.
type Status struct {
	Dir       string `json:"dir"`
	Phase     string `json:"phase"`
	ServerURL string `json:"serverURL"`
	CAFile    string `json:"caFile"`
	// Control is the control plane process: alive, and answering /readyz.
	ControlAlive bool   `json:"controlAlive"`
	ControlReady bool   `json:"controlReady"`
	ControlError string `json:"controlError,omitempty"`
	// Underlay is the underlay namespace's presence.
	Underlay NamespaceStatus `json:"underlay"`
	// Gateway is what reached the servers' default gateway for an
	// address outside the underlay: packets that would have left a real
	// network in plain (gateway.go).
	Gateway     GatewayStatus     `json:"gateway"`
	RootLink    bool              `json:"rootLink"`
	Servers     []ServerStatus    `json:"servers"`
	Guests      []NamespaceStatus `json:"guests,omitempty"`
	CheckedAt   time.Time         `json:"checkedAt"`
	JoinedError string            `json:"joinedError,omitempty"`
}

// NamespaceStatus is one namespace's presence.
type NamespaceStatus struct {
	Name    string `json:"name"`
	Present bool   `json:"present"`
}

// ServerStatus is one simulated server's state.
type ServerStatus struct {
	Name       string `json:"name"`
	Namespace  string `json:"namespace"`
	Address    string `json:"address"`
	Present    bool   `json:"namespacePresent"`
	AgentPID   int    `json:"agentPID,omitempty"`
	AgentAlive bool   `json:"agentAlive"`
	// Joined: the control plane lists the server as ready and has heard
	// from its agent; State is its state there (ready, draining, down).
	Joined bool   `json:"joined"`
	State  string `json:"state,omitempty"`
	Log    string `json:"log"`
	// Kind is netns or vm; VM is a VM host's state (Present: its QEMU
	// runs; AgentAlive: the control plane hears from its agent).
	Kind string          `json:"kind"`
	VM   *VMServerStatus `json:"vm,omitempty"`
	// WireGuard is the kind of WireGuard device its agent reports:
	// kernel, userspace (wireguard-go) or absent.
	WireGuard string `json:"wireguard,omitempty"`
}

// VMServerStatus is a VM host's state.
type VMServerStatus struct {
	QEMUPID int    `json:"qemuPID,omitempty"`
	Accel   string `json:"accel"`
	// Module is the wireguard module's fate at boot: kernel or withheld.
	Module string `json:"module"`
	Boots  int    `json:"boots"`
	Tap    string `json:"tap"`
	Disk   string `json:"disk"`
}

// Up reports whether every part of the lab is up.
func (s Status) Up() bool {
	if !s.ControlAlive || !s.ControlReady || !s.Underlay.Present || !s.RootLink {
		return false
	}
	for _, sv := range s.Servers {
		if !sv.Present || !sv.AgentAlive || !sv.Joined {
			return false
		}
	}
	return true
}

// Status checks what of the lab is up: namespaces, processes, the control
// plane's readiness and which servers it lists. It changes nothing.
func (l *Lab) Status(ctx context.Context) Status {
	st := Status{
		Dir:          l.Dir,
		Phase:        l.Phase,
		ServerURL:    l.ServerURL,
		CAFile:       l.CAFile,
		ControlAlive: alive(l.Control),
		Underlay:     NamespaceStatus{Name: l.UnderlayNamespace, Present: hostns.Exists(l.UnderlayNamespace)},
		RootLink:     rootLinkExists(l.RootLink),
		Gateway:      l.Gateway(),
		CheckedAt:    time.Now().UTC(),
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var listed map[string]api.Server
	if st.ControlAlive {
		if err := l.ready(ctx); err != nil {
			st.ControlError = err.Error()
		} else {
			st.ControlReady = true
			list, err := l.listServers(ctx)
			if err != nil {
				st.JoinedError = err.Error()
			}
			listed = map[string]api.Server{}
			for _, s := range list {
				listed[s.Spec.Name] = s
			}
		}
	}
	for _, s := range l.Servers {
		ss := ServerStatus{
			Name:      s.Name,
			Namespace: s.Namespace,
			Address:   s.Address.String(),
			Present:   hostns.Exists(s.Namespace),
			Log:       s.Log,
		}
		ss.Kind = HostsNetns
		if s.Agent != nil {
			ss.AgentPID = s.Agent.PID
			ss.AgentAlive = alive(s.Agent)
		}
		if v, ok := listed[s.Name]; ok {
			ss.Joined = isJoined(v)
			ss.State = v.State
			ss.WireGuard = v.WireGuardMode
		}
		if s.IsVM() {
			ss.Kind, ss.Namespace = HostsVM, s.VM.Tap
			ss.Present = alive(s.VM.QEMU)
			ss.AgentAlive = ss.Present && ss.Joined
			ss.VM = &VMServerStatus{Accel: s.VM.Accel, Module: s.VM.WireGuard, Boots: s.VM.Boots, Tap: s.VM.Tap, Disk: s.VM.Disk}
			if ss.Present {
				ss.VM.QEMUPID = s.VM.QEMU.PID
			}
		}
		st.Servers = append(st.Servers, ss)
	}
	for _, g := range l.GuestNamespaces {
		st.Guests = append(st.Guests, NamespaceStatus{Name: g, Present: hostns.Exists(g)})
	}
	return st
}
