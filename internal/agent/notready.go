package agent

// setNotReady records whether the data plane could be applied in the last
// reconcile pass: a host whose data plane failed (its WireGuard device
// could not be opened, say) cannot run tasks, and its status says so
// (api.Status.NotReady), so that the server does not list it ready.
func (a *Agent) setNotReady(dpErr error) {
	reason := ""
	if dpErr != nil {
		reason = "data plane failed, tasks cannot run here: " + dpErr.Error()
	}
	a.mu.Lock()
	a.notReady = reason
	a.mu.Unlock()
}

// notReadyReason is what the status reports as NotReady.
func (a *Agent) notReadyReason() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.notReady
}
