package spec

import (
	"strings"
	"testing"
)

const baseServers = `apiVersion: corridor/v1
kind: ServerList
servers:
  - name: s1
    address: 198.18.0.11
    capacity:
      cpu: 4
      memory: 8Gi
    labels:
      zone: a
    publicKey: dLSznEVCjt7t3mw1zBM1nRfNb+d9b6IOfwPMdgQmUQY=
  - name: s2
    address: 198.18.0.12
    capacity: {cpu: 4, memory: 8Gi}
    state: draining
    wireguardPort: 51821
`

func TestServersValid(t *testing.T) {
	servers, err := DecodeServers("servers.yaml", []byte(baseServers))
	if err != nil {
		t.Fatal(err)
	}
	if len(servers) != 2 {
		t.Fatalf("got %d servers", len(servers))
	}
	s1, s2 := servers[0], servers[1]
	if s1.State != ServerReady || s1.WireGuardPort != DefaultWireGuardPort {
		t.Errorf("defaults not filled in: %+v", s1)
	}
	if s2.State != ServerDraining || s2.WireGuardPort != 51821 || s2.Capacity.CPU != 4000 || s2.Capacity.Memory != 8<<30 {
		t.Errorf("decoded %+v", s2)
	}
	if s1.Labels["zone"] != "a" {
		t.Errorf("labels %v", s1.Labels)
	}
}

func TestServerErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		old, new string
		want     []wantErr
	}{
		{"kind", "kind: ServerList", "kind: Servers",
			[]wantErr{{2, "kind", `kind must be ServerList, got "Servers"`}}},
		{"api version", "apiVersion: corridor/v1", "apiVersion: v1",
			[]wantErr{{1, "apiVersion", "must be corridor/v1"}}},
		{"name", "- name: s1", "- name: S_1",
			[]wantErr{{4, "servers[0].name", `server name "S_1" is not valid`}}},
		{"name missing", "  - name: s1\n    address", "  - address",
			[]wantErr{{4, "servers[0].name", "server name is required"}}},
		{"duplicate name", "- name: s2", "- name: s1",
			[]wantErr{{12, "servers[1].name", `server "s1" is listed twice (also servers[0] (line 4))`}}},
		{"address", "address: 198.18.0.11", "address: 198.18.0.300",
			[]wantErr{{5, "servers[0].address", `address "198.18.0.300" is not an IP address`}}},
		{"address ipv6", "address: 198.18.0.11", "address: fd00::11", nil},
		{"address missing", "    address: 198.18.0.11\n", "",
			[]wantErr{{4, "servers[0].address", "address is required"}}},
		{"address unspecified", "address: 198.18.0.11", "address: 0.0.0.0",
			[]wantErr{{5, "servers[0].address", "cannot be a server's underlay address"}}},
		{"duplicate address", "address: 198.18.0.12", "address: 198.18.0.11",
			[]wantErr{{13, "servers[1].address", `already the address of server "s1" (servers[0] (line 4))`}}},
		{"duplicate address mapped", "address: 198.18.0.12", "address: '::ffff:198.18.0.11'",
			[]wantErr{{13, "servers[1].address", "already the address"}}},
		{"capacity cpu", "{cpu: 4, memory: 8Gi}", "{cpu: 0, memory: 8Gi}",
			[]wantErr{{14, "servers[1].capacity.cpu", "capacity cpu is required"}}},
		{"capacity memory", "{cpu: 4, memory: 8Gi}", "{cpu: 4}",
			[]wantErr{{14, "servers[1].capacity.memory", "capacity memory is required"}}},
		{"capacity garbage", "{cpu: 4, memory: 8Gi}", "{cpu: many, memory: 8Gi}",
			[]wantErr{{14, "servers[1].capacity.cpu", "not a CPU quantity"}}},
		{"state", "state: draining", "state: maintenance",
			[]wantErr{{15, "servers[1].state", `state must be ready, draining or down, got "maintenance"`}}},
		{"wireguard port", "wireguardPort: 51821", "wireguardPort: 65536",
			[]wantErr{{16, "servers[1].wireguardPort", "between 1 and 65535"}}},
		{"wireguard port negative", "wireguardPort: 51821", "wireguardPort: -1",
			[]wantErr{{16, "servers[1].wireguardPort", "between 1 and 65535"}}},
		{"public key short", "publicKey: dLSznEVCjt7t3mw1zBM1nRfNb+d9b6IOfwPMdgQmUQY=", "publicKey: dLSznEVCjt7t3mw1zBM1nRfNb+d9b6IOfwPMdgQmUQ==",
			[]wantErr{{11, "servers[0].publicKey", "32 bytes in base64"}}},
		{"public key garbage", "publicKey: dLSznEVCjt7t3mw1zBM1nRfNb+d9b6IOfwPMdgQmUQY=", "publicKey: not-a-key",
			[]wantErr{{11, "servers[0].publicKey", "not a WireGuard public key"}}},
		{"label", "zone: a", "zone: 'a b'",
			[]wantErr{{10, "servers[0].labels.zone", "label value"}}},
		{"unknown field", "state: draining", "status: draining",
			[]wantErr{{15, "servers[1].status", `did you mean "state"?`}}},
		{"no servers", "servers:\n", "servers: []\nx:\n",
			[]wantErr{{3, "servers", "at least one server"}, {4, "x", "unknown field"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := edit(t, baseServers, tc.old, tc.new)
			servers, err := DecodeServers("servers.yaml", []byte(in))
			if tc.want == nil {
				if err != nil || len(servers) != 2 {
					t.Fatalf("got %d servers, %v", len(servers), err)
				}
				return
			}
			checkErrs(t, "servers.yaml", err, tc.want)
		})
	}
}

func TestServersAcrossDocuments(t *testing.T) {
	r := strings.NewReplacer("s1", "s3", "198.18.0.11", "198.18.0.13", "s2", "s4", "198.18.0.12", "198.18.0.14")
	second := r.Replace(baseServers)
	servers, err := DecodeServers("s.yaml", []byte(baseServers+"---\n"+second))
	if err != nil {
		t.Fatal(err)
	}
	if len(servers) != 4 || servers[2].Name != "s3" || servers[3].Name != "s4" {
		t.Fatalf("got %+v", servers)
	}
	// Names and addresses must be unique across documents too.
	start := strings.Count(baseServers, "\n") + 1
	second = strings.Replace(second, "name: s3", "name: s1", 1)
	_, err = DecodeServers("s.yaml", []byte(baseServers+"---\n"+second))
	checkErrs(t, "s.yaml", err, []wantErr{
		{start + 4, "servers[0].name", `server "s1" is listed twice (also servers[0] (line 4))`},
	})
}

func TestValidateServersWithoutFile(t *testing.T) {
	servers := []Server{
		{Name: "a", Address: "198.18.0.1", Capacity: Resources{CPU: 1000, Memory: 1 << 30}},
		{Name: "a", Address: "198.18.0.1", Capacity: Resources{CPU: 1000, Memory: 1 << 30}, State: "gone"},
	}
	errs := ValidateServers(servers)
	if len(errs) != 3 {
		t.Fatalf("want 3 errors, got %v", errs)
	}
	if errs[0].Error() != `servers[1].name: server "a" is listed twice (also servers[0])` {
		t.Errorf("got %q", errs[0].Error())
	}
}
