// Package e2e holds Corridor's end-to-end tests: a lab fleet of servers made
// of network namespaces, the real server and agents, real guests and real
// traffic. It has no code of its own; see e2e_test.go.
package e2e
