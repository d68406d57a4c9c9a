package lab

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// A VM host's agent.yaml is what docs/install.md tells an operator to
// write (step 4): every key of the page's block, with the same value,
// except the server URL (the lab's) and the labels (the host's).
func TestVMAgentConfigFollowsInstallPage(t *testing.T) {
	b, err := os.ReadFile("../../docs/install.md")
	if err != nil {
		t.Fatal(err)
	}
	var page map[string]any
	for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
		if strings.Contains(m[1], "join-token-file:") {
			if err := yaml.Unmarshal([]byte(m[1]), &page); err != nil {
				t.Fatalf("install.md's agent.yaml block: %v", err)
			}
		}
	}
	if page == nil {
		t.Fatal("docs/install.md has no agent.yaml block (with join-token-file)")
	}
	s := &Server{Name: "s2", Labels: map[string]string{"zone": "b"}, Listen: "198.18.116.12:7444"}
	var got map[string]any
	if err := yaml.Unmarshal(vmAgentConfig(s, "https://198.18.116.1:7443", nil), &got); err != nil {
		t.Fatal(err)
	}
	for k, v := range page {
		switch k {
		case "server":
			if !reflect.DeepEqual(got[k], []any{"https://198.18.116.1:7443"}) {
				t.Errorf("server: %v", got[k])
			}
		case "labels":
			if !reflect.DeepEqual(got[k], map[string]any{"zone": "b"}) {
				t.Errorf("labels: %v", got[k])
			}
		default:
			if !reflect.DeepEqual(got[k], v) {
				t.Errorf("%s: the VM host has %v, docs/install.md says %v", k, got[k], v)
			}
		}
	}
	for k, v := range map[string]any{"name": "s2", "underlay-iface": "eth0", "listen": "198.18.116.12:7444"} {
		if got[k] != v {
			t.Errorf("%s: %v, want %v", k, got[k], v)
		}
	}
}

// The extra keys of VMOptions.AgentConfig follow the lab's own in every
// VM host's agent.yaml, with their values as given; a key the lab sets
// itself is refused, naming it.
func TestVMAgentConfigExtraKeys(t *testing.T) {
	s := &Server{Name: "s1", Listen: "198.18.116.11:7444"}
	var got map[string]any
	b := vmAgentConfig(s, "https://198.18.116.1:7443", map[string]string{"status-interval": "1s", "fence-after": "3s"})
	if err := yaml.Unmarshal(b, &got); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if got["status-interval"] != "1s" || got["fence-after"] != "3s" || got["name"] != "s1" {
		t.Errorf("agent.yaml with extra keys:\n%s", b)
	}
	deb := filepath.Join(t.TempDir(), "corridor.deb")
	if err := os.WriteFile(deb, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := (VMOptions{Package: deb, AgentConfig: map[string]string{"status-interval": "1s"}}).withDefaults(); err != nil {
		t.Errorf("status-interval refused: %v", err)
	}
	_, err := VMOptions{Package: deb, AgentConfig: map[string]string{"listen": ":1"}}.withDefaults()
	if err == nil || !strings.Contains(err.Error(), `"listen"`) {
		t.Errorf("a key the lab sets itself: %v, want an error naming it", err)
	}
}
